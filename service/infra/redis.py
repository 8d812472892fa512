"""Redis for the whole process: the client factory, the app's client, and the breaker that
every caller uses to leave a failing Redis alone for a while."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.infra.db import describe_error
from service.infra.extensions import Extension
from service.infra.lifecycle import StartupError, register_lifespan
from service.infra.settings import Settings, mask_url


@dataclass(frozen=True)
class ClientOptions:
    """How a client's pool connects and waits; `from_settings` gives the project's options."""

    max_connections: int
    # How long a command waits for a free connection of the (blocking) pool.
    pool_timeout: float
    socket_timeout: float
    connect_timeout: float
    health_check_interval: int = 30
    # None: redis-py's default retry policy; a number: that many retries, without backoff.
    retries: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientOptions:
        """The shared client's options (`REDIS_MAX_CONNECTIONS`, `REDIS_SOCKET_TIMEOUT`)."""
        timeout = settings.redis_socket_timeout
        return cls(
            max_connections=settings.redis_max_connections,
            pool_timeout=timeout,
            socket_timeout=timeout,
            connect_timeout=timeout,
        )

    @classmethod
    def single(cls, timeout: float) -> ClientOptions:
        """One connection for a one-off step (a job, a command), every wait bounded by
        `timeout`."""
        return cls(
            max_connections=1, pool_timeout=timeout, socket_timeout=timeout, connect_timeout=timeout
        )


def open_client(url: str, options: ClientOptions) -> Redis:
    """A pooled client of `url` (no connection is made yet); call on the loop that uses it."""
    retry = {} if options.retries is None else {"retry": Retry(NoBackoff(), options.retries)}
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=options.max_connections,
        timeout=options.pool_timeout,
        socket_timeout=options.socket_timeout,
        socket_connect_timeout=options.connect_timeout,
        health_check_interval=options.health_check_interval,
        **retry,
    )
    return Redis(connection_pool=pool)


async def close_client(client: Redis) -> None:
    """Close `client` and disconnect its pool."""
    await client.aclose()
    await client.connection_pool.disconnect()


class RedisBreaker:
    """Skip Redis for `retry_after` seconds after a failure.

    While Redis is down or slow every caller has a fallback (the database, memory, nothing);
    asking Redis on every request would add a timeout to each of them. Times are from `clock`
    (monotonic, like the event loop's).
    """

    def __init__(self, retry_after: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.retry_after = retry_after
        self.clock = clock
        self.open_until = 0.0
        # Redis failed since its last answer (for a "reachable again" message).
        self.down = False

    def allows(self) -> bool:
        """True when Redis may be asked (no failure within the window)."""
        return self.clock() >= self.open_until

    def trip(self, retry_after: float | None = None) -> bool:
        """Note a failure: skip Redis for `retry_after` (default: the breaker's) seconds.

        True when Redis was being asked until now: the first failure of an outage window,
        the one worth a log line.
        """
        now = self.clock()
        first = now >= self.open_until
        self.open_until = now + (self.retry_after if retry_after is None else retry_after)
        self.down = True
        return first

    def succeeded(self) -> bool:
        """Note an answer; True when it is the first since a failure."""
        was_down, self.down = self.down, False
        return was_down

    def reset(self) -> None:
        """Ask Redis again at once."""
        self.open_until = 0.0


@dataclass
class RedisState:
    """The client of one app, opened on the serving loop."""

    settings: Settings
    url: str
    client: Redis | None = None

    async def startup(self) -> None:
        """Create the pooled client on the running loop and check that Redis answers."""
        self.client = open_client(self.url, ClientOptions.from_settings(self.settings))
        try:
            await self.client.ping()
        except Exception as exc:
            await close_client(self.client)
            raise StartupError(
                f"redis unreachable at {mask_url(self.url)}: {describe_error(exc)}"
            ) from exc

    async def shutdown(self) -> None:
        """Close the client and its pool."""
        if self.client is not None:
            await close_client(self.client)


REDIS: Extension[RedisState] = Extension("conduit.redis")


class RedisClient:
    """Flask extension giving the current app's Redis client."""

    def init_app(self, app: Flask, settings: Settings, url: str) -> None:
        """Bind a client (opened at lifespan startup) to `app`."""
        register_lifespan(app, REDIS.bind(app, RedisState(settings=settings, url=url)))

    @property
    def client(self) -> Redis:
        """The current app's client; only valid after startup."""
        state = REDIS.get()
        if state.client is None:
            raise RuntimeError("redis used before lifespan startup")
        return state.client


redis = RedisClient()
