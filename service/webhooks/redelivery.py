"""Manual redelivery and "recover since T": one more attempt of chosen messages.

Any status may be redelivered; the endpoint must be enabled by then, or the attempt fails
unsent again. The job is marked `manual`: it skips the circuit breaker's cool-down (still one
at a time while half-open), and if it fails when the message's retry schedule is used up, the
message fails again without disabling the endpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from service.jobs import CHANNEL, trace_context_param
from service.webhooks.outbox import DELIVER_JOB, DELIVERY_JOB_ATTEMPTS

# Sets the messages pending and queues one job each, in one statement.
_REDELIVER = text(
    """
    WITH messages AS (
        UPDATE webhook_messages SET status = 'pending', next_attempt_at = now()
        WHERE id = ANY(CAST(:ids AS varchar[]))
        RETURNING id, attempts
    ), jobs AS (
        INSERT INTO jobs (kind, payload, status, attempts, max_attempts, trace_context)
        SELECT :job,
               jsonb_build_object('messageId', id, 'attempt', attempts, 'manual', true),
               'pending', 0, :max_attempts, CAST(:trace_context AS jsonb)
        FROM messages
        RETURNING id
    )
    SELECT count(*) FROM jobs
    """
)


async def redeliver(*, session: AsyncSession, message_ids: Sequence[str]) -> int:
    """Queue one more attempt of each message (manual redelivery, "recover since T") in
    `session`'s transaction; return how many were queued.

    Any status may be redelivered. The endpoint must be enabled by then, or the attempt
    fails unsent again. A message whose retries are used up gets this one attempt only, and
    its failure does not disable the endpoint.
    """
    ids = sorted(set(message_ids))
    if not ids:
        return 0
    queued = int(
        (
            await session.execute(
                _REDELIVER,
                {
                    "ids": ids,
                    "job": DELIVER_JOB,
                    "max_attempts": DELIVERY_JOB_ATTEMPTS,
                    "trace_context": trace_context_param(),
                },
            )
        ).scalar_one()
    )
    if queued:
        await session.execute(
            text("SELECT pg_notify(:channel, :kind)"), {"channel": CHANNEL, "kind": DELIVER_JOB}
        )
    return queued
