"""What a transaction changed, for the response cache: services note it, the request bumps
the cache generations of those kinds after the commit (`service.caching.store`)."""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

# Cached kinds; each has a generation counter that every change of that kind increments.
ARTICLES = "articles"  # article lists and single articles (shared fields, not the viewer's)
TAGS = "tags"
COMMENTS = "comments"
PROFILES = "profiles"
KINDS = (ARTICLES, TAGS, COMMENTS, PROFILES)

CHANGED_KEY = "conduit.cache_changed"
GENERATION_PREFIX = "c:g:"
# The durable retry of a bump that failed after a commit.
BUMP_JOB = "cache.bump"


def note_changed(session: AsyncSession, *kinds: str) -> None:
    """Remember that this transaction changes cached data of `kinds`."""
    noted: set[str] = session.info.setdefault(CHANGED_KEY, set())
    noted.update(kinds)


def take_changed(session: AsyncSession) -> set[str]:
    """The kinds this transaction changed; forgets them."""
    noted: set[str] = session.info.pop(CHANGED_KEY, set())
    return noted


def generation_key(kind: str) -> str:
    """The Redis key of `kind`'s generation counter."""
    return f"{GENERATION_PREFIX}{kind}"


# A counter that does not exist (never set, evicted, lost with Redis's data) starts from the
# server's clock in microseconds, never from 0: entries of an earlier life of the counter are
# never read again.
START_GENERATION_LUA = """
local function generation(key)
  local value = redis.call('GET', key)
  if value then return value end
  local now = redis.call('TIME')
  redis.call('SET', key, now[1] .. string.format('%06d', now[2]), 'NX')
  return redis.call('GET', key)
end
"""
_BUMP_SCRIPT = (
    START_GENERATION_LUA
    + """
for _, key in ipairs(KEYS) do
  generation(key)
  redis.call('INCR', key)
end
return #KEYS
"""
)


async def bump(*, client: Redis, kinds: Iterable[str]) -> None:
    """Increment the generation of each kind: their cached entries are no longer read."""
    keys = [generation_key(kind) for kind in sorted(set(kinds))]
    if keys:
        await client.eval(_BUMP_SCRIPT, len(keys), *keys)
