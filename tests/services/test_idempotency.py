"""The idempotency-key service: claiming in the caller's transaction, expiry, and the purge."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.domain.errors import Conflict, InvalidInput
from service.infra.settings import Settings
from service.job_registry import create_worker
from service.models import IdempotencyKey
from service.services import idempotency
from tests.webhooks.support import eventually

DAY = timedelta(hours=24)
ANSWER = idempotency.StoredAnswer(
    status=201, headers=[("Content-Type", "application/json")], body="{}"
)


async def claim_and_record(session: AsyncSession, key: str, fingerprint: str = "f") -> None:
    assert (
        await idempotency.claim(
            session=session, principal="user:1", key=key, fingerprint=fingerprint, retention=DAY
        )
        is None
    )
    await idempotency.record(
        session=session,
        principal="user:1",
        key=key,
        method="POST",
        path="/api/v1/articles",
        fingerprint=fingerprint,
        answer=ANSWER,
    )


async def make_old(maker: async_sessionmaker[AsyncSession], key: str, *, hours: int) -> None:
    async with maker() as session:
        await session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key == key)
            .values(created_at=func.now() - timedelta(hours=hours))
        )
        await session.commit()


async def rows(maker: async_sessionmaker[AsyncSession]) -> int:
    async with maker() as session:
        return int(await session.scalar(select(func.count()).select_from(IdempotencyKey)) or 0)


async def test_a_claimed_key_is_held_until_the_transaction_ends(
    maker: async_sessionmaker[AsyncSession],
) -> None:
    async with maker() as first, maker() as second:
        await claim_and_record(first, "k")
        # Not committed: invisible, and held.
        assert await rows(maker) == 0
        with pytest.raises(Conflict):
            await idempotency.claim(
                session=second, principal="user:1", key="k", fingerprint="f", retention=DAY
            )
        await second.rollback()
        await first.commit()
        stored = await idempotency.claim(
            session=second, principal="user:1", key="k", fingerprint="f", retention=DAY
        )
        assert stored == ANSWER
        with pytest.raises(InvalidInput):
            await idempotency.claim(
                session=second, principal="user:1", key="k", fingerprint="g", retention=DAY
            )


async def test_a_rolled_back_claim_leaves_nothing(maker: async_sessionmaker[AsyncSession]) -> None:
    async with maker() as session:
        await claim_and_record(session, "k")
        await session.rollback()
    assert await rows(maker) == 0
    async with maker() as session:
        await claim_and_record(session, "k", fingerprint="other")
        await session.commit()
    assert await rows(maker) == 1


async def test_an_expired_key_is_free_again_and_purged(
    maker: async_sessionmaker[AsyncSession],
) -> None:
    async with maker() as session:
        await claim_and_record(session, "old")
        await claim_and_record(session, "new")
        await session.commit()
    await make_old(maker, "old", hours=25)
    async with maker() as session:
        # Another request may use an expired key: it is overwritten.
        await claim_and_record(session, "old", fingerprint="reused")
        await session.commit()
    async with maker() as session:
        assert (
            await session.scalar(
                select(IdempotencyKey.fingerprint).where(IdempotencyKey.key == "old")
            )
            == "reused"
        )
    await make_old(maker, "old", hours=25)
    assert await idempotency.purge(sessionmaker=maker, retention=DAY, batch_size=1) == 1
    async with maker() as session:
        assert (await session.scalars(select(IdempotencyKey.key))).all() == ["new"]


async def test_the_worker_purges_expired_keys_periodically(
    settings: Settings, maker: async_sessionmaker[AsyncSession]
) -> None:
    async with maker() as session:
        await claim_and_record(session, "old")
        await claim_and_record(session, "new")
        await session.commit()
    await make_old(maker, "old", hours=3)
    configured = settings.model_copy(update={"idempotency_retention_hours": 2})
    assert idempotency.retention_of(configured) == timedelta(hours=2)
    worker = create_worker(configured, poll_interval=30)
    assert worker.config.periodic["idempotency key retention"] is idempotency.PERIODIC
    task = asyncio.create_task(worker.run())
    try:

        async def purged() -> bool:
            return await rows(maker) == 1

        await eventually(purged)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
    async with maker() as session:
        assert (await session.scalars(select(IdempotencyKey.key))).all() == ["new"]
