"""Adding jobs: in the caller's transaction, with a NOTIFY that PostgreSQL sends on commit."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from service.infra import tracing
from service.models import Job

# The LISTEN/NOTIFY channel that wakes idle workers.
CHANNEL = "conduit_jobs"
DEFAULT_MAX_ATTEMPTS = 8


async def enqueue(
    *,
    session: AsyncSession,
    kind: str,
    payload: dict[str, Any],
    run_at: datetime | None = None,
    max_attempts: int | None = None,
) -> Job:
    """Add a job in `session`'s transaction and notify the workers.

    Nothing is committed here: the job (and the notification, which PostgreSQL delivers only
    on commit) exist only if the caller's transaction commits. `payload` must be JSON; never
    put secrets in it (it is stored in clear). `run_at` delays the job (timezone-aware). The
    job carries the current request id and trace context (`tracing.job_context`).
    """
    if max_attempts is not None and max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    if run_at is not None and run_at.tzinfo is None:
        raise ValueError("run_at must be timezone-aware")
    job = Job(
        kind=kind,
        payload=payload,
        status="pending",
        attempts=0,
        max_attempts=max_attempts or DEFAULT_MAX_ATTEMPTS,
        trace_context=tracing.job_context(),
    )
    if run_at is not None:
        job.run_at = run_at
    session.add(job)
    await session.flush()
    # Several NOTIFYs with the same payload in one transaction are folded into one.
    await session.execute(
        text("SELECT pg_notify(:channel, :kind)"), {"channel": CHANNEL, "kind": kind}
    )
    return job


def trace_context_param() -> str | None:
    """`tracing.job_context` as a JSON bind parameter, for statements that insert jobs
    themselves (`CAST(:trace_context AS jsonb)`)."""
    carried = tracing.job_context()
    return None if carried is None else orjson.dumps(carried).decode()


async def backlog(connection: AsyncConnection) -> dict[str, tuple[int, float]]:
    """Due jobs not yet taken, by kind: how many, and the oldest one's wait in seconds.

    Served by the partial index on pending and running jobs (for the metrics).
    """
    rows = await connection.execute(
        text(
            "SELECT kind, count(*), extract(epoch FROM now() - min(run_at)) FROM jobs "
            "WHERE status = 'pending' AND run_at <= now() GROUP BY kind"
        )
    )
    return {kind: (int(count), float(age)) for kind, count, age in rows}
