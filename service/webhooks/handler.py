"""The `webhook.deliver` job handler: one job delivers one message once, or postpones it.

`outbox.emit` queues the first job of each message; every later one (a retry, or a
postponement) is queued by `outcomes` in the transaction that records the outcome, so a message
has one live job whatever crashes when (a manual redelivery may add a second: the first to
attempt wins, the other finds itself stale). A job whose message has moved on (delivered,
failed, or attempted since) is stale and does nothing.

Before sending, the endpoint's gates (in-flight cap, circuit breaker: `gates`) and its rate
limit (`rate_limit`) may postpone the job. The deliveries running at once load their messages
and record their 2xx outcomes together (`batching`, `outcomes.record_delivered`).

The `webhook-id` header is the message id, the same on every attempt; `webhook-timestamp` is
the time of the attempt, and the body is the event as stored (identical on every try).
Per-endpoint ordering is not promised (retries and postponements reorder messages): receivers
de-duplicate on `webhook-id` and order by the event `timestamp`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, cast
from urllib.parse import urlsplit

from sqlalchemy import Row, String, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.infra import metrics, tracing
from service.infra.address_policy import AddressPolicy
from service.infra.secret_box import CANNOT_DECRYPT, SecretBox, UnreadableSecret
from service.infra.settings import Settings
from service.jobs import JobContext, PermanentJobError
from service.models import WebhookEndpoint, WebhookEvent, WebhookMessage
from service.webhooks import http as webhook_http
from service.webhooks import outcomes
from service.webhooks.batching import Batcher, Batchers
from service.webhooks.config import DeliveryConfig
from service.webhooks.gates import EndpointGates, Postponed
from service.webhooks.outcomes import DeliveryJob
from service.webhooks.rate_limit import RateLimiter
from service.webhooks.signing import InvalidWebhookSecret, build_headers, build_payload

logger = logging.getLogger("conduit.webhooks")


@dataclass(frozen=True)
class _Target:
    """What a delivery needs of its message, endpoint and event (one query, no ORM objects)."""

    status: str
    attempts: int
    endpoint_id: uuid.UUID
    url: str
    enabled: bool
    rate_limit: int | None
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None
    failing_since: datetime | None
    event_type: str
    data: dict[str, Any]
    event_created_at: datetime


_LOAD = (
    select(
        WebhookMessage.id.label("message_id"),
        WebhookMessage.status,
        WebhookMessage.attempts,
        WebhookEndpoint.id.label("endpoint_id"),
        WebhookEndpoint.url,
        WebhookEndpoint.enabled,
        WebhookEndpoint.rate_limit,
        WebhookEndpoint.secret,
        WebhookEndpoint.previous_secret,
        WebhookEndpoint.previous_secret_expires_at,
        WebhookEndpoint.failing_since,
        WebhookEvent.type.label("event_type"),
        WebhookEvent.data,
        WebhookEvent.created_at.label("event_created_at"),
    )
    .join(WebhookEndpoint, WebhookEndpoint.id == WebhookMessage.endpoint_id)
    .join(WebhookEvent, WebhookEvent.id == WebhookMessage.event_id)
    .where(WebhookMessage.id == any_(bindparam("ids", type_=ARRAY(String))))
)

Sessions = async_sessionmaker[AsyncSession]


async def _load(sessions: Sessions, message_ids: Sequence[str]) -> list[Row[Any] | None]:
    """The delivery rows of `message_ids` (None for a message deleted with its endpoint), in
    one query for a whole batch of deliveries."""
    async with sessions() as session:
        # One read, nothing to keep consistent: no transaction (saves BEGIN and ROLLBACK
        # round trips); Core: rows, no ORM bookkeeping.
        connection = await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        result = await connection.execute(_LOAD, {"ids": list(set(message_ids))})
        rows = cast("Sequence[Row[Any]]", result.all())
    found = {row.message_id: row for row in rows}
    return [found.get(message_id) for message_id in message_ids]


def _count(result: webhook_http.DeliveryResult) -> None:
    """Record an attempt's outcome and duration in the metrics."""
    if result.ok:
        outcome = "delivered"
    elif result.status_code == 410:
        outcome = "gone"
    elif result.status_code is not None:
        outcome = "http_error"
    else:
        outcome = "no_answer"
    metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
    metrics.WEBHOOK_LATENCY.observe(result.duration_ms / 1000)


def _span_attributes(job: DeliveryJob, target: _Target) -> dict[str, str]:
    """The delivery span's attributes; not the URL: its query may hold the receiver's token."""
    return {
        "http.request.method": "POST",
        "server.address": urlsplit(target.url).hostname or "",
        "conduit.webhook.message_id": job.message_id,
        "conduit.webhook.endpoint_id": str(target.endpoint_id),
    }


class DeliveryHandler:
    """The `webhook.deliver` job handler (see the module docstring); its gates and rate
    limiter hold this process's per-endpoint state."""

    def __init__(
        self,
        config: DeliveryConfig | None = None,
        *,
        gates: EndpointGates | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.config = config or DeliveryConfig()
        self.gates = gates or EndpointGates(self.config)
        self.limiter = limiter or RateLimiter()
        # What `settings` derive per call (the secret box, the address policy), kept for the
        # settings object they came from: deriving them cost more than signing a delivery.
        self._derived: tuple[Settings, SecretBox, AddressPolicy] | None = None
        size, linger = self.config.batch_size, self.config.batch_linger
        self._loads: Batchers[Sessions, str, Row[Any] | None] = Batchers(
            lambda sessions: Batcher(partial(_load, sessions), max_size=size, linger=linger)
        )
        self._records: Batchers[Sessions, outcomes.Delivered, Exception | None] = Batchers(
            lambda sessions: Batcher(
                partial(outcomes.record_delivered, sessions), max_size=size, linger=linger
            )
        )

    async def __call__(self, payload: dict[str, Any], context: JobContext) -> None:
        """Make one attempt to deliver the job's message, or postpone it, or skip it."""
        job = DeliveryJob.parse(payload)
        row = await self._loads.get(context.sessionmaker).submit(job.message_id)
        if row is None:
            return  # deleted with its endpoint
        fields = row._asdict()
        del fields["message_id"]
        target = _Target(**fields)
        if target.status != "pending" or target.attempts != job.attempt:
            return  # handled already: this job is stale
        if not target.enabled:
            await outcomes.fail_unsent(sessions=context.sessionmaker, job=job)
            return
        settings = context.settings
        admitted = await self.gates.admit(
            target.endpoint_id,
            cap=settings.webhook_endpoint_concurrency,
            failing=target.failing_since is not None,
            manual=job.manual,
        )
        if isinstance(admitted, Postponed):
            await self._postpone(context, job, admitted.delay, admitted.reason)
            return
        ticket = admitted
        try:
            if target.rate_limit:
                wait = await self.limiter.reserve(
                    target.endpoint_id,
                    rate=target.rate_limit,
                    max_wait=self.config.max_rate_wait,
                    settings=settings,
                )
                if wait < 0:
                    ticket.release(failed=None)
                    await self._postpone(context, job, -wait, "rate limit")
                    return
                await asyncio.sleep(wait)
            started = self.config.clock()
            result = await self._send(settings, job, target, started)
        except BaseException:
            ticket.release(failed=None)
            raise
        _count(result)
        retry_after = (
            float(result.retry_after)
            if result.retry_after is not None and result.status_code in (429, 503)
            else None
        )
        ticket.release(failed=not result.ok, retry_after=retry_after)
        if result.ok:
            delivered = outcomes.Delivered(
                job=job,
                heal=target.failing_since is not None,
                result=result,
                started=started,
                finished=self.config.clock(),
                completion=context.completion,  # the job is done when the attempt is recorded
            )
            error = await self._records.get(context.sessionmaker).submit(delivered)
            if error is not None:
                raise error
            return
        await outcomes.record_attempt(
            sessions=context.sessionmaker,
            config=self.config,
            job=job,
            endpoint_id=target.endpoint_id,
            failing_since=target.failing_since,
            result=result,
            started=started,
            retry_after=retry_after,
            finish=context.mark_done,  # the job is done when the attempt is recorded
        )

    async def job_failed(self, payload: dict[str, Any], context: JobContext, error: str) -> None:
        """The message's delivery job failed for good (it kept raising, timed out, or its
        worker died): fail the message, with an attempt saying so, for redeliver/recover."""
        try:
            job = DeliveryJob.parse(payload)
        except PermanentJobError:
            return  # no message to speak of
        await outcomes.fail_for_good(
            sessions=context.sessionmaker,
            config=self.config,
            job=job,
            runs=context.attempt,
            error=error,
        )

    async def _postpone(
        self, context: JobContext, job: DeliveryJob, delay: float, reason: str
    ) -> None:
        metrics.WEBHOOK_DELIVERIES.labels("postponed").inc()
        await outcomes.postpone(
            sessions=context.sessionmaker, config=self.config, job=job, delay=delay, reason=reason
        )

    def _box_and_policy(self, settings: Settings) -> tuple[SecretBox, AddressPolicy]:
        derived = self._derived
        if derived is None or derived[0] is not settings:
            derived = self._derived = (
                settings,
                settings.webhook_secret_box,
                settings.webhook_policy,
            )
        return derived[1], derived[2]

    async def _send(
        self, settings: Settings, job: DeliveryJob, target: _Target, started: datetime
    ) -> webhook_http.DeliveryResult:
        box, policy = self._box_and_policy(settings)
        try:
            secrets = [box.open(target.secret)]
            expires = target.previous_secret_expires_at
            if target.previous_secret and expires is not None and expires > started:
                secrets.append(box.open(target.previous_secret))
        except UnreadableSecret:
            logger.error("webhook %s: %s", target.endpoint_id, CANNOT_DECRYPT)
            return webhook_http.DeliveryResult(
                status_code=None, duration_ms=0, error=CANNOT_DECRYPT
            )
        body = build_payload(
            event_type=target.event_type, timestamp=target.event_created_at, data=target.data
        )
        try:
            headers = build_headers(
                secrets=secrets,
                msg_id=job.message_id,
                body=body,
                timestamp=int(started.timestamp()),
            )
        except InvalidWebhookSecret:
            return webhook_http.DeliveryResult(
                status_code=None, duration_ms=0, error="the endpoint's signing secret is invalid"
            )
        attributes = _span_attributes(job, target) if tracing.enabled() else {}
        with tracing.outgoing("webhook POST", attributes) as outgoing:
            result = await webhook_http.deliver(
                url=target.url,
                headers={**headers, **outgoing.headers},
                body=body,
                policy=policy,
                timeout=settings.webhook_timeout_seconds,
                max_response_bytes=settings.webhook_max_response_bytes,
                excerpt_bytes=settings.webhook_response_excerpt_bytes,
            )
            outgoing.answered(result.status_code, result.error_kind)
        return result
