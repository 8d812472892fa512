"""Running the `conduit` command in tests: in-process (a clean environment and a thread of its
own) or as a real process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import cli
from service.infra.settings import Settings
from tests.net import free_port

ENV_VARIABLES = ("APP_ENV", "DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DATA_DIR", "LOG_LEVEL")


def cli_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: Settings
) -> Iterator[None]:
    """The test database as DATABASE_URL, nothing else; the CLI's logging setup undone after."""
    for name in ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    assert settings.database_url is not None
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    loggers = [logging.getLogger(name) for name in ("", "conduit.cli")]
    saved = [(lg, lg.handlers[:], lg.level) for lg in loggers]
    yield
    for lg, handlers, level in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)


def unreachable_database(monkeypatch: pytest.MonkeyPatch) -> int:
    """DATABASE_URL with a password (`hunter2`) and a port nothing listens on; the port."""
    port = free_port()
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:hunter2@127.0.0.1:{port}/conduit")
    return port


async def run(*argv: str) -> int:
    """`conduit *argv`; main() runs its own event loop (asyncio.run), so in a thread."""
    return await asyncio.to_thread(cli.main, list(argv))


# Running `python -m service.cli` as a real process (signals, exit codes, embedded servers).

ROOT = Path(__file__).resolve().parent.parent


def child_environment(data_dir: Path, **extra: str) -> dict[str, str]:
    """This process's environment minus the CLI's variables, with `data_dir` as DATA_DIR."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARIABLES}
    env.update({"DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", **extra})
    return env


def start(log: Path, env: dict[str, str], *argv: str) -> subprocess.Popen[bytes]:
    """`conduit *argv` in the background, stdout and stderr into `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli", *argv],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def conduit(
    env: dict[str, str], *argv: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`conduit *argv` to its end, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until `text` is in `log`; fail if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        assert proc.poll() is None, log.read_text(errors="replace")
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not logged within {timeout} s:\n{log.read_text()}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> int:
    """Send `sig` and return the exit code (SIGKILL and fail if it does not exit in time)."""
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def embedded_server_processes(data_dir: Path) -> list[str]:
    """`ps` lines of the postgres and redis-server processes working in `data_dir`."""
    data = str(data_dir.resolve())
    listing = subprocess.run(
        ["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True
    ).stdout
    found = []
    for line in listing.splitlines():
        pid, _, args = line.strip().partition(" ")
        if "postgres" not in args and "redis-server" not in args:
            continue
        try:
            # redis-server's arguments name only its config file; it runs in its data dir.
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        if data in args or cwd == data or cwd.startswith(data + os.sep):
            found.append(line.strip())
    return found
