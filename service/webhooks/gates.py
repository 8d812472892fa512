"""Per-endpoint gates of one worker process: an in-flight cap and a circuit breaker, so that
one slow or dead endpoint never delays deliveries to others (in memory, one event loop).

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
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from service.webhooks.config import DeliveryConfig, jittered

# Endpoints whose state one process keeps at most (idle ones are forgotten beyond it).
MAX_TRACKED = 10_000


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

    def __init__(self, config: DeliveryConfig | None = None) -> None:
        self.config = config or DeliveryConfig()
        self._states: dict[uuid.UUID, _EndpointState] = {}

    def _state(self, key: uuid.UUID, now: float) -> _EndpointState:
        state = self._states.get(key)
        if state is None:
            if len(self._states) >= MAX_TRACKED:
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
            return Postponed(jittered(state.open_until - now), "circuit open")
        if (failing or state.failures > 0) and state.probing:
            cooldowns = self.config.breaker_cooldowns
            wait = cooldowns[0] if cooldowns else self.config.busy_delay
            return Postponed(
                jittered(max(wait, self.config.busy_delay)),
                "circuit half-open, a trial attempt is running",
            )
        return None

    def _postpone_for_cap(self, state: _EndpointState, now: float, cap: int) -> Postponed:
        # Successive slots a place's worth of time apart: a backlog comes back at the pace the
        # endpoint has been taking deliveries, not all at once.
        spacing = (state.duration or self.config.busy_delay) / cap
        slot = max(now + self.config.busy_delay, state.horizon + spacing)
        state.horizon = min(slot, now + self.config.max_postpone)
        return Postponed(jittered(state.horizon - now), "endpoint at its in-flight cap")

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
