"""The job worker: claims due jobs from PostgreSQL and runs their handlers.

Its tunings named below (`concurrency`, `job_timeout`, ...) are one `WorkerConfig`
(`service.jobs.config`).

Guarantees and how they are kept:
- At least once: a job is marked done only after its handler returned. A worker that dies
  mid-job leaves it `running` with a lease (`locked_until`); once the lease expires any worker
  claims it again. Live workers extend the leases of their jobs (heartbeat), so a slow job is
  not taken over while its worker is alive.
- Never twice at once: claims use `SELECT ... FOR UPDATE SKIP LOCKED` in a short transaction
  that marks the rows `running`; concurrent workers skip each other's rows. Outcomes are
  recorded only while the row is still ours (`locked_by`).
- Prompt: an idle worker waits on `LISTEN conduit_jobs` (its own asyncpg connection, re-opened
  when lost), with a poll as fallback, and wakes itself for the next scheduled `run_at`.
- Retries: a failed attempt is rescheduled after `backoff_base * 2**(attempt-1)` seconds
  (capped at `backoff_max`, randomised between half and all of it so that failures do not
  retry in lockstep), until `max_attempts`; then the job is `failed` and the error logged.
  A handler raises `PermanentJobError` when retrying cannot help. A handler with a
  `job_failed` method (`FailureAware`) is told when one of its jobs has failed for good, also
  when its worker died during the last attempt, so that what the job stood for (a webhook
  message) does not stay pending forever.
- Batched: one claim statement per lane takes up to its free slots. While most slots are
  busy, a freed slot waits `claim_linger` seconds (a few ms) for others to free up, so that
  a busy worker claims several jobs per round trip rather than one per finished job. A
  handler whose success is one transaction marks its job done in it (`JobContext.mark_done`):
  one commit instead of two.
- Bounded: at most `concurrency` jobs run at once; each is limited to `job_timeout`. A kind
  given its own slots (`kind_concurrency`, e.g. webhook deliveries, which wait on remote
  servers) runs up to that many jobs besides them: neither starves the other.
- Graceful: `stop()` claims nothing more and waits up to `shutdown_grace` seconds for running
  jobs; those still running are cancelled and handed back (`pending`, attempt not counted).
- Periodic tasks (`periodic`, e.g. deleting old webhook messages) run in the loop of `run()`
  every so many seconds, one at a time each, beside the job slots; a failure is logged and the
  task runs again at its next turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import asyncpg
from sqlalchemy import (
    BigInteger,
    Row,
    Select,
    and_,
    any_,
    bindparam,
    case,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql.dml import ReturningUpdate

from service.infra import tracing
from service.infra.db import build_engine
from service.infra.mail import Mailer
from service.infra.settings import Settings
from service.jobs.config import Periodic, WorkerConfig
from service.jobs.queue import CHANNEL
from service.models import Job

logger = logging.getLogger("conduit.jobs")

Handler = Callable[[dict[str, Any], "JobContext"], Awaitable[None]]

MAX_ERROR_LENGTH = 1000
ABANDONED = "the worker running its last attempt stopped (lease expired)"
# What the claiming and the abandoned-job UPDATEs return, read by ClaimedJob.from_row.
_CLAIMED_COLUMNS = (
    Job.id,
    Job.kind,
    Job.payload,
    Job.attempts,
    Job.max_attempts,
    Job.trace_context,
)
# `scheme://user:secret@` in an error message: the secret is masked before logging or storing.
_URL_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]*@")
_jitter = random.SystemRandom()


class PermanentJobError(Exception):
    """Raised by a handler when retrying cannot succeed: the job fails at once."""


def _outcome_statement(values: dict[str, Any]) -> ReturningUpdate[Any]:
    """UPDATE writing a job's outcome `values`, only while the job (bound `job_id`) is still
    the worker's (bound `worker`)."""
    return (
        update(Job)
        .where(
            Job.id == bindparam("job_id"),
            Job.status == "running",
            Job.locked_by == bindparam("worker"),
        )
        .values(locked_until=None, updated_at=func.now(), **values)
        .returning(Job.id)
    )


# Built once: constructing a statement costs more CPU than running a cached one.
_DONE = _outcome_statement({"status": "done"})
_DONE_MANY = (
    update(Job)
    .where(
        Job.id == any_(bindparam("job_ids", type_=ARRAY(BigInteger))),
        Job.status == "running",
        Job.locked_by == bindparam("worker"),
    )
    .values(status="done", locked_until=None, updated_at=func.now())
    .returning(Job.id)
)


@dataclass
class Completion:
    """A job's `done` mark written by its handler in the handler's own transaction (one
    commit for the work and the mark instead of two); `owned` says whether it was written
    (None: the handler did not use it, the worker marks the job itself)."""

    job_id: int
    worker: str
    owned: bool | None = None

    async def mark_done(self, session: AsyncSession) -> None:
        """Mark the job done in `session`'s transaction (it counts once that commits)."""
        connection = await session.connection()
        row = await connection.scalar(_DONE, {"job_id": self.job_id, "worker": self.worker})
        self.owned = row is not None

    @staticmethod
    async def mark_all_done(session: AsyncSession, completions: Sequence[Completion]) -> None:
        """`mark_done` for several jobs at once: one statement per worker, not one per job
        (handlers that batch their work, e.g. webhook deliveries, record many at once)."""
        connection = await session.connection()
        workers: dict[str, list[Completion]] = {}
        for completion in completions:
            workers.setdefault(completion.worker, []).append(completion)
        for worker, group in workers.items():
            ids = [completion.job_id for completion in group]
            result = await connection.execute(_DONE_MANY, {"job_ids": ids, "worker": worker})
            owned = set(result.scalars())
            for completion in group:
                completion.owned = completion.job_id in owned


@dataclass(frozen=True)
class JobContext:
    """What a handler gets besides its payload."""

    job_id: int
    kind: str
    attempt: int
    max_attempts: int
    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    mailer: Mailer
    completion: Completion | None = None  # None: the handler cannot mark its job done itself

    async def mark_done(self, session: AsyncSession) -> None:
        """Mark this job done in `session`'s transaction, for a handler whose success is
        one transaction: called last in it, the work and the job commit together (and the
        worker skips its own write). Without a `completion` it does nothing."""
        if self.completion is not None:
            await self.completion.mark_done(session)


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker holds (status `running`, `locked_by` = this worker)."""

    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    # The request id and trace context of the request that queued it (`tracing.job_context`).
    trace_context: dict[str, str] | None = None

    @classmethod
    def from_row(cls, row: Row[Any]) -> ClaimedJob:
        """The job a claiming or failing `UPDATE ... RETURNING` row describes."""
        return cls(
            id=row.id,
            kind=row.kind,
            payload=row.payload,
            attempts=row.attempts,
            max_attempts=row.max_attempts,
            trace_context=row.trace_context,
        )


@runtime_checkable
class FailureAware(Protocol):
    """A handler that is told when one of its jobs has failed for good."""

    async def job_failed(self, payload: dict[str, Any], context: JobContext, error: str) -> None:
        """The job will not run again: `error` says why (masked and bounded, as logged)."""


def backoff_delay(attempt: int, *, base: float, maximum: float) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based), with jitter."""
    ceiling = min(maximum, base * 2.0 ** min(max(attempt - 1, 0), 62))
    return ceiling / 2 + _jitter.uniform(0, ceiling / 2)


def describe_failure(exc: BaseException) -> str:
    """One line naming an error, with URL credentials masked and the length bounded."""
    if isinstance(exc, TimeoutError) and not str(exc):
        text = "TimeoutError: the job took too long"
    else:
        message = str(exc).strip().splitlines()
        text = f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__
    return _URL_CREDENTIALS.sub(r"\1***@", text)[:MAX_ERROR_LENGTH]


def asyncpg_url(database_url: str) -> str:
    """The plain `postgresql://` form of a SQLAlchemy asyncpg URL, for asyncpg itself."""
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


class Worker:
    """Runs jobs of the registered kinds, tuned by `config`; see the module docstring for the
    guarantees. `name` identifies it in the rows it holds (default: host, pid and a nonce)."""

    def __init__(
        self,
        settings: Settings,
        config: WorkerConfig,
        *,
        handlers: Mapping[str, Handler],
        mailer: Mailer | None = None,
        name: str | None = None,
    ) -> None:
        if settings.database_url is None:
            raise ValueError("DATABASE_URL is not set")
        self.settings = settings
        self.config = config
        self.mailer = mailer or Mailer(settings)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease = timedelta(seconds=config.lease_seconds)
        self._handlers: dict[str, Handler] = dict(handlers)
        self._periodic_due: dict[str, float] = {}
        self._periodic_tasks: dict[str, asyncio.Task[None]] = {}
        self._engine: AsyncEngine | None = None
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._in_flight: dict[asyncio.Task[None], ClaimedJob] = {}
        self._claim_statements: dict[tuple[str, ...], ReturningUpdate[Any]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._last_maintenance = float("-inf")
        self._heartbeat: asyncio.Task[None] | None = None
        # Set while the LISTEN connection is up (tests wait for it before relying on NOTIFY).
        self.listening = asyncio.Event()

    # -- configuration --------------------------------------------------------------------

    def register(self, kind: str, handler: Handler) -> None:
        """Run `handler(payload, context)` for jobs of `kind`."""
        self._handlers[kind] = handler

    @property
    def kinds(self) -> list[str]:
        """The job kinds this worker claims (others are left to workers that know them)."""
        return sorted(self._handlers)

    @property
    def total_concurrency(self) -> int:
        """How many jobs may run at once, over every slot pool."""
        own = [
            limit for kind, limit in self.config.kind_concurrency.items() if kind in self._handlers
        ]
        return self.config.concurrency + sum(own)

    def _lanes(self) -> list[tuple[list[str], int]]:
        """Each slot pool's kinds with its free slots: the shared pool, then one per kind
        with its own slots."""
        running = Counter(job.kind for job in self._in_flight.values())
        shared = [kind for kind in self.kinds if kind not in self.config.kind_concurrency]
        lanes = [(shared, self.config.concurrency - sum(running[kind] for kind in shared))]
        lanes += [
            ([kind], limit - running[kind])
            for kind, limit in sorted(self.config.kind_concurrency.items())
            if kind in self._handlers
        ]
        return [(kinds, free) for kinds, free in lanes if kinds and free > 0]

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        """Sessions on the worker's engine; only valid between `start()` and `close()`."""
        if self._sessionmaker is None:
            raise RuntimeError("worker used before start()")
        return self._sessionmaker

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the worker's engine (on the running loop) and start the lease heartbeat."""
        if self._engine is not None:
            return
        assert self.settings.database_url is not None
        # Running jobs, the claim loop, the heartbeat, and one spare. Kinds with their own
        # slots add at most 8: their handlers (webhook deliveries) hold no connection while
        # they wait on the network, and many workers must fit in the server's connections.
        own = min(self.total_concurrency - self.config.concurrency, 8)
        # The pre-ping stays (three round trips per checkout with asyncpg): without it, after a
        # database restart every pooled connection would fail one job, and a webhook message
        # would lose one of its attempts to our own outage rather than its receiver's.
        pool = self.settings.model_copy(
            update={"db_pool_size": self.config.concurrency + own + 3, "db_max_overflow": 2}
        )
        self._engine = build_engine(pool, self.settings.database_url)
        self._sessionmaker = async_sessionmaker(self._engine, expire_on_commit=False)
        self._heartbeat = asyncio.create_task(self._renew_leases(), name="jobs-heartbeat")

    async def close(self) -> None:
        """Stop the heartbeat and close the engine (running jobs must have finished)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
            self._sessionmaker = None

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._finish_in_flight()
        await self.close()

    def stop(self) -> None:
        """Ask `run()` to return: nothing more is claimed, running jobs get a grace period.

        Call it on the worker's loop (from another thread: `loop.call_soon_threadsafe`).
        """
        self._stopping = True
        self._stopped.set()
        self._wake.set()

    async def run(self) -> None:
        """Claim and run jobs until `stop()`; survives database outages (logs and retries)."""
        await self.start()
        listener = asyncio.create_task(self._listen(), name="jobs-listen")
        logger.info(
            "worker started",
            extra={
                "worker": self.name,
                "kinds": self.kinds,
                "concurrency": self.config.concurrency,
                "kind_concurrency": self.config.kind_concurrency,
            },
        )
        if not self.mailer.configured:
            logger.error("SMTP_URL is not set: jobs that send mail will fail until it is")
        try:
            # Briefly wait for LISTEN (unless stopped meanwhile), so that a job enqueued right
            # after start wakes us.
            waits = [asyncio.ensure_future(e.wait()) for e in (self.listening, self._stopped)]
            await asyncio.wait(
                waits,
                timeout=self.settings.db_connect_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for waiting in waits:
                waiting.cancel()
            await self._serve()
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await self._stop_periodic()
            await self._finish_in_flight()
            await self.close()
            logger.info("worker stopped", extra={"worker": self.name})

    async def run_pending(self) -> int:
        """Run every job due now (and those their failures make due at once); return how many
        were started. For tests and one-off runs: returns when nothing is due or running."""
        await self.start()
        started = 0
        while True:
            lanes = self._lanes()
            if lanes:
                # A job running while the claim is under way may finish meanwhile and leave a
                # retry the claim could not see: then claim once more before returning.
                was_busy = bool(self._in_flight)
                jobs, _ = await self._claim(lanes)
                for job in jobs:
                    self._spawn(job)
                started += len(jobs)
                if not jobs and not was_busy and not self._in_flight:
                    return started
            if self._in_flight:
                await asyncio.wait(set(self._in_flight), return_when=asyncio.FIRST_COMPLETED)

    # -- the loop -------------------------------------------------------------------------

    async def _serve(self) -> None:
        failures = 0
        while not self._stopping:
            self._wake.clear()
            delay = min(self.config.poll_interval, self._start_periodic())
            lanes = self._lanes()
            if lanes and self._in_flight and self._few_free(lanes):
                # Few free slots among busy ones (a job just finished): let a few more
                # finish, then claim for all of them in one statement, not one each.
                await asyncio.sleep(self.config.claim_linger)
                lanes = self._lanes()
            if lanes:
                try:
                    jobs, next_due = await self._claim(lanes)
                    failures = 0
                except Exception as exc:
                    # The database is away: keep trying, without flooding the log.
                    failures += 1
                    logger.warning("claiming jobs failed: %s", describe_failure(exc))
                    jobs, next_due = (
                        [],
                        min(self.config.poll_interval, 0.5 * 2.0 ** min(failures, 5)),
                    )
                for job in jobs:
                    self._spawn(job)
                claimed = Counter(job.kind for job in jobs)
                if any(sum(claimed[kind] for kind in kinds) == free for kinds, free in lanes):
                    continue  # maybe more are due; a finishing job wakes us to claim them
                if next_due is not None:
                    # A floor: an overdue job may be in another worker's claim right now.
                    delay = min(delay, max(next_due, 0.02))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _few_free(self, lanes: list[tuple[list[str], int]]) -> bool:
        """Whether under a quarter of all slots are free (and lingering is on)."""
        free = sum(count for _, count in lanes)
        return self.config.claim_linger > 0 and 4 * free < self.total_concurrency

    def _start_periodic(self) -> float:
        """Start the periodic tasks that are due and not running; return the seconds until
        the next one is due."""
        now = time.monotonic()
        for name, periodic in self.config.periodic.items():
            if name in self._periodic_tasks or self._periodic_due.get(name, now) > now:
                continue
            self._periodic_due[name] = now + periodic.interval
            task = asyncio.create_task(self._run_periodic(name, periodic), name=f"periodic-{name}")
            self._periodic_tasks[name] = task
        waits = [
            due - now for name, due in self._periodic_due.items() if name in self.config.periodic
        ]
        return max(min(waits, default=float("inf")), 0.0)

    async def _run_periodic(self, name: str, periodic: Periodic) -> None:
        try:
            await periodic.task(self.sessionmaker, self.settings)
        except Exception as exc:
            logger.warning("periodic task %s failed: %s", name, describe_failure(exc))
        finally:
            self._periodic_tasks.pop(name, None)
            self._wake.set()  # its next turn may be due before the loop's own timeout

    async def _stop_periodic(self) -> None:
        tasks = list(self._periodic_tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _claim(
        self, lanes: list[tuple[list[str], int]]
    ) -> tuple[list[ClaimedJob], float | None]:
        """Mark due jobs as ours, up to each lane's free slots; also return seconds until the
        next job of these lanes is due."""
        lanes = [(kinds, free) for kinds, free in lanes if kinds and free > 0]
        if not lanes:
            return [], None
        abandoned: list[ClaimedJob] = []
        seconds = None
        maintain = time.monotonic() - self._last_maintenance >= self.config.maintenance_interval
        async with self.sessionmaker() as session:
            if maintain:
                async with session.begin():
                    abandoned = await self._maintain(session)
            # Each claim is one statement, atomic by itself: no BEGIN and COMMIT round trips.
            connection = await session.connection(
                execution_options={"isolation_level": "AUTOCOMMIT"}
            )
            rows: list[Row[Any]] = []
            filled = False
            for kinds, free in lanes:
                statement = self._claim_statement(kinds)
                claimed = (await connection.execute(statement, {"limit": free})).all()
                filled = filled or len(claimed) == free
                rows += claimed
            if not filled:
                # The loop claims again at once when a lane filled up: only otherwise does it
                # need to know when to look next.
                every_kind = [kind for kinds, _ in lanes for kind in kinds]
                seconds = await connection.scalar(_next_due_query(every_kind))
        for job in abandoned:
            await self._failed_for_good(job, ABANDONED)
        jobs = [ClaimedJob.from_row(row) for row in rows]
        return jobs, float(seconds) if seconds is not None else None

    def _claim_statement(self, kinds: list[str]) -> ReturningUpdate[Any]:
        """UPDATE ... RETURNING that marks up to `limit` (bound) due jobs of `kinds` as ours;
        built once per lane (building it cost more than running it)."""
        key = tuple(kinds)
        statement = self._claim_statements.get(key)
        if statement is None:
            statement = self._claim_statements[key] = self._build_claim_statement(kinds)
        return statement

    def _build_claim_statement(self, kinds: list[str]) -> ReturningUpdate[Any]:
        now = func.now()
        due = (
            select(Job.id)
            .where(
                Job.kind.in_(kinds),
                Job.attempts < Job.max_attempts,
                or_(
                    and_(Job.status == "pending", Job.run_at <= now),
                    and_(Job.status == "running", Job.locked_until < now),
                ),
            )
            .order_by(Job.run_at, Job.id)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
            # Materialised: the LIMIT ... SKIP LOCKED selection must run exactly once.
            .cte("due")
            .prefix_with("MATERIALIZED")
        )
        return (
            update(Job)
            .where(Job.id == due.c.id)
            .values(
                status="running",
                attempts=Job.attempts + 1,
                locked_until=now + self.lease,
                locked_by=self.name,
                updated_at=now,
            )
            .returning(*_CLAIMED_COLUMNS)
        )

    async def _maintain(self, session: AsyncSession) -> list[ClaimedJob]:
        """Fail the jobs abandoned on their last attempt (returned, for their handlers to
        hear of once this transaction commits) and delete old finished jobs."""
        self._last_maintenance = time.monotonic()
        now = func.now()
        # A job whose worker died on its last allowed attempt would otherwise stay `running`.
        abandoned = await session.execute(
            update(Job)
            .where(
                Job.status == "running",
                Job.locked_until < now,
                Job.attempts >= Job.max_attempts,
            )
            .values(status="failed", locked_until=None, last_error=ABANDONED, updated_at=now)
            .returning(*_CLAIMED_COLUMNS)
        )
        failed: list[ClaimedJob] = []
        for row in abandoned:
            logger.error(
                "job %d (%s) failed after %d attempts: its worker stopped during the last one",
                row.id,
                row.kind,
                row.attempts,
                extra={"job_id": row.id, "kind": row.kind},
            )
            failed.append(ClaimedJob.from_row(row))
        # Finished jobs are kept a while for inspection, then deleted (payloads hold emails).
        await session.execute(
            delete(Job).where(
                or_(
                    and_(Job.status == "done", Job.updated_at < now - self.config.done_retention),
                    and_(
                        Job.status == "failed", Job.updated_at < now - self.config.failed_retention
                    ),
                )
            )
        )
        return failed

    # -- running one job ------------------------------------------------------------------

    def _spawn(self, job: ClaimedJob) -> None:
        task = asyncio.create_task(self._execute(job), name=f"job-{job.id}")
        self._in_flight[task] = job
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._wake.set()  # a free slot: claim more

    def _context(self, job: ClaimedJob, completion: Completion | None = None) -> JobContext:
        return JobContext(
            job_id=job.id,
            kind=job.kind,
            attempt=job.attempts,
            max_attempts=job.max_attempts,
            settings=self.settings,
            sessionmaker=self.sessionmaker,
            mailer=self.mailer,
            completion=completion,
        )

    async def _execute(self, job: ClaimedJob) -> None:
        with tracing.job_span(job.kind, job.id, job.attempts, job.trace_context):
            await self._execute_traced(job)

    async def _execute_traced(self, job: ClaimedJob) -> None:
        handler = self._handlers[job.kind]
        completion = Completion(job.id, self.name)
        context = self._context(job, completion)
        try:
            try:
                async with asyncio.timeout(self.config.job_timeout):
                    await handler(job.payload, context)
            except asyncio.CancelledError:
                # Only shutdown cancels a job: hand it back for another worker, uncounted.
                await asyncio.shield(self._release(job))
                raise
            except Exception as exc:
                tracing.mark_failed(exc)
                await self._record_failure(job, exc)
            else:
                if completion.owned is None:
                    await self._record_outcome(job, status="done", error=None, delay=None)
                elif not completion.owned:
                    self._taken_over(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The outcome could not be written (database away): the lease will expire and the
            # job will run again, as at-least-once allows.
            logger.warning(
                "job %d (%s): recording the outcome failed: %s",
                job.id,
                job.kind,
                describe_failure(exc),
                extra={"job_id": job.id, "kind": job.kind},
            )

    async def _record_failure(self, job: ClaimedJob, exc: Exception) -> None:
        """Schedule the job's next attempt, or fail it (and tell its handler) if none is left."""
        error = describe_failure(exc)
        extra = {"job_id": job.id, "kind": job.kind, "attempt": job.attempts}
        logger.debug("job %d (%s) raised", job.id, job.kind, exc_info=exc, extra=extra)
        permanent = isinstance(exc, PermanentJobError)
        if permanent or job.attempts >= job.max_attempts:
            logger.error(
                "job %d (%s) failed after %d attempt(s): %s",
                job.id,
                job.kind,
                job.attempts,
                error,
                extra=extra,
            )
            if await self._record_outcome(job, status="failed", error=error, delay=None):
                await self._failed_for_good(job, error)
            return
        delay = backoff_delay(
            job.attempts, base=self.config.backoff_base, maximum=self.config.backoff_max
        )
        logger.warning(
            "job %d (%s) attempt %d/%d failed, retrying in %.1f s: %s",
            job.id,
            job.kind,
            job.attempts,
            job.max_attempts,
            delay,
            error,
            extra=extra,
        )
        await self._record_outcome(job, status="pending", error=error, delay=delay)

    async def _failed_for_good(self, job: ClaimedJob, error: str) -> None:
        """Tell a `FailureAware` handler that `job` failed for good (errors are logged)."""
        handler = self._handlers.get(job.kind)
        if not isinstance(handler, FailureAware):
            return
        try:
            async with asyncio.timeout(self.config.job_timeout):
                await handler.job_failed(job.payload, self._context(job), error)
        except Exception as exc:
            logger.error(
                "job %d (%s): its handler could not record the failure: %s",
                job.id,
                job.kind,
                describe_failure(exc),
                extra={"job_id": job.id, "kind": job.kind},
            )

    async def _record_outcome(
        self, job: ClaimedJob, *, status: str, error: str | None, delay: float | None
    ) -> bool:
        """Write the outcome if the job is still ours; return whether it was."""
        values: dict[str, Any] = {"status": status}
        if error is not None:
            values["last_error"] = error
        if delay is not None:
            values["run_at"] = func.now() + timedelta(seconds=delay)
        # A plain success (most jobs) runs the statement built once.
        statement = _DONE if values == {"status": "done"} else _outcome_statement(values)
        async with self.sessionmaker.begin() as session:
            connection = await session.connection()  # Core: no ORM bulk-update machinery
            owned = await connection.scalar(statement, {"job_id": job.id, "worker": self.name})
        if owned is None:
            self._taken_over(job)
        return owned is not None

    @staticmethod
    def _taken_over(job: ClaimedJob) -> None:
        logger.warning(
            "job %d (%s) was taken over by another worker before it finished here",
            job.id,
            job.kind,
            extra={"job_id": job.id, "kind": job.kind},
        )

    async def _release(self, job: ClaimedJob) -> None:
        try:
            async with self.sessionmaker.begin() as session:
                await session.execute(
                    update(Job)
                    .where(Job.id == job.id, Job.status == "running", Job.locked_by == self.name)
                    .values(
                        status="pending",
                        attempts=func.greatest(Job.attempts - 1, 0),
                        locked_until=None,
                        run_at=func.now(),
                        updated_at=func.now(),
                    )
                )
        except Exception as exc:
            logger.warning("job %d: handing it back failed: %s", job.id, describe_failure(exc))

    async def _finish_in_flight(self) -> None:
        """Wait up to `shutdown_grace` for running jobs; cancel (and hand back) the rest."""
        tasks = set(self._in_flight)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.config.shutdown_grace)
        for task in pending:
            task.cancel()
        if pending:
            logger.warning("stopping: %d running job(s) handed back", len(pending))
            await asyncio.gather(*pending, return_exceptions=True)

    async def _renew_leases(self) -> None:
        interval = max(self.lease.total_seconds() / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            ids = [job.id for job in self._in_flight.values()]
            if not ids:
                continue
            try:
                async with self.sessionmaker.begin() as session:
                    await session.execute(
                        update(Job)
                        .where(
                            Job.id.in_(ids),
                            Job.status == "running",
                            Job.locked_by == self.name,
                        )
                        .values(locked_until=func.now() + self.lease)
                    )
            except Exception as exc:
                logger.warning("renewing job leases failed: %s", describe_failure(exc))

    # -- LISTEN -----------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Hold a LISTEN connection, re-opening it when lost; every NOTIFY wakes the loop."""
        assert self.settings.database_url is not None
        url = asyncpg_url(self.settings.database_url)
        retry = 1.0
        while True:
            try:
                conn = await asyncpg.connect(
                    url,
                    timeout=self.settings.db_connect_timeout,
                    server_settings={"application_name": "conduit-worker"},
                )
            except Exception as exc:
                logger.warning(
                    "LISTEN connection failed (polling meanwhile): %s", describe_failure(exc)
                )
                await asyncio.sleep(retry)
                retry = min(retry * 2, 30.0)
                continue
            try:
                await self._hold(conn)
                retry = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("LISTEN connection lost: %s", describe_failure(exc))
            finally:
                self.listening.clear()
                conn.terminate()

    async def _hold(self, conn: Any) -> None:
        """LISTEN on `conn` until it closes (or stops answering)."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(CHANNEL, self._notified)
        self.listening.set()
        self._wake.set()  # catch up with anything sent while not listening
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), 30.0)
            if not lost.is_set():
                # A silent network failure does not close the socket: probe it.
                await conn.fetchval("SELECT 1", timeout=10.0)
        raise ConnectionError("the server closed the connection")

    def _notified(self, _conn: object, _pid: int, _channel: str, _payload: str) -> None:
        self._wake.set()


def _next_due_query(kinds: list[str]) -> Select[Any]:
    """Seconds until the earliest job of `kinds` becomes claimable (negative: overdue)."""
    # A pending job is due at `run_at`; a running one when its lease expires.
    due_at = case((Job.status == "pending", Job.run_at), else_=Job.locked_until)
    return select(func.extract("epoch", func.min(due_at) - func.clock_timestamp())).where(
        Job.status.in_(("pending", "running")),
        Job.kind.in_(kinds),
        Job.attempts < Job.max_attempts,
    )


class WorkerThread:
    """A worker on its own thread and event loop (the in-process worker of `conduit serve`)."""

    def __init__(self, factory: Callable[[], Worker]) -> None:
        self._factory = factory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: Worker | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="conduit-worker", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        """Start the thread and wait until its worker exists."""
        self._thread.start()
        self._ready.wait(timeout)

    def stop(self, timeout: float) -> bool:
        """Ask the worker to finish (graceful) and wait up to `timeout`; True if it stopped."""
        loop, worker = self._loop, self._worker
        if loop is not None and worker is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(worker.stop)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception:
            logger.exception("the in-process worker crashed")
        finally:
            self._ready.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._worker = self._factory()
        finally:
            self._ready.set()
        await self._worker.run()
