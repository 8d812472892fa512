"""Idempotency keys (IETF draft-ietf-httpapi-idempotency-key-header, Stripe's semantics).

A request sent with a key runs at most once per principal and key within the retention:

1. `claim` takes a transaction-scoped advisory lock on (principal, key) without waiting. If
   another request holds it, that request is still running: `Conflict` (409). The lock is
   released when its transaction ends, after its commit is visible.
2. Holding the lock, it reads the stored answer: one with another request's fingerprint is
   `InvalidInput` (422); one with the same fingerprint is returned, to be replayed.
3. Otherwise the request runs, and `record` stores its answer **in its transaction**: the key
   exists exactly when the effect committed. A crash or a failed commit leaves neither, and the
   client's retry runs the request again. A request that fails (an error answer) rolls back
   and leaves no key either.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import TextClause, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.domain.errors import Conflict, InvalidInput
from service.infra.settings import Settings
from service.jobs.config import Periodic
from service.models import IdempotencyKey
from service.models.idempotency import KEY_MAX

logger = logging.getLogger("conduit.idempotency")

HEADER = "Idempotency-Key"
IN_PROGRESS = "a request with this Idempotency-Key is still being processed: retry later"
REUSED = "this Idempotency-Key was used with a different request"
MALFORMED = f"must be 1-{KEY_MAX} visible ASCII characters other than '\"', optionally quoted"
# Purge every 10 minutes, in batches of short transactions.
INTERVAL_SECONDS = 600.0
BATCH_SIZE = 1000
MAX_BATCHES = 100


@dataclass(frozen=True)
class StoredAnswer:
    """The answer a key got the first time: replayed as it was."""

    status: int
    headers: list[tuple[str, str]]
    body: str


def parse_key(value: str) -> str:
    """The key of an `Idempotency-Key` field value: the draft's quoted string (`"abc"`) or a
    bare token; `InvalidInput` unless 1-255 visible ASCII characters without a `"`."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not 0 < len(value) <= KEY_MAX or not all(
        "\x21" <= char <= "\x7e" and char != '"' for char in value
    ):
        raise InvalidInput(MALFORMED, field=HEADER)
    return value


def _lock_id(principal: str, key: str) -> int:
    digest = hashlib.sha256(f"idempotency\x00{principal}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def claim(
    *,
    session: AsyncSession,
    principal: str,
    key: str,
    fingerprint: str,
    retention: timedelta,
) -> StoredAnswer | None:
    """Take (principal, key) for this transaction; its stored answer if it has one.

    `Conflict` while another transaction holds the key, `InvalidInput` when the stored answer
    is of another request.
    """
    locked = await session.scalar(select(func.pg_try_advisory_xact_lock(_lock_id(principal, key))))
    if not locked:
        raise Conflict(IN_PROGRESS, field=HEADER)
    # A separate statement: its snapshot is taken after the lock, so it sees the answer that
    # the previous holder committed.
    row = (
        await session.execute(
            select(
                IdempotencyKey.fingerprint,
                IdempotencyKey.status,
                IdempotencyKey.headers,
                IdempotencyKey.body,
            ).where(
                IdempotencyKey.principal == principal,
                IdempotencyKey.key == key,
                IdempotencyKey.created_at > func.now() - retention,
            )
        )
    ).one_or_none()
    if row is None:
        return None
    stored_fingerprint, status, headers, body = row
    if stored_fingerprint != fingerprint:
        raise InvalidInput(REUSED, field=HEADER)
    return StoredAnswer(
        status=status, headers=[(name, value) for name, value in headers], body=body
    )


async def record(
    *,
    session: AsyncSession,
    principal: str,
    key: str,
    method: str,
    path: str,
    fingerprint: str,
    answer: StoredAnswer,
) -> None:
    """Store the answer of a claimed key in the request's transaction.

    A row that `claim` did not return had expired: the lock makes this transaction its only
    writer, so it is overwritten.
    """
    values: dict[str, Any] = {
        "method": method,
        "path": path,
        "fingerprint": fingerprint,
        "status": answer.status,
        "headers": [list(pair) for pair in answer.headers],
        "body": answer.body,
    }
    statement = insert(IdempotencyKey).values(principal=principal, key=key, **values)
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[IdempotencyKey.principal, IdempotencyKey.key],
            set_={**values, "created_at": func.now()},
        )
    )


_EXPIRED = text(
    """
    DELETE FROM idempotency_keys WHERE (principal, key) IN (
        SELECT principal, key FROM idempotency_keys
        WHERE created_at < now() - make_interval(secs => :seconds)
        ORDER BY created_at
        LIMIT :batch
        FOR UPDATE SKIP LOCKED
    )
    """
)


async def purge(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    retention: timedelta,
    batch_size: int = BATCH_SIZE,
    max_batches: int = MAX_BATCHES,
) -> int:
    """Delete keys older than `retention`, at most `max_batches` batches of `batch_size`, each
    its own transaction; the number deleted."""
    deleted = 0
    params: TextClause = _EXPIRED.bindparams(seconds=retention.total_seconds(), batch=batch_size)
    for _ in range(max_batches):
        async with sessionmaker.begin() as session:
            result = await session.execute(params)
        count: int = result.rowcount  # type: ignore[attr-defined]
        deleted += count
        if count < batch_size:
            break
    if deleted:
        logger.info("idempotency keys: deleted %d expired", deleted, extra={"deleted": deleted})
    return deleted


def retention_of(settings: Settings) -> timedelta:
    """How long the settings keep a stored answer."""
    return timedelta(hours=settings.idempotency_retention_hours)


async def purge_task(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    """The worker's periodic task: `purge` with the retention of the settings."""
    await purge(sessionmaker=sessionmaker, retention=retention_of(settings))


PERIODIC = Periodic(interval=INTERVAL_SECONDS, task=purge_task)
