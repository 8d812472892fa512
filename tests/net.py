"""Network helpers of the tests: a port nothing listens on, and waiting for a server to be ready."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on (bound then released): for a server to start
    on, or for a client that must find nothing there."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(
    url: str,
    timeout: float = 30,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> httpx.Response:
    """Poll GET `url` until it answers 200 and return that response.

    Fails once `timeout` seconds have passed, or at once if `proc` (the server) has exited;
    the failure shows `log` (the server's output) when given."""
    deadline = time.monotonic() + timeout
    last: httpx.Response | None = None
    while True:
        assert proc is None or proc.poll() is None, _output(log)
        try:
            last = httpx.get(url, timeout=2)
            if last.status_code == 200:
                return last
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, (
            f"{url} not ready in {timeout} s ({last}):{_output(log)}"
        )
        time.sleep(0.2)


def _output(log: Path | None) -> str:
    """The server's output for a failure message (read only when an assertion fails)."""
    return "" if log is None else "\n" + log.read_text(errors="replace")
