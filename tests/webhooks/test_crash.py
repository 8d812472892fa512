"""`conduit worker` processes delivering webhooks: a worker killed mid-delivery loses nothing,
and two workers in parallel never deliver one attempt twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.infra.settings import Settings
from tests.factories import TestUser
from tests.webhooks.receivers import Receiver
from tests.webhooks.support import (
    Sessions,
    add_endpoint,
    all_settled,
    attempts,
    emit,
    eventually,
    sql,
)

ROOT = Path(__file__).resolve().parents[2]
CLEARED = ("APP_ENV", "DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DATA_DIR", "SMTP_URL")

Spawn = Callable[..., tuple[subprocess.Popen[bytes], Path]]


def worker_env(tmp_path: Path, settings: Settings) -> dict[str, str]:
    assert settings.database_url is not None
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(
        {
            "DATABASE_URL": settings.database_url,
            "DATA_DIR": str(tmp_path / "data"),
            "PYTHONUNBUFFERED": "1",
            "WEBHOOK_ALLOWLIST": "127.0.0.0/8",
        }
    )
    return env


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start `python -m service.cli worker` with its output in a log file; killed if left."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"worker-{len(procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "worker"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        return proc, log

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def started(log: Path, proc: subprocess.Popen[bytes]) -> None:
    def check() -> bool:
        output = log.read_text(errors="replace")
        assert proc.poll() is None, output
        return "worker started" in output

    await eventually(check, within=30)


async def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return await asyncio.to_thread(proc.wait, 30)


async def test_a_worker_killed_mid_delivery_loses_nothing(
    tmp_path: Path,
    settings: Settings,
    sessionmaker: Sessions,
    owner: TestUser,
    receiver: Receiver,
    database_url: str,
    spawn: Spawn,
) -> None:
    await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/hold"))
    env = worker_env(tmp_path, settings)
    proc, log = spawn(env)
    await started(log, proc)
    for n in range(20):
        await emit(sessionmaker, data={"n": n})
    # The receiver holds the first deliveries: the worker is in the middle of them.
    await eventually(lambda: len(receiver.hits("/hold")) >= 4, within=15)
    proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(proc.wait, 10)
    interrupted = {hit.headers["webhook-id"] for hit in receiver.hits("/hold")}
    receiver.state.release.set()
    # Its jobs are `running` with a 60 s lease; let the lease run out now instead.
    await sql(database_url, "UPDATE jobs SET locked_until = now() WHERE status = 'running'")

    restarted, restarted_log = spawn(env)
    await started(restarted_log, restarted)
    settled = await all_settled(sessionmaker, 20)
    assert await stop(restarted) == 0

    assert [m.status for m in settled] == ["delivered"] * 20
    received = Counter(hit.headers["webhook-id"] for hit in receiver.hits("/hold"))
    assert set(received) == {m.id for m in settled}  # every event arrived
    assert interrupted
    for message_id in interrupted:
        assert received[message_id] >= 2  # sent again, with the same webhook-id
    output = restarted_log.read_text()
    assert "Traceback" not in output
    assert "whsec_" not in output + log.read_text()


async def test_two_workers_deliver_each_message_once(
    tmp_path: Path,
    settings: Settings,
    sessionmaker: Sessions,
    owner: TestUser,
    receiver: Receiver,
    database_url: str,
    spawn: Spawn,
) -> None:
    for path in ("/ok", "/status/200", "/status/201", "/status/202"):
        await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url(path))
    env = worker_env(tmp_path, settings)
    workers = [spawn(env) for _ in range(2)]
    for proc, log in workers:
        await started(log, proc)
    for n in range(50):
        await emit(sessionmaker, data={"n": n})
    settled = await all_settled(sessionmaker, 200)
    for proc, _ in workers:
        assert await stop(proc) == 0

    assert {m.status for m in settled} == {"delivered"}
    assert {m.attempts for m in settled} == {1}
    ids = [hit.headers["webhook-id"] for hit in receiver.state.requests]
    assert len(ids) == 200
    assert set(ids) == {m.id for m in settled}  # each exactly once
    assert [a.attempt for a in await attempts(sessionmaker)] == [1] * 200
    rows = await sql(
        database_url, "SELECT DISTINCT locked_by FROM jobs WHERE kind = 'webhook.deliver'"
    )
    assert len(rows) == 2  # both workers took a share
