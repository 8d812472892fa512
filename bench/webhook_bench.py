"""Benchmark webhook delivery: end-to-end latency (commit to receipt) and deliveries per second
with 1 and then 2 `conduit worker` processes.

In a scratch database (created on the server of DATABASE_URL, migrated, dropped at the end),
it makes one user with 10 endpoints pointing at local receivers (an asyncio HTTP server in a
process of its own, one port per endpoint), starts the workers, then commits 1,000 events
through the transactional outbox (`outbox.emit`), spread round-robin over the endpoints
(`--fanout`: every event to every endpoint), in two scenarios: "stream", one transaction per
event as the API makes them (as fast as one client can, or `--rate` per second), and
"batch", all in one transaction (a backlog to drain). Each receipt is matched to its event's
commit time.

    python -m bench.webhook_bench [--events 1000] [--endpoints 10] [--workers 1,2]
        [--scenarios stream,batch] [--rate 0 (as fast as possible) | events per second]
        [--fanout]

DATABASE_URL: a server where a database may be created (default
postgresql://postgres@127.0.0.1/postgres). REDIS_URL (default redis://127.0.0.1:6379/0) is
handed to the workers; nothing is written to it (no endpoint has a rate limit).
A script, not a test: exits 0 once it has printed its table, 1 on a setup failure.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
STARTUP_TIMEOUT = 30.0
DELIVERY_TIMEOUT = 300.0
_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


# -- receivers (their own process: the parent's work must not slow them down) --------------


async def _serve_receivers(count: int, ports: Any, stop: EventType, out: str) -> None:
    seen: list[tuple[int, int, float]] = []  # (seq, endpoint index, time received)
    open_writers: set[asyncio.StreamWriter] = set()

    def handler_for(index: int) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            open_writers.add(writer)
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    body = await reader.readexactly(length)
                    seen.append((orjson.loads(body)["data"]["seq"], index, time.time()))
                    writer.write(_RESPONSE)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                open_writers.discard(writer)
                writer.close()

        return handle

    servers = [await asyncio.start_server(handler_for(i), HOST, 0) for i in range(count)]
    ports.put([server.sockets[0].getsockname()[1] for server in servers])
    await asyncio.to_thread(stop.wait)
    for server in servers:
        server.close()
    for writer in list(open_writers):
        writer.close()  # the handlers then end on their own, before the loop closes
    await asyncio.sleep(0.1)
    await asyncio.to_thread(Path(out).write_bytes, orjson.dumps(seen))


def _receiver_main(count: int, ports: Any, stop: EventType, out: str) -> None:
    asyncio.run(_serve_receivers(count, ports, stop, out))


class Receivers:
    """`count` HTTP receivers on loopback, in a child process; `collect()` stops them."""

    def __init__(self, count: int, workdir: Path, run: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        queue = context.Queue()
        self._out = workdir / f"received-{run}.json"
        self._proc = context.Process(
            target=_receiver_main, args=(count, queue, self._stop, str(self._out)), daemon=True
        )
        self._proc.start()
        self.ports: list[int] = queue.get(timeout=STARTUP_TIMEOUT)

    def collect(self) -> list[tuple[int, int, float]]:
        """Stop the receivers and return every (seq, endpoint, time) they saw."""
        self._stop.set()
        self._proc.join(STARTUP_TIMEOUT)
        return [tuple(row) for row in orjson.loads(self._out.read_bytes())]  # type: ignore[misc]


# -- database --------------------------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def create_database(admin_url: str) -> str:
    """A fresh, migrated scratch database; return its URL."""
    from service.infra.migrate import upgrade_async

    name = f"conduit_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = _with_database(admin_url, name)
    await upgrade_async(url)
    return url


async def drop_database(admin_url: str, url: str) -> None:
    """Drop the scratch database."""
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def setup_endpoints(url: str, ports: Sequence[int], fanout: bool) -> list[uuid.UUID]:
    """Empty the webhook tables, (re)create the user and one endpoint per receiver port."""
    from service.webhooks.signing import generate_secret

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "TRUNCATE jobs, webhook_attempts, webhook_messages, webhook_events,"
            " webhook_endpoints, users RESTART IDENTITY CASCADE"
        )
        owner = await conn.fetchval(
            "INSERT INTO users (username, email, password_hash)"
            " VALUES ('bench', 'bench@example.com', 'x') RETURNING id"
        )
        ids = [uuid.uuid4() for _ in ports]
        await conn.executemany(
            "INSERT INTO webhook_endpoints (id, owner_id, url, events, secret)"
            " VALUES ($1, $2, $3, $4, $5)",
            [
                (i, owner, f"http://{HOST}:{port}/hook", ["*"], generate_secret())
                for i, port in zip(ids, ports, strict=True)
            ],
        )
    finally:
        await conn.close()
    return ids


async def emit_events(
    url: str,
    events: int,
    endpoints: Sequence[uuid.UUID],
    *,
    fanout: bool,
    rate: float,
    batch: bool,
) -> dict[int, float]:
    """Commit `events` events, one transaction each (`batch`: all in one); return each one's
    commit time."""
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from service.infra.settings import normalise_database_url
    from service.webhooks import outbox

    engine = create_async_engine(normalise_database_url(url), pool_size=2)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    committed: dict[int, float] = {}
    began = time.monotonic()

    async def one(session: Any, seq: int) -> None:
        await outbox.emit(
            session=session,
            event_type="article.created",
            data={"seq": seq, "article": {"slug": f"article-{seq}", "title": "Bench"}},
            audience=None,
            endpoint_id=None if fanout else endpoints[seq % len(endpoints)],
        )

    try:
        if batch:
            async with sessions.begin() as session:
                for seq in range(events):
                    await one(session, seq)
            at = time.time()
            committed = dict.fromkeys(range(events), at)
        for seq in range(0 if batch else events):
            if rate > 0:
                await asyncio.sleep(max(0.0, began + seq / rate - time.monotonic()))
            async with sessions.begin() as session:
                await one(session, seq)
            committed[seq] = time.time()
    finally:
        await engine.dispose()
    return committed


async def count_settled(url: str) -> tuple[int, int]:
    """(messages, messages no longer pending)."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS total, count(*) FILTER (WHERE status <> 'pending') AS settled"
            " FROM webhook_messages"
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row["total"]), int(row["settled"])


async def count_jobs(url: str) -> int:
    """Delivery jobs run (one per attempt, plus one per postponement)."""
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM jobs WHERE kind = 'webhook.deliver'"))
    finally:
        await conn.close()


# -- workers ---------------------------------------------------------------------------------


def start_workers(count: int, url: str, redis_url: str, workdir: Path) -> list[Any]:
    """Start `count` `conduit worker` processes and wait until each logged its start."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("APP_ENV", "SECRET_KEY", "SMTP_URL", "WORKER_IN_PROCESS")
    }
    env.update(
        {
            "DATABASE_URL": url,
            "REDIS_URL": redis_url,
            "DATA_DIR": str(workdir / "data"),
            "WEBHOOK_ALLOWLIST": f"{HOST}/32",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    procs = []
    for n in range(count):
        log = workdir / f"worker-{count}-{n}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "worker"],
                cwd=REPO_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append((proc, log))
    deadline = time.monotonic() + STARTUP_TIMEOUT
    for proc, log in procs:
        while "worker started" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.05)
    time.sleep(0.5)  # LISTEN is up shortly after the start line
    return procs


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_workers(procs: Sequence[Any]) -> None:
    """SIGTERM every worker and wait (kill after 15 s)."""
    for proc, _ in procs:
        proc.send_signal(signal.SIGTERM)
    for proc, _ in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- one run ---------------------------------------------------------------------------------


@dataclass
class Result:
    """Figures of one run."""

    scenario: str
    workers: int
    deliveries: int
    received: int
    duplicates: int
    emit_seconds: float
    total_seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    worker_cpu: float  # CPU seconds the worker processes used during the run
    jobs: int  # delivery jobs (attempts + postponements)

    @property
    def per_second(self) -> float:
        """Deliveries per second, first commit to last receipt."""
        return self.received / self.total_seconds if self.total_seconds else 0.0


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted `values`."""
    index = min(len(values) - 1, max(0, round(fraction * len(values) + 0.5) - 1))
    return values[index]


async def run_once(
    args: argparse.Namespace, url: str, scenario: str, workers: int, workdir: Path
) -> Result:
    """Fresh tables and receivers, `workers` processes, the events; measure."""
    receivers = Receivers(args.endpoints, workdir, f"{scenario}-{workers}")
    endpoints = await setup_endpoints(url, receivers.ports, args.fanout)
    procs = await asyncio.to_thread(start_workers, workers, url, args.redis_url, workdir)
    cpu_before = sum(cpu_seconds(proc.pid) for proc, _ in procs)
    cpu_used = 0.0
    try:
        committed = await emit_events(
            url,
            args.events,
            endpoints,
            fanout=args.fanout,
            rate=args.rate,
            batch=scenario == "batch",
        )
        first_commit = min(committed.values())
        emitted = max(committed.values()) - first_commit
        expected = args.events * (args.endpoints if args.fanout else 1)
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while True:
            total, settled = await count_settled(url)
            if total == expected and settled == total:
                break
            if time.monotonic() > deadline:
                print(f"  timed out: {settled}/{expected} settled", file=sys.stderr)
                break
            await asyncio.sleep(0.05)
        cpu_used = sum(cpu_seconds(proc.pid) for proc, _ in procs) - cpu_before
    finally:
        await asyncio.to_thread(stop_workers, procs)
    seen = receivers.collect()
    first: dict[tuple[int, int], float] = {}
    for seq, endpoint, at in seen:
        first[(seq, endpoint)] = min(at, first.get((seq, endpoint), at))
    latencies = sorted((at - committed[seq]) * 1000 for (seq, _), at in first.items())
    last = max(first.values()) if first else first_commit
    return Result(
        scenario=scenario,
        workers=workers,
        deliveries=expected,
        received=len(first),
        duplicates=len(seen) - len(first),
        emit_seconds=emitted,
        total_seconds=last - first_commit,
        p50_ms=percentile(latencies, 0.50) if latencies else float("nan"),
        p95_ms=percentile(latencies, 0.95) if latencies else float("nan"),
        p99_ms=percentile(latencies, 0.99) if latencies else float("nan"),
        max_ms=latencies[-1] if latencies else float("nan"),
        worker_cpu=cpu_used,
        jobs=await count_jobs(url),
    )


def print_table(results: Sequence[Result], args: argparse.Namespace) -> None:
    """The figures, one row per scenario and worker count."""
    mode = "every event to every endpoint" if args.fanout else "round-robin, one endpoint each"
    print(f"\n{args.events} events, {args.endpoints} endpoints ({mode}); {os.cpu_count()} CPUs\n")
    header = (
        f"{'scenario':<8} | {'workers':>7} | {'delivered':>11} | {'dup':>4} | {'emit s':>7} | "
        f"{'total s':>7} | {'deliv/s':>8} | {'p50 ms':>8} | {'p95 ms':>8} | {'p99 ms':>8} | "
        f"{'max ms':>8} | "
        f"{'cpu ms/d':>8} | {'jobs':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.scenario:<8} | {r.workers:>7} | {r.received:>5}/{r.deliveries:<5} | "
            f"{r.duplicates:>4} | {r.emit_seconds:>7.2f} | {r.total_seconds:>7.2f} | "
            f"{r.per_second:>8.1f} | {r.p50_ms:>8.1f} | {r.p95_ms:>8.1f} | {r.p99_ms:>8.1f} | "
            f"{r.max_ms:>8.1f} | "
            f"{1000 * r.worker_cpu / max(r.received, 1):>8.2f} | {r.jobs:>5}"
        )
    pace = f"{args.rate:g} events/s" if args.rate > 0 else "as fast as one client commits"
    print(
        f"\nstream: one transaction per event, {pace}; batch: all events in one transaction"
        "\n(a bulk change: the time to drain a backlog)."
        "\nlatency: commit of the event's transaction to the receiver reading the request;"
        "\ndeliv/s: deliveries from the first commit to the last receipt;"
        "\ncpu ms/d: CPU time of the worker processes per delivery;"
        "\njobs: delivery jobs run (one per attempt, one more per postponement)."
    )
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument(
        "--workers", default="1,2", help="comma-separated worker process counts (default 1,2)"
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="events per second (0: as fast as possible)"
    )
    parser.add_argument("--fanout", action="store_true", help="every event to every endpoint")
    parser.add_argument(
        "--scenarios", default="stream,batch", help="stream and/or batch (default both)"
    )
    args = parser.parse_args(argv)
    args.database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    args.database_url = args.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    args.redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    args.worker_counts = [int(n) for n in args.workers.split(",") if n.strip()]
    args.scenario_names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    if set(args.scenario_names) - {"stream", "batch"}:
        parser.error("--scenarios: stream, batch")
    return args


async def amain(args: argparse.Namespace) -> int:
    """Create the scratch database, run each worker count, print the table, clean up."""
    try:
        url = await create_database(args.database_url)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"cannot create the scratch database: {exc}", file=sys.stderr)
        return 1
    results: list[Result] = []
    try:
        with tempfile.TemporaryDirectory(prefix="webhook-bench-") as tmp:
            for scenario in args.scenario_names:
                for workers in args.worker_counts:
                    print(f"{scenario}: {workers} worker process(es)...", file=sys.stderr)
                    results.append(await run_once(args, url, scenario, workers, Path(tmp)))
    except RuntimeError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    finally:
        await drop_database(args.database_url, url)
    print_table(results, args)
    if any(r.received < r.deliveries for r in results):
        print("\nWARNING: some deliveries did not arrive", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark."""
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
