"""Helpers for delivery tests: endpoints and events in the test database, workers, polling."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.infra.mail import Mailer
from service.infra.settings import Settings
from service.jobs import Worker, WorkerConfig
from service.models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from service.webhooks import outbox
from service.webhooks.config import DeliveryConfig
from service.webhooks.disabling import DISABLED_MAIL_JOB, send_disabled_mail
from service.webhooks.handler import DeliveryHandler
from service.webhooks.signing import generate_secret

T = TypeVar("T")
Sessions = async_sessionmaker[AsyncSession]

# Retries in milliseconds and a breaker that never holds deliveries back, unless a test says.
FAST = DeliveryConfig(schedule=(0.05,) * 9, jitter=0.0, breaker_cooldowns=(0.0,), busy_delay=0.05)


async def add_endpoint(
    sessions: Sessions,
    *,
    owner_id: int,
    url: str,
    events: list[str] | None = None,
    **fields: Any,
) -> WebhookEndpoint:
    """Insert an enabled endpoint (a fresh secret unless given) and return it."""
    fields.setdefault("secret", generate_secret())
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(), owner_id=owner_id, url=url, events=events or ["*"], **fields
    )
    async with sessions.begin() as session:
        session.add(endpoint)
    return endpoint


async def emit(
    sessions: Sessions, event_type: str = "article.created", data: dict[str, Any] | None = None
) -> int:
    """Emit a public event in a committed transaction; return how many messages it made."""
    async with sessions.begin() as session:
        return await outbox.emit(
            session=session, event_type=event_type, data=data or {"n": 1}, audience=None
        )


async def messages(sessions: Sessions) -> list[WebhookMessage]:
    """Every message, oldest first."""
    async with sessions() as session:
        rows = await session.scalars(
            select(WebhookMessage).order_by(WebhookMessage.created_at, WebhookMessage.id)
        )
        return list(rows)


async def attempts(sessions: Sessions, message_id: str | None = None) -> list[WebhookAttempt]:
    """Attempts (of one message, or all), in order."""
    query = select(WebhookAttempt).order_by(WebhookAttempt.id)
    if message_id is not None:
        query = query.where(WebhookAttempt.message_id == message_id)
    async with sessions() as session:
        return list(await session.scalars(query))


async def endpoint_row(sessions: Sessions, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    """The endpoint as stored now."""
    async with sessions() as session:
        endpoint = await session.get(WebhookEndpoint, endpoint_id)
    assert endpoint is not None
    return endpoint


async def sql(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """Run one statement on a connection of its own."""
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def make_delivery_worker(
    settings: Settings,
    *,
    config: DeliveryConfig = FAST,
    handler: DeliveryHandler | None = None,
    mailer: Mailer | None = None,
    name: str | None = None,
    **changes: Any,
) -> Worker:
    """A worker running webhook deliveries (and the owner mails) only; `config` is the
    deliveries' timings, `changes` are fields of the worker's `WorkerConfig`."""
    worker_config = replace(
        WorkerConfig.from_settings(settings, kind_concurrency={outbox.DELIVER_JOB: 16}),
        poll_interval=0.2,
        shutdown_grace=5.0,
        backoff_base=0.0,
    )
    return Worker(
        settings,
        replace(worker_config, **changes),
        handlers={
            outbox.DELIVER_JOB: handler or DeliveryHandler(config),
            DISABLED_MAIL_JOB: send_disabled_mail,
        },
        mailer=mailer,
        name=name,
    )


async def deliver(settings: Settings, **options: Any) -> int:
    """Run what is pending with a fresh delivery worker (see `make_delivery_worker`), then stop
    it; how many jobs ran."""
    async with make_delivery_worker(settings, **options) as worker:
        return await worker.run_pending()


@asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[None]:
    """Run the workers' loops for the duration of the block, then stop them."""
    tasks = [asyncio.create_task(worker.run()) for worker in workers]
    try:
        await asyncio.wait_for(asyncio.gather(*(worker.listening.wait() for worker in workers)), 10)
        yield
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.gather(*tasks)


async def eventually(check: Callable[[], Any], within: float = 10.0, interval: float = 0.05) -> Any:
    """Poll `check()` (sync or async) until it returns something true, and return that."""
    async with asyncio.timeout(within):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(interval)


async def all_settled(sessions: Sessions, count: int) -> list[WebhookMessage]:
    """The messages once `count` of them exist and none is pending any more."""

    async def check() -> list[WebhookMessage] | None:
        found = await messages(sessions)
        done = len(found) == count and all(m.status != "pending" for m in found)
        return found if done else None

    result: list[WebhookMessage] = await eventually(check, within=20)
    return result


def seconds_between(later: datetime, earlier: datetime) -> float:
    """`later - earlier` in seconds."""
    return (later - earlier).total_seconds()
