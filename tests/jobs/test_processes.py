"""`conduit worker` and the in-process worker of `conduit serve`, as real processes, mailing
password reset links through a real SMTP server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from email import message_from_bytes, policy
from pathlib import Path

import asyncpg
import httpx
import pytest

from service.infra.secret_box import generate_key
from service.infra.settings import Settings
from tests.cli import ENV_VARIABLES
from tests.factories import TestUser
from tests.jobs.support import TOKEN_IN_LINK, SmtpServer, eventually
from tests.net import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
STRONG_SECRET = "jobs-test-secret-" + "j" * 32
CLEARED = (*ENV_VARIABLES, "SMTP_URL", "WORKER_IN_PROCESS")

MakeUser = Callable[..., Awaitable[TestUser]]


def child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update({"DATA_DIR": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1", **extra})
    return env


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], Path]]]:
    """Start `python -m service.cli ARGS` with its output in a log file; killed if left."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"{args[0]}-{len(procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", *args],
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


def logged(log: Path, text: str, proc: subprocess.Popen[bytes]) -> bool:
    output = log.read_text(errors="replace")
    assert text in output or proc.poll() is None, output
    return text in output


async def wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes]) -> None:
    await eventually(lambda: logged(log, text, proc), within=30)


async def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return await asyncio.to_thread(proc.wait, 30)


async def test_worker_command_delivers_reset_mail_and_stops_on_sigterm(
    tmp_path: Path,
    settings: Settings,
    make_user: MakeUser,
    smtp_server: SmtpServer,
    spawn: Callable[..., tuple[subprocess.Popen[bytes], Path]],
    database_url: str,
) -> None:
    assert settings.database_url is not None
    user = await make_user(email="jake@jake.jake")
    proc, log = spawn(
        "worker",
        env=child_env(tmp_path, DATABASE_URL=settings.database_url, SMTP_URL=smtp_server.url),
    )
    await wait_for_line(log, "worker started", proc)
    conn = await asyncpg.connect(database_url)
    try:
        # What the API does: a job row, and NOTIFY on commit.
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO jobs (kind, payload) VALUES ('password_reset.request', $1)",
                f'{{"email": "{user.email}"}}',
            )
            await conn.execute("NOTIFY conduit_jobs")
    finally:
        await conn.close()
    [mail] = await smtp_server.wait_for(1, within=15)
    assert mail.recipients == [user.email]

    assert await stop(proc) == 0
    output = log.read_text()
    assert "worker stopped" in output
    assert mail.reset_token not in output
    assert "Traceback" not in output


async def test_production_worker_without_smtp_fails_mail_jobs_loudly(
    tmp_path: Path,
    settings: Settings,
    make_user: MakeUser,
    spawn: Callable[..., tuple[subprocess.Popen[bytes], Path]],
    database_url: str,
) -> None:
    assert settings.database_url is not None
    assert settings.redis_url is not None
    user = await make_user(email="jake@jake.jake")
    env = child_env(
        tmp_path,
        APP_ENV="production",
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        SECRET_KEY=STRONG_SECRET,
        WEBHOOK_SECRET_KEYS=generate_key(),
    )
    proc, log = spawn("worker", env=env)
    await wait_for_line(log, "worker started", proc)
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO jobs (kind, payload) VALUES ('password_reset.request', $1)",
                f'{{"email": "{user.email}"}}',
            )
            await conn.execute("NOTIFY conduit_jobs")
        await wait_for_line(log, "MailNotConfigured: SMTP_URL is not set", proc)
        row = await conn.fetchrow("SELECT status, last_error FROM jobs")
        assert row is not None
        # Not marked done: it is retried (and fails for good after max_attempts).
        assert row["status"] in ("pending", "running")
        assert await conn.fetchval("SELECT count(*) FROM password_reset_tokens") == 0
    finally:
        await conn.close()
    assert await stop(proc) == 0
    output = log.read_text()
    assert '"level":"ERROR"' in output
    assert "SMTP_URL is not set: jobs that send mail will fail" in output
    assert list((tmp_path / "data").glob("mail/*.eml")) == []


async def test_serve_runs_the_worker_in_process(
    tmp_path: Path,
    settings: Settings,
    make_user: MakeUser,
    smtp_server: SmtpServer,
    spawn: Callable[..., tuple[subprocess.Popen[bytes], Path]],
) -> None:
    assert settings.database_url is not None
    assert settings.redis_url is not None
    user = await make_user(email="jake@jake.jake")
    port = free_port()
    env = child_env(
        tmp_path,
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        SECRET_KEY=STRONG_SECRET,
        SMTP_URL=smtp_server.url,
        WORKER_IN_PROCESS="true",
    )
    proc, log = spawn("serve", "--bind", f"127.0.0.1:{port}", env=env)
    await wait_for_line(log, "worker started", proc)
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        await asyncio.to_thread(wait_ready, f"{base}/readyz", 30, proc=proc, log=log)
        response = await http.post("/api/v1/users/password-reset", json={"email": user.email})
        assert response.status_code == 202
        [mail] = await smtp_server.wait_for(1, within=15)
        assert mail.recipients == [user.email]
        changed = await http.post(
            "/api/v1/users/password-reset/confirm",
            json={"token": mail.reset_token, "password": "brand-new-password"},
        )
        assert changed.status_code == 204

    assert await stop(proc) == 0
    output = log.read_text()
    assert "worker stopped" in output
    assert "Traceback" not in output
    assert mail.reset_token not in output


async def test_zero_config_serve_mails_reset_links_into_the_mail_folder(
    tmp_path: Path, spawn: Callable[..., tuple[subprocess.Popen[bytes], Path]]
) -> None:
    """No configuration at all: embedded databases, the worker in-process, mail as files."""
    port = free_port()
    proc, log = spawn("serve", "--bind", f"127.0.0.1:{port}", env=child_env(tmp_path))
    await wait_for_line(log, "worker started", proc)
    base = f"http://127.0.0.1:{port}"
    await asyncio.to_thread(wait_ready, f"{base}/readyz", 60, proc=proc, log=log)
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        user = {"username": "jake", "email": "jake@jake.jake", "password": "jakejake"}
        assert (await http.post("/api/v1/users", json={"user": user})).status_code == 201
        response = await http.post("/api/v1/users/password-reset", json={"email": user["email"]})
        assert response.status_code == 202
        folder = tmp_path / "data" / "mail"
        [eml] = await eventually(lambda: list(folder.glob("*.eml")), within=15)
        message = message_from_bytes(eml.read_bytes(), policy=policy.default)
        body = message.get_body(("plain",))
        assert body is not None
        found = TOKEN_IN_LINK.search(body.get_content())
        assert found is not None
        token = found.group(1)
        changed = await http.post(
            "/api/v1/users/password-reset/confirm", json={"token": token, "password": "newpass99"}
        )
        assert changed.status_code == 204

    assert await stop(proc) == 0
    output = log.read_text()
    assert "mail to jake@jake.jake: Reset your Conduit password" in output
    assert token not in output
    assert "worker stopped" in output
    assert "Traceback" not in output
