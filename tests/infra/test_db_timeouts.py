"""A frozen database (every server process stopped with SIGSTOP) costs a request the configured
client-side timeouts and a 503 in the error envelope, never a hang; it recovers after."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import httpx
import pytest
import pytest_asyncio

from service.app import create_asgi
from service.infra.migrate import upgrade
from service.infra.settings import Settings, normalise_database_url
from tests.apps import serving

COMMAND_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A throwaway embedded PostgreSQL (never the shared server: it gets SIGSTOPped), migrated;
    its URL and the postmaster's pid."""
    warnings.filterwarnings("ignore", module="platformdirs")
    from service.infra.embedded import EmbeddedServers

    data_dir = tmp_path_factory.mktemp("frozen")
    servers = EmbeddedServers(data_dir)
    url = servers.start_postgres()
    try:
        upgrade(url)
        pid_file = next((data_dir / "postgres").rglob("postmaster.pid"))
        yield url, int(pid_file.read_text().split()[0])
    finally:
        servers.stop()


@contextmanager
def frozen(postmaster: int) -> Iterator[None]:
    """Stop the postmaster and every backend as SIGSTOP does, resume them on exit."""
    children = subprocess.run(
        ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
    ).stdout.split()
    pids = [postmaster, *map(int, children)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


# With the pre-ping, the checkout's ping times out; without it, the request's first query.
@pytest_asyncio.fixture(params=[True, False], ids=["pre-ping", "no-pre-ping"])
async def frozen_client(
    request: pytest.FixtureRequest, own_postgres: tuple[str, int], settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    frozen = settings.model_copy(
        update={
            "database_url": normalise_database_url(own_postgres[0]),
            "threads": 8,
            "db_pool_size": 8,
            "db_command_timeout": COMMAND_TIMEOUT,
            "db_connect_timeout": COMMAND_TIMEOUT,
            "db_pool_timeout": COMMAND_TIMEOUT,
            "db_pool_pre_ping": request.param,
            "rate_limit_enabled": False,
            "cache_enabled": False,
        }
    )
    async with serving(create_asgi(frozen)) as http:
        yield http


async def _timed_get(client: httpx.AsyncClient, path: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await client.get(path)
    return response, time.monotonic() - started


async def test_a_frozen_database_answers_503_within_the_timeouts(
    frozen_client: httpx.AsyncClient, own_postgres: tuple[str, int]
) -> None:
    # Warm: the pool holds connections whose backends are then frozen mid-conversation.
    warm = await asyncio.gather(*(frozen_client.get("/api/v1/articles") for _ in range(4)))
    assert [r.status_code for r in warm] == [200] * 4

    with frozen(own_postgres[1]):
        paths = ["/api/v1/articles", "/api/v1/tags", "/api/v1/articles?tag=x", "/api/v1/tags"]
        answers = await asyncio.wait_for(
            asyncio.gather(*(_timed_get(frozen_client, path) for path in paths)), 30
        )
    for response, elapsed in answers:
        assert response.status_code == 503, response.text
        assert response.json() == {
            "errors": {"database": ["database unavailable, try again later"]}
        }
        # The ping or query (command timeout), then a new connection (connect timeout).
        assert elapsed < 2 * COMMAND_TIMEOUT + 1.0

    # Resumed: the pool replaces what the freeze broke, without a restart.
    recovered = await frozen_client.get("/api/v1/articles")
    assert recovered.status_code == 200
