"""What a delivery attempt leads to, written in one transaction per outcome.

A job's payload is `{"messageId", "attempt", "manual"}` (`DeliveryJob`); `attempt` (default 0)
is the number of attempts the message had when the job was queued. Every outcome is written
with `... WHERE attempts = <expected>` (`_claim`): of two jobs racing for one message only one
records and schedules what comes next, and a job re-run after a crash between our commit and
the worker marking it done finds its message moved on and cannot fork a second chain.

Every attempt (an HTTP request, or its failure to happen: refused address, DNS, timeout) is
written to `webhook_attempts`: time, status, duration, the first bytes of the answer, and the
error. Never the headers (signatures), the secret, or the URL.

- 2xx: the message is delivered and the endpoint's `failing_since` cleared.
- 410 Gone: the message failed and the endpoint is disabled ("gone").
- Anything else (other statuses, 3xx too: redirects are not followed, or no answer): the next
  attempt is scheduled (`config.retry_delay`) and queued in the same transaction, so a message
  has one live job whatever crashes when. `failing_since` is set at the first failure of a
  run. When the last retry fails, or the endpoint has been failing for 5 days, the message
  fails and the endpoint is disabled ("failing"; `disabling`). A manual redelivery whose
  message's schedule is used up fails again without disabling the endpoint.
- 2xx results of concurrent deliveries are written together (`record_delivered`, through a
  `batching.Batcher`): one statement settles every message of the batch and logs its attempt,
  and the delivery jobs are marked done in the same transaction. If that fails, each is
  written alone, so one that cannot be written (its message deleted meanwhile) fails only its
  own job.
- Postponed (the endpoint's gates or rate limit said not now): a new job, no attempt counted;
  the message keeps its place in the retry schedule, postponing never uses up retries.
- A delivery job that fails for good without recording an outcome (it kept raising: a bug, or
  data it cannot handle; or it timed out, or its worker died on the last try) fails its message
  with an attempt saying so (`fail_for_good`), so that it is visible and can be redelivered.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Update, bindparam, func, insert, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.dml import ReturningUpdate

from service.jobs import Completion, PermanentJobError, enqueue
from service.jobs.worker import describe_failure
from service.models import WebhookAttempt, WebhookEndpoint, WebhookMessage
from service.webhooks.config import DeliveryConfig, retry_delay
from service.webhooks.disabling import DISABLED_FAILING, DISABLED_GONE, disable
from service.webhooks.http import DeliveryResult
from service.webhooks.outbox import DELIVER_JOB, DELIVERY_JOB_ATTEMPTS

logger = logging.getLogger("conduit.webhooks")

Sessions = async_sessionmaker[AsyncSession]

# Start of the attempt error of a message whose delivery job itself kept failing.
POISON_ERROR = "not sent: the delivery failed inside the service"


@dataclass(frozen=True)
class DeliveryJob:
    """A `webhook.deliver` job: its message, and the attempts that message had when queued."""

    message_id: str
    attempt: int  # attempts the message had when this job was queued
    manual: bool

    @classmethod
    def parse(cls, payload: dict[str, Any]) -> DeliveryJob:
        """The job a payload describes; a malformed one fails the job at once."""
        message_id = payload.get("messageId")
        attempt = payload.get("attempt", 0)
        manual = payload.get("manual", False)
        if (
            not isinstance(message_id, str)
            or not isinstance(attempt, int)
            or attempt < 0
            or not isinstance(manual, bool)
        ):
            raise PermanentJobError("malformed webhook delivery payload")
        return cls(message_id=message_id, attempt=attempt, manual=manual)

    def payload_after(self, *, attempt: int, manual: bool) -> dict[str, Any]:
        """The payload of a later job of the same message."""
        payload: dict[str, Any] = {"messageId": self.message_id, "attempt": attempt}
        if manual:
            payload["manual"] = True
        return payload


def _claim(job: DeliveryJob) -> Update:
    """UPDATE of the job's message, only while it is still this job's to record."""
    return update(WebhookMessage).where(
        WebhookMessage.id == job.message_id,
        WebhookMessage.attempts == job.attempt,
        WebhookMessage.status == "pending",
    )


# The message UPDATEs of `record_attempt`, by names of the columns set, built once:
# constructing a statement costs more CPU than running a cached one.
_SETTLE_STATEMENTS: dict[tuple[str, ...], ReturningUpdate[Any]] = {}


def _settle_statement(names: tuple[str, ...]) -> ReturningUpdate[Any]:
    """The UPDATE settling an attempt: the message (bound `message_id`, still at `expected`
    attempts) counts the attempt and sets `names` (bound `set_<name>`); the attempt itself is
    logged by a CTE of it (bound `number`, `started`, ...), one statement, always run."""
    statement = _SETTLE_STATEMENTS.get(names)
    if statement is None:
        logged = (
            insert(WebhookAttempt)
            .values(
                message_id=bindparam("message_id"),
                attempt=bindparam("number"),
                started_at=bindparam("started"),
                duration_ms=bindparam("duration_ms"),
                status_code=bindparam("status_code"),
                response_excerpt=bindparam("excerpt"),
                error=bindparam("error"),
            )
            .returning(WebhookAttempt.id)
            .cte("attempt")
        )
        statement = (
            update(WebhookMessage)
            .where(
                WebhookMessage.id == bindparam("message_id"),
                WebhookMessage.attempts == bindparam("expected"),
                WebhookMessage.status == "pending",
            )
            .values(
                attempts=WebhookMessage.attempts + 1,
                last_attempt_at=bindparam("started"),
                **{name: bindparam(f"set_{name}") for name in names},
            )
            .returning(WebhookMessage.id)
            .add_cte(logged)
        )
        _SETTLE_STATEMENTS[names] = statement
    return statement


def _attempt_error(result: DeliveryResult) -> str | None:
    if result.error is not None:
        return result.error
    status = result.status_code
    if status is not None and 300 <= status < 400:
        return "redirects are not followed"
    return None


async def _next_job(
    session: AsyncSession, job: DeliveryJob, run_at: datetime, **after: Any
) -> None:
    await enqueue(
        session=session,
        kind=DELIVER_JOB,
        payload=job.payload_after(**after),
        run_at=run_at,
        max_attempts=DELIVERY_JOB_ATTEMPTS,
    )


async def record_attempt(
    *,
    sessions: Sessions,
    config: DeliveryConfig,
    job: DeliveryJob,
    endpoint_id: uuid.UUID,
    failing_since: datetime | None,
    result: DeliveryResult,
    started: datetime,
    retry_after: float | None,
    finish: Callable[[AsyncSession], Awaitable[None]] | None = None,
) -> None:
    """Log the non-2xx attempt that started at `started` and act on its result (see the
    module docstring; 2xx results go to `record_delivered`); `failing_since` is the
    endpoint's as loaded before the attempt. `finish` runs last in the same transaction (the
    delivery job marks itself done there)."""
    number = job.attempt + 1
    finished = config.clock()
    attempt = {
        "message_id": job.message_id,
        "expected": job.attempt,
        "number": number,
        "started": started,
        "duration_ms": result.duration_ms,
        "status_code": result.status_code,
        "excerpt": result.response_excerpt or None,
        "error": _attempt_error(result),
    }

    async def settle(session: AsyncSession, **values: Any) -> bool:
        statement = _settle_statement(tuple(sorted(values)))
        parameters = attempt | {f"set_{name}": value for name, value in values.items()}
        # Core execution: the ORM's bulk-update bookkeeping costs more than the statement.
        return await (await session.connection()).scalar(statement, parameters) is not None

    async def act(session: AsyncSession) -> tuple[float | None, bool]:
        """Write what the result leads to; return the retry delay scheduled (None: no
        retry) and whether this job's write won."""
        nonlocal failing_since
        if result.status_code == 410:
            if await settle(session, status="failed", next_attempt_at=None):
                await disable(session=session, endpoint_id=endpoint_id, reason=DISABLED_GONE)
            return None, False
        failing_since = failing_since or await _mark_failing(session, endpoint_id, started)
        delay = retry_delay(number, config=config, retry_after=retry_after)
        too_long = failing_since is not None and finished - failing_since >= config.disable_after
        if delay is None or too_long:
            won = await settle(session, status="failed", next_attempt_at=None)
            if won and (too_long or not job.manual):
                await disable(session=session, endpoint_id=endpoint_id, reason=DISABLED_FAILING)
            return None, False
        run_at = finished + timedelta(seconds=delay)
        won = await settle(session, next_attempt_at=run_at)
        if won:
            await _next_job(session, job, run_at, attempt=number, manual=False)
        return delay, won

    async with sessions.begin() as session:
        delay, won = await act(session)
        if finish is not None:
            await finish(session)
    if delay is None:
        return
    logger.info(
        "webhook %s attempt %d failed (%s); %s",
        job.message_id,
        number,
        result.status_code or result.error_kind,
        f"retrying in {delay:.0f} s" if won else "handled elsewhere",
        extra={"message_id": job.message_id, "endpoint_id": str(endpoint_id)},
    )


@dataclass(frozen=True)
class Delivered:
    """A 2xx attempt to be recorded by `record_delivered`; `heal`: the endpoint was failing
    when the attempt started (its `failing_since` is then cleared, if the write wins)."""

    job: DeliveryJob
    heal: bool
    result: DeliveryResult
    started: datetime
    finished: datetime
    completion: Completion | None  # the delivery job, marked done with the record


# Settles every message of a batch of 2xx attempts and logs the attempts, in one statement
# (2xx results are only recorded here; `record_attempt` takes the others). A message still
# pending, or failed and sent again by hand, is settled, at the attempt count the job read. An
# attempt is logged only for a message that still exists: one deleted meanwhile would
# otherwise fail the whole batch.
_DELIVERED_MANY = text(
    """
WITH input AS (
    SELECT * FROM unnest(
        CAST(:message_ids AS varchar[]), CAST(:expected AS integer[]),
        CAST(:started AS timestamptz[]), CAST(:finished AS timestamptz[]),
        CAST(:duration_ms AS integer[]), CAST(:status_codes AS integer[]),
        CAST(:excerpts AS text[]), CAST(:errors AS text[]), CAST(:heal AS boolean[])
    ) AS i(message_id, expected, started, finished, duration_ms, status_code, excerpt, error,
           heal)
), logged AS (
    INSERT INTO webhook_attempts
        (message_id, attempt, started_at, duration_ms, status_code, response_excerpt, error)
    SELECT i.message_id, i.expected + 1, i.started, i.duration_ms, i.status_code, i.excerpt,
           i.error
    FROM input AS i JOIN webhook_messages AS m ON m.id = i.message_id
), settled AS (
    UPDATE webhook_messages AS m
    SET status = 'delivered', delivered_at = i.finished, next_attempt_at = NULL,
        attempts = m.attempts + 1, last_attempt_at = i.started
    FROM input AS i
    WHERE m.id = i.message_id AND m.attempts = i.expected
      AND m.status IN ('pending', 'failed')
    RETURNING m.endpoint_id, i.heal
)
UPDATE webhook_endpoints AS e SET failing_since = NULL
FROM settled AS s
WHERE e.id = s.endpoint_id AND s.heal AND e.failing_since IS NOT NULL
"""
)


async def record_delivered(
    sessions: Sessions, items: Sequence[Delivered]
) -> list[Exception | None]:
    """Record the 2xx attempts `items` and mark their jobs done, in one transaction; return,
    per item, None or the error that kept it from being recorded."""
    try:
        async with sessions.begin() as session:
            connection = await session.connection()
            await connection.execute(
                _DELIVERED_MANY,
                {
                    "message_ids": [item.job.message_id for item in items],
                    "expected": [item.job.attempt for item in items],
                    "started": [item.started for item in items],
                    "finished": [item.finished for item in items],
                    "duration_ms": [item.result.duration_ms for item in items],
                    "status_codes": [item.result.status_code for item in items],
                    "excerpts": [item.result.response_excerpt or None for item in items],
                    "errors": [item.result.error for item in items],
                    "heal": [item.heal for item in items],
                },
            )
            completions = [item.completion for item in items if item.completion is not None]
            if completions:
                await Completion.mark_all_done(session, completions)
    except Exception as exc:
        if len(items) == 1:
            return [exc]
        logger.warning(
            "recording %d webhook deliveries together failed, recording each alone: %s",
            len(items),
            describe_failure(exc),
        )
        results: list[Exception | None] = []
        for item in items:
            results += await record_delivered(sessions, [item])
        return results
    return [None] * len(items)


async def postpone(
    *, sessions: Sessions, config: DeliveryConfig, job: DeliveryJob, delay: float, reason: str
) -> None:
    """Queue the job again in `delay` seconds, no attempt counted (`reason` is logged)."""
    run_at = config.clock() + timedelta(seconds=delay)
    async with sessions.begin() as session:
        won = await session.scalar(
            _claim(job).values(next_attempt_at=run_at).returning(WebhookMessage.id)
        )
        if won is not None:
            await _next_job(session, job, run_at, attempt=job.attempt, manual=job.manual)
    logger.debug(
        "webhook %s postponed %.1f s: %s",
        job.message_id,
        delay,
        reason,
        extra={"message_id": job.message_id},
    )


async def fail_for_good(
    *, sessions: Sessions, config: DeliveryConfig, job: DeliveryJob, runs: int, error: str
) -> None:
    """The message's delivery job failed for good after `runs` runs (it kept raising, timed
    out, or its worker died): fail the message, with an attempt saying so, for
    redeliver/recover."""
    # Only the kind of error: its text may quote internals (SQL, addresses) that are the
    # operators' business, in the worker's log, not the endpoint owner's.
    cause = error.split(":", 1)[0]
    times = f"{runs} time{'s' if runs != 1 else ''}"
    now = config.clock()
    async with sessions.begin() as session:
        # Unlike a delivery attempt, logged only if the message was still this job's.
        failed = await session.scalar(
            _claim(job)
            .values(
                status="failed",
                attempts=WebhookMessage.attempts + 1,
                last_attempt_at=now,
                next_attempt_at=None,
            )
            .returning(WebhookMessage.id)
        )
        if failed is not None:
            session.add(
                WebhookAttempt(
                    message_id=job.message_id,
                    attempt=job.attempt + 1,
                    started_at=now,
                    duration_ms=0,
                    error=f"{POISON_ERROR} ({times}, {cause}); redeliver or recover it to "
                    "try again",
                )
            )
    if failed is not None:
        logger.error(
            "webhook %s failed: its delivery job failed for good: %s",
            job.message_id,
            error,
            extra={"message_id": job.message_id},
        )


async def fail_unsent(*, sessions: Sessions, job: DeliveryJob) -> None:
    """The endpoint is disabled: the message fails unsent (recoverable after enabling)."""
    async with sessions.begin() as session:
        await session.execute(_claim(job).values(status="failed", next_attempt_at=None))


async def _mark_failing(
    session: AsyncSession, endpoint_id: uuid.UUID, started: datetime
) -> datetime | None:
    """Start the endpoint's run of failures at `started` unless one is running; return its
    start (None if the endpoint is gone)."""
    # Health bookkeeping, not an edit by the owner: `updated_at` stays as it was.
    return await session.scalar(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id)
        .values(
            failing_since=func.coalesce(WebhookEndpoint.failing_since, started),
            updated_at=WebhookEndpoint.updated_at,
        )
        .returning(WebhookEndpoint.failing_since)
    )
