"""Timings of webhook delivery: the retry schedule, the circuit breaker's cool-downs and the
bounds of postponements, in one frozen `DeliveryConfig` that tests shrink.

After a failed attempt the next one waits 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h and
24 h (+-10 % jitter; ten attempts over about three days); a 429 or 503 with `Retry-After`
waits at least that long (at most 24 h). An endpoint failing for 5 days is disabled.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# Seconds before each retry: ten attempts over about three days.
RETRY_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
DISABLE_AFTER = timedelta(days=5)

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
    # Concurrent deliveries load their messages and record their 2xx outcomes together
    # (`batching`): a batch gathers for at most this many seconds, up to this many items.
    batch_linger: float = 0.002
    batch_size: int = 64
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


def jittered(seconds: float, fraction: float = 0.1) -> float:
    """`seconds` randomised by +- `fraction` (never negative): postponed jobs do not return
    in lockstep."""
    return max(0.0, seconds * (1 + _random.uniform(-fraction, fraction)))
