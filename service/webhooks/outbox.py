"""The transactional outbox: events are written in the transaction of the change they report.

`emit` records one event and, in the same statement, one message per endpoint that
subscribed to its type and whose owner may see it, plus one delivery job per message of an
enabled endpoint. If the transaction rolls back, nothing was emitted; once it commits, the jobs
are durable and the workers (woken by NOTIFY, which PostgreSQL sends at commit) deliver them.

A disabled endpoint (by its owner, or by the service after a 410 or days of failures) gets its
message too, recorded as failed with no attempt and no job: nothing is lost while it is off,
and "recover since T" sends those messages once it is enabled again. No event is stored that
no endpoint subscribed to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from service.domain import events
from service.jobs import CHANNEL, trace_context_param

DELIVER_JOB = "webhook.deliver"

# One statement: the matching endpoints, the event (only when some endpoint wants it), a
# message per endpoint (failed at once for a disabled one) and a delivery job per message to
# send. Returns the number of messages and of jobs.
_EMIT = text(
    """
    WITH targets AS (
        SELECT id, enabled FROM webhook_endpoints
        WHERE (events @> ARRAY['*']::varchar[] OR events @> ARRAY[CAST(:type AS varchar)])
          AND (CAST(:public AS boolean) OR owner_id = ANY(CAST(:audience AS bigint[])))
          AND (CAST(:endpoint AS uuid) IS NULL OR id = CAST(:endpoint AS uuid))
    ), event AS (
        INSERT INTO webhook_events (type, data)
        SELECT :type, CAST(:data AS jsonb) WHERE EXISTS (SELECT 1 FROM targets)
        RETURNING id
    ), messages AS (
        INSERT INTO webhook_messages (id, endpoint_id, event_id, status, next_attempt_at)
        SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''), targets.id, event.id,
               CASE WHEN targets.enabled THEN 'pending' ELSE 'failed' END,
               CASE WHEN targets.enabled THEN now() END
        FROM targets CROSS JOIN event
        RETURNING id, status
    ), jobs AS (
        INSERT INTO jobs (kind, payload, status, attempts, max_attempts, trace_context)
        SELECT :job, jsonb_build_object('messageId', messages.id), 'pending', 0, :max_attempts,
               CAST(:trace_context AS jsonb)
        FROM messages
        WHERE messages.status = 'pending'
        RETURNING id
    )
    SELECT (SELECT count(*) FROM messages) AS messages, (SELECT count(*) FROM jobs) AS jobs
    """
)
# A delivery job that crashes unexpectedly (not a failed HTTP attempt, which the handler
# schedules itself) is retried by the job worker this many times.
DELIVERY_JOB_ATTEMPTS = 5


async def emit(
    *,
    session: AsyncSession,
    event_type: str,
    data: Mapping[str, Any],
    audience: Iterable[int] | None,
    endpoint_id: Any = None,
) -> int:
    """Record an event for its subscribers in `session`'s transaction; return how many
    messages were created (those of disabled endpoints, failed unsent, included).

    `audience` is the ids of the users allowed to see the event; None means anyone can (it
    reports public data). `endpoint_id` restricts it to one endpoint (pings).
    """
    if event_type not in events.EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    result = await session.execute(
        _EMIT,
        {
            "type": event_type,
            "data": orjson.dumps(data).decode(),
            "public": audience is None,
            "audience": sorted(set(audience or ())),
            "endpoint": str(endpoint_id) if endpoint_id is not None else None,
            "job": DELIVER_JOB,
            "max_attempts": DELIVERY_JOB_ATTEMPTS,
            "trace_context": trace_context_param(),
        },
    )
    created, queued = result.one()
    if queued:
        await session.execute(
            text("SELECT pg_notify(:channel, :kind)"), {"channel": CHANNEL, "kind": DELIVER_JOB}
        )
    return int(created)
