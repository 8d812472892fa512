"""Durable background jobs on PostgreSQL.

A job row is written in the same transaction as the change that causes it (`enqueue`), so it
exists exactly when that change was committed. Any number of `Worker`s (processes or the one
inside `conduit serve`) claim due jobs with `FOR UPDATE SKIP LOCKED`, are woken by
`NOTIFY conduit_jobs`, and run each job at least once, retrying with backoff.
"""

from service.jobs.config import Periodic, WorkerConfig
from service.jobs.queue import CHANNEL, enqueue, trace_context_param
from service.jobs.worker import (
    Completion,
    Handler,
    JobContext,
    PermanentJobError,
    Worker,
    backoff_delay,
)

__all__ = [
    "CHANNEL",
    "Completion",
    "Handler",
    "JobContext",
    "Periodic",
    "PermanentJobError",
    "Worker",
    "WorkerConfig",
    "backoff_delay",
    "enqueue",
    "trace_context_param",
]
