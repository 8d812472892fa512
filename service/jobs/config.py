"""How a job worker runs: its slots, timings, retries, housekeeping and periodic tasks.

One frozen `WorkerConfig`, built from `Settings` in one place (`WorkerConfig.from_settings`),
so that a `Worker` takes its tuning as one value and tests change a field with
`dataclasses.replace` instead of threading a dozen keyword arguments through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.infra.settings import Settings

# Work the worker does on a schedule rather than from jobs: gets the worker's sessions and
# settings.
PeriodicTask = Callable[[async_sessionmaker[AsyncSession], Settings], Awaitable[object]]


@dataclass(frozen=True)
class Periodic:
    """A task `run()` starts every `interval` seconds (the first time when it starts)."""

    interval: float
    task: PeriodicTask


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """A worker's tuning (see `service.jobs.worker` for what each part guarantees)."""

    concurrency: int  # jobs at once in the shared slots (WORKER_CONCURRENCY)
    # Kinds with slots of their own, not counted against `concurrency` (webhook deliveries).
    kind_concurrency: Mapping[str, int] = field(default_factory=dict)
    shutdown_grace: float  # seconds running jobs get to finish at stop (SHUTDOWN_GRACE_SECONDS)
    poll_interval: float = 5.0  # seconds between claims when no NOTIFY wakes the worker
    # Seconds a freed slot waits, while most slots are busy, for others to free up and be
    # claimed for in the same statement (0: claim at once for each).
    claim_linger: float = 0.005
    lease_seconds: float = 60.0  # a running job is claimable again this long after its lease
    job_timeout: float = 300.0
    backoff_base: float = 10.0  # a failed attempt retries after base * 2**(attempt-1) s,
    backoff_max: float = 3600.0  # capped at this (drawn between half and all of it)
    maintenance_interval: float = 60.0  # abandoned jobs failed, old ones deleted this often
    done_retention: timedelta = timedelta(days=7)
    failed_retention: timedelta = timedelta(days=30)
    periodic: Mapping[str, Periodic] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if any(limit < 1 for limit in self.kind_concurrency.values()):
            raise ValueError("kind_concurrency limits must be at least 1")
        if any(periodic.interval <= 0 for periodic in self.periodic.values()):
            raise ValueError("periodic intervals must be positive")
        # Read-only copies: the config is shared, and frozen means frozen all the way down.
        object.__setattr__(self, "kind_concurrency", MappingProxyType(dict(self.kind_concurrency)))
        object.__setattr__(self, "periodic", MappingProxyType(dict(self.periodic)))

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        kind_concurrency: Mapping[str, int] | None = None,
        periodic: Mapping[str, Periodic] | None = None,
    ) -> WorkerConfig:
        """The configuration `settings` ask for; what runs besides the shared slots (kinds
        with slots of their own, periodic tasks) is the caller's, not the settings'."""
        return cls(
            concurrency=settings.worker_concurrency,
            shutdown_grace=settings.shutdown_grace_seconds,
            kind_concurrency=kind_concurrency or {},
            periodic=periodic or {},
        )
