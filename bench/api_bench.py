"""Benchmark the Conduit API on a seeded database: wrk on the hot endpoints, a Locust mix, RSS.

Creates a scratch database (`perf_bench_<hex>`) on the PostgreSQL server of `--database-url`,
migrates and seeds it (`conduit seed`; 20 articles with tags by default, the issue's reference
setup, or `--big` for 10,000 users and 100,000 articles), then for each cache mode
(`CACHE_ENABLED=false` and `true`) starts `hypercorn --config hypercorn.toml service.asgi:app`
on a free loopback port (`--workers` processes, access log off, rate limits raised) and:

- runs wrk (2 threads, 64 connections, 10 s, `--latency`, `--rounds` rounds) on
  `GET /api/v1/articles?limit=20`, `/api/v1/tags`, `/api/v1/articles/{slug}` (anonymous) and
  the article list with an `Authorization` header;
- runs the shipped Locust scenarios (`tests/load/locustfile.py`) headless;

then runs wrk on two reference apps under the same Hypercorn config (a bare ASGI app, and a
trivial Flask view through the adapter, the issue's scale point), and prints req/s,
p50/p95/p99, non-2xx and socket errors and the server's RSS (sum over its worker processes) per
row, then each cache mode against the issue's targets: as given, and scaled to this machine by
the trivial view (~1,500 req/s where the peers' figures were measured).

    python -m bench.api_bench [--big] [--rounds 2] [--workers 1] [--cache off,on]
    python -m bench.api_bench --soak 10        # steady Locust mix, RSS every minute

The Redis database of `--redis-url` is flushed before every server start. The scratch database
is dropped at the end (`--keep-db` keeps it). Exit status: 0 once the table is printed (targets
met or not), 1 when a step fails, 2 when wrk or Locust is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import http.client
import importlib.util
import itertools
import json
import math
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = REPO_ROOT / "tests" / "load" / "locustfile.py"
HOST = "127.0.0.1"
API = "/api/v1"
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
# Extra time a wrk or Locust run may take beyond its duration before it is killed.
RUN_SLACK = 60.0
STEP_TIMEOUT = 900.0
WARMUP_REQUESTS = 20
SEED_PASSWORD = "password123"  # noqa: S105 (the seeded users' documented password)
SMALL_SEED = ("--users", "100", "--articles", "20")
BIG_SEED = ("--users", "10000", "--articles", "100000")
# Far above what one load generator can send: the limiter's cost stays in, its 429s do not.
RAISED_LIMITS = {
    "RATE_LIMIT_ANONYMOUS_PER_MINUTE": "100000000",
    "RATE_LIMIT_AUTHENTICATED_PER_MINUTE": "100000000",
    "RATE_LIMIT_AUTH_PER_MINUTE": "100000000",
}

# Issue 6 targets (one worker, wrk -t2 -c64 -d10s, anonymous): the best peer figures.
BEST_LIST_RPS = 238.0
TARGET_LIST_RPS = 2 * BEST_LIST_RPS
TARGET_LIST_P99_MS = 150.0
TARGET_TAGS_RPS = 1642.0
TARGET_SINGLE_RPS = 870.0

# wrk's `done` hook prints one JSON line: wrk's own text report has no p95.
WRK_REPORT_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"p50":%d,"p95":%d,"p99":%d,'
    .. '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


class BenchError(RuntimeError):
    """A step failed; the message says which and why."""


@dataclass(frozen=True)
class Endpoint:
    """One wrk target."""

    name: str
    path: str
    authenticated: bool = False
    method: str = "GET"
    body: str | None = None  # JSON


@dataclass(frozen=True)
class WrkRun:
    """What one wrk run reported."""

    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int


@dataclass(frozen=True)
class LocustRun:
    """The aggregated line of a headless Locust run."""

    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    top_failures: list[str]
    slowest: list[str]


@dataclass(frozen=True)
class Tree:
    """A checkout whose API is served: its root and the Python of its own environment."""

    root: Path
    python: str
    suffix: str = ""  # added to the cache column of its rows ("" for this checkout)


THIS_TREE = Tree(root=REPO_ROOT, python=sys.executable)


@dataclass
class Row:
    """One line of the result table: a cache mode and a load (rounds combined)."""

    cache: str
    name: str
    runs: list[WrkRun] = field(default_factory=list)
    locust: LocustRun | None = None
    rss_mb: float = 0.0

    @property
    def rps(self) -> float:
        """Median req/s over the rounds."""
        if self.locust is not None:
            return self.locust.rps
        return statistics.median(r.rps for r in self.runs)

    def pct(self, attr: str) -> float:
        """Median of a latency percentile over the rounds (ms)."""
        if self.locust is not None:
            value: float = getattr(self.locust, attr)
            return value
        values: list[float] = [getattr(r, attr) for r in self.runs]
        return statistics.median(values)

    @property
    def non_2xx(self) -> int:
        """Non-2xx answers (Locust: failures) summed over the rounds."""
        if self.locust is not None:
            return self.locust.failures
        return sum(r.non_2xx for r in self.runs)

    @property
    def socket_errors(self) -> int:
        """Connect, read, write errors and timeouts summed over the rounds."""
        return sum(r.socket_errors for r in self.runs)


# ---------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    """A TCP port on the loopback address that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(root: Path = REPO_ROOT, **extra: str) -> dict[str, str]:
    """This process's environment without settings that would leak into the child, plus extra;
    `root` is the checkout whose code the child runs."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LOAD_", "RATE_LIMIT_", "DATABASE_", "REDIS_", "CACHE_"))
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env | {"PYTHONUNBUFFERED": "1"} | extra


def run_step(what: str, cmd: Sequence[str], env: dict[str, str], timeout: float) -> str:
    """Run a command to completion; BenchError with its output when it fails."""
    try:
        done = subprocess.run(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what}: no answer after {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise BenchError(
            f"{what} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}"
        )
    return done.stdout


def group_pids(pgid: int) -> list[int]:
    """Processes of the process group `pgid` (the server and its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, pgrp, ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def vm_rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def server_rss_mb(pgid: int) -> float:
    """RSS of the server's worker processes together (MB); the master's when it has none.

    Hypercorn's master only supervises: the workers (multiprocessing `spawn_main`) serve.
    """
    workers, others = 0, 0
    for pid in group_pids(pgid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            workers += vm_rss_kib(pid)
        elif b"resource_tracker" not in cmdline:
            others += vm_rss_kib(pid)
    return (workers or others) / 1024


@dataclass
class Server:
    """A running Hypercorn server."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base(self) -> str:
        """Its base URL."""
        return f"http://{HOST}:{self.port}"

    def rss_mb(self) -> float:
        """RSS of its workers (MB)."""
        return server_rss_mb(self.proc.pid)

    def tail(self, limit: int = 3000) -> str:
        """The end of its log."""
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


def print_server_problems(server: Server, limit: int = 8) -> None:
    """The server's warnings and errors, grouped: what the non-2xx answers were about."""
    counts: dict[str, int] = {}
    for line in server.tail(5_000_000).splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            if "Traceback" in line:
                key = "Traceback (see the server log)"
                counts[key] = counts.get(key, 0) + 1
            continue
        if isinstance(record, dict) and record.get("level") in ("WARNING", "ERROR", "CRITICAL"):
            text = f"{record['level']} {record.get('logger', '')}: {record.get('message', '')}"
            counts[text[:240]] = counts.get(text[:240], 0) + 1
    if counts:
        print(f"server warnings/errors ({sum(counts.values())}), most frequent first:")
        for text, count in sorted(counts.items(), key=lambda item: -item[1])[:limit]:
            print(f"  {count}x {text}")


def http_request(
    port: int, method: str, path: str, body: bytes | None = None, token: str | None = None
) -> tuple[int, bytes]:
    """One HTTP request to the local server; status and body."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token is not None:
        headers["Authorization"] = f"Token {token}"
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_until_ready(server: Server, path: str = "/readyz") -> None:
    """Poll `path` until it answers 200, the server dies, or STARTUP_TIMEOUT passes."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(f"server exited with {server.proc.returncode}:\n{server.tail()}")
        with suppress(OSError):
            if http_request(server.port, "GET", path)[0] == 200:
                return
        time.sleep(0.2)
    raise BenchError(f"server not ready after {STARTUP_TIMEOUT:.0f} s:\n{server.tail()}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (Hypercorn's graceful shutdown), then SIGTERM, then SIGKILL the process group."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if proc.poll() is not None:
            break
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"  server pid {proc.pid} ignored {sig.name}", file=sys.stderr)
    # The group belongs to this server alone (start_new_session): its workers must not
    # outlive the run.
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT)


@contextmanager
def hypercorn_server(
    env: dict[str, str],
    workers: int,
    workdir: Path,
    label: str,
    app: str = "service.asgi:app",
    ready_path: str = "/readyz",
    tree: Tree | None = None,
) -> Iterator[Server]:
    """`hypercorn --config hypercorn.toml <app>` on a free loopback port, from `tree` (this
    checkout by default)."""
    tree = tree or THIS_TREE
    port = free_port()
    cmd = [
        tree.python, "-m", "hypercorn",
        "--config", str(tree.root / "hypercorn.toml"),
        "--bind", f"{HOST}:{port}",
        "--workers", str(workers),
        app,
    ]  # fmt: skip
    log = workdir / f"server-{label}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=tree.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(proc=proc, port=port, log=log)
    try:
        wait_until_ready(server, ready_path)
        yield server
    finally:
        stop_server(proc)


# ---------------------------------------------------------------------------------------------
# Database and Redis


def admin_and_scratch_urls(admin_url: str, name: str) -> tuple[str, str]:
    """The plain `postgresql://` admin URL and the same server's URL of database `name`."""
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if admin_url.startswith(prefix):
            admin_url = "postgresql://" + admin_url[len(prefix) :]
    parts = urlsplit(admin_url)
    return admin_url, urlunsplit(parts._replace(path=f"/{name}"))


async def _admin(admin_url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def create_database(admin_url: str, name: str) -> None:
    """CREATE DATABASE `name` (a fresh name: nothing is overwritten)."""
    try:
        asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        raise BenchError(f"cannot create database {name}: {exc}") from exc


def drop_database(admin_url: str, name: str) -> None:
    """DROP DATABASE `name`, disconnecting whoever is still on it."""
    try:
        asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    except Exception as exc:
        print(f"could not drop database {name}: {exc}", file=sys.stderr)


def vacuum_analyze(url: str) -> None:
    """VACUUM (ANALYZE) the seeded database.

    `conduit seed` only ANALYZEs: until a vacuum sets the visibility map no index-only scan
    pays off (the count of the article list is then a sequential scan), and autovacuum may be
    off or not have run yet.
    """
    asyncio.run(_admin(url, "VACUUM (ANALYZE)"))


def flush_redis(url: str) -> None:
    """Empty the benchmark's Redis database (cache entries, rate-limit counters)."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=5)
        client.flushdb()
        client.close()
    except redis.RedisError as exc:
        raise BenchError(f"Redis at {url}: {exc}") from exc


def prepare_database(args: argparse.Namespace, url: str) -> None:
    """Migrate and seed the scratch database, then vacuum it."""
    env = child_env(DATABASE_URL=url, LOG_LEVEL="WARNING")
    started = time.monotonic()
    run_step("conduit migrate", [sys.executable, "-m", "service.cli", "migrate"], env, 300)
    seed_args = BIG_SEED if args.big else SMALL_SEED
    if args.seed_args:
        seed_args = tuple(args.seed_args.split())
    summary = run_step(
        "conduit seed",
        [sys.executable, "-m", "service.cli", "seed", *seed_args, "--quiet"],
        env,
        STEP_TIMEOUT,
    )
    vacuum_analyze(url)
    first = summary.strip().splitlines()[0] if summary.strip() else ""
    print(
        f"database: conduit seed {' '.join(seed_args)} ({first}); "
        f"migrated, seeded and vacuumed in {time.monotonic() - started:.1f} s",
        flush=True,
    )


def seeded_users(seed_args: Sequence[str]) -> int:
    """The --users figure of a seed command line (conduit seed's default otherwise)."""
    for flag, value in itertools.pairwise(seed_args):
        if flag == "--users":
            return int(value.replace("_", ""))
    return 100


# ---------------------------------------------------------------------------------------------
# Load


def login_token(port: int, email: str) -> str:
    """Log a seeded user in; their token."""
    body = json.dumps({"user": {"email": email, "password": SEED_PASSWORD}}).encode()
    status, answer = http_request(port, "POST", f"{API}/users/login", body=body)
    if status != 200:
        raise BenchError(f"login as {email}: HTTP {status} {answer[:300]!r}")
    token: str = json.loads(answer)["user"]["token"]
    return token


def someone_elses_article(port: int, token: str) -> tuple[str, str]:
    """The slug and author of the newest article the signed-in user did not write."""
    status, answer = http_request(port, "GET", f"{API}/user", token=token)
    if status != 200:
        raise BenchError(f"GET {API}/user: HTTP {status} {answer[:300]!r}")
    me = json.loads(answer)["user"]["username"]
    status, answer = http_request(port, "GET", f"{API}/articles?limit=20")
    articles = json.loads(answer).get("articles") if status == 200 else None
    for article in articles or []:
        if article["author"]["username"] != me:
            return article["slug"], article["author"]["username"]
    raise BenchError(f"GET {API}/articles?limit=20: HTTP {status}, no article by another user")


COMMENT_BODY = json.dumps({"comment": {"body": "Measured by bench.api_bench"}})


def endpoints(slug: str, author: str) -> list[Endpoint]:
    """The wrk targets: anonymous reads, signed-in reads and signed-in writes."""
    return [
        Endpoint("list", f"{API}/articles?limit=20"),
        Endpoint("tags", f"{API}/tags"),
        Endpoint("single", f"{API}/articles/{slug}"),
        Endpoint("list auth", f"{API}/articles?limit=20", authenticated=True),
        Endpoint("feed auth", f"{API}/articles/feed?limit=20", authenticated=True),
        Endpoint("single auth", f"{API}/articles/{slug}", authenticated=True),
        Endpoint(
            "comment",
            f"{API}/articles/{slug}/comments",
            authenticated=True,
            method="POST",
            body=COMMENT_BODY,
        ),
        # Favoriting and following again are answered like the first time (200, no change):
        # the write path without the table growing under the benchmark.
        Endpoint("favorite", f"{API}/articles/{slug}/favorite", authenticated=True, method="POST"),
        Endpoint("follow", f"{API}/profiles/{author}/follow", authenticated=True, method="POST"),
    ]


ROW_NAMES = [e.name for e in endpoints("slug", "author")]


def write_lua(workdir: Path, target: Endpoint, token: str | None, label: str = "") -> Path:
    """The wrk script of one target: method, body and Authorization header, and the report
    hook."""
    path = workdir / f"wrk-{target.name.replace(' ', '-')}{label}.lua"
    lines = [f'wrk.method = "{target.method}"']
    if token and target.authenticated:
        lines.append(f'wrk.headers["Authorization"] = "Token {token}"')
    if target.body is not None:
        lines.append('wrk.headers["Content-Type"] = "application/json"')
        lines.append(f"wrk.body = {json.dumps(target.body)}")
    path.write_text("\n".join(lines) + "\n" + WRK_REPORT_LUA)
    return path


def parse_wrk(output: str) -> WrkRun:
    """The JSON line of the report hook."""
    for line in output.splitlines():
        if line.startswith("BENCH "):
            data = json.loads(line[len("BENCH ") :])
            seconds = data["duration_us"] / 1e6
            return WrkRun(
                rps=data["requests"] / seconds if seconds > 0 else 0.0,
                p50_ms=data["p50"] / 1000,
                p95_ms=data["p95"] / 1000,
                p99_ms=data["p99"] / 1000,
                requests=data["requests"],
                non_2xx=data["status"],
                socket_errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
            )
    raise BenchError(f"no report line in wrk output:\n{output[-2000:]}")


def run_wrk(args: argparse.Namespace, server: Server, path: str, lua: Path) -> WrkRun:
    """wrk -t2 -c<connections> -d<duration>s --latency against the server."""
    cmd = [
        "wrk", "-t2", f"-c{args.connections}", f"-d{args.duration}s",
        f"--timeout={args.wrk_timeout:g}s", "--latency", "-s", str(lua),
        f"{server.base}{path}",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.duration + RUN_SLACK, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk on {path} did not finish") from exc
    if done.returncode != 0:
        raise BenchError(f"wrk on {path} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return parse_wrk(done.stdout)


def warm_up(server: Server, target: Endpoint, token: str | None) -> None:
    """A few requests first: connections pooled, statements prepared, caches filled."""
    body = target.body.encode() if target.body is not None else None
    token = token if target.authenticated else None
    for _ in range(WARMUP_REQUESTS):
        status, answer = http_request(server.port, target.method, target.path, body, token)
        if not 200 <= status < 300:
            raise BenchError(
                f"warm-up {target.method} {target.path}: HTTP {status} {answer[:300]!r}"
            )


def visitor_kinds(server: Server) -> str:
    """Every Locust visitor kind, integrations only when the server has OAuth and clients."""
    status, body = http_request(server.port, "GET", f"{API}/openapi.json")
    paths = json.loads(body).get("paths", {}) if status == 200 else {}
    kinds = ["reader", "member", "author"]
    if f"{API}/oauth/token" in paths and f"{API}/clients" in paths:
        kinds.append("integration")
    return ",".join(kinds)


def _ms(value: str) -> float:
    return float(value) if value not in ("", "N/A") else 0.0


def run_locust(
    args: argparse.Namespace,
    server: Server,
    workdir: Path,
    label: str,
    minutes: float | None = None,
    on_minute: Callable[[int], None] | None = None,
) -> LocustRun:
    """The shipped scenarios, headless; the Aggregated line of their statistics.

    Runs `minutes` (else --locust-time seconds), calling `on_minute(n)` after each full minute.
    """
    prefix = workdir / f"locust-{label}"
    seconds = round(minutes * 60) if minutes is not None else args.locust_time
    cmd = [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--headless", "-u", str(args.locust_users), "-r", str(args.locust_rate),
        "-t", f"{seconds}s", "--stop-timeout", "10",
        "--host", server.base, "--only-summary", "--csv", str(prefix),
    ]  # fmt: skip
    env = child_env(
        LOAD_USERS=str(min(args.users, args.locust_max_login)),
        LOAD_CLASSES=visitor_kinds(server),
        LOAD_THINK_SCALE=f"{args.locust_think_scale:g}",
    )
    log = workdir / f"locust-{label}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        started = time.monotonic()
        deadline = started + seconds + RUN_SLACK
        minute = 1
        while proc.poll() is None:
            now = time.monotonic()
            if now > deadline:
                raise BenchError(f"locust did not stop:\n{log.read_text(errors='replace')[-2000:]}")
            if on_minute is not None and now - started >= 60 * minute and minute * 60 < seconds:
                on_minute(minute)
                minute += 1
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
    stats = Path(f"{prefix}_stats.csv")
    if not stats.exists():
        raise BenchError(f"locust wrote no statistics:\n{log.read_text(errors='replace')[-2000:]}")
    with stats.open() as file:
        rows = [row for row in csv.DictReader(file) if row["Name"] == "Aggregated"]
    if not rows:
        raise BenchError(f"no Aggregated line in {stats.name}")
    total = rows[0]
    with stats.open() as file:
        routes = [row for row in csv.DictReader(file) if row["Name"] != "Aggregated"]
    routes.sort(key=lambda r: -_ms(r["95%"]))
    slowest = [
        f"{r['Type']} {r['Name']}: {r['Request Count']} requests, p50 {_ms(r['50%']):.0f} "
        f"p95 {_ms(r['95%']):.0f} p99 {_ms(r['99%']):.0f} ms, {r['Failure Count']} failures"
        for r in routes[:5]
    ]
    failures_csv = Path(f"{prefix}_failures.csv")
    top: list[str] = []
    if failures_csv.exists():
        with failures_csv.open() as file:
            for row in sorted(csv.DictReader(file), key=lambda r: -int(r["Occurrences"]))[:5]:
                top.append(f"{row['Occurrences']}x {row['Method']} {row['Name']}: {row['Error']}")
    return LocustRun(
        requests=int(total["Request Count"]),
        failures=int(total["Failure Count"]),
        rps=float(total["Requests/s"]),
        p50_ms=_ms(total["50%"]),
        p95_ms=_ms(total["95%"]),
        p99_ms=_ms(total["99%"]),
        top_failures=top,
        slowest=slowest,
    )


# ---------------------------------------------------------------------------------------------
# Report


def print_table(rows: Sequence[Row], args: argparse.Namespace) -> None:
    """The result table: one line per cache mode and load."""
    bare = next((r for r in rows if r.cache == "-" and r.name == "bare asgi" and r.runs), None)
    header = (
        f"{'cache':<5} {'load':<12} {'req/s':>8} {'of bare':>7} {'rounds req/s':>17} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'sock err':>8} {'RSS MB':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        rounds = "/".join(f"{r.rps:.0f}" for r in row.runs) if row.runs else "locust"
        share = f"{row.rps / bare.rps:.3f}" if bare is not None and row.runs else "-"
        print(
            f"{row.cache:<5} {row.name:<12} {row.rps:>8.1f} {share:>7} {rounds:>17} "
            f"{row.pct('p50_ms'):>8.1f} {row.pct('p95_ms'):>8.1f} {row.pct('p99_ms'):>8.1f} "
            f"{row.non_2xx:>8} {row.socket_errors:>8} {row.rss_mb:>7.1f}"
        )
    print(
        f"(req/s and latencies: median over {args.rounds} wrk rounds; of bare: req/s as a share "
        "of the bare ASGI app's in this run; non-2xx and socket errors: summed; locust rows: "
        "non-2xx = failures; RSS: server workers after the row)"
    )
    for row in rows:
        if row.locust is None:
            continue
        print(f"locust, cache {row.cache}, slowest routes by p95:")
        for line in row.locust.slowest:
            print(f"  {line}")
        if row.locust.top_failures:
            print(f"locust failures (cache {row.cache}):")
            for line in row.locust.top_failures:
                print(f"  {line}")


def target_checks(by: dict[str, Row], errors: int, scale: float) -> list[tuple[str, bool]]:
    """The issue's checks, with the peers' req/s figures multiplied by `scale`."""
    lst, tags, single = by["list"], by["tags"], by["single"]
    list_target, tags_target = TARGET_LIST_RPS * scale, TARGET_TAGS_RPS * scale
    single_target = TARGET_SINGLE_RPS * scale
    return [
        (f"list {lst.rps:.0f} req/s >= {list_target:.0f}", lst.rps >= list_target),
        (
            f"list p99 {lst.pct('p99_ms'):.0f} ms < {TARGET_LIST_P99_MS:.0f}",
            lst.pct("p99_ms") < TARGET_LIST_P99_MS,
        ),
        (f"tags {tags.rps:.0f} >= {tags_target:.0f}", tags.rps >= tags_target),
        (f"single {single.rps:.0f} >= {single_target:.0f}", single.rps >= single_target),
        (f"non-2xx/errors {errors} == 0", errors == 0),
    ]


def verdict_line(checks: list[tuple[str, bool]]) -> str:
    """`MET — a: ok; b: ok` or `MISSED — ...`."""
    verdict = "MET" if all(ok for _, ok in checks) else "MISSED"
    return f"{verdict} — " + "; ".join(f"{text}: {'ok' if ok else 'MISSED'}" for text, ok in checks)


def print_targets(rows: Sequence[Row], args: argparse.Namespace) -> None:
    """Each cache mode against the issue's targets, as given and scaled to this machine."""
    if args.workers != 1:
        print(f"targets are for one worker process; this run used {args.workers}")
    references = {r.name: r for r in rows if r.cache == "-" and r.rps > 0}
    trivial = references.get("trivial flask")
    for cache in dict.fromkeys(r.cache for r in rows):
        by = {r.name: r for r in rows if r.cache == cache and r.runs}
        if not {"list", "tags", "single"} <= by.keys():
            continue
        errors = sum(r.non_2xx + r.socket_errors for r in rows if r.cache == cache)
        print(
            f"targets, cache {cache} (2x{BEST_LIST_RPS:.0f}, {TARGET_TAGS_RPS:.0f}, "
            f"{TARGET_SINGLE_RPS:.0f} req/s as given): {verdict_line(target_checks(by, errors, 1))}"
        )
        if trivial is not None:
            # The peers were measured where a trivial Flask view made ~1,500 req/s: the same
            # figures on a machine as fast as this one, by that scale point.
            scale = trivial.rps / REFERENCE_TRIVIAL_RPS
            print(
                f"  scaled to this machine (x{scale:.2f}: the trivial Flask view's "
                f"{trivial.rps:.0f} req/s here / {REFERENCE_TRIVIAL_RPS:.0f} there): "
                f"{verdict_line(target_checks(by, errors, scale))}"
            )
        for name, reference in references.items():
            shares = ", ".join(
                f"{load} {by[load].rps / reference.rps:.0%}" for load in ("list", "tags", "single")
            )
            print(
                f"  cache {cache} as a share of the {name} app's {reference.rps:.0f} req/s "
                f"(same Hypercorn config, this run): {shares}"
            )


# ---------------------------------------------------------------------------------------------
# Main


def server_env(
    args: argparse.Namespace,
    db_url: str,
    workdir: Path,
    cache: str,
    *,
    tree: Tree = THIS_TREE,
    redis_url: str | None = None,
) -> dict[str, str]:
    """The server's environment for one cache mode, running `tree`'s code."""
    env = child_env(
        tree.root,
        DATABASE_URL=db_url,
        REDIS_URL=redis_url or args.redis_url,
        SECRET_KEY=secrets.token_urlsafe(48),
        DATA_DIR=str(workdir / f"data{tree.suffix.replace('/', '-')}"),
        ACCESS_LOG="false",
        LOG_LEVEL="WARNING",
        WORKER_IN_PROCESS="false",
        CACHE_ENABLED="true" if cache == "on" else "false",
    )
    if args.no_rate_limit:
        env["RATE_LIMIT_ENABLED"] = "false"
    else:
        env |= RAISED_LIMITS
    for item in args.server_env:
        name, _, value = item.partition("=")
        env[name] = value
    return env


def cache_setting_known() -> bool:
    """Whether this build's settings have CACHE_ENABLED (the cache may not have landed)."""
    try:
        from service.infra.settings import Settings
    except ImportError:
        return False
    return "cache_enabled" in Settings.model_fields


def bench_cache_mode(args: argparse.Namespace, db_url: str, workdir: Path, cache: str) -> list[Row]:
    """Start a server with the cache on or off (one per checkout with --against); wrk rounds on
    each endpoint, the checkouts taking turns per endpoint (who goes first alternates by round);
    then Locust."""
    trees = [THIS_TREE, *args.against]
    rows: list[Row] = []
    with ExitStack() as stack:
        servers: list[Server] = []
        for tree in trees:
            redis_url = tree_redis_url(args.redis_url, tree)
            flush_redis(redis_url)
            env = server_env(args, db_url, workdir, cache, tree=tree, redis_url=redis_url)
            label = f"cache-{cache}{tree.suffix.replace('/', '-')}"
            servers.append(
                stack.enter_context(hypercorn_server(env, args.workers, workdir, label, tree=tree))
            )
        tokens: dict[int, str] = {}
        for index, server in enumerate(servers):
            tokens[index] = login_token(server.port, "user1@example.com")
            print(
                f"cache {cache}{trees[index].suffix}: server on {server.base} "
                f"({trees[index].root}), RSS {server.rss_mb():.1f} MB",
                flush=True,
            )
        slug, author = someone_elses_article(servers[0].port, tokens[0])
        chosen = endpoints(slug, author) if not args.no_wrk else []
        targets = [e for e in chosen if e.name in args.rows]
        lua = {
            (index, e.name): write_lua(workdir, e, tokens[index], f"-{index}")
            for index in range(len(servers))
            for e in targets
        }
        by_key = {
            (index, e.name): Row(cache=f"{cache}{tree.suffix}", name=e.name)
            for index, tree in enumerate(trees)
            for e in targets
        }
        for rnd in range(1, args.rounds + 1):
            for target in targets:
                turns = list(enumerate(servers))
                for index, server in turns if rnd % 2 else reversed(turns):
                    warm_up(server, target, tokens[index])
                    result = run_wrk(args, server, target.path, lua[index, target.name])
                    row = by_key[index, target.name]
                    row.runs.append(result)
                    row.rss_mb = server.rss_mb()
                    print(
                        f"  round {rnd} cache {row.cache} {target.name:<10} {result.rps:8.1f} "
                        f"req/s p50 {result.p50_ms:.1f} p95 {result.p95_ms:.1f} "
                        f"p99 {result.p99_ms:.1f} ms non-2xx {result.non_2xx} "
                        f"errors {result.socket_errors} RSS {row.rss_mb:.1f} MB",
                        flush=True,
                    )
                    time.sleep(1)
        rows.extend(by_key.values())
        for index, server in enumerate(servers):
            if args.no_locust:
                break
            label = f"{cache}{trees[index].suffix}"
            print(
                f"  locust: {args.locust_users} users, {args.locust_time} s, "
                f"think scale {args.locust_think_scale:g}",
                flush=True,
            )
            result_l = run_locust(args, server, workdir, f"cache-{label.replace('/', '-')}")
            rss = server.rss_mb()
            rows.append(Row(cache=label, name="locust mix", locust=result_l, rss_mb=rss))
            print(
                f"  locust cache {label}: {result_l.requests} requests, {result_l.rps:.1f} req/s, "
                f"{result_l.failures} failures",
                flush=True,
            )
        for index, server in enumerate(servers):
            label = f"{cache}{trees[index].suffix}"
            if any(r.non_2xx or r.socket_errors for r in rows if r.cache == label):
                print_server_problems(server)
    return rows


def tree_redis_url(base_url: str, tree: Tree) -> str:
    """This checkout's server uses `base_url`; each other one the next database numbers, so
    that no server answers from entries another one stored."""
    if tree is THIS_TREE:
        return base_url
    parts = urlsplit(base_url)
    number = int(parts.path.strip("/") or 0) + int(tree.suffix.strip("/") or 1)
    return urlunsplit(parts._replace(path=f"/{number}"))


def print_comparison(rows: Sequence[Row], args: argparse.Namespace) -> None:
    """With --against: each load's median req/s here against the other checkout's, and the
    round-by-round ratios (the same rounds, alternating, so noise shows as their spread)."""
    references = {r.name: r for r in rows if r.cache == "-" and r.rps > 0}
    for cache in args.cache:
        here = {r.name: r for r in rows if r.cache == cache and r.runs}
        for tree in args.against:
            there = {r.name: r for r in rows if r.cache == f"{cache}{tree.suffix}" and r.runs}
            print(f"cache {cache}: this checkout / {tree.root} (median req/s, per-round ratios)")
            for name, row in here.items():
                other = there.get(name)
                if other is None:
                    continue
                per_round = "/".join(
                    f"{a.rps / b.rps:.2f}" for a, b in zip(row.runs, other.runs, strict=False)
                )
                shares = "".join(
                    f"; of {ref} {row.rps / reference.rps:.0%} vs {other.rps / reference.rps:.0%}"
                    for ref, reference in references.items()
                )
                print(
                    f"  {name:<10} {row.rps:8.1f} vs {other.rps:8.1f} = {row.rps / other.rps:.2f}"
                    f" (rounds {per_round}){shares}"
                )


# The stack's reference points, each under the same Hypercorn config as the API: a bare ASGI
# app (Hypercorn's own ceiling) and the scale point, a trivial async Flask view through
# Hypercorn and the pooled adapter (~1,500 req/s where the reference figures were measured).
REFERENCE_APPS = (
    ("bare asgi", "bench.ceiling_app:app", "/"),
    ("trivial flask", "bench.adapter_app:pooled", "/trivial"),
)
REFERENCE_TRIVIAL_RPS = 1500.0


def bench_reference(args: argparse.Namespace, workdir: Path, name: str, app: str, path: str) -> Row:
    """wrk on one reference app (`REFERENCE_APPS`) under the same Hypercorn config."""
    row = Row(cache="-", name=name)
    from service.infra.settings import Settings

    # The trivial view's adapter gets the API's default thread count.
    env = child_env(BENCH_THREADS=str(Settings.model_fields["threads"].default))
    label = name.replace(" ", "-")
    with hypercorn_server(env, args.workers, workdir, label, app, ready_path=path) as server:
        target = Endpoint(name, path)
        lua = write_lua(workdir, target, None)
        for rnd in range(1, args.rounds + 1):
            warm_up(server, target, None)
            result = run_wrk(args, server, path, lua)
            row.runs.append(result)
            row.rss_mb = server.rss_mb()
            print(
                f"  round {rnd} {name} {result.rps:8.1f} req/s p50 {result.p50_ms:.1f} "
                f"p99 {result.p99_ms:.1f} ms non-2xx {result.non_2xx}",
                flush=True,
            )
            time.sleep(1)
    return row


@contextmanager
def private_redis(workdir: Path) -> Iterator[tuple[int, Callable[[], None], Callable[[], None]]]:
    """A redis-server of its own on a free port (nothing kept on disk): (port, kill, start)."""
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        cmd = [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        log = (workdir / "redis.log").open("ab")
        procs.append(subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
                return
            time.sleep(0.1)
        raise BenchError("the private redis-server did not start")

    def kill() -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    start()
    try:
        yield port, kill, start
    finally:
        kill()


def phase_latencies(workdir: Path, label: str, edges: Sequence[float]) -> list[str]:
    """Median of Locust's p50/p95 and the req/s per phase, from its stats history."""
    history = workdir / f"locust-{label}_stats_history.csv"
    if not history.exists():
        return ["(no Locust stats history)"]
    with history.open() as file:
        rows = [row for row in csv.DictReader(file) if row["Name"] == "Aggregated"]
    if not rows:
        return ["(empty Locust stats history)"]
    first = int(rows[0]["Timestamp"])
    names = ["before the kill", "Redis down", "after the restart"]
    lines = []
    for name, (low, high) in zip(names, itertools.pairwise([0.0, *edges, math.inf]), strict=True):
        phase = [r for r in rows if low + 5 <= int(r["Timestamp"]) - first < high]
        if not phase:
            continue
        p50 = statistics.median(_ms(r["50%"]) for r in phase)
        p95 = statistics.median(_ms(r["95%"]) for r in phase)
        rps = statistics.median(float(r["Requests/s"]) for r in phase)
        failures = int(phase[-1]["Total Failure Count"]) - int(phase[0]["Total Failure Count"])
        lines.append(
            f"{name:<18} req/s {rps:6.1f}  p50 {p50:6.0f} ms  p95 {p95:6.0f} ms  "
            f"new failures {failures}"
        )
    return lines


def redis_outage(args: argparse.Namespace, db_url: str, workdir: Path) -> None:
    """A 3-minute Locust mix; Redis is killed after minute 1 and started again after minute 2."""
    with private_redis(workdir) as (port, kill, start):
        env = server_env(args, db_url, workdir, "on")
        env["REDIS_URL"] = f"redis://{HOST}:{port}/0"
        with hypercorn_server(env, args.workers, workdir, "outage") as server:
            print(
                f"redis outage: cache on, {args.locust_users} users, think scale "
                f"{args.locust_think_scale:g}, 3 min; Redis on port {port} is killed at 1:00 and "
                "started again (empty) at 2:00",
                flush=True,
            )

            def act(minute: int) -> None:
                if minute == 1:
                    kill()
                    print("  1:00 redis-server killed", flush=True)
                elif minute == 2:
                    start()
                    print("  2:00 redis-server started again, empty", flush=True)

            result = run_locust(args, server, workdir, "outage", 3, on_minute=act)
            print_server_problems(server)
    print()
    print(
        f"redis outage, 3 min: {result.requests} requests, {result.rps:.1f} req/s, "
        f"p50 {result.p50_ms:.0f} p95 {result.p95_ms:.0f} p99 {result.p99_ms:.0f} ms, "
        f"failures {result.failures}"
    )
    for line in phase_latencies(workdir, "outage", [60.0, 120.0]):
        print(f"  {line}")
    for line in result.top_failures:
        print(f"  failure: {line}")


def soak(args: argparse.Namespace, db_url: str, workdir: Path) -> None:
    """A steady Locust mix for --soak minutes; RSS at the start, every minute and the end."""
    # As in production, unless asked otherwise with --cache off.
    cache = "on" if "on" in args.cache else "off"
    flush_redis(args.redis_url)
    env = server_env(args, db_url, workdir, cache)
    with hypercorn_server(env, args.workers, workdir, "soak") as server:
        start = server.rss_mb()
        print(
            f"soak: cache {cache}, {args.locust_users} users, think scale "
            f"{args.locust_think_scale:g}, {args.soak:g} min; RSS at start {start:.1f} MB",
            flush=True,
        )
        samples: dict[int, float] = {}

        def sample(minute: int) -> None:
            samples[minute] = server.rss_mb()
            print(f"  soak minute {minute:3d}: RSS {samples[minute]:7.1f} MB", flush=True)

        result = run_locust(args, server, workdir, "soak", args.soak, on_minute=sample)
        end = server.rss_mb()
        if result.failures:
            print_server_problems(server)
    print()
    print(
        f"soak {args.soak:g} min: {result.requests} requests, {result.rps:.1f} req/s, "
        f"p50 {result.p50_ms:.0f} p95 {result.p95_ms:.0f} p99 {result.p99_ms:.0f} ms, "
        f"failures {result.failures}"
    )
    print(f"RSS at start {start:.1f} MB (idle), at the end {end:.1f} MB")
    if 1 in samples:
        # The first minute fills pools, caches and interned objects: growth after it is leakage.
        warm = samples[1]
        print(
            f"RSS growth after the first minute: {end - warm:+.1f} MB "
            f"({(end - warm) / warm:+.1%}) from {warm:.1f} MB"
        )
    print("slowest routes by p95:")
    for line in result.slowest:
        print(f"  {line}")
    for line in result.top_failures:
        print(f"  {line}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres"),
        help="a PostgreSQL server where a scratch database may be created and dropped "
        "(env BENCH_DATABASE_URL, default postgresql://postgres@127.0.0.1/postgres)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"),
        help="a Redis database the benchmark may FLUSH (env BENCH_REDIS_URL, "
        "default redis://127.0.0.1:6379/13)",
    )
    parser.add_argument(
        "--big", action="store_true", help="seed 10,000 users and 100,000 articles (else 20)"
    )
    parser.add_argument("--seed-args", help="other `conduit seed` arguments, e.g. '--users 500'")
    parser.add_argument("--keep-db", action="store_true", help="keep the scratch database")
    parser.add_argument("--workers", type=int, default=1, help="Hypercorn worker processes (1)")
    parser.add_argument(
        "--cache",
        default="off,on",
        help="cache modes to run, in order: off, on or off,on (default off,on)",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--rounds", type=int, default=2, help="wrk rounds per endpoint (2)")
    parser.add_argument(
        "--wrk-timeout",
        type=float,
        default=10.0,
        help="wrk per-request timeout in s (10: wrk's 2 s default would count slow answers "
        "as errors instead of measuring them)",
    )
    parser.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="CHECKOUT",
        help="also serve the API from this other checkout (its own .venv; e.g. a `git worktree` "
        "of the commit before a change), on the same database and its own Redis database, "
        "taking turns with this one on every endpoint; prints both and their ratio "
        "(repeatable; its migrations must match)",
    )
    parser.add_argument(
        "--rows",
        default=",".join(ROW_NAMES),
        help=f"the wrk rows to run, comma-separated (default all: {', '.join(ROW_NAMES)})",
    )
    parser.add_argument("--no-wrk", action="store_true", help="skip the wrk runs")
    parser.add_argument("--no-locust", action="store_true", help="skip the Locust mix")
    parser.add_argument(
        "--redis-outage",
        action="store_true",
        help="fault mode: a 3-minute Locust mix against a server on a Redis of its own, "
        "killed after minute 1 and started again (empty) after minute 2; failures and "
        "latency per phase",
    )
    parser.add_argument(
        "--no-ceiling",
        action="store_true",
        help="skip the reference apps under the same Hypercorn config: a bare ASGI app (the "
        "stack's ceiling) and a trivial Flask view (the issue's scale point)",
    )
    parser.add_argument("--locust-users", type=int, default=200, help="Locust users (200)")
    parser.add_argument("--locust-rate", type=float, default=20, help="users started per s (20)")
    parser.add_argument("--locust-time", type=int, default=60, help="Locust run in s (60)")
    parser.add_argument(
        "--locust-think-scale",
        type=float,
        default=1.0,
        help="LOAD_THINK_SCALE: multiplies the think times (1; 0.1 is a dense load)",
    )
    parser.add_argument(
        "--locust-max-login",
        type=int,
        default=10_000,
        help="LOAD_USERS cap: seeded users the simulated members sign in as",
    )
    parser.add_argument(
        "--soak",
        type=float,
        metavar="MINUTES",
        help="soak mode: only a steady Locust mix for MINUTES (cache on unless --cache off), "
        "RSS at the start, every minute and the end",
    )
    parser.add_argument(
        "--no-rate-limit",
        action="store_true",
        help="RATE_LIMIT_ENABLED=false (default: limits on, raised out of reach)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra server environment, e.g. DB_POOL_SIZE=64 (repeatable)",
    )
    args = parser.parse_args(argv)
    args.cache = [c.strip() for c in args.cache.split(",") if c.strip()]
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if not args.rows or any(r not in ROW_NAMES for r in args.rows):
        parser.error(f"--rows takes names from: {', '.join(ROW_NAMES)}")
    roots = [Path(path).resolve() for path in args.against]
    args.against = [
        Tree(root=root, python=str(root / ".venv" / "bin" / "python"), suffix=f"/{number}")
        for number, root in enumerate(roots, start=1)
    ]
    if not args.cache or any(c not in ("on", "off") for c in args.cache):
        parser.error("--cache takes off, on or off,on")
    for name in ("duration", "connections", "rounds", "workers", "locust_users", "locust_time"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.connections < 2:
        parser.error("--connections must be >= 2 (wrk runs 2 threads)")
    if args.soak is not None and args.soak <= 0:
        parser.error("--soak must be > 0 minutes")
    for item in args.server_env:
        if "=" not in item:
            parser.error(f"--server-env takes NAME=VALUE, not {item!r}")
    seed_args = tuple(args.seed_args.split()) if args.seed_args else None
    args.users = seeded_users(seed_args or (BIG_SEED if args.big else SMALL_SEED))
    return args


def load_average(*, judge: bool = True) -> str:
    """The machine's load: wrk, the server and PostgreSQL share its cores, so must nothing else.

    Judged before the run only: the benchmark itself keeps both cores busy.
    """
    one, five, _ = os.getloadavg()
    busy = judge and one > 1.0
    note = " (busy: other work competes for the cores, figures are low)" if busy else ""
    return f"load average {one:.2f}/{five:.2f} (1/5 min){note}"


def check_tools(args: argparse.Namespace) -> str | None:
    """What is missing for the requested runs, or None."""
    soak_only = args.soak is not None or args.redis_outage
    if args.redis_outage and shutil.which("redis-server") is None:
        return "redis-server not found on PATH (the outage mode starts and kills its own)"
    if not soak_only and not args.no_wrk and shutil.which("wrk") is None:
        return "wrk not found on PATH (Debian/Ubuntu: apt-get install wrk), or pass --no-wrk"
    needs_locust = soak_only or not args.no_locust
    if needs_locust and importlib.util.find_spec("locust") is None:
        return (
            "locust is not installed in this Python (it is in the dev dependencies: "
            "uv pip sync requirements.lock), or pass --no-locust"
        )
    if importlib.util.find_spec("hypercorn") is None:
        return "hypercorn is not installed in this Python"
    return None


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    missing = check_tools(args)
    if missing:
        print(missing, file=sys.stderr)
        return 2
    name = f"perf_bench_{secrets.token_hex(5)}"
    admin_url, db_url = admin_and_scratch_urls(args.database_url, name)
    if not cache_setting_known():
        print(
            "note: this build has no CACHE_ENABLED setting: the cache on/off rows run the same "
            "code",
            flush=True,
        )
    wrk = (
        "wrk skipped"
        if args.no_wrk or args.soak is not None or args.redis_outage
        else f"wrk -t2 -c{args.connections} -d{args.duration}s --latency x{args.rounds} rounds"
    )
    print(
        f"{wrk}; hypercorn.toml, {args.workers} worker(s); rate limits "
        f"{'off' if args.no_rate_limit else 'raised'}; cpus={os.cpu_count()}; "
        f"scratch database {name}; Redis {args.redis_url} (flushed); {load_average()}",
        flush=True,
    )
    # SIGTERM unwinds like Ctrl-C: the server is stopped and the scratch database dropped.
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="api_bench_") as tmp:
        workdir = Path(tmp)
        create_database(admin_url, name)
        try:
            prepare_database(args, db_url)
            if args.soak is not None:
                soak(args, db_url, workdir)
                return 0
            if args.redis_outage:
                redis_outage(args, db_url, workdir)
                return 0
            rows: list[Row] = []
            for cache in args.cache:
                rows.extend(bench_cache_mode(args, db_url, workdir, cache))
            if not args.no_wrk and not args.no_ceiling:
                for name, app, path in REFERENCE_APPS:
                    rows.append(bench_reference(args, workdir, name, app, path))
            print()
            print_table(rows, args)
            print_targets(rows, args)
            print_comparison(rows, args)
            print(f"at the end: {load_average(judge=False)} (the benchmark's own load included)")
            return 0
        except BenchError as exc:
            print(f"api_bench: {exc}", file=sys.stderr)
            return 1
        except (OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
            print(f"api_bench: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("api_bench: interrupted", file=sys.stderr)
            return 1
        finally:
            if args.keep_db:
                print(f"kept database {name}: {db_url}")
            else:
                drop_database(admin_url, name)


if __name__ == "__main__":
    sys.exit(main())
