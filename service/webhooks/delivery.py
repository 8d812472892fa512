"""Delivering webhook messages: the `webhook.deliver` job handler, retries, and endpoint health.

One job delivers one message once. `outbox.emit` enqueues the first job of each message;
this handler enqueues every later one (a retry, or a postponement) in the transaction that
records the outcome, so a message has one live job whatever crashes when (a manual
redelivery may add a second: the first to attempt wins, the other finds itself stale).

Jobs and messages:
- A job's payload is `{"messageId", "attempt", "manual"}`; `attempt` (default 0) is the
  number of attempts the message had when the job was queued. A job whose message has moved
  on (delivered, failed, or attempted since) is stale and does nothing: after a crash between
  our commit and the worker marking the job done, the re-run job cannot fork a second chain.
  The outcome is recorded with `... WHERE attempts = <expected>`, so of two jobs racing for
  one message only one schedules what comes next.
- The `webhook-id` header is the message id, the same on every attempt; `webhook-timestamp`
  is the time of the attempt, and the body is the event as stored (identical on every try).
- Every attempt (an HTTP request, or its failure to happen: refused address, DNS, timeout)
  is written to `webhook_attempts`: time, status, duration, the first bytes of the answer,
  and the error. Never the headers (signatures), the secret, or the URL.

Outcomes:
- 2xx: the message is delivered and the endpoint's `failing_since` cleared.
- 410 Gone: the endpoint is disabled (`disabled_reason` "gone") and the message failed.
- Anything else (other statuses, 3xx too: redirects are not followed, or no answer): the next
  attempt is scheduled after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h and 24 h (+-10 %
  jitter; ten attempts over about three days); a 429 or 503 with `Retry-After` waits at least
  that long (at most 24 h). `failing_since` is set at the first failure of a run. When the last
  retry fails, or the endpoint has been failing for 5 days, the endpoint is disabled
  ("failing") and its owner mailed (`webhook.disabled_mail` job, same transaction).
- Disabling an endpoint marks its pending messages failed, a job that finds its endpoint
  disabled marks its message failed, and events raised while it is disabled get a failed
  message (`outbox.emit`): nothing is silently dropped, and "recover since T" (`redeliver`)
  re-sends them once the endpoint is enabled again.
- A delivery job that fails for good without recording an outcome (the job itself kept
  raising: a bug, or data it cannot handle; or it timed out, or its worker died on the last
  try) fails its message with an attempt saying so (`job_failed`, called by the worker), so
  the message is visible as failed and `redeliver` can act on it.
- `redeliver` (manual redelivery, recovery) queues one more attempt of a message. If that
  attempt fails and the message's schedule is already used up, the message fails again
  without disabling the endpoint.

One slow or dead endpoint never delays others (per worker process, in memory):
- In-flight cap: at most `WEBHOOK_ENDPOINT_CONCURRENCY` attempts to one endpoint at once.
  A job over the cap waits in place for up to a second when the endpoint is fast and few jobs
  wait already (a burst to a healthy endpoint drains without churn); otherwise it is postponed
  (a new job, no attempt counted) to a slot estimated from the endpoint's recent attempt
  durations, so a backlog comes back at the pace the endpoint takes it, not all at once. So
  one endpoint holds at most twice its cap of a worker's delivery slots, and only briefly more
  than its cap. Deliveries run in worker slots of their own (`kind_concurrency` in
  `service.job_registry`): they never hold up mail or other jobs either.
- Circuit breaker: each failed attempt opens the endpoint's circuit for a cool-down (5 s,
  30 s, 2 min, then 5 min per consecutive failure; longer if the receiver sent Retry-After).
  While open, no attempt is made: jobs (first attempts and retries alike) are postponed
  without counting an attempt, instead of each waiting out a 15 s timeout. After the
  cool-down, or whenever the endpoint's `failing_since` is set (another process saw it fail),
  the circuit is half-open: one trial attempt at a time; a success closes it. Manual
  redeliveries skip the cool-down but still go one at a time while half-open.
- `rate_limit` (deliveries per second): attempts are spaced `1/rate` apart, through Redis
  (shared by every worker) when `REDIS_URL` is set, per process otherwise or while Redis is
  unreachable. A delivery waits for its slot when it is at most a few seconds away (holding
  one of the endpoint's in-flight places), and is postponed otherwise.
A postponed message keeps its place in the retry schedule: postponing never uses up retries.
Per-endpoint ordering is not promised (retries and postponements reorder messages): receivers
de-duplicate on `webhook-id` and order by the event `timestamp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import Update, bindparam, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.infra.secret_box import CANNOT_DECRYPT, UnreadableSecret
from service.infra.settings import Settings
from service.jobs.queue import CHANNEL, enqueue
from service.jobs.worker import JobContext, PermanentJobError
from service.models import WebhookAttempt, WebhookEndpoint, WebhookEvent, WebhookMessage
from service.webhooks import http as webhook_http
from service.webhooks.outbox import DELIVER_JOB, DELIVERY_JOB_ATTEMPTS
from service.webhooks.signing import InvalidWebhookSecret, build_headers, build_payload

logger = logging.getLogger("conduit.webhooks")

DISABLED_MAIL_JOB = "webhook.disabled_mail"
# Seconds before each retry: ten attempts over about three days.
RETRY_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
DISABLE_AFTER = timedelta(days=5)
DISABLED_GONE = "gone"
DISABLED_FAILING = "failing"
# Start of the attempt error of a message whose delivery job itself kept failing.
POISON_ERROR = "not sent: the delivery failed inside the service"

_random = random.SystemRandom()


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class DeliveryConfig:
    """Timings of retries, the circuit breaker and postponements (tests shrink them)."""

    schedule: tuple[float, ...] = RETRY_SCHEDULE
    jitter: float = 0.1  # each retry delay is randomised by +- this fraction
    retry_after_cap: float = 86400.0  # a receiver's Retry-After is honoured up to this
    disable_after: timedelta = DISABLE_AFTER  # continuous failure that disables an endpoint
    breaker_cooldowns: tuple[float, ...] = (5.0, 30.0, 120.0, 300.0)
    busy_delay: float = 1.0  # shortest postponement when an endpoint is at its in-flight cap
    max_queue_wait: float = 1.0  # at the cap, wait this long in the job for a place at most
    max_postpone: float = 300.0
    max_rate_wait: float = 5.0  # wait in the job for a rate-limit slot at most this long
    clock: Callable[[], datetime] = _utcnow


def retry_delay(
    attempt: int, *, config: DeliveryConfig, retry_after: float | None = None
) -> float | None:
    """Seconds to wait after failed attempt number `attempt` (1-based); None: no retry left."""
    if attempt < 1 or attempt > len(config.schedule):
        return None
    base = config.schedule[attempt - 1]
    delay = base * (1 + _random.uniform(-config.jitter, config.jitter))
    if retry_after is not None:
        delay = max(delay, min(retry_after, max(base, config.retry_after_cap)))
    return delay


def _jittered(seconds: float, fraction: float = 0.1) -> float:
    return max(0.0, seconds * (1 + _random.uniform(-fraction, fraction)))


# -- endpoint gates: in-flight cap and circuit breaker (per process) ------------------------


@dataclass
class _EndpointState:
    in_flight: int = 0
    failures: int = 0  # consecutive failed attempts seen by this process
    open_until: float = 0.0  # monotonic: no attempt before this
    probing: bool = False  # a half-open trial attempt is in flight
    horizon: float = 0.0  # monotonic: the last slot given to a job postponed for the cap
    duration: float | None = None  # moving average of an attempt's seconds
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    touched: float = field(default_factory=time.monotonic)

    def wake(self, *, everyone: bool = False) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if not everyone:
                    return


@dataclass(frozen=True)
class Postponed:
    """Not now: try again in `delay` seconds (no attempt counted)."""

    delay: float
    reason: str


class Ticket:
    """Permission for one attempt; `release` it with the outcome (None: no request was made)."""

    def __init__(self, gates: EndpointGates, key: uuid.UUID, *, probe: bool) -> None:
        self._gates = gates
        self._key = key
        self.probe = probe
        self._admitted = time.monotonic()
        self._released = False

    def release(self, *, failed: bool | None, retry_after: float | None = None) -> None:
        """Give the place back; `failed` feeds the breaker (None: nothing was attempted)."""
        if self._released:
            return
        self._released = True
        self._gates.release(
            self._key,
            probe=self.probe,
            failed=failed,
            retry_after=retry_after,
            seconds=time.monotonic() - self._admitted,
        )


class EndpointGates:
    """Per-endpoint in-flight counts and circuit breakers of this process (one event loop)."""

    MAX_TRACKED = 10_000

    def __init__(self, config: DeliveryConfig | None = None) -> None:
        self.config = config or DeliveryConfig()
        self._states: dict[uuid.UUID, _EndpointState] = {}

    def _state(self, key: uuid.UUID, now: float) -> _EndpointState:
        state = self._states.get(key)
        if state is None:
            if len(self._states) >= self.MAX_TRACKED:
                self._forget_idle(now)
            state = self._states[key] = _EndpointState()
        state.touched = now
        return state

    def _forget_idle(self, now: float) -> None:
        for key, state in list(self._states.items()):
            idle = not state.in_flight and state.open_until < now and state.horizon < now
            idle = idle and not state.waiters
            if idle and now - state.touched > 60:
                del self._states[key]

    def in_flight(self, key: uuid.UUID) -> int:
        """Attempts to the endpoint running in this process now."""
        state = self._states.get(key)
        return state.in_flight if state else 0

    async def admit(
        self, key: uuid.UUID, *, cap: int, failing: bool, manual: bool = False
    ) -> Ticket | Postponed:
        """A ticket for one attempt to endpoint `key`, or how long to wait instead.

        At the cap, a job waits here for a place only if few others do and the expected wait
        is short (a fast endpoint with a burst); otherwise it is postponed.
        """
        deadline: float | None = None
        while True:
            now = time.monotonic()
            state = self._state(key, now)
            closed = self._breaker(state, now, failing=failing, manual=manual)
            if closed is not None:
                return closed
            if state.in_flight < cap:
                half_open = failing or state.failures > 0
                state.in_flight += 1
                state.probing = state.probing or half_open
                return Ticket(self, key, probe=half_open)
            if deadline is None:
                average = state.duration if state.duration is not None else 0.0
                expected = average * (len(state.waiters) + 1) / cap
                if len(state.waiters) >= cap or expected > self.config.max_queue_wait:
                    return self._postpone_for_cap(state, now, cap)
                deadline = now + self.config.max_queue_wait
            if now >= deadline:
                # No place freed up in time: the endpoint is slower than that, whatever the
                # average says (its first attempts may not have finished yet).
                state.duration = max(state.duration or 0.0, self.config.max_queue_wait * cap)
                return self._postpone_for_cap(state, now, cap)
            waiter = asyncio.get_running_loop().create_future()
            state.waiters.append(waiter)
            try:
                await asyncio.wait({waiter}, timeout=deadline - now)
            finally:
                if not waiter.done():
                    waiter.cancel()
                with contextlib.suppress(ValueError):
                    state.waiters.remove(waiter)

    def _breaker(
        self, state: _EndpointState, now: float, *, failing: bool, manual: bool
    ) -> Postponed | None:
        if state.open_until > now and not manual:
            return Postponed(_jittered(state.open_until - now), "circuit open")
        if (failing or state.failures > 0) and state.probing:
            cooldowns = self.config.breaker_cooldowns
            wait = cooldowns[0] if cooldowns else self.config.busy_delay
            return Postponed(
                _jittered(max(wait, self.config.busy_delay)),
                "circuit half-open, a trial attempt is running",
            )
        return None

    def _postpone_for_cap(self, state: _EndpointState, now: float, cap: int) -> Postponed:
        # Successive slots a place's worth of time apart: a backlog comes back at the pace the
        # endpoint has been taking deliveries, not all at once.
        spacing = (state.duration or self.config.busy_delay) / cap
        slot = max(now + self.config.busy_delay, state.horizon + spacing)
        state.horizon = min(slot, now + self.config.max_postpone)
        return Postponed(_jittered(state.horizon - now), "endpoint at its in-flight cap")

    def release(
        self,
        key: uuid.UUID,
        *,
        probe: bool,
        failed: bool | None,
        retry_after: float | None,
        seconds: float,
    ) -> None:
        """Record the end of an admitted attempt (see `Ticket.release`)."""
        now = time.monotonic()
        state = self._state(key, now)
        state.in_flight = max(0, state.in_flight - 1)
        if probe:
            state.probing = False
        # A failure may open the circuit: every waiter must look again (and be postponed).
        state.wake(everyone=bool(failed) or probe)
        if failed is None:
            return
        average = state.duration
        state.duration = seconds if average is None else 0.8 * average + 0.2 * seconds
        if not failed:
            state.failures = 0
            state.open_until = 0.0
            return
        state.failures += 1
        cooldowns = self.config.breaker_cooldowns
        cooldown = cooldowns[min(state.failures, len(cooldowns)) - 1] if cooldowns else 0.0
        if retry_after is not None:
            cooldown = max(cooldown, min(retry_after, self.config.retry_after_cap))
        state.open_until = max(state.open_until, now + cooldown)


# -- rate limits ---------------------------------------------------------------------------

# GCRA with burst 1 (attempts spaced `interval` apart) that reserves the next slot when it is
# at most `max_wait` away. KEYS: the bucket. ARGV: interval ms, max wait ms.
# Returns the ms to wait for the reserved slot, or -(ms until a slot) when none was reserved.
_RESERVE_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local wait = tat - now
if wait > tonumber(ARGV[2]) then return -wait end
redis.call('SET', KEYS[1], tat + interval, 'PX', wait + interval + 1000)
return wait
"""
RATE_KEY_PREFIX = "whrl:"
REDIS_RETRY_SECONDS = 5.0


class RateLimiter:
    """Spaces deliveries to rate-limited endpoints: shared through Redis when REDIS_URL is set,
    per process otherwise and while Redis does not answer."""

    def __init__(self) -> None:
        self._memory: dict[uuid.UUID, float] = {}
        self._redis: tuple[asyncio.AbstractEventLoop, str, Redis] | None = None
        self._redis_down_until = 0.0

    def _client(self, settings: Settings) -> Redis | None:
        url = settings.redis_url
        if url is None or time.monotonic() < self._redis_down_until:
            return None
        loop = asyncio.get_running_loop()
        if self._redis is None or self._redis[0] is not loop or self._redis[1] != url:
            timeout = settings.redis_socket_timeout
            client = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
            self._redis = (loop, url, client)
        return self._redis[2]

    async def reserve(
        self, key: uuid.UUID, *, rate: int, max_wait: float, settings: Settings
    ) -> float:
        """Reserve the endpoint's next slot if it is at most `max_wait` s away and return the
        seconds until it; return minus the seconds until a slot if it is further."""
        interval = 1.0 / rate
        client = self._client(settings)
        if client is not None:
            try:
                reply = await client.eval(
                    _RESERVE_SCRIPT,
                    1,
                    f"{RATE_KEY_PREFIX}{key}",
                    max(1, round(interval * 1000)),
                    round(max_wait * 1000),
                )
                return int(reply) / 1000
            except (RedisError, OSError) as exc:
                self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS
                logger.warning(
                    "webhook rate limits are per process while Redis does not answer: %s",
                    type(exc).__name__,
                )
        now = time.monotonic()
        slot = max(self._memory.get(key, now), now)
        if slot - now > max_wait:
            return -(slot - now)
        self._memory[key] = slot + interval
        if len(self._memory) > EndpointGates.MAX_TRACKED:
            self._memory = {k: v for k, v in self._memory.items() if v > now}
        return slot - now

    async def aclose(self) -> None:
        """Close the Redis client (if one was opened on the running loop)."""
        if self._redis is not None and self._redis[0] is asyncio.get_running_loop():
            await self._redis[2].aclose()
        self._redis = None


# -- the job handler -----------------------------------------------------------------------


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
    .where(WebhookMessage.id == bindparam("id"))
)


@dataclass(frozen=True)
class _Job:
    message_id: str
    attempt: int  # attempts the message had when this job was queued
    manual: bool


def _parse(payload: dict[str, Any]) -> _Job:
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
    return _Job(message_id=message_id, attempt=attempt, manual=manual)


def _payload(job: _Job, *, attempt: int, manual: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {"messageId": job.message_id, "attempt": attempt}
    if manual:
        payload["manual"] = True
    return payload


def _attempt_error(result: webhook_http.DeliveryResult) -> str | None:
    if result.error is not None:
        return result.error
    status = result.status_code
    if status is not None and 300 <= status < 400:
        return "redirects are not followed"
    return None


class DeliveryHandler:
    """The `webhook.deliver` job handler (see the module docstring)."""

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

    async def __call__(self, payload: dict[str, Any], context: JobContext) -> None:
        """Make one attempt to deliver the job's message, or postpone it, or skip it."""
        job = _parse(payload)
        async with context.sessionmaker() as session:
            row = (await session.execute(_LOAD, {"id": job.message_id})).one_or_none()
        if row is None:
            return  # deleted with its endpoint
        target = _Target(**row._asdict())
        if target.status != "pending" or target.attempts != job.attempt:
            return  # handled already: this job is stale
        if not target.enabled:
            await self._fail_unsent(context, job)
            return
        settings = context.settings
        admitted = await self.gates.admit(
            target.endpoint_id,
            cap=settings.webhook_endpoint_concurrency,
            failing=target.failing_since is not None,
            manual=job.manual,
        )
        if isinstance(admitted, Postponed):
            await self._postpone(context, job, admitted)
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
                    await self._postpone(context, job, Postponed(-wait, "rate limit"))
                    return
                await asyncio.sleep(wait)
            started = self.config.clock()
            result = await self._send(settings, job, target, started)
        except BaseException:
            ticket.release(failed=None)
            raise
        retry_after = (
            float(result.retry_after)
            if result.retry_after is not None and result.status_code in (429, 503)
            else None
        )
        ticket.release(failed=not result.ok, retry_after=retry_after)
        await self._record(context, job, target, result, started, retry_after)

    async def _send(
        self, settings: Settings, job: _Job, target: _Target, started: datetime
    ) -> webhook_http.DeliveryResult:
        box = settings.webhook_secret_box
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
        return await webhook_http.deliver(
            url=target.url,
            headers=headers,
            body=body,
            policy=settings.webhook_policy,
            timeout=settings.webhook_timeout_seconds,
            max_response_bytes=settings.webhook_max_response_bytes,
            excerpt_bytes=settings.webhook_response_excerpt_bytes,
        )

    def _claim_message(self, job: _Job, *, ok: bool = False) -> Update:
        """UPDATE of the job's message, only while it is still this job's to record."""
        statuses = ("pending", "failed") if ok else ("pending",)
        return update(WebhookMessage).where(
            WebhookMessage.id == job.message_id,
            WebhookMessage.attempts == job.attempt,
            WebhookMessage.status.in_(statuses),
        )

    async def _record(
        self,
        context: JobContext,
        job: _Job,
        target: _Target,
        result: webhook_http.DeliveryResult,
        started: datetime,
        retry_after: float | None,
    ) -> None:
        number = job.attempt + 1
        finished = self.config.clock()
        # The attempt is logged by a CTE of the message's UPDATE: one statement, always run.
        logged = (
            insert(WebhookAttempt)
            .values(
                message_id=job.message_id,
                attempt=number,
                started_at=started,
                duration_ms=result.duration_ms,
                status_code=result.status_code,
                response_excerpt=result.response_excerpt or None,
                error=_attempt_error(result),
            )
            .returning(WebhookAttempt.id)
            .cte("attempt")
        )

        async def settle(session: AsyncSession, ok: bool = False, **values: Any) -> bool:
            statement = (
                self._claim_message(job, ok=ok)
                .values(attempts=WebhookMessage.attempts + 1, last_attempt_at=started, **values)
                .returning(WebhookMessage.id)
                .add_cte(logged)
            )
            return await session.scalar(statement) is not None

        endpoint_id = target.endpoint_id
        async with context.sessionmaker.begin() as session:
            if result.ok:
                delivered = {"status": "delivered", "delivered_at": finished}
                won = await settle(session, ok=True, next_attempt_at=None, **delivered)
                if won and target.failing_since is not None:
                    await session.execute(
                        update(WebhookEndpoint)
                        .where(
                            WebhookEndpoint.id == endpoint_id,
                            WebhookEndpoint.failing_since.is_not(None),
                        )
                        .values(failing_since=None, updated_at=WebhookEndpoint.updated_at)
                    )
                return
            if result.status_code == 410:
                if await settle(session, status="failed", next_attempt_at=None):
                    await _disable(session, endpoint_id, DISABLED_GONE)
                return
            failing_since = target.failing_since or await _mark_failing(
                session, endpoint_id, started
            )
            delay = retry_delay(number, config=self.config, retry_after=retry_after)
            too_long = (
                failing_since is not None and finished - failing_since >= self.config.disable_after
            )
            if delay is None or too_long:
                won = await settle(session, status="failed", next_attempt_at=None)
                if won and (too_long or not job.manual):
                    await _disable(session, endpoint_id, DISABLED_FAILING)
                return
            run_at = finished + timedelta(seconds=delay)
            won = await settle(session, next_attempt_at=run_at)
            if won:
                await enqueue(
                    session=session,
                    kind=DELIVER_JOB,
                    payload=_payload(job, attempt=number, manual=False),
                    run_at=run_at,
                    max_attempts=DELIVERY_JOB_ATTEMPTS,
                )
        logger.info(
            "webhook %s attempt %d failed (%s); %s",
            job.message_id,
            number,
            result.status_code or result.error_kind,
            f"retrying in {delay:.0f} s" if won else "handled elsewhere",
            extra={"message_id": job.message_id, "endpoint_id": str(endpoint_id)},
        )

    async def _postpone(self, context: JobContext, job: _Job, postponed: Postponed) -> None:
        run_at = self.config.clock() + timedelta(seconds=postponed.delay)
        async with context.sessionmaker.begin() as session:
            won = await session.scalar(
                self._claim_message(job).values(next_attempt_at=run_at).returning(WebhookMessage.id)
            )
            if won is not None:
                await enqueue(
                    session=session,
                    kind=DELIVER_JOB,
                    payload=_payload(job, attempt=job.attempt, manual=job.manual),
                    run_at=run_at,
                    max_attempts=DELIVERY_JOB_ATTEMPTS,
                )
        logger.debug(
            "webhook %s postponed %.1f s: %s",
            job.message_id,
            postponed.delay,
            postponed.reason,
            extra={"message_id": job.message_id},
        )

    async def job_failed(self, payload: dict[str, Any], context: JobContext, error: str) -> None:
        """The message's delivery job failed for good (it kept raising, timed out, or its
        worker died): fail the message, with an attempt saying so, for redeliver/recover."""
        try:
            job = _parse(payload)
        except PermanentJobError:
            return  # no message to speak of
        # Only the kind of error: its text may quote internals (SQL, addresses) that are the
        # operators' business, in the worker's log, not the endpoint owner's.
        cause = error.split(":", 1)[0]
        runs = f"{context.attempt} time{'s' if context.attempt != 1 else ''}"
        now = self.config.clock()
        async with context.sessionmaker.begin() as session:
            # Unlike a delivery attempt, logged only if the message was still this job's.
            failed = await session.scalar(
                self._claim_message(job)
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
                        error=f"{POISON_ERROR} ({runs}, {cause}); redeliver or recover it to "
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

    async def _fail_unsent(self, context: JobContext, job: _Job) -> None:
        """The endpoint is disabled: the message fails unsent (recoverable after enabling)."""
        async with context.sessionmaker.begin() as session:
            await session.execute(
                self._claim_message(job).values(status="failed", next_attempt_at=None)
            )


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


async def _disable(session: AsyncSession, endpoint_id: uuid.UUID, reason: str) -> None:
    """Disable an enabled endpoint, fail its pending messages and queue the owner's mail."""
    disabled = await session.scalar(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.enabled.is_(True))
        .values(enabled=False, disabled_reason=reason)
        .returning(WebhookEndpoint.id)
    )
    if disabled is None:
        return  # disabled meanwhile: its owner was told then
    await session.execute(
        update(WebhookMessage)
        .where(WebhookMessage.endpoint_id == endpoint_id, WebhookMessage.status == "pending")
        .values(status="failed", next_attempt_at=None)
    )
    await enqueue(
        session=session,
        kind=DISABLED_MAIL_JOB,
        payload={"endpointId": str(endpoint_id), "reason": reason},
    )
    logger.warning(
        "webhook endpoint %s disabled: %s",
        endpoint_id,
        reason,
        extra={"endpoint_id": str(endpoint_id)},
    )


# Sets the messages pending and queues one job each, in one statement.
_REDELIVER = text(
    """
    WITH messages AS (
        UPDATE webhook_messages SET status = 'pending', next_attempt_at = now()
        WHERE id = ANY(CAST(:ids AS varchar[]))
        RETURNING id, attempts
    ), jobs AS (
        INSERT INTO jobs (kind, payload, status, attempts, max_attempts)
        SELECT :job,
               jsonb_build_object('messageId', id, 'attempt', attempts, 'manual', true),
               'pending', 0, :max_attempts
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
                {"ids": ids, "job": DELIVER_JOB, "max_attempts": DELIVERY_JOB_ATTEMPTS},
            )
        ).scalar_one()
    )
    if queued:
        await session.execute(
            text("SELECT pg_notify(:channel, :kind)"), {"channel": CHANNEL, "kind": DELIVER_JOB}
        )
    return queued


# -- the owner's mail ----------------------------------------------------------------------

DISABLED_MAIL_SUBJECT = "Your Conduit webhook endpoint was disabled"


def display_url(url: str) -> str:
    """The URL without credentials, query or fragment (they may hold the receiver's token)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def disabled_mail_text(*, endpoint: WebhookEndpoint, retention_days: int) -> str:
    """The body of the mail telling an owner that their endpoint was disabled; the delivery
    log keeps messages `retention_days` days."""
    if endpoint.disabled_reason == DISABLED_GONE:
        why = "it answered 410 Gone, which tells us to stop sending."
    else:
        since = endpoint.failing_since
        started = f" since {since:%Y-%m-%d %H:%M} UTC" if since is not None else ""
        why = f"deliveries to it kept failing{started}, after every retry."
    described = f" ({endpoint.description})" if endpoint.description else ""
    return (
        f"Your webhook endpoint {endpoint.id}{described}\n"
        f"at {display_url(endpoint.url)}\n"
        f"was disabled because {why}\n\n"
        "No events are sent to it while it is disabled; the messages it did not receive, and "
        "those of events that happen meanwhile, are kept as failed in its delivery log for "
        f"{retention_days} days.\n\n"
        "Once the receiver works again, enable the endpoint through the API, then recover the "
        "failed messages since the time it stopped receiving them: they are sent again, with "
        "the same webhook-id as before.\n"
    )
