"""One redis.asyncio client per process, created at startup and health-checked."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app
from redis.asyncio import BlockingConnectionPool, Redis

from service.infra.db import describe_error
from service.infra.lifecycle import StartupError, register_lifespan
from service.infra.settings import Settings, mask_url

EXTENSION_KEY = "conduit.redis"


@dataclass
class RedisState:
    """The client of one app, opened on the serving loop."""

    settings: Settings
    url: str
    client: Redis | None = None

    async def startup(self) -> None:
        """Create the pooled client on the running loop and check that Redis answers."""
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.settings.redis_max_connections,
            timeout=self.settings.redis_socket_timeout,
            socket_timeout=self.settings.redis_socket_timeout,
            socket_connect_timeout=self.settings.redis_socket_timeout,
            health_check_interval=30,
        )
        self.client = Redis(connection_pool=pool)
        try:
            await self.client.ping()
        except Exception as exc:
            await self.client.aclose()
            await pool.disconnect()
            raise StartupError(
                f"redis unreachable at {mask_url(self.url)}: {describe_error(exc)}"
            ) from exc

    async def shutdown(self) -> None:
        """Close the client and its pool."""
        if self.client is not None:
            await self.client.aclose()
            await self.client.connection_pool.disconnect()


class RedisClient:
    """Flask extension giving the current app's Redis client."""

    def init_app(self, app: Flask, settings: Settings, url: str) -> None:
        """Bind a client (opened at lifespan startup) to `app`."""
        state = RedisState(settings=settings, url=url)
        app.extensions[EXTENSION_KEY] = state
        register_lifespan(app, state)

    @property
    def client(self) -> Redis:
        """The current app's client; only valid after startup."""
        state: RedisState = current_app.extensions[EXTENSION_KEY]
        if state.client is None:
            raise RuntimeError("redis used before lifespan startup")
        return state.client


redis = RedisClient()
