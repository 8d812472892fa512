"""A frozen Redis (its server stopped with SIGSTOP) costs a request at most about the socket
timeout: every caller has a fallback, and the breaker spares the requests that follow."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from redis import Redis

from service.app import create_asgi
from service.infra.settings import Settings
from tests.apps import serving
from tests.factories import TestUser

SOCKET_TIMEOUT = 0.5


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A throwaway embedded Redis (never the shared one): its URL and pid."""
    warnings.filterwarnings("ignore", module="platformdirs")
    from service.infra.embedded import EmbeddedServers

    servers = EmbeddedServers(tmp_path / "redis")
    url = servers.start_redis()
    try:
        client = Redis.from_url(url)
        try:
            pid = int(client.info("server")["process_id"])
        finally:
            client.close()
        yield url, pid
    finally:
        servers.stop()


@pytest_asyncio.fixture
async def frozen_redis_client(
    own_redis: tuple[str, int], settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    frozen = settings.model_copy(
        update={
            "redis_url": own_redis[0],
            "threads": 8,
            "db_pool_size": 8,
            "redis_socket_timeout": SOCKET_TIMEOUT,
            "rate_limit_enabled": False,
        }
    )
    async with serving(create_asgi(frozen)) as http:
        yield http


async def test_a_frozen_redis_costs_at_most_the_socket_timeout(
    frozen_redis_client: httpx.AsyncClient,
    own_redis: tuple[str, int],
    make_user: Callable[..., Awaitable[TestUser]],
) -> None:
    user = await make_user()
    requests = [("/api/v1/articles", {}), ("/api/v1/tags", {}), ("/api/v1/user", user.headers)]
    for path, headers in requests:  # warm: pooled connections to the server about to freeze
        assert (await frozen_redis_client.get(path, headers=headers)).status_code == 200

    os.kill(own_redis[1], signal.SIGSTOP)
    try:
        for path, headers in requests * 2:
            started = time.monotonic()
            response = await asyncio.wait_for(frozen_redis_client.get(path, headers=headers), 10)
            elapsed = time.monotonic() - started
            assert response.status_code == 200, response.text
            # One timed-out command at most (then the breaker), plus the request itself.
            assert elapsed < 2 * SOCKET_TIMEOUT + 1.0, (path, elapsed)
    finally:
        os.kill(own_redis[1], signal.SIGCONT)
