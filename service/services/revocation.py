"""Revoked sessions in Redis, so a revoked access token stops working at once.

The database (`auth_sessions.revoked_at`) is the record; Redis holds a marker per revoked
session for as long as one of its access tokens could still be unexpired, so checking a token
costs one Redis round trip instead of a query. Redis here keeps nothing on disk, so a sentinel
key says the markers are complete: when it is missing (Redis restarted or was flushed) the
markers are reloaded from the database. When Redis cannot answer, checks ask the database; a
process that saw Redis fail reloads the markers once Redis answers again, and a marker that
could not be written is also retried by a durable job (`PUBLISH_JOB`) for the other processes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.infra.redis import RedisBreaker
from service.models import AuthSession
from service.services import sessions

logger = logging.getLogger("conduit.revocation")

KEY_PREFIX = "auth:revoked:"
SENTINEL = "auth:revoked"
PUBLISH_JOB = "auth.publish_revocations"
# After a Redis failure, go straight to the database for this long before trying Redis again.
# Longer than the cache's and the limiter's second: the fallback is exact and cheap (one
# indexed query), and the first check that reaches Redis again reloads every marker.
RETRY_REDIS_AFTER_SECONDS = 5.0
# A slower answer counts as a failure: the database answers instead.
REDIS_DEADLINE_SECONDS = 0.25


def key(session_id: uuid.UUID) -> str:
    """The Redis key marking `session_id` as revoked."""
    return f"{KEY_PREFIX}{session_id}"


async def publish(*, redis: Redis, session_ids: Iterable[uuid.UUID], ttl_seconds: int) -> None:
    """Write a marker per revoked session, expiring when its last access token would."""
    pipe = redis.pipeline(transaction=False)
    for session_id in session_ids:
        pipe.set(key(session_id), b"1", ex=ttl_seconds)
    await pipe.execute()


async def reload(*, redis: Redis, session: AsyncSession, ttl_seconds: int) -> set[uuid.UUID]:
    """Write the markers of every session revoked within `ttl_seconds`, then the sentinel;
    return their ids."""
    since = datetime.now(UTC) - timedelta(seconds=ttl_seconds)
    revoked = list(
        await session.scalars(select(AuthSession.id).where(AuthSession.revoked_at >= since))
    )
    if revoked:
        await publish(redis=redis, session_ids=revoked, ttl_seconds=ttl_seconds)
    await redis.set(SENTINEL, b"1")
    return set(revoked)


class RevocationCheck:
    """Is this session revoked? Redis first; the database while Redis is failing."""

    def __init__(self, ttl_seconds: int) -> None:
        self.ttl_seconds = ttl_seconds
        self.breaker = RedisBreaker(RETRY_REDIS_AFTER_SECONDS)
        # Set when this process saw Redis fail (a marker may be missing): the first check
        # that reaches Redis again reloads the markers before trusting them.
        self._reload_needed = False

    def redis_failed(self) -> None:
        """Note that Redis failed here (a check, or writing markers after a commit)."""
        self._reload_needed = True
        # The module's window as it is now, not when this check was made (tests shorten it).
        self.breaker.trip(RETRY_REDIS_AFTER_SECONDS)

    async def is_revoked(
        self, *, redis: Redis, session: AsyncSession, session_id: uuid.UUID
    ) -> bool:
        """True when `session_id` has been revoked (or no longer exists)."""
        if self.breaker.allows():
            try:
                async with asyncio.timeout(REDIS_DEADLINE_SECONDS):
                    sentinel, marker = await redis.mget(SENTINEL, key(session_id))
                if sentinel is not None and not self._reload_needed:
                    return marker is not None
                revoked = await reload(redis=redis, session=session, ttl_seconds=self.ttl_seconds)
                self._reload_needed = False
                logger.info("revocation markers reloaded from the database: %d", len(revoked))
                return marker is not None or session_id in revoked
            except (RedisError, OSError, TimeoutError) as exc:
                self.redis_failed()
                logger.warning(
                    "revocation check: redis unavailable (%s); asking the database",
                    type(exc).__name__,
                )
        return await sessions.is_revoked(session=session, session_id=session_id)
