"""Apply Alembic migrations from code (used by `conduit migrate`, `serve` and the tests)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from service.infra.settings import normalise_database_url

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"

# The key of the session-level advisory lock that serialises `conduit migrate` runs (hosts
# starting together, a one-shot unit per host): any fixed 64-bit number, the same everywhere.
MIGRATION_LOCK_KEY = 0x636F6E64756974  # "conduit"

logger = logging.getLogger("conduit.migrate")


def alembic_config(database_url: str, connection: Connection | None = None) -> Config:
    """An Alembic config pointing at this project's migrations and `database_url` (or, when
    given, the open `connection`)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate the database at `database_url` to `revision` (blocking), one run at a time.

    The run holds a PostgreSQL advisory lock on its own connection, the one the migrations
    use: a second run waits for the first, then finds nothing left to do. The lock goes with
    the connection, so a run that dies cannot leave it held.
    """
    asyncio.run(_locked_upgrade(database_url, revision))


async def _locked_upgrade(database_url: str, revision: str) -> None:
    engine = create_async_engine(normalise_database_url(database_url), poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            locked = await conn.scalar(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
            if not locked:
                logger.info("another migration run holds the lock: waiting for it")
                await conn.execute(
                    text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            # Session-level: the lock outlives this transaction, and goes with the connection
            # if the migrations fail (NullPool: leaving the block closes it).
            await conn.commit()
            await conn.run_sync(
                lambda sync: command.upgrade(alembic_config(database_url, sync), revision)
            )
            await conn.commit()
            await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
            await conn.commit()
    finally:
        await engine.dispose()


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    """`upgrade` off the event loop (it runs its own)."""
    await asyncio.to_thread(upgrade, database_url, revision)
