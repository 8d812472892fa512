"""Sign-in sessions (`auth_sessions`): revocation."""

from __future__ import annotations

import uuid

from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.models import AuthSession


async def revoke_all_sessions(
    *, session: AsyncSession, user_id: int, reason: str
) -> list[uuid.UUID]:
    """Revoke every active sign-in session of `user_id`; return the ids of those revoked.

    Runs in the caller's transaction. Sessions revoked earlier keep their original reason.
    """
    revoked = await session.scalars(
        update(AuthSession)
        .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=func.now(), revoked_reason=reason)
        .returning(AuthSession.id)
        .execution_options(synchronize_session=False)
    )
    return list(revoked)
