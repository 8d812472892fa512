"""Accounts: registration, login, profile updates."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from service.models import User


async def get_by_id(*, session: AsyncSession, user_id: int) -> User | None:
    """The user with `user_id`, or None."""
    return await session.get(User, user_id)
