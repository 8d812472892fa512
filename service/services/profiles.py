"""Profiles and the follow relation."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.models import Follow, User


async def following_ids(
    *, session: AsyncSession, viewer: User | None, user_ids: Collection[int]
) -> set[int]:
    """Which of `user_ids` the viewer follows, in one query (empty for anonymous viewers)."""
    if viewer is None or not user_ids:
        return set()
    rows = await session.scalars(
        select(Follow.followee_id).where(
            Follow.follower_id == viewer.id, Follow.followee_id.in_(set(user_ids))
        )
    )
    return set(rows)
