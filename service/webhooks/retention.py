"""Retention of the webhook delivery log: old messages, their attempts and unused events go.

Events, messages and attempts hold what users did (and `user.updated` holds e-mail
addresses): they are kept `WEBHOOK_RETENTION_DAYS` days, then deleted by a periodic task of
the job worker (`purge`), in batches of bounded size, each its own short transaction.

- A message (with its attempts) goes once it is older than the retention and finished
  (delivered or failed). A pending message has a live delivery job and stays until it settles.
- An event goes as soon as no message refers to it, whatever its age: `outbox.emit` stores an
  event only with its messages, so such an event was left behind when its messages went with
  their endpoint (deleted by its owner, or with its owner's account) or by age.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.infra.settings import Settings
from service.jobs.config import Periodic

logger = logging.getLogger("conduit.webhooks")

# Every 10 minutes; a batch is at most this many rows (and their attempts), and one run stops
# after this many batches of a kind, leaving the rest for its next turn.
INTERVAL_SECONDS = 600.0
BATCH_SIZE = 1000
MAX_BATCHES = 100

_OLD_MESSAGES = text(
    """
    DELETE FROM webhook_messages WHERE id IN (
        SELECT id FROM webhook_messages
        WHERE created_at < now() - make_interval(secs => :seconds) AND status <> 'pending'
        ORDER BY created_at
        LIMIT :batch
        FOR UPDATE SKIP LOCKED
    )
    """
)
_ORPHAN_EVENTS = text(
    """
    DELETE FROM webhook_events WHERE id IN (
        SELECT e.id FROM webhook_events e
        WHERE NOT EXISTS (SELECT 1 FROM webhook_messages m WHERE m.event_id = e.id)
        ORDER BY e.id
        LIMIT :batch
        FOR UPDATE SKIP LOCKED
    )
    """
)


@dataclass(frozen=True)
class Purged:
    """How many rows one `purge` deleted."""

    messages: int
    events: int


async def _in_batches(
    sessionmaker: async_sessionmaker[AsyncSession],
    statement: TextClause,
    params: dict[str, float | int],
    *,
    batch_size: int,
    max_batches: int,
) -> int:
    deleted = 0
    for _ in range(max_batches):
        async with sessionmaker.begin() as session:
            result = await session.execute(statement, {**params, "batch": batch_size})
        count: int = result.rowcount  # type: ignore[attr-defined]
        deleted += count
        if count < batch_size:
            break
    return deleted


async def purge(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    retention: timedelta,
    batch_size: int = BATCH_SIZE,
    max_batches: int = MAX_BATCHES,
) -> Purged:
    """Delete finished messages older than `retention` (with their attempts), then events that
    no message refers to; at most `max_batches` batches of `batch_size` rows of each."""
    options = {"batch_size": batch_size, "max_batches": max_batches}
    messages = await _in_batches(
        sessionmaker, _OLD_MESSAGES, {"seconds": retention.total_seconds()}, **options
    )
    events = await _in_batches(sessionmaker, _ORPHAN_EVENTS, {}, **options)
    if messages or events:
        logger.info(
            "webhook retention: deleted %d messages and %d events",
            messages,
            events,
            extra={"messages": messages, "events": events},
        )
    return Purged(messages=messages, events=events)


async def purge_task(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    """The worker's periodic task: `purge` with the retention of the settings."""
    await purge(
        sessionmaker=sessionmaker, retention=timedelta(days=settings.webhook_retention_days)
    )


PERIODIC = Periodic(interval=INTERVAL_SECONDS, task=purge_task)
