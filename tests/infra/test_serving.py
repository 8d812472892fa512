"""The production command under SIGTERM and worker crashes, as real processes on a real
PostgreSQL and Redis: requests in flight finish, readiness fails at once, new connections are
refused once the listener closes, the exit code is 0; a killed worker is replaced."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service.infra.settings import Settings
from tests.cli import child_environment, start, stop, wait_for_line
from tests.conftest import TEST_SECRET
from tests.factories import TestUser
from tests.net import free_port

USERS = 25
LOGINS = 2 * USERS  # per account, under the login guard's threshold
DELAY = 2.0


def _environment(
    tmp_path: Path, settings: Settings, server_urls: tuple[str, str]
) -> dict[str, str]:
    assert settings.database_url is not None
    return child_environment(
        tmp_path / "data",
        APP_ENV="test",
        DATABASE_URL=settings.database_url,
        REDIS_URL=server_urls[1],
        SECRET_KEY=TEST_SECRET,
        LOG_FORMAT="json",
        RATE_LIMIT_ENABLED="false",
        WORKER_IN_PROCESS="false",
        # Light on the shared PostgreSQL: two processes, 12 connections each at most.
        THREADS="8",
        DB_POOL_SIZE="8",
        # Logins that each take a while (the rehash to these argon2id parameters, a few at a
        # time): many stay in flight.
        PASSWORD_TIME_COST="6",
        PASSWORD_MAX_CONCURRENT="2",
        SHUTDOWN_DELAY_SECONDS=str(DELAY),
        SHUTDOWN_GRACE_SECONDS="30",
    )


def _serve(
    tmp_path: Path, env: dict[str, str], workers: int
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    port = free_port()
    log = tmp_path / "serve.log"
    proc = start(log, env, "serve", "--workers", str(workers), "--bind", f"127.0.0.1:{port}")
    try:
        wait_for_line(log, "Running on", proc, timeout=60)
        if workers > 1:
            deadline = time.monotonic() + 60
            while log.read_text().count("Running on") < workers:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield proc, f"http://127.0.0.1:{port}", log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(params=[0, 2], ids=["in-process", "two-workers"])
def served(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    settings: Settings,
    server_urls: tuple[str, str],
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    env = _environment(tmp_path, settings, server_urls)
    yield from _serve(tmp_path, env, request.param)


async def _login(base: str, user: TestUser) -> tuple[int, float]:
    # A connection of its own per request, as separate clients would have.
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        response = await http.post(
            "/api/v1/users/login", json={"user": {"email": user.email, "password": user.password}}
        )
        return response.status_code, time.monotonic()


async def _refused(base: str, within: float) -> bool:
    """Whether a TCP connect to `base` gets refused within `within` seconds (a bare connect:
    a request sent as the listener closes may meet the kernel's reset of its backlog)."""
    host, port = base.removeprefix("http://").split(":")
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except ConnectionRefusedError:
            return True
        writer.close()
        await asyncio.sleep(0.05)
    return False


async def test_sigterm_lets_requests_in_flight_finish_and_exits_0(
    served: tuple[subprocess.Popen[bytes], str, Path],
    make_user: Callable[..., Awaitable[TestUser]],
) -> None:
    proc, base, log = served
    users = [await make_user() for _ in range(USERS)]
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        assert (await http.get("/readyz")).status_code == 200

    logins = [asyncio.create_task(_login(base, user)) for user in users + users]
    await asyncio.sleep(0.5)  # all sent; a few answered, most queued for a hashing slot
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()

    # Draining: readiness fails at once (once the worker's loop has run its signal handler),
    # while the listener stays open DELAY seconds.
    for _ in range(20):
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            ready = await http.get("/readyz")
        if ready.status_code == 503:
            break
        await asyncio.sleep(0.02)
    assert ready.status_code == 503
    assert ready.json() == {"errors": {"body": ["shutting down"]}}
    assert ready.headers["connection"] == "close"
    # Then new connections are refused, while the requests already in flight go on.
    assert await _refused(base, within=DELAY + 5)

    results = await asyncio.wait_for(asyncio.gather(*logins), 60)
    assert [status for status, _ in results] == [200] * LOGINS
    assert sum(done > signalled for _, done in results) >= 10, "too few were still in flight"

    assert await asyncio.to_thread(proc.wait, 30) == 0
    output = log.read_text()
    assert "shutting down: readiness fails now" in output
    assert "stopped cleanly: every request answered, pools closed" in output


def _workers(master: int) -> list[int]:
    listing = subprocess.run(
        ["pgrep", "-a", "-P", str(master)], capture_output=True, text=True, check=False
    ).stdout
    return [int(line.split()[0]) for line in listing.splitlines() if "spawn_main" in line]


def test_a_killed_worker_is_replaced(
    tmp_path: Path, settings: Settings, server_urls: tuple[str, str]
) -> None:
    env = _environment(tmp_path, settings, server_urls)
    for proc, base, log in _serve(tmp_path, env, 2):
        first = _workers(proc.pid)
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)
        wait_for_line(log, f"worker {first[0]} exited with code -9; replaced by worker", proc, 30)
        # The other worker served on meanwhile; the new one starts serving too.
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
        deadline = time.monotonic() + 60
        while log.read_text().count("Running on") < 3:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        now = _workers(proc.pid)
        assert len(now) == 2
        assert first[0] not in now
        assert first[1] in now
        assert stop(proc, timeout=60) == 0
