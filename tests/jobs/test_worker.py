"""The worker: claiming, retries with backoff, leases, LISTEN/NOTIFY wake-ups, shutdown."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.infra.settings import Settings
from service.jobs import (
    JobContext,
    Periodic,
    PermanentJobError,
    Worker,
    WorkerConfig,
    backoff_delay,
    enqueue,
)
from service.jobs.worker import WorkerThread, describe_failure

MakeWorker = Callable[..., Worker]


async def add_jobs(
    sessionmaker: async_sessionmaker[AsyncSession],
    kind: str,
    payloads: list[dict[str, Any]],
    **options: Any,
) -> list[int]:
    async with sessionmaker() as session, session.begin():
        jobs = [
            await enqueue(session=session, kind=kind, payload=payload, **options)
            for payload in payloads
        ]
    return [job.id for job in jobs]


async def fetch_job(database_url: str, job_id: int) -> asyncpg.Record:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT *, now() AS db_now FROM jobs WHERE id = $1", job_id)
    finally:
        await conn.close()
    assert row is not None
    return row


async def execute(database_url: str, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def set_running(
    database_url: str,
    job_id: int,
    *,
    attempts: int,
    locked_by: str = "dead",
    lease: timedelta = timedelta(seconds=-1),
) -> None:
    """Leave the job running as worker `locked_by` holds it (by default, one that died)."""
    await execute(
        database_url,
        "UPDATE jobs SET status = 'running', attempts = $2, locked_by = $3,"
        " locked_until = now() + $4::interval WHERE id = $1",
        job_id,
        attempts,
        locked_by,
        lease,
    )


async def wait_for_status(
    database_url: str, job_id: int, status: str, within: float = 5.0
) -> asyncpg.Record:
    async with asyncio.timeout(within):
        while True:
            row = await fetch_job(database_url, job_id)
            if row["status"] == status:
                return row
            await asyncio.sleep(0.02)


async def test_claims_and_runs_due_jobs(
    make_worker: MakeWorker, sessionmaker: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    seen: list[tuple[dict[str, Any], JobContext]] = []

    async def handler(payload: dict[str, Any], context: JobContext) -> None:
        seen.append((payload, context))

    ids = await add_jobs(sessionmaker, "test.echo", [{"n": 1}, {"n": 2}, {"n": 3}])
    worker = make_worker(handlers={"test.echo": handler}, name="w1")
    assert await worker.run_pending() == 3

    assert sorted(payload["n"] for payload, _ in seen) == [1, 2, 3]
    contexts = {context.job_id: context for _, context in seen}
    assert set(contexts) == set(ids)
    assert all(c.attempt == 1 and c.max_attempts == 8 for c in contexts.values())
    assert all(c.kind == "test.echo" for c in contexts.values())
    for job_id in ids:
        row = await fetch_job(database_url, job_id)
        assert row["status"] == "done"
        assert row["attempts"] == 1
        assert row["locked_until"] is None
        assert row["locked_by"] == "w1"
        assert row["last_error"] is None
    # Nothing left to do.
    assert await worker.run_pending() == 0


async def test_jobs_not_yet_due_and_unknown_kinds_are_left_alone(
    make_worker: MakeWorker, sessionmaker: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    ran: list[int] = []

    async def handler(payload: dict[str, Any], context: JobContext) -> None:
        ran.append(context.job_id)

    [later] = await add_jobs(
        sessionmaker, "test.echo", [{}], run_at=datetime.now().astimezone() + timedelta(hours=1)
    )
    [other] = await add_jobs(sessionmaker, "test.someone_else", [{}])
    worker = make_worker(handlers={"test.echo": handler})
    assert await worker.run_pending() == 0
    assert ran == []
    assert (await fetch_job(database_url, later))["status"] == "pending"
    assert (await fetch_job(database_url, other))["status"] == "pending"


async def test_failing_handler_is_retried_with_backoff_until_it_succeeds(
    make_worker: MakeWorker, sessionmaker: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    base = 0.1
    attempts: list[asyncpg.Record] = []

    async def flaky(payload: dict[str, Any], context: JobContext) -> None:
        # The row as this attempt sees it: run_at is when the attempt was scheduled.
        attempts.append(await fetch_job(database_url, context.job_id))
        if context.attempt <= 2:
            raise RuntimeError(f"failure number {context.attempt}")

    [job_id] = await add_jobs(sessionmaker, "test.flaky", [{}])
    worker = make_worker(handlers={"test.flaky": flaky}, backoff_base=base, poll_interval=30)
    task = asyncio.create_task(worker.run())
    try:
        row = await wait_for_status(database_url, job_id, "done", within=10)
    finally:
        worker.stop()
        await task

    assert row["attempts"] == 3
    assert row["last_error"] == "RuntimeError: failure number 2"
    assert [a["attempts"] for a in attempts] == [1, 2, 3]
    assert attempts[1]["last_error"] == "RuntimeError: failure number 1"
    # Each retry was scheduled at least half the exponential delay after the previous run
    # (the jitter keeps it between half and all of base * 2**(attempt-1)).
    first_gap = attempts[1]["run_at"] - attempts[0]["run_at"]
    second_gap = attempts[2]["run_at"] - attempts[1]["run_at"]
    assert first_gap >= timedelta(seconds=base / 2)
    assert second_gap >= timedelta(seconds=base)


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    for attempt in range(1, 8):
        ceiling = 10.0 * 2 ** (attempt - 1)
        delays = [backoff_delay(attempt, base=10.0, maximum=1e9) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered
    capped = [backoff_delay(40, base=10.0, maximum=3600.0) for _ in range(50)]
    assert all(1800.0 <= d <= 3600.0 for d in capped)
    assert backoff_delay(10_000, base=1.0, maximum=60.0) <= 60.0
    assert backoff_delay(3, base=0.0, maximum=60.0) == 0.0


async def test_job_fails_after_max_attempts_and_the_error_is_logged_without_secrets(
    make_worker: MakeWorker,
    sessionmaker: async_sessionmaker[AsyncSession],
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    async def broken(payload: dict[str, Any], context: JobContext) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError(
            "cannot reach postgresql://app:hunter2@db.internal/conduit\nsecond line hunter2"
        )

    [job_id] = await add_jobs(sessionmaker, "test.broken", [{}], max_attempts=3)
    worker = make_worker(handlers={"test.broken": broken})
    with caplog.at_level(logging.INFO, logger="conduit.jobs"):
        await worker.run_pending()

    assert calls == 3
    row = await fetch_job(database_url, job_id)
    assert row["status"] == "failed"
    assert row["attempts"] == 3
    assert row["locked_until"] is None
    assert row["last_error"] == (
        "ConnectionError: cannot reach postgresql://app:***@db.internal/conduit"
    )
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert failures[0].getMessage() == (
        f"job {job_id} (test.broken) failed after 3 attempt(s): "
        "ConnectionError: cannot reach postgresql://app:***@db.internal/conduit"
    )
    retries = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(retries) == 2
    assert "hunter2" not in caplog.text


async def test_permanent_error_fails_at_once(
    make_worker: MakeWorker, sessionmaker: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    async def hopeless(payload: dict[str, Any], context: JobContext) -> None:
        raise PermanentJobError("the recipient does not exist")

    [job_id] = await add_jobs(sessionmaker, "test.hopeless", [{}])
    await make_worker(handlers={"test.hopeless": hopeless}).run_pending()
    row = await fetch_job(database_url, job_id)
    assert row["status"] == "failed"
    assert row["attempts"] == 1
    assert row["last_error"] == "PermanentJobError: the recipient does not exist"


async def test_a_job_taking_too_long_is_retried(
    make_worker: MakeWorker, sessionmaker: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    async def slow_once(payload: dict[str, Any], context: JobContext) -> None:
        if context.attempt == 1:
            await asyncio.sleep(5)

    [job_id] = await add_jobs(sessionmaker, "test.slow", [{}])
    await make_worker(handlers={"test.slow": slow_once}, job_timeout=0.2).run_pending()
    row = await fetch_job(database_url, job_id)
    assert row["status"] == "done"
    assert row["attempts"] == 2
    assert row["last_error"] == "TimeoutError: the job took too long"


async def test_two_workers_never_run_the_same_job(
    make_worker: MakeWorker, sessionmaker: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    running: set[int] = set()
    overlaps: list[int] = []
    runs: Counter[int] = Counter()
    by_worker: Counter[str] = Counter()

    def handler_for(name: str) -> Any:
        async def handler(payload: dict[str, Any], context: JobContext) -> None:
            if context.job_id in running:
                overlaps.append(context.job_id)
            running.add(context.job_id)
            runs[context.job_id] += 1
            by_worker[name] += 1
            await asyncio.sleep(0.01)
            running.discard(context.job_id)

        return handler

    ids = await add_jobs(sessionmaker, "test.shared", [{"i": i} for i in range(40)])
    first = make_worker(handlers={"test.shared": handler_for("a")}, name="a", concurrency=4)
    second = make_worker(handlers={"test.shared": handler_for("b")}, name="b", concurrency=4)
    started = await asyncio.gather(first.run_pending(), second.run_pending())

    assert overlaps == []
    assert runs == dict.fromkeys(ids, 1)
    assert sum(started) == 40
    assert by_worker["a"] > 0
    assert by_worker["b"] > 0
    for job_id in ids:
        row = await fetch_job(database_url, job_id)
        assert (row["status"], row["attempts"]) == ("done", 1)


async def test_a_crashed_workers_job_is_claimed_again_after_its_lease(
    make_worker: MakeWorker, sessionmaker: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    ran: list[int] = []

    async def handler(payload: dict[str, Any], context: JobContext) -> None:
        ran.append(context.job_id)

    crashed, alive = await add_jobs(sessionmaker, "test.lease", [{}, {}])
    # What a worker leaves behind when it dies mid-job, and what a live one holds.
    await set_running(database_url, crashed, attempts=1)
    await set_running(database_url, alive, attempts=1, locked_by="alive", lease=timedelta(hours=1))
    worker = make_worker(handlers={"test.lease": handler}, name="rescuer")
    assert await worker.run_pending() == 1

    assert ran == [crashed]
    row = await fetch_job(database_url, crashed)
    assert (row["status"], row["attempts"], row["locked_by"]) == ("done", 2, "rescuer")
    row = await fetch_job(database_url, alive)
    assert (row["status"], row["locked_by"]) == ("running", "alive")


async def test_a_job_whose_worker_died_on_the_last_attempt_fails(
    make_worker: MakeWorker,
    sessionmaker: async_sessionmaker[AsyncSession],
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(payload: dict[str, Any], context: JobContext) -> None:
        raise AssertionError("must not run again")

    [job_id] = await add_jobs(sessionmaker, "test.poison", [{}], max_attempts=2)
    await set_running(database_url, job_id, attempts=2)
    with caplog.at_level(logging.ERROR, logger="conduit.jobs"):
        assert await make_worker(handlers={"test.poison": handler}).run_pending() == 0
    row = await fetch_job(database_url, job_id)
    assert row["status"] == "failed"
    assert "lease expired" in row["last_error"]
    assert f"job {job_id} (test.poison) failed after 2 attempts" in caplog.text


async def test_leases_of_running_jobs_are_renewed(
    make_worker: MakeWorker, sessionmaker: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def long_job(payload: dict[str, Any], context: JobContext) -> None:
        started.set()
        await release.wait()

    async def never(payload: dict[str, Any], context: JobContext) -> None:
        raise AssertionError("a live worker's job was taken over")

    [job_id] = await add_jobs(sessionmaker, "test.long", [{}])
    holder = make_worker(handlers={"test.long": long_job}, lease_seconds=0.3, name="holder")
    task = asyncio.create_task(holder.run_pending())
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(0.8)  # well past the first lease
    row = await fetch_job(database_url, job_id)
    assert row["status"] == "running"
    assert row["locked_until"] > row["db_now"]
    assert await make_worker(handlers={"test.long": never}).run_pending() == 0
    release.set()
    assert await task == 1
    assert (await fetch_job(database_url, job_id))["status"] == "done"


async def test_notify_wakes_an_idle_worker_long_before_the_poll(
    make_worker: MakeWorker, sessionmaker: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    async def handler(payload: dict[str, Any], context: JobContext) -> None:
        return None

    worker = make_worker(handlers={"test.wake": handler}, poll_interval=30)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.listening.wait(), 5)
        await asyncio.sleep(0.2)  # let it settle into its (30 s) wait
        [job_id] = await add_jobs(sessionmaker, "test.wake", [{}])
        await wait_for_status(database_url, job_id, "done", within=5)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)


async def test_a_lost_listen_connection_is_reopened(
    make_worker: MakeWorker,
    sessionmaker: async_sessionmaker[AsyncSession],
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(payload: dict[str, Any], context: JobContext) -> None:
        return None

    worker = make_worker(handlers={"test.relisten": handler}, poll_interval=30)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.listening.wait(), 5)
        # The server drops the LISTEN connection (a restart, a failover, an idle timeout).
        await execute(
            database_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'conduit-worker' AND datname = current_database()",
        )
        await asyncio.sleep(0.5)
        [job_id] = await add_jobs(sessionmaker, "test.relisten", [{}])
        await wait_for_status(database_url, job_id, "done", within=5)
        assert "LISTEN connection lost" in caplog.text
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)


async def test_stop_right_after_start_returns_at_once(make_worker: MakeWorker) -> None:
    async def handler(payload: dict[str, Any], context: JobContext) -> None:
        return None

    worker = make_worker(handlers={"test.none": handler}, poll_interval=30)
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0)
    worker.stop()
    await asyncio.wait_for(task, 3)


async def test_stop_lets_running_jobs_finish(
    make_worker: MakeWorker, sessionmaker: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    started = asyncio.Event()

    async def handler(payload: dict[str, Any], context: JobContext) -> None:
        started.set()
        await asyncio.sleep(0.3)

    worker = make_worker(handlers={"test.finish": handler}, shutdown_grace=5)
    task = asyncio.create_task(worker.run())
    [job_id] = await add_jobs(sessionmaker, "test.finish", [{}])
    await asyncio.wait_for(started.wait(), 5)
    worker.stop()
    await asyncio.wait_for(task, 5)
    assert (await fetch_job(database_url, job_id))["status"] == "done"


async def test_stop_hands_back_jobs_that_outlast_the_grace_period(
    make_worker: MakeWorker, sessionmaker: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    started = asyncio.Event()

    async def stuck(payload: dict[str, Any], context: JobContext) -> None:
        started.set()
        await asyncio.sleep(60)

    worker = make_worker(handlers={"test.stuck": stuck}, shutdown_grace=0.2)
    task = asyncio.create_task(worker.run())
    [job_id] = await add_jobs(sessionmaker, "test.stuck", [{}])
    await asyncio.wait_for(started.wait(), 5)
    worker.stop()
    await asyncio.wait_for(task, 5)
    row = await fetch_job(database_url, job_id)
    assert row["status"] == "pending"
    assert row["attempts"] == 0  # the interrupted attempt does not count
    assert row["locked_until"] is None
    assert row["run_at"] <= row["db_now"]


async def test_worker_thread_runs_jobs_and_stops(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    ran = threading.Event()

    async def handler(payload: dict[str, Any], context: JobContext) -> None:
        ran.set()

    config = replace(WorkerConfig.from_settings(settings), poll_interval=30)
    thread = WorkerThread(lambda: Worker(settings, config, handlers={"test.thread": handler}))
    thread.start()
    try:
        [job_id] = await add_jobs(sessionmaker, "test.thread", [{}])
        await wait_for_status(database_url, job_id, "done", within=10)
        assert ran.is_set()
    finally:
        begun = time.monotonic()
        assert await asyncio.to_thread(thread.stop, 10)
    assert time.monotonic() - begun < 10


def test_describe_failure_is_one_masked_line() -> None:
    assert describe_failure(ValueError("bad\nvalue")) == "ValueError: bad"
    assert describe_failure(KeyError()) == "KeyError"
    assert describe_failure(TimeoutError()) == "TimeoutError: the job took too long"
    masked = describe_failure(OSError("smtps://mailer:s3cret@smtp.example.com:465 refused"))
    assert masked == "OSError: smtps://mailer:***@smtp.example.com:465 refused"
    assert len(describe_failure(RuntimeError("x" * 5000))) == 1000


class Recording:
    """A handler that fails as told and records what its `job_failed` hook hears."""

    def __init__(self, error: Exception | None = None, hook_error: Exception | None = None):
        self.error = error
        self.hook_error = hook_error
        self.runs = 0
        self.failed: list[tuple[dict[str, Any], int, str]] = []

    async def __call__(self, payload: dict[str, Any], context: JobContext) -> None:
        self.runs += 1
        if self.error is not None:
            raise self.error

    async def job_failed(self, payload: dict[str, Any], context: JobContext, error: str) -> None:
        self.failed.append((payload, context.attempt, error))
        if self.hook_error is not None:
            raise self.hook_error


async def test_a_failure_aware_handler_hears_of_its_job_failing_for_good_once(
    make_worker: MakeWorker, sessionmaker: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    crashing = Recording(RuntimeError("bad data"))
    [job_id] = await add_jobs(sessionmaker, "test.crash", [{"n": 1}], max_attempts=3)
    hopeless = Recording(PermanentJobError("no such thing"))
    await add_jobs(sessionmaker, "test.hopeless", [{"n": 2}])
    fine = Recording()
    await add_jobs(sessionmaker, "test.fine", [{"n": 3}])
    worker = make_worker(
        handlers={"test.crash": crashing, "test.hopeless": hopeless, "test.fine": fine}
    )
    assert await worker.run_pending() == 5
    # Not on the retries: only once no attempt is left.
    assert crashing.runs == 3
    assert crashing.failed == [({"n": 1}, 3, "RuntimeError: bad data")]
    assert hopeless.failed == [({"n": 2}, 1, "PermanentJobError: no such thing")]
    assert fine.failed == []
    assert (await fetch_job(database_url, job_id))["status"] == "failed"


async def test_the_hook_hears_of_a_job_abandoned_on_its_last_attempt_and_may_fail(
    make_worker: MakeWorker,
    sessionmaker: async_sessionmaker[AsyncSession],
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = Recording(hook_error=RuntimeError("database away"))
    [job_id] = await add_jobs(sessionmaker, "test.abandoned", [{"n": 1}], max_attempts=2)
    await set_running(database_url, job_id, attempts=2)
    with caplog.at_level(logging.ERROR, logger="conduit.jobs"):
        assert await make_worker(handlers={"test.abandoned": handler}).run_pending() == 0
    assert handler.runs == 0
    assert handler.failed == [
        ({"n": 1}, 2, "the worker running its last attempt stopped (lease expired)")
    ]
    assert (await fetch_job(database_url, job_id))["status"] == "failed"
    # A hook that fails is logged; the worker goes on.
    assert "its handler could not record the failure: RuntimeError: database away" in caplog.text


async def test_periodic_tasks_run_at_start_then_every_interval_despite_failures(
    make_worker: MakeWorker, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[float] = []
    four = asyncio.Event()

    async def tick(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        runs.append(time.monotonic())
        if len(runs) == 4:
            four.set()
        if len(runs) == 2:
            raise RuntimeError("boom")
        async with sessions() as session:  # the worker's own sessions work
            await session.execute(text("SELECT 1"))

    async def handler(payload: dict[str, Any], context: JobContext) -> None:
        return None

    worker = make_worker(
        handlers={"test.none": handler},
        poll_interval=30,
        periodic={"tick": Periodic(interval=0.2, task=tick)},
    )
    with caplog.at_level(logging.WARNING, logger="conduit.jobs"):
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(four.wait(), 5)
        worker.stop()
        await asyncio.wait_for(task, 5)
    gaps = [later - earlier for earlier, later in itertools.pairwise(runs)]
    assert all(0.15 < gap < 2 for gap in gaps), gaps  # the poll is 30 s: the task wakes the loop
    assert "periodic task tick failed: RuntimeError: boom" in caplog.text
    with pytest.raises(ValueError, match="periodic intervals"):
        make_worker(handlers={}, periodic={"never": Periodic(interval=0, task=tick)})


async def test_a_claim_takes_at_most_the_free_slots_and_two_workers_never_share_a_job(
    make_worker: MakeWorker, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    ids = await add_jobs(sessionmaker, "test.batch", [{"i": i} for i in range(30)])
    handlers = {"test.batch": Recording()}
    first = make_worker(handlers=handlers, name="a")
    second = make_worker(handlers=handlers, name="b")
    await first.start()
    await second.start()
    # Both claim at once, repeatedly, 7 at a time: one statement each, never a job twice.
    claimed: list[int] = []
    for _ in range(3):
        batches = await asyncio.gather(
            first._claim([(["test.batch"], 7)]), second._claim([(["test.batch"], 7)])
        )
        for jobs, _ in batches:
            assert len(jobs) <= 7
            claimed += [job.id for job in jobs]
    assert len(claimed) == len(set(claimed))  # each job once
    assert set(claimed) == set(ids)  # 3 rounds of 2 x 7 slots cover the 30 jobs


async def test_a_handler_marks_its_job_done_in_its_own_transaction(
    make_worker: MakeWorker, sessionmaker: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    async def commits(payload: dict[str, Any], context: JobContext) -> None:
        async with context.sessionmaker.begin() as session:
            await session.execute(text("SELECT 1"))
            await context.mark_done(session)
            if payload["fail"]:
                raise RuntimeError("rolled back after marking")

    [done, rolled_back] = await add_jobs(
        sessionmaker, "test.marks", [{"fail": False}, {"fail": True}], max_attempts=1
    )
    worker = make_worker(handlers={"test.marks": commits})
    assert await worker.run_pending() == 2
    row = await fetch_job(database_url, done)
    assert (row["status"], row["locked_until"], row["last_error"]) == ("done", None, None)
    # The mark rolled back with the handler's transaction: the worker records the failure.
    row = await fetch_job(database_url, rolled_back)
    assert (row["status"], row["last_error"]) == (
        "failed",
        "RuntimeError: rolled back after marking",
    )


async def test_a_mark_on_a_job_taken_over_changes_nothing(
    make_worker: MakeWorker,
    sessionmaker: async_sessionmaker[AsyncSession],
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def late(payload: dict[str, Any], context: JobContext) -> None:
        # Another worker took the job over meanwhile (its lease expired).
        await set_running(
            database_url,
            context.job_id,
            attempts=2,
            locked_by="other",
            lease=timedelta(minutes=5),
        )
        async with context.sessionmaker.begin() as session:
            await context.mark_done(session)

    [job_id] = await add_jobs(sessionmaker, "test.late", [{}])
    with caplog.at_level(logging.WARNING, logger="conduit.jobs"):
        assert await make_worker(handlers={"test.late": late}).run_pending() == 1
    row = await fetch_job(database_url, job_id)
    assert (row["status"], row["locked_by"]) == ("running", "other")
    assert "was taken over by another worker" in caplog.text


async def test_every_job_runs_exactly_once_under_batched_claims_slow_handlers_and_short_leases(
    make_worker: MakeWorker, sessionmaker: async_sessionmaker[AsyncSession], database_url: str
) -> None:
    """Two running workers with lingering batched claims, own-slot and shared lanes, handlers
    that outlast the lease (kept by the heartbeat) and half marking their job done
    themselves: no job may run twice, or be left undone."""
    runs: Counter[int] = Counter()

    async def handler(payload: dict[str, Any], context: JobContext) -> None:
        runs[context.job_id] += 1
        await asyncio.sleep(payload["sleep"])
        if payload["marks"]:
            async with context.sessionmaker.begin() as session:
                await context.mark_done(session)

    handlers = {"test.slow": handler, "test.own": handler}
    payloads = [{"sleep": (i % 7) * 0.09, "marks": i % 2 == 0} for i in range(40)]
    ids = await add_jobs(sessionmaker, "test.slow", payloads[:20])
    ids += await add_jobs(sessionmaker, "test.own", payloads[20:])
    workers = [
        make_worker(
            handlers=handlers,
            name=f"w{n}",
            concurrency=2,
            kind_concurrency={"test.own": 4},
            lease_seconds=0.3,
            claim_linger=0.02,
            poll_interval=0.1,
        )
        for n in range(2)  # the database server's connections are shared: few
    ]
    tasks = [asyncio.create_task(worker.run()) for worker in workers]
    try:
        for job_id in ids:
            await wait_for_status(database_url, job_id, "done", within=20)
        await asyncio.sleep(0.5)  # room for a wrongful second run to show up
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert runs == dict.fromkeys(ids, 1)
    for job_id in ids:
        row = await fetch_job(database_url, job_id)
        assert (row["status"], row["attempts"]) == ("done", 1)
