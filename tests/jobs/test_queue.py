"""`enqueue`: the job and its NOTIFY exist only if the caller's transaction commits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.jobs import CHANNEL, enqueue


@pytest_asyncio.fixture
async def notifications(database_url: str) -> AsyncIterator[asyncio.Queue[str]]:
    """Payloads of NOTIFYs on the jobs channel, as a separate LISTEN connection sees them."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(database_url)
    await conn.add_listener(CHANNEL, lambda _c, _pid, _channel, payload: queue.put_nowait(payload))
    yield queue
    await conn.close()


async def job_rows(database_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch("SELECT * FROM jobs ORDER BY id"))
    finally:
        await conn.close()


async def test_commit_stores_the_job_and_notifies(
    sessionmaker: async_sessionmaker[AsyncSession],
    notifications: asyncio.Queue[str],
    database_url: str,
) -> None:
    async with sessionmaker() as session:
        job = await enqueue(session=session, kind="test.echo", payload={"n": 1})
        assert job.id is not None
        assert job.status == "pending"
        assert job.attempts == 0
        assert job.max_attempts == 8
        assert job.run_at is not None  # the server default is loaded, no lazy load needed
        # Not visible to others, nor announced, before the commit.
        assert await job_rows(database_url) == []
        await asyncio.sleep(0.1)
        assert notifications.empty()
        await session.commit()

    assert await asyncio.wait_for(notifications.get(), 5) == "test.echo"
    [row] = await job_rows(database_url)
    assert row["id"] == job.id
    assert row["kind"] == "test.echo"
    assert row["status"] == "pending"
    assert row["attempts"] == 0
    assert row["locked_until"] is None
    assert row["locked_by"] is None
    assert row["run_at"] <= datetime.now(UTC)


async def test_rollback_leaves_no_job_and_no_notification(
    sessionmaker: async_sessionmaker[AsyncSession],
    notifications: asyncio.Queue[str],
    database_url: str,
) -> None:
    async with sessionmaker() as session:
        await enqueue(session=session, kind="test.rolled_back", payload={})
        await session.rollback()
    assert await job_rows(database_url) == []

    # A later committed job is the first (and only) notification: the rolled-back one was
    # never sent, with no need to wait for its absence.
    async with sessionmaker() as session:
        await enqueue(session=session, kind="test.committed", payload={})
        await session.commit()
    assert await asyncio.wait_for(notifications.get(), 5) == "test.committed"
    assert notifications.empty()
    assert [row["kind"] for row in await job_rows(database_url)] == ["test.committed"]


async def test_enqueue_takes_part_in_the_callers_transaction(
    sessionmaker: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    async def failing_change() -> None:
        async with sessionmaker() as session, session.begin():
            await enqueue(session=session, kind="test.a", payload={})
            await enqueue(session=session, kind="test.b", payload={})
            raise RuntimeError("the caller's change failed")

    with pytest.raises(RuntimeError):
        await failing_change()
    assert await job_rows(database_url) == []

    async with sessionmaker() as session, session.begin():
        await enqueue(session=session, kind="test.a", payload={"x": [1, "two"]})
        await enqueue(session=session, kind="test.b", payload={})
    rows = await job_rows(database_url)
    assert [row["kind"] for row in rows] == ["test.a", "test.b"]


async def test_run_at_and_max_attempts(
    sessionmaker: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    async with sessionmaker() as session, session.begin():
        job = await enqueue(
            session=session, kind="test.later", payload={}, run_at=later, max_attempts=3
        )
    assert job.run_at == later
    [row] = await job_rows(database_url)
    assert row["run_at"] == later
    assert row["max_attempts"] == 3


async def test_bad_arguments_are_refused(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as session:
        with pytest.raises(ValueError, match="timezone-aware"):
            await enqueue(
                session=session,
                kind="test.x",
                payload={},
                run_at=datetime.now() + timedelta(minutes=1),
            )
        with pytest.raises(ValueError, match="max_attempts"):
            await enqueue(session=session, kind="test.x", payload={}, max_attempts=0)
