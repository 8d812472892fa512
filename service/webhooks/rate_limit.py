"""Pacing deliveries to endpoints with a `rate_limit` (deliveries per second).

Attempts are spaced `1/rate` apart, through Redis (shared by every worker) when `REDIS_URL`
is set, per process otherwise or while Redis is unreachable. A delivery waits for its slot
when it is at most a few seconds away (holding one of the endpoint's in-flight places), and is
postponed otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.infra.redis import ClientOptions, RedisBreaker, close_client, open_client
from service.infra.settings import Settings
from service.webhooks.gates import MAX_TRACKED

logger = logging.getLogger("conduit.webhooks")


# GCRA with burst 1 (attempts spaced `interval` apart) that reserves the next slot when it is
# at most `max_wait` away. KEYS: the bucket. ARGV: interval ms, max wait ms.
# Returns the ms to wait for the reserved slot, or -(ms until a slot) when none was reserved.
_RESERVE_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local wait = tat - now
if wait > tonumber(ARGV[2]) then return -wait end
redis.call('SET', KEYS[1], tat + interval, 'PX', wait + interval + 1000)
return wait
"""
RATE_KEY_PREFIX = "whrl:"
# An outage costs one timeout every few seconds rather than one per delivery (per process);
# the fallback (per-process pacing) is exact enough for that long.
REDIS_RETRY_SECONDS = 5.0


class RateLimiter:
    """Spaces deliveries to rate-limited endpoints: shared through Redis when REDIS_URL is set,
    per process otherwise and while Redis does not answer."""

    def __init__(self) -> None:
        self._memory: dict[uuid.UUID, float] = {}
        self._redis: tuple[asyncio.AbstractEventLoop, str, Redis] | None = None
        self._breaker = RedisBreaker(REDIS_RETRY_SECONDS)

    def _client(self, settings: Settings) -> Redis | None:
        url = settings.redis_url
        if url is None or not self._breaker.allows():
            return None
        loop = asyncio.get_running_loop()
        if self._redis is None or self._redis[0] is not loop or self._redis[1] != url:
            self._redis = (loop, url, open_client(url, ClientOptions.from_settings(settings)))
        return self._redis[2]

    async def reserve(
        self, key: uuid.UUID, *, rate: int, max_wait: float, settings: Settings
    ) -> float:
        """Reserve the endpoint's next slot if it is at most `max_wait` s away and return the
        seconds until it; return minus the seconds until a slot if it is further."""
        interval = 1.0 / rate
        client = self._client(settings)
        if client is not None:
            try:
                reply = await client.eval(
                    _RESERVE_SCRIPT,
                    1,
                    f"{RATE_KEY_PREFIX}{key}",
                    max(1, round(interval * 1000)),
                    round(max_wait * 1000),
                )
                return int(reply) / 1000
            except (RedisError, OSError) as exc:
                self._breaker.trip()
                logger.warning(
                    "webhook rate limits are per process while Redis does not answer: %s",
                    type(exc).__name__,
                )
        now = time.monotonic()
        slot = max(self._memory.get(key, now), now)
        if slot - now > max_wait:
            return -(slot - now)
        self._memory[key] = slot + interval
        if len(self._memory) > MAX_TRACKED:
            self._memory = {k: v for k, v in self._memory.items() if v > now}
        return slot - now

    async def aclose(self) -> None:
        """Close the Redis client (if one was opened on the running loop)."""
        if self._redis is not None and self._redis[0] is asyncio.get_running_loop():
            await close_client(self._redis[2])
        self._redis = None
