"""Micro-batching of deliveries: the `Batcher` itself, and 2xx outcomes recorded together."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from service.jobs import Completion
from service.models import Job
from service.webhooks import outcomes
from service.webhooks.batching import Batcher, Batchers
from service.webhooks.http import DeliveryResult
from service.webhooks.outcomes import DeliveryJob
from tests.factories import TestUser
from tests.webhooks.receivers import Receiver
from tests.webhooks.support import Sessions, add_endpoint, attempts, emit, messages, sql


class Doubling:
    """A flush that doubles its items and remembers the batches it was given."""

    def __init__(self, error: Exception | None = None, delay: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.error = error
        self.delay = delay

    async def __call__(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return [2 * item for item in items]


async def test_items_submitted_together_share_one_flush_and_get_their_own_result() -> None:
    flush = Doubling()
    batcher = Batcher(flush, max_size=100, linger=0.01)
    results = await asyncio.gather(*(batcher.submit(n) for n in range(10)))
    assert results == [2 * n for n in range(10)]
    assert flush.batches == [list(range(10))]


async def test_a_full_batch_is_flushed_at_once_and_the_next_gathers_meanwhile() -> None:
    flush = Doubling(delay=0.05)
    batcher = Batcher(flush, max_size=4, linger=10.0)  # never waits out the linger
    async with asyncio.timeout(2):
        results = await asyncio.gather(*(batcher.submit(n) for n in range(8)))
    assert results == [2 * n for n in range(8)]
    assert flush.batches == [[0, 1, 2, 3], [4, 5, 6, 7]]


async def test_a_failed_flush_fails_every_item_of_its_batch_only() -> None:
    flush = Doubling(error=RuntimeError("database away"))
    batcher = Batcher(flush, max_size=100, linger=0.01)
    outcomes_ = await asyncio.gather(*(batcher.submit(n) for n in range(3)), return_exceptions=True)
    assert [str(outcome) for outcome in outcomes_] == ["database away"] * 3
    flush.error = None
    assert await batcher.submit(5) == 10


async def test_a_cancelled_wait_leaves_its_item_in_the_batch() -> None:
    flush = Doubling()
    batcher = Batcher(flush, max_size=100, linger=0.05)
    waiting = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.01)
    waiting.cancel()
    assert await batcher.submit(2) == 4
    assert flush.batches == [[1, 2]]
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_batchers_keep_one_batcher_per_key() -> None:
    made: list[str] = []

    def make(key: str) -> Batcher[int, int]:
        made.append(key)
        return Batcher(Doubling(), max_size=10, linger=0.0)

    batchers: Batchers[str, int, int] = Batchers(make)
    assert batchers.get("a") is batchers.get("a")
    assert batchers.get("b") is not batchers.get("a")
    assert made == ["a", "b"]
    with pytest.raises(ValueError, match="max_size"):
        Batcher(Doubling(), max_size=0, linger=0.0)


async def test_2xx_outcomes_are_recorded_together_and_one_that_cannot_be_fails_alone(
    sessionmaker: Sessions, owner: TestUser, receiver: Receiver, database_url: str
) -> None:
    await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/ok"))
    for n in range(3):
        await emit(sessionmaker, data={"n": n})
    found = sorted(await messages(sessionmaker), key=lambda m: m.created_at)
    await sql(database_url, "UPDATE jobs SET status = 'running', locked_by = 'w', attempts = 1")
    async with sessionmaker() as session:
        jobs = {job.payload["messageId"]: job.id for job in await session.scalars(select(Job))}
    now = datetime.now(UTC)

    def delivered(message_id: str, duration_ms: int) -> outcomes.Delivered:
        result = DeliveryResult(status_code=200, duration_ms=duration_ms, response_excerpt="ok")
        return outcomes.Delivered(
            job=DeliveryJob(message_id=message_id, attempt=0, manual=False),
            heal=False,
            result=result,
            started=now,
            finished=now,
            completion=Completion(jobs[message_id], "w"),
        )

    # The middle one cannot be stored (its duration overflows the column): the batch fails,
    # then each is recorded alone.
    items = [delivered(found[0].id, 5), delivered(found[1].id, 2**40), delivered(found[2].id, 7)]
    errors = await outcomes.record_delivered(sessionmaker, items)
    assert [error is None for error in errors] == [True, False, True]
    assert [item.completion.owned for item in items if item.completion] == [True, None, True]
    after = {m.id: m for m in await messages(sessionmaker)}
    assert [(after[m.id].status, after[m.id].attempts) for m in found] == [
        ("delivered", 1),
        ("pending", 0),
        ("delivered", 1),
    ]
    assert [len(await attempts(sessionmaker, m.id)) for m in found] == [1, 0, 1]
    rows = await sql(database_url, "SELECT id, status FROM jobs ORDER BY id")
    status = {row["id"]: row["status"] for row in rows}
    assert [status[jobs[m.id]] for m in found] == ["done", "running", "done"]
    # Recorded again (a stale job): the message stays as it was, the attempt is logged.
    assert await outcomes.record_delivered(sessionmaker, [delivered(found[0].id, 5)]) == [None]
    again = {m.id: m for m in await messages(sessionmaker)}[found[0].id]
    assert (again.status, again.attempts) == ("delivered", 1)
    assert len(await attempts(sessionmaker, found[0].id)) == 2
