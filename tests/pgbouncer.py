"""A real PgBouncer (Debian's `pgbouncer` package) in transaction mode, for tests and benches."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


@dataclass(frozen=True)
class PgBouncer:
    """A running PgBouncer: `url` is `database_url` with PgBouncer's address instead."""

    url: str
    port: int
    log: Path
    pid: int

    def output(self) -> str:
        """What PgBouncer has logged so far."""
        return self.log.read_text(errors="replace")


def available() -> bool:
    """Whether the pgbouncer binary is installed."""
    return os.access(PGBOUNCER, os.X_OK)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_pgbouncer(
    database_url: str,
    *,
    pool_size: int = 4,
    max_client_conn: int = 500,
    connect_query: str | None = None,
) -> Iterator[PgBouncer]:
    """Start PgBouncer (transaction pooling, trust auth) in front of `database_url`'s database.

    `pool_size` server connections are shared by all clients, so with more clients than that
    every transaction may land on a different server connection. The PostgreSQL server must
    accept the URL's user without a password from 127.0.0.1 (trust), as the test servers do.
    """
    parts = urlsplit(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    user = parts.username or "postgres"
    dbname = parts.path.lstrip("/") or "postgres"
    port = _free_port()
    # PgBouncer refuses to run as root; as root it is started with `-u nobody`, which must be
    # able to read the files: a directory of its own, world-readable (no secret in it).
    workdir = Path(tempfile.mkdtemp(prefix="conduit-pgbouncer-"))
    workdir.chmod(0o755)
    target = f"host={parts.hostname or '127.0.0.1'} port={parts.port or 5432} dbname={dbname}"
    if connect_query:
        target += f" connect_query='{connect_query}'"
    (workdir / "userlist.txt").write_text(f'"{user}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        "\n".join(
            [
                "[databases]",
                f"{dbname} = {target}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {workdir / 'userlist.txt'}",
                "pool_mode = transaction",
                f"default_pool_size = {pool_size}",
                f"max_client_conn = {max_client_conn}",
                # Answer clients at once when a server connection breaks, not after 15 s.
                "server_login_retry = 1",
                "",
            ]
        )
    )
    for name in ("userlist.txt", "pgbouncer.ini"):
        (workdir / name).chmod(0o644)
    log = workdir / "pgbouncer.log"
    command = [PGBOUNCER, *(["-u", "nobody"] if os.geteuid() == 0 else []), "pgbouncer.ini"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, proc, log)
        url = urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}"))
        yield PgBouncer(url=url, port=port, log=log, pid=proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer not listening in 10 s:\n{log.read_text()}") from None
            time.sleep(0.05)
