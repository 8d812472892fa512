"""The engine's pool: connections idle for a while are checked before use, a busy pool is not;
read-only units of work run in autocommit. Real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import ConduitASGI
from service.infra.db import build_engine, db
from service.infra.settings import Settings

IDLE = 0.2


@pytest_asyncio.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """A one-connection engine that pings connections idle for IDLE seconds or more."""
    assert settings.database_url is not None
    tuned = settings.model_copy(
        update={"db_pool_size": 1, "db_max_overflow": 0, "db_ping_after_idle_seconds": IDLE}
    )
    engine = build_engine(tuned, settings.database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per ping the driver sends."""
    sent: list[int] = []
    original = AsyncAdapt_asyncpg_connection.ping

    def counting(self: AsyncAdapt_asyncpg_connection) -> None:
        sent.append(1)
        original(self)

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", counting)
    return sent


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        pid: int = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    return pid


async def test_a_connection_killed_while_idle_is_replaced_before_use(
    engine: AsyncEngine, database_url: str
) -> None:
    first = await backend_pid(engine)
    admin = await asyncpg.connect(database_url)
    try:
        # What a database restart or an idle timeout does to a pooled connection.
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
    finally:
        await admin.close()
    await asyncio.sleep(IDLE + 0.1)

    second = await backend_pid(engine)  # no error: the ping found it dead

    assert second != first


async def test_a_busy_pool_is_not_pinged_an_idle_one_is(
    engine: AsyncEngine, pings: list[int]
) -> None:
    first = await backend_pid(engine)  # a new connection: nothing to check
    for _ in range(20):
        assert await backend_pid(engine) == first
    assert pings == []

    await asyncio.sleep(IDLE + 0.1)
    assert await backend_pid(engine) == first

    assert pings == [1]


async def in_transaction_after_a_read(app: ConduitASGI, *, autocommit: bool) -> Any:
    with app.flask_app.app_context():
        async with db.unit_of_work(autocommit=autocommit):
            await db.session.execute(text("SELECT 1"))
            connection = await db.session.connection()
            raw = await connection.get_raw_connection()
            return raw.driver_connection.is_in_transaction()  # type: ignore[union-attr]


async def test_a_read_only_unit_of_work_opens_no_transaction(app: ConduitASGI) -> None:
    assert await in_transaction_after_a_read(app, autocommit=True) is False
    assert await in_transaction_after_a_read(app, autocommit=False) is True
