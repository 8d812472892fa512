"""The `conduit` command: clear one-line failures, and a real serve/worker run."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.cli import main
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
STRONG_SECRET = "cli-test-secret-" + "z" * 32
ENV_VARIABLES = ("APP_ENV", "DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DATA_DIR", "LOG_LEVEL")


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def test_migrate_without_database_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate"]) == 1
    assert one_line_error(capsys) == "conduit: DATABASE_URL is not set"


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


def _child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARIABLES}
    env.update({"DATA_DIR": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1", **extra})
    return env


def _wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        assert proc.poll() is None, log.read_text(errors="replace")
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not logged within {timeout} s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def test_worker_starts_and_stops_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker"],
            cwd=ROOT,
            env=_child_env(tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_line(log, "worker started", proc, 30)
    finally:
        code = _stop(proc)
    assert code == 0, log.read_text()
    assert "worker stopped" in log.read_text()


def test_serve_end_to_end(tmp_path: Path, settings: Settings) -> None:
    assert settings.database_url is not None
    assert settings.redis_url is not None
    port = free_port()
    log = tmp_path / "serve.log"
    env = _child_env(
        tmp_path,
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        SECRET_KEY=STRONG_SECRET,
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--bind", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        ready: httpx.Response | None = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                ready = httpx.get(f"{base}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert ready is not None
        assert ready.status_code == 200, log.read_text()
        assert ready.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}
        health = httpx.get(f"{base}/healthz", timeout=2)
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        assert "server" not in health.headers
        tags = httpx.get(f"{base}/api/v1/tags", timeout=5)
        assert tags.status_code == 200
    finally:
        code = _stop(proc)
    output = log.read_text()
    assert code == 0, output
    assert "Lifespan error" not in output
    assert "Traceback" not in output
