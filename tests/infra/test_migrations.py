"""The migration matches the models, and runs down and up again cleanly."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest_asyncio
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from service.infra.migrate import MIGRATION_LOCK_KEY, alembic_config, upgrade_async
from service.infra.settings import normalise_database_url
from service.models import Base


def _drift(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, Base.metadata))


async def schema_drift(url: str) -> list[Any]:
    """What autogenerate would change to make the database at `url` match the models."""
    engine = create_async_engine(normalise_database_url(url), poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_drift)
    finally:
        await engine.dispose()


async def table_names(url: str) -> set[str]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {row["tablename"] for row in rows}


@pytest_asyncio.fixture
async def fresh_database(server_urls: tuple[str, str]) -> AsyncIterator[str]:
    """An empty database of its own, dropped afterwards."""
    admin_url = server_urls[0].replace("postgresql+asyncpg://", "postgresql://")
    name = f"conduit_migrations_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_models_and_migrated_schema_do_not_drift(database_url: str) -> None:
    assert await schema_drift(database_url) == []


async def test_downgrade_to_base_and_upgrade_again(fresh_database: str) -> None:
    tables = {table.name for table in Base.metadata.sorted_tables}
    await upgrade_async(fresh_database)
    assert await table_names(fresh_database) == tables | {"alembic_version"}

    await asyncio.to_thread(command.downgrade, alembic_config(fresh_database), "base")
    assert await table_names(fresh_database) == {"alembic_version"}

    await upgrade_async(fresh_database)
    assert await table_names(fresh_database) == tables | {"alembic_version"}
    assert await schema_drift(fresh_database) == []


async def test_concurrent_migrate_runs_both_succeed(fresh_database: str) -> None:
    # Several hosts starting at once: without the lock, both would create alembic_version
    # and the tables, and one would fail half-way.
    await asyncio.gather(*(upgrade_async(fresh_database) for _ in range(3)))
    tables = {table.name for table in Base.metadata.sorted_tables}
    assert await table_names(fresh_database) == tables | {"alembic_version"}
    assert await schema_drift(fresh_database) == []


async def test_migrate_waits_for_the_lock_holder(fresh_database: str) -> None:
    holder = await asyncpg.connect(fresh_database)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        run = asyncio.create_task(upgrade_async(fresh_database))
        await asyncio.sleep(1.0)
        assert not run.done()
        assert await table_names(fresh_database) == set()
        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        await asyncio.wait_for(run, 30)
    finally:
        await holder.close()
    assert "alembic_version" in await table_names(fresh_database)
