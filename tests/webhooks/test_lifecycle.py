"""A message's life beyond the happy path: recorded failed while its endpoint is disabled,
failed when its delivery job itself keeps crashing, and deleted after the retention period."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from service.infra.settings import Settings
from service.job_registry import create_worker
from service.jobs import JobContext
from service.models import Job, WebhookAttempt, WebhookEndpoint, WebhookEvent, WebhookMessage
from service.services import idempotency
from service.webhooks import outbox, retention
from service.webhooks.handler import DeliveryHandler
from service.webhooks.http import DeliveryResult
from service.webhooks.outcomes import POISON_ERROR
from service.webhooks.redelivery import redeliver
from service.webhooks.retention import Purged, purge
from service.webhooks.signing import new_message_id
from tests.factories import TestUser
from tests.webhooks.receivers import Receiver
from tests.webhooks.support import (
    FAST,
    Sessions,
    add_endpoint,
    attempts,
    deliver,
    emit,
    eventually,
    make_delivery_worker,
    messages,
    sql,
)

MakeUser = Callable[..., Awaitable[TestUser]]


async def delivery_jobs(sessions: Sessions) -> list[Job]:
    async with sessions() as session:
        query = select(Job).where(Job.kind == outbox.DELIVER_JOB).order_by(Job.id)
        return list(await session.scalars(query))


# -- disabled endpoints ----------------------------------------------------------------------


async def test_a_disabled_endpoint_gets_a_failed_message_and_no_job(
    sessionmaker: Sessions, make_user: MakeUser
) -> None:
    owner, other = await make_user(), await make_user()
    on = await add_endpoint(sessionmaker, owner_id=owner.id, url="https://example.com/on")
    off = await add_endpoint(
        sessionmaker,
        owner_id=owner.id,
        url="https://example.com/off",
        enabled=False,
        disabled_reason="gone",
    )
    # Not subscribed, or not allowed to see the event: nothing, disabled or not.
    await add_endpoint(
        sessionmaker, owner_id=owner.id, url="https://example.com/x", events=["user.updated"]
    )
    await add_endpoint(sessionmaker, owner_id=other.id, url="https://example.com/y", enabled=False)
    assert await emit(sessionmaker) == 3  # public: every subscribed endpoint of both owners
    async with sessionmaker.begin() as session:
        private = await outbox.emit(
            session=session, event_type="user.updated", data={"n": 2}, audience=[owner.id]
        )
    assert private == 3

    found = {
        (m.endpoint_id, m.status, m.next_attempt_at is None) for m in await messages(sessionmaker)
    }
    assert (on.id, "pending", False) in found
    assert (off.id, "failed", True) in found
    jobs = await delivery_jobs(sessionmaker)
    queued = {job.payload["messageId"] for job in jobs}
    pending = {m.id for m in await messages(sessionmaker) if m.status == "pending"}
    assert queued == pending
    assert len(pending) == 3  # `on` twice, the user.updated subscriber once
    assert await attempts(sessionmaker) == []


async def test_only_disabled_subscribers_still_store_the_event(
    sessionmaker: Sessions, owner: TestUser, database_url: str
) -> None:
    await add_endpoint(sessionmaker, owner_id=owner.id, url="https://example.com/", enabled=False)
    assert await emit(sessionmaker) == 1
    assert await delivery_jobs(sessionmaker) == []
    [notified] = await sql(database_url, "SELECT count(*) AS n FROM webhook_events")
    assert notified["n"] == 1


# -- delivery jobs that crash ----------------------------------------------------------------


class Crashing(DeliveryHandler):
    """A delivery handler with a bug: sending raises, or hangs (until it succeeds, if told)."""

    def __init__(self, *, hang: bool = False) -> None:
        super().__init__(FAST)
        self.hang = hang
        self.calls = 0

    async def _send(self, *args: Any, **kwargs: Any) -> DeliveryResult:
        self.calls += 1
        if self.hang:
            await asyncio.sleep(30)
        raise KeyError("payload field the code did not expect")


async def test_a_delivery_job_that_keeps_crashing_fails_its_message_for_recovery(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/ok"))
    await emit(sessionmaker)
    crashing = Crashing()
    await deliver(delivery_settings, handler=crashing)

    assert crashing.calls == outbox.DELIVERY_JOB_ATTEMPTS
    [job] = await delivery_jobs(sessionmaker)
    assert (job.status, job.attempts) == ("failed", outbox.DELIVERY_JOB_ATTEMPTS)
    [message] = await messages(sessionmaker)
    assert (message.status, message.attempts, message.next_attempt_at) == ("failed", 1, None)
    [attempt] = await attempts(sessionmaker, message.id)
    assert attempt.status_code is None
    assert attempt.error == (
        f"{POISON_ERROR} ({outbox.DELIVERY_JOB_ATTEMPTS} times, KeyError); "
        "redeliver or recover it to try again"
    )
    assert "payload field" not in attempt.error  # the details are for the operators' log

    # Once the bug is fixed, the message can be recovered like any failed one.
    async with sessionmaker.begin() as session:
        assert await redeliver(session=session, message_ids=[message.id]) == 1
    await deliver(delivery_settings)
    [message] = await messages(sessionmaker)
    assert (message.status, message.attempts) == ("delivered", 2)
    [hit] = receiver.hits("/ok")
    assert hit.headers["webhook-id"] == message.id


async def test_a_delivery_job_timing_out_on_its_last_try_fails_its_message(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser
) -> None:
    await add_endpoint(sessionmaker, owner_id=owner.id, url="https://example.com/")
    await emit(sessionmaker)
    async with sessionmaker.begin() as session:
        await session.execute(
            Job.__table__.update().values(max_attempts=1)  # type: ignore[attr-defined]
        )
    hanging = Crashing(hang=True)
    worker = make_delivery_worker(delivery_settings, handler=hanging, job_timeout=0.3)
    async with worker:
        await worker.run_pending()
    [message] = await messages(sessionmaker)
    assert message.status == "failed"
    [attempt] = await attempts(sessionmaker, message.id)
    assert attempt.error is not None
    assert attempt.error.startswith(f"{POISON_ERROR} (1 time, TimeoutError)")


async def test_a_delivery_job_whose_worker_died_on_its_last_try_fails_its_message(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, database_url: str
) -> None:
    await add_endpoint(sessionmaker, owner_id=owner.id, url="https://example.com/")
    await emit(sessionmaker)
    await sql(
        database_url,
        "UPDATE jobs SET status = 'running', attempts = max_attempts, locked_by = 'dead',"
        " locked_until = now() - interval '1 second'",
    )
    assert await deliver(delivery_settings) == 0
    [message] = await messages(sessionmaker)
    assert message.status == "failed"
    [attempt] = await attempts(sessionmaker, message.id)
    assert attempt.error is not None
    assert "(5 times, the worker running its last attempt stopped (lease expired))" in (
        attempt.error
    )


async def test_the_failure_of_a_stale_or_malformed_job_changes_nothing(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    await add_endpoint(sessionmaker, owner_id=owner.id, url=receiver.url("/ok"))
    await emit(sessionmaker)
    await deliver(delivery_settings)
    [delivered] = await messages(sessionmaker)
    handler = DeliveryHandler(FAST)
    async with make_delivery_worker(delivery_settings) as worker:
        [job] = await delivery_jobs(sessionmaker)
        context = JobContext(
            job_id=job.id,
            kind=job.kind,
            attempt=5,
            max_attempts=5,
            settings=delivery_settings,
            sessionmaker=worker.sessionmaker,
            mailer=worker.mailer,
        )
        await handler.job_failed({"messageId": delivered.id}, context, "KeyError: x")
        await handler.job_failed({"messageId": 5}, context, "KeyError: x")
    [message] = await messages(sessionmaker)
    assert (message.status, message.attempts) == ("delivered", 1)
    assert len(await attempts(sessionmaker)) == 1


# -- retention -------------------------------------------------------------------------------


async def add_logged(
    sessions: Sessions,
    endpoint: WebhookEndpoint,
    *,
    age: timedelta,
    status: str,
    event_id: int | None = None,
) -> tuple[str, int]:
    """A message `age` old (with an attempt) of a new event, or of `event_id`."""
    created = datetime.now(UTC) - age
    async with sessions.begin() as session:
        if event_id is None:
            event = WebhookEvent(type="user.updated", data={"email": "a@b.c"}, created_at=created)
            session.add(event)
            await session.flush()
            event_id = event.id
        message = WebhookMessage(
            id=new_message_id(),
            endpoint_id=endpoint.id,
            event_id=event_id,
            status=status,
            attempts=1,
            created_at=created,
        )
        session.add(message)
        await session.flush()
        session.add(
            WebhookAttempt(
                message_id=message.id, attempt=1, started_at=created, duration_ms=3, status_code=500
            )
        )
    return message.id, event_id


async def counts(sessions: Sessions) -> tuple[int, int, int]:
    async with sessions() as session:
        return (
            await session.scalar(select(func.count()).select_from(WebhookEvent)) or 0,
            await session.scalar(select(func.count()).select_from(WebhookMessage)) or 0,
            await session.scalar(select(func.count()).select_from(WebhookAttempt)) or 0,
        )


async def test_purge_deletes_old_finished_messages_and_unused_events_in_batches(
    sessionmaker: Sessions, owner: TestUser, database_url: str
) -> None:
    a = await add_endpoint(sessionmaker, owner_id=owner.id, url="https://example.com/a")
    b = await add_endpoint(sessionmaker, owner_id=owner.id, url="https://example.com/b")
    days = timedelta(days=1)
    old = [
        await add_logged(sessionmaker, a, age=40 * days, status=s) for s in ("delivered", "failed")
    ]
    old += [await add_logged(sessionmaker, a, age=31 * days, status="failed") for _ in range(3)]
    live = await add_logged(sessionmaker, a, age=40 * days, status="pending")
    recent = await add_logged(sessionmaker, a, age=29 * days, status="delivered")
    # An old event with a recent message for another endpoint (a redelivery) stays.
    shared_old, shared_event = await add_logged(sessionmaker, a, age=40 * days, status="failed")
    await add_logged(sessionmaker, b, age=timedelta(0), status="failed", event_id=shared_event)
    # Events left behind by a deleted endpoint's messages, whatever their age.
    c = await add_endpoint(sessionmaker, owner_id=owner.id, url="https://example.com/c")
    for _ in range(3):
        await add_logged(sessionmaker, c, age=timedelta(hours=1), status="delivered")
    await sql(database_url, "DELETE FROM webhook_endpoints WHERE id = $1", c.id)
    assert await counts(sessionmaker) == (11, 9, 9)

    purged = await purge(sessionmaker=sessionmaker, retention=30 * days, batch_size=2)
    assert purged == Purged(messages=6, events=8)
    left = {m.id for m in await messages(sessionmaker)}
    assert {live[0], recent[0]} <= left
    assert shared_old not in left
    assert not left & {message_id for message_id, _ in old}
    assert await counts(sessionmaker) == (3, 3, 3)  # live, recent, the shared event's other
    assert await purge(sessionmaker=sessionmaker, retention=30 * days) == Purged(0, 0)


async def test_purge_stops_after_its_batches_and_the_next_run_goes_on(
    sessionmaker: Sessions, owner: TestUser
) -> None:
    a = await add_endpoint(sessionmaker, owner_id=owner.id, url="https://example.com/a")
    for _ in range(5):
        await add_logged(sessionmaker, a, age=timedelta(days=2), status="delivered")
    first = await purge(
        sessionmaker=sessionmaker, retention=timedelta(days=1), batch_size=2, max_batches=1
    )
    assert first == Purged(messages=2, events=2)
    await purge(sessionmaker=sessionmaker, retention=timedelta(days=1), batch_size=2)
    assert await counts(sessionmaker) == (0, 0, 0)


async def test_the_service_worker_purges_periodically_with_the_configured_retention(
    settings: Settings, sessionmaker: Sessions, owner: TestUser
) -> None:
    a = await add_endpoint(sessionmaker, owner_id=owner.id, url="https://example.com/a")
    gone, _ = await add_logged(sessionmaker, a, age=timedelta(days=8), status="delivered")
    kept, _ = await add_logged(sessionmaker, a, age=timedelta(days=6), status="delivered")
    configured = settings.model_copy(update={"webhook_retention_days": 7})
    worker = create_worker(configured, poll_interval=30)
    assert worker.config.periodic == {
        "webhook retention": retention.PERIODIC,
        "idempotency key retention": idempotency.PERIODIC,
    }
    task = asyncio.create_task(worker.run())
    try:

        async def purged() -> bool:
            return {m.id for m in await messages(sessionmaker)} == {kept}

        await eventually(purged)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
    assert gone not in {m.id for m in await messages(sessionmaker)}
