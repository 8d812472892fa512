"""Read-through cache of shared (viewer-independent) answers in Redis, invalidated exactly.

Design:
- Every cached kind (`service.caching.generations.KINDS`) has a generation counter
  (`c:g:<kind>`); entries are keyed by the generation they were computed at
  (`c:<kind>:<generation>:<key>`). A change of that kind increments the counter right after its
  transaction commits (`Database.on_commit`), before the response is sent: every later read,
  by any process, misses the old entries, so a client that writes and then reads sees its
  write. Old entries are never read again and expire (`CACHE_TTL_SECONDS`).
- Only shared data is cached. Viewer-specific fields (`favorited`, `following`) are looked up
  per request and merged by the caller, so one viewer's answer never reaches another.
- A read costs one round trip: a Lua script reads the generation and the entry together.
  A counter that does not exist starts from Redis's clock in microseconds, never from 0, so a
  counter lost with Redis's data (or evicted) cannot bring back entries of its earlier life.
  Redis must not evict keys without a TTL (`maxmemory-policy` `noeviction` or `volatile-*`).
- Stampedes: concurrent misses of one key in a process share one load; across processes the
  first takes a short lock and the others wait for its value briefly, then load themselves.
- Redis down or slow (no answer within `CACHE_TIMEOUT_MS`): the read falls through to the
  database, never an error; after a connection error or three timeouts in a row Redis is left
  alone for a second. Waiting for another request's load is bounded the same way (a waiter may
  hold the database connection that load needs). A generation bump that fails is
  kept and retried before this process trusts the cache again, and a durable job
  (`BUMP_JOB`) retries it for the other processes.
- Counters (`stats()`): hits, misses, loads, errors, bypassed reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from flask import Flask
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from service.caching import generations
from service.caching.generations import (
    BUMP_JOB,
    START_GENERATION_LUA,
    bump,
    generation_key,
)
from service.infra.db import db
from service.infra.extensions import Extension
from service.infra.redis import RedisBreaker, redis
from service.infra.settings import Settings
from service.jobs.queue import enqueue

logger = logging.getLogger("conduit.cache")

# After a Redis failure, reads go straight to the database for this long: short, as every
# read skipping Redis costs a query.
RETRY_REDIS_AFTER_SECONDS = 1.0
# How long a miss waits for another process that is loading the same entry.
LOCK_WAIT_SECONDS = 0.05
LOCK_POLLS = 3

# KEYS[1]: the generation counter; ARGV[1]: the entry key prefix; ARGV[2]: the entry key.
_READ_SCRIPT = (
    START_GENERATION_LUA
    + """
local current = generation(KEYS[1])
return {current, redis.call('GET', ARGV[1] .. current .. ':' .. ARGV[2])}
"""
)
# Timeouts in a row before reads stop asking Redis for a while (a lone slow answer, e.g. a
# congested event loop, is no reason to send every read to the database).
TIMEOUTS_BEFORE_BACKOFF = 3

Json = Any
Loader = Callable[[], Awaitable[Json]]


def entry_key(kind: str, generation: str, key: str) -> str:
    """The Redis key of one entry."""
    return f"c:{kind}:{generation}:{key}"


def digest(*parts: Any) -> str:
    """A short stable key for a tuple of parameters."""
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()[:32]


@dataclass
class Counters:
    """Counters since the process started (subclasses name them as fields)."""

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return dict(self.__dict__)


@dataclass
class CacheStats(Counters):
    """The read cache's counters."""

    hits: int = 0
    misses: int = 0
    loads: int = 0
    errors: int = 0
    bypassed: int = 0


@dataclass
class ResponseStats(Counters):
    """The counters of the whole-response cache (`service.http.response_cache`)."""

    hits: int = 0
    not_modified: int = 0
    misses: int = 0
    stored: int = 0
    bypassed: int = 0


@dataclass
class CacheState:
    """The cache of one app."""

    enabled: bool
    ttl_seconds: int
    timeout: float
    stats: CacheStats = field(default_factory=CacheStats)
    breaker: RedisBreaker = field(default_factory=lambda: RedisBreaker(RETRY_REDIS_AFTER_SECONDS))
    timeouts_in_a_row: int = 0
    pending_bumps: set[str] = field(default_factory=set)
    inflight: dict[str, asyncio.Future[Json]] = field(default_factory=dict)
    # The response cache's counters, when it is on (it shares this state; `/metrics` reads
    # them here).
    response_stats: ResponseStats | None = None


CACHE: Extension[CacheState] = Extension("conduit.cache")


class Cache:
    """Flask extension: `await cache.fetch(kind, key, load)`."""

    def init_app(self, app: Flask, settings: Settings) -> None:
        """Bind the cache settings to `app`; bump generations after each commit."""
        CACHE.bind(
            app,
            CacheState(
                enabled=settings.cache_enabled,
                ttl_seconds=settings.cache_ttl_seconds,
                timeout=settings.cache_timeout_ms / 1000,
            ),
        )
        db.on_commit(app, bump_changed)

    @property
    def state(self) -> CacheState:
        """The current app's cache state."""
        return CACHE.get()

    def stats(self, app: Flask | None = None) -> dict[str, int]:
        """Hit/miss/error counters of `app` (default: the current app)."""
        return CACHE.get(app).stats.as_dict()

    async def fetch(self, kind: str, key: str, load: Loader) -> Json:
        """The cached value of (`kind`, `key`), or `load()`'s, which is then cached.

        `load` must return JSON-ready data that does not depend on who asks.
        """
        state = self.state
        if not state.enabled:
            return await load()
        if not await self._usable(state):
            state.stats.bypassed += 1
            return await load()
        client = redis.client
        try:
            async with asyncio.timeout(state.timeout):
                generation, raw = await client.eval(
                    _READ_SCRIPT, 1, generation_key(kind), f"c:{kind}:", key
                )
        except (RedisError, OSError, TimeoutError) as exc:
            self.note_failure(state, exc)
            return await load()
        state.timeouts_in_a_row = 0
        if raw is not None:
            state.stats.hits += 1
            return orjson.loads(raw)
        state.stats.misses += 1
        full_key = entry_key(kind, generation.decode(), key)
        running = state.inflight.get(full_key)
        if running is not None:
            # Bounded: a waiter may hold a database connection that the load needs.
            try:
                return await asyncio.wait_for(asyncio.shield(running), state.timeout)
            except TimeoutError:
                return await load()
        future: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        state.inflight[full_key] = future
        try:
            value = await self._load_once(state, client, full_key, load)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        else:
            future.set_result(value)
            return value
        finally:
            del state.inflight[full_key]

    async def _load_once(
        self, state: CacheState, client: Redis, full_key: str, load: Loader
    ) -> Json:
        lock = f"{full_key}:lock"
        try:
            async with asyncio.timeout(state.timeout):
                locked = await client.set(lock, b"1", nx=True, px=2000)
            if not locked:
                for _ in range(LOCK_POLLS):
                    await asyncio.sleep(LOCK_WAIT_SECONDS)
                    async with asyncio.timeout(state.timeout):
                        raw = await client.get(full_key)
                    if raw is not None:
                        state.stats.hits += 1
                        return orjson.loads(raw)
        except (RedisError, OSError, TimeoutError) as exc:
            self.note_failure(state, exc)
            return await load()
        try:
            value = await load()
        except BaseException:
            # Nothing to wait for: let the next reader load at once.
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(state.timeout):
                    await client.delete(lock)
            raise
        state.stats.loads += 1
        try:
            async with asyncio.timeout(state.timeout):
                pipe = client.pipeline(transaction=False)
                pipe.set(full_key, orjson.dumps(value), ex=state.ttl_seconds)
                pipe.delete(lock)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self.note_failure(state, exc)
        return value

    async def _usable(self, state: CacheState) -> bool:
        if not state.breaker.allows():
            return False
        if state.pending_bumps:
            # A change this process made is not yet visible to the cache: bump first.
            kinds = set(state.pending_bumps)
            try:
                async with asyncio.timeout(state.timeout):
                    await bump(client=redis.client, kinds=kinds)
            except (RedisError, OSError, TimeoutError) as exc:
                self.note_failure(state, exc)
                return False
            # Only what was bumped: another request may have added kinds meanwhile.
            state.pending_bumps -= kinds
        return True

    def note_failure(self, state: CacheState, exc: BaseException) -> None:
        """Count a Redis failure; after a few, leave Redis alone for a while."""
        state.stats.errors += 1
        if isinstance(exc, TimeoutError):
            state.timeouts_in_a_row += 1
            if state.timeouts_in_a_row < TIMEOUTS_BEFORE_BACKOFF:
                return
        state.timeouts_in_a_row = 0
        if state.breaker.trip():
            logger.warning(
                "cache: redis unavailable (%s); reading from the database", type(exc).__name__
            )


cache = Cache()


async def bump_changed(session: AsyncSession) -> None:
    """After a commit: bump the generations of what it changed, or keep that for later."""
    changed = generations.take_changed(session)
    if not changed:
        return
    state = cache.state
    try:
        async with asyncio.timeout(state.timeout):
            await bump(client=redis.client, kinds=changed)
    except (RedisError, OSError, TimeoutError) as exc:
        state.pending_bumps |= changed
        cache.note_failure(state, exc)
        # For the other processes: a durable retry, committed now.
        await enqueue(session=session, kind=BUMP_JOB, payload={"kinds": sorted(changed)})
        await session.commit()
