"""The fleet test (issue 15, item 9): Conduit as a fleet of real processes on this machine.

Starts a scratch database on the local PostgreSQL (created, migrated with `conduit migrate`,
seeded, dropped at the end), Debian's PgBouncer in transaction mode in front of it, 3 API
instances (`conduit serve`, the image's one-process command, `DB_PGBOUNCER=true`, through
PgBouncer), HAProxy in front of them (health checks on `/readyz`, L7 retries for idempotent
requests only), 2 job workers (`conduit worker`, straight to PostgreSQL) and two webhook
receivers that verify the signatures. Redis is the local one (DB 4 by default, flushed). Then:

  (a) rate limits are shared: one user's requests spread over the 3 instances get the limit
      once, not 3 times;
  (b) a write through instance A reads back at once through B and C (cache invalidation is
      global), and a logout on A refuses the token on B and C at once;
  (c) each webhook event is delivered once per endpoint with 2 workers;
  (d) a rolling restart of the 3 instances (SIGTERM one at a time, wait until HAProxy sees it
      ready again) under the Locust mix loses 0 requests;
  (e) SIGKILL of one instance under the Locust mix: 0 failed idempotent requests once its
      health check has failed (and how many failed before, by kind);
  (f) throughput of the Locust mix without think time with 1, 2 and 3 instances in rotation
      (HAProxy's runtime API), with the CPU each part of the machine used.

    python -m bench.fleet [--quick] [--admin-url URL] [--redis-url URL] [--keep]

Every process it starts is stopped, and its temporary directory and database removed, on
exit, failure or Ctrl+C. Exit status 0 when every check passes, 1 otherwise (or on a setup
failure). Needs pgbouncer, haproxy and Locust (the dev dependencies).
"""

from __future__ import annotations

import argparse
import json
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
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.api_bench import (
    BenchError,
    admin_and_scratch_urls,
    child_env,
    create_database,
    drop_database,
    flush_redis,
    free_port,
    run_step,
)
from tests import pgbouncer
from tests.webhooks.receivers import Receiver, running_receiver

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "fleet_locustfile.py"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
API = "/api/v1"
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
SEED_PASSWORD = "password123"  # noqa: S105 (the seeded users' documented password)
# (a): the sign-in limit per client address; the Locust visitors' sign-ins stay below it.
AUTH_LIMIT_PER_MINUTE = 120
# HAProxy's health checks: an instance is out after FALL failed checks INTER_MS apart, and
# SHUTDOWN_DELAY_SECONDS keeps a draining instance's listener open longer than that.
INTER_MS = 500
FALL = 2
RISE = 2
SHUTDOWN_DELAY_SECONDS = 2.0


@dataclass
class Options:
    """Durations and sizes of one run (`--quick` for CI)."""

    users: int
    articles: int
    locust_users: int
    settle_seconds: float
    kill_seconds: float
    throughput_seconds: float
    webhook_events: int


QUICK = Options(
    users=200,
    articles=2000,
    locust_users=20,
    settle_seconds=3,
    kill_seconds=12,
    throughput_seconds=12,
    webhook_events=30,
)
FULL = Options(
    users=1000,
    articles=10000,
    locust_users=40,
    settle_seconds=8,
    kill_seconds=25,
    throughput_seconds=30,
    webhook_events=100,
)


@dataclass
class Check:
    """One printed verdict."""

    name: str
    passed: bool
    detail: str


@dataclass
class Instance:
    """One `conduit serve` process on its own port."""

    name: str
    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--bind", f"127.0.0.1:{self.port}"],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited:\n{tail(self.log)}")
            with suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} not ready in {timeout:.0f} s:\n{tail(self.log)}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Send `sig` and wait for the exit; the exit code (None if it had to be killed)."""
        return None if self.proc is None else stop_process(self.proc, sig)


@dataclass
class Fleet:
    """Everything started, and what the checks need to reach it."""

    workdir: Path
    options: Options
    direct_url: str
    redis_url: str
    instances: list[Instance]
    workers: list[subprocess.Popen[bytes]]
    haproxy_port: int
    haproxy_socket: Path
    receivers: list[Receiver]
    database: str
    # PgBouncer and HAProxy, for the CPU figures of (f).
    proxy_pids: list[int]
    checks: list[Check] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.haproxy_port}"

    def record(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append(Check(name, passed, detail))
        print(f"{name}: {'PASS' if passed else 'FAIL'}: {detail}", flush=True)

    def haproxy(self, command: str) -> str:
        """One command on HAProxy's runtime API (its stats socket)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.haproxy_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_states(self) -> dict[str, str]:
        """HAProxy's view of each instance: UP, DOWN, MAINT, `UP 1/2`..."""
        lines = self.haproxy("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        states = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "conduit" and row.get("svname", "").startswith("app"):
                states[row["svname"]] = row["status"]
        return states

    def wait_state(self, server: str, want: str, timeout: float = 60) -> float:
        """Wait until HAProxy reports `server` in state `want`; the time.time() it did."""
        deadline = time.monotonic() + timeout
        while True:
            if self.server_states().get(server) == want:
                return time.time()
            if time.monotonic() > deadline:
                raise BenchError(f"HAProxy never saw {server} {want}: {self.server_states()}")
            time.sleep(0.05)


def tail(path: Path, limit: int = 3000) -> str:
    """The end of a log file."""
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# Starting the fleet


def haproxy_config(fleet_port: int, servers: list[Instance], sock: Path) -> str:
    """HAProxy in front of the instances: health checks on /readyz, retries where safe."""
    checks = (
        f"inter {INTER_MS}ms fastinter {INTER_MS // 2}ms downinter {INTER_MS}ms "
        f"fall {FALL} rise {RISE}"
    )
    server_lines = "\n".join(
        f"    server {inst.name} 127.0.0.1:{inst.port} check" for inst in servers
    )
    return f"""\
global
    maxconn 4096
    stats socket {sock} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 10s
    # A busy instance answers /readyz late; the check's default timeout (its interval) would
    # take the last instance in rotation out under load.
    timeout check 2s
    # Connection failures (nothing reached a server) are retried for every method, on
    # another server (redispatch).
    retries 3
    option redispatch 1

frontend api
    bind 127.0.0.1:{fleet_port}
    option forwardfor
    default_backend conduit

backend conduit
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    # A request that reached an instance which then died is retried elsewhere only when
    # the method is idempotent: a POST may have taken effect.
    retry-on conn-failure empty-response response-timeout
    acl idempotent method GET HEAD PUT DELETE OPTIONS
    http-request disable-l7-retry if !idempotent
    default-server {checks}
{server_lines}
"""


@contextmanager
def running_fleet(args: argparse.Namespace, options: Options) -> Iterator[Fleet]:
    """Start everything; stop and remove it all when the block exits."""
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="conduit-fleet-"))
        if not args.keep:
            stack.callback(shutil.rmtree, workdir, True)
        name = f"fleet_{uuid.uuid4().hex[:10]}"
        admin_url, direct_url = admin_and_scratch_urls(args.admin_url, name)
        started = time.monotonic()
        create_database(admin_url, name)
        if not args.keep:
            stack.callback(drop_database, admin_url, name)
        plain = child_env(DATABASE_URL=direct_url, LOG_LEVEL="WARNING")
        run_step("conduit migrate", [sys.executable, "-m", "service.cli", "migrate"], plain, 300)
        run_step(
            "conduit seed",
            [
                sys.executable, "-m", "service.cli", "seed", "--quiet",
                "--users", str(options.users), "--articles", str(options.articles),
            ],
            plain,
            600,
        )  # fmt: skip
        flush_redis(args.redis_url)
        stack.callback(flush_redis, args.redis_url)
        print(
            f"database {name}: migrated and seeded ({options.users} users, "
            f"{options.articles} articles) in {time.monotonic() - started:.1f} s",
            flush=True,
        )

        # What the API no longer sends as startup parameters, for its server connections only
        # (a role default would also reach `conduit seed`'s VACUUM and the migrations).
        bouncer = stack.enter_context(
            pgbouncer.running_pgbouncer(
                direct_url,
                pool_size=20,
                connect_query="SET statement_timeout = 5000; SET jit = off",
            )
        )
        receivers = [stack.enter_context(running_receiver()) for _ in range(2)]
        common = {
            "APP_ENV": "production",
            "REDIS_URL": args.redis_url,
            "SECRET_KEY": secrets.token_urlsafe(48),
            "WEBHOOK_SECRET_KEYS": _fernet_key(),
            "LOG_LEVEL": "WARNING",
            "ACCESS_LOG": "false",
        }
        api_env = child_env(
            **common,
            DATABASE_URL=bouncer.url,
            DB_PGBOUNCER="true",
            WORKER_IN_PROCESS="false",
            TRUSTED_PROXIES="127.0.0.1/32",
            SHUTDOWN_DELAY_SECONDS=f"{SHUTDOWN_DELAY_SECONDS:g}",
            SHUTDOWN_GRACE_SECONDS="10",
            # Locust's visitors all come from 127.0.0.1: only the sign-in limit is checked.
            RATE_LIMIT_AUTHENTICATED_PER_MINUTE="1000000",
            RATE_LIMIT_ANONYMOUS_PER_MINUTE="1000000",
            RATE_LIMIT_AUTH_PER_MINUTE=str(AUTH_LIMIT_PER_MINUTE),
            # Loopback receivers: plain http, and the SSRF guard told to allow them.
            WEBHOOK_ALLOW_HTTP="true",
            WEBHOOK_ALLOWLIST="127.0.0.1/32",
        )
        instances = [
            Instance(f"app{i}", free_port(), dict(api_env, DATA_DIR=str(workdir / f"app{i}")),
                     workdir / f"app{i}.log")
            for i in (1, 2, 3)
        ]  # fmt: skip
        for inst in instances:
            inst.start()
            stack.callback(inst.stop)
        worker_env = child_env(
            **common,
            DATABASE_URL=direct_url,
            WEBHOOK_ALLOW_HTTP="true",
            WEBHOOK_ALLOWLIST="127.0.0.1/32",
        )
        workers = []
        for i in (1, 2):
            log = (workdir / f"worker{i}.log").open("ab")
            proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "worker"],
                cwd=REPO_ROOT,
                env=dict(worker_env, DATA_DIR=str(workdir / f"worker{i}")),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            log.close()
            workers.append(proc)
            stack.callback(stop_process, proc)
        for inst in instances:
            inst.wait_ready()

        haproxy_port = free_port()
        sock = workdir / "haproxy.sock"
        config = workdir / "haproxy.cfg"
        config.write_text(haproxy_config(haproxy_port, instances, sock))
        hlog = (workdir / "haproxy.log").open("ab")
        proxy = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(config)],
            stdout=hlog,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        hlog.close()
        stack.callback(stop_process, proxy)
        fleet = Fleet(
            workdir=workdir,
            options=options,
            direct_url=direct_url,
            redis_url=args.redis_url,
            instances=instances,
            workers=workers,
            haproxy_port=haproxy_port,
            haproxy_socket=sock,
            receivers=receivers,
            database=name,
            proxy_pids=[bouncer.pid, proxy.pid],
        )
        deadline = time.monotonic() + 20
        while not sock.exists():
            if proxy.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"haproxy did not start:\n{tail(workdir / 'haproxy.log')}")
            time.sleep(0.05)
        for inst in instances:
            fleet.wait_state(inst.name, "UP")
        for i, proc in enumerate(workers, 1):
            if proc.poll() is not None:
                raise BenchError(f"worker {i} exited:\n{tail(workdir / f'worker{i}.log')}")
        print(
            f"fleet up in {time.monotonic() - started:.1f} s: PgBouncer :{bouncer.port} "
            f"(transaction mode, 20 server connections), 3 instances "
            f"{', '.join(f'{i.name} :{i.port}' for i in instances)}, HAProxy :{haproxy_port}, "
            f"2 workers, Redis {args.redis_url}; work directory {workdir}",
            flush=True,
        )
        yield fleet


def _fernet_key() -> str:
    from service.infra.secret_box import generate_key

    return generate_key()


def stop_process(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30
) -> int | None:
    """Send `sig` to the process group of `proc` and wait for it; SIGKILL after `timeout`.
    The exit code, or None if it had to be killed."""
    if proc.poll() is not None:
        return proc.returncode
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


# ---------------------------------------------------------------------------------------------
# HTTP helpers


def login(base: str, number: int) -> str:
    """A seeded user's token (signed in through `base`)."""
    body = {"user": {"email": f"user{number}@example.com", "password": SEED_PASSWORD}}
    answer = httpx.post(f"{base}{API}/users/login", json=body, timeout=30)
    if answer.status_code != 200:
        raise BenchError(f"login as user{number}: {answer.status_code} {answer.text[:300]}")
    return str(answer.json()["user"]["token"])


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Token {token}"}


# ---------------------------------------------------------------------------------------------
# (a) - (c)


def check_rate_limit(fleet: Fleet) -> None:
    """(a) Sign-ins from one client address, round-robin straight to the 3 instances.

    The sign-in limit (RATE_LIMIT_AUTH_PER_MINUTE) is per client address; the instances trust
    X-Forwarded-For from 127.0.0.1 (TRUSTED_PROXIES, as behind HAProxy), so this client is
    203.0.113.7 to all three and the Locust visitors (127.0.0.1) keep a budget of their own.
    """
    sent = 3 * AUTH_LIMIT_PER_MINUTE
    body = {"user": {"email": "user2@example.com", "password": SEED_PASSWORD}}
    codes: Counter[int] = Counter()
    by_instance: dict[str, Counter[int]] = {inst.name: Counter() for inst in fleet.instances}
    started = time.monotonic()
    with httpx.Client(timeout=30, headers={"X-Forwarded-For": "203.0.113.7"}) as client:
        for n in range(sent):
            inst = fleet.instances[n % 3]
            status = client.post(f"{inst.base}{API}/users/login", json=body).status_code
            codes[status] += 1
            by_instance[inst.name][status] += 1
    seconds = time.monotonic() - started
    allowed = codes[200]
    # GCRA refills during the run: at most the limit plus what `seconds` earn, plus a little
    # for rounding (3 separate limits would let all of them through).
    ceiling = AUTH_LIMIT_PER_MINUTE * (1 + seconds / 60) + 3
    per = ", ".join(f"{name} {c[200]}/{sum(c.values())}" for name, c in by_instance.items())
    fleet.record(
        "(a) shared rate limit",
        AUTH_LIMIT_PER_MINUTE * 0.9 <= allowed <= ceiling and codes[429] == sent - allowed,
        f"{sent} sign-ins from one address in {seconds:.1f} s, round-robin over the 3 "
        f"instances, limit {AUTH_LIMIT_PER_MINUTE}/min: {allowed} answered 200 and "
        f"{codes[429]} 429 (a shared limit lets at most {ceiling:.0f} through in that time, "
        f"3 separate ones {sent}); 200s by instance: {per}",
    )


def check_read_back(fleet: Fleet) -> None:
    """(b) A write through A, read back through B and C at once; a logout on A, refused on B/C."""
    a, b, c = fleet.instances
    token = login(a.base, 1)
    with httpx.Client(timeout=30) as client:
        created = client.post(
            f"{a.base}{API}/articles",
            headers=auth(token),
            json={"article": {"title": f"Fleet {uuid.uuid4().hex[:8]}", "description": "old",
                              "body": "old body", "tagList": ["fleet"]}},
        )  # fmt: skip
        if created.status_code != 201:
            raise BenchError(f"create article: {created.status_code} {created.text[:300]}")
        slug = created.json()["article"]["slug"]
        reads = [
            (f"{API}/articles/{slug}", {}),
            (f"{API}/articles/{slug}", auth(token)),
            (f"{API}/articles?author=user1&limit=5", {}),
        ]

        def snapshot() -> list[tuple[str, str]]:
            seen = []
            for inst in (b, c):
                for path, headers in reads:
                    answer = client.get(f"{inst.base}{path}", headers=headers)
                    if answer.status_code != 200:
                        raise BenchError(f"GET {path} on {inst.name}: {answer.status_code}")
                    body = answer.json()
                    article = body["article"] if "article" in body else body["articles"][0]
                    seen.append((inst.name, f"{article['description']}/{article.get('body', '')}"))
            return seen

        before = snapshot()  # warms B's and C's caches (and the shared one)
        updated = client.put(
            f"{a.base}{API}/articles/{slug}",
            headers=auth(token),
            json={"article": {"description": "new", "body": "new body"}},
        )
        done = time.monotonic()
        after = snapshot()
        lag_ms = (time.monotonic() - done) * 1000
        fresh = all(value.startswith("new") for _, value in after)
        fleet.record(
            "(b) write on A read on B and C",
            updated.status_code == 200 and fresh and all(v.startswith("old") for _, v in before),
            f"{len(after)} reads (article anonymous and signed in, author's list) on B and C "
            f"within {lag_ms:.0f} ms of the update on A: "
            f"{sum(v.startswith('new') for _, v in after)} new, "
            f"{sum(not v.startswith('new') for _, v in after)} stale",
        )

        second = login(a.base, 1)
        warm = [client.get(f"{i.base}{API}/user", headers=auth(second)).status_code for i in (b, c)]
        out = client.post(f"{a.base}{API}/users/logout", headers=auth(second))
        done = time.monotonic()
        refused = [
            client.get(f"{i.base}{API}/user", headers=auth(second)).status_code for i in (b, c)
        ]
        lag_ms = (time.monotonic() - done) * 1000
        still = client.get(f"{b.base}{API}/user", headers=auth(token)).status_code
        fleet.record(
            "(b) logout on A refused on B and C",
            warm == [200, 200]
            and out.status_code == 204
            and refused == [401, 401]
            and still == 200,
            f"token answered {warm} on B, C; logout on A {out.status_code}; then B, C answered "
            f"{refused} within {lag_ms:.0f} ms (the user's other session still {still})",
        )


def check_webhooks(fleet: Fleet) -> None:
    """(c) Every event delivered once per endpoint, with 2 workers sharing the queue."""
    token = login(fleet.base, 3)
    with httpx.Client(timeout=30) as client:
        for receiver in fleet.receivers:
            made = client.post(
                f"{fleet.base}{API}/webhooks",
                headers=auth(token),
                json={"webhook": {"url": receiver.url("/verify", host="localhost"),
                                  "events": ["article.created"]}},
            )  # fmt: skip
            if made.status_code != 201:
                raise BenchError(f"create webhook: {made.status_code} {made.text[:300]}")
            receiver.state.secrets.append(made.json()["webhook"]["secret"])
        events = fleet.options.webhook_events
        started = time.monotonic()
        for n in range(events):
            answer = client.post(
                f"{fleet.base}{API}/articles",
                headers=auth(token),
                json={"article": {"title": f"Hooked {n} {uuid.uuid4().hex[:6]}",
                                  "description": "d", "body": "b"}},
            )  # fmt: skip
            if answer.status_code != 201:
                raise BenchError(f"create article: {answer.status_code} {answer.text[:300]}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(len(r.hits("/verify")) >= events for r in fleet.receivers):
            break
        time.sleep(0.1)
    time.sleep(2)  # a duplicate would arrive right after
    seconds = time.monotonic() - started
    details = []
    passed = True
    for i, receiver in enumerate(fleet.receivers, 1):
        hits = receiver.hits("/verify")
        ids = Counter(h.headers.get("webhook-id") for h in hits)
        duplicates = sum(n - 1 for n in ids.values() if n > 1)
        unverified = sum(1 for h in hits if not h.verified)
        passed &= len(ids) == events and duplicates == 0 and unverified == 0
        details.append(
            f"endpoint {i}: {len(hits)} deliveries, {len(ids)} distinct webhook-id, "
            f"{duplicates} duplicates, {unverified} bad signatures"
        )
    fleet.record(
        "(c) webhooks once per endpoint",
        passed,
        f"{events} article.created events x 2 endpoints, 2 workers, all in {seconds:.1f} s: "
        + "; ".join(details),
    )


# ---------------------------------------------------------------------------------------------
# Load: the Locust mix with every request logged


@dataclass
class LocustLoad:
    """A running headless Locust (the shipped mix) against HAProxy."""

    proc: subprocess.Popen[bytes]
    requests: Path
    log: Path
    started: float

    def stop(self) -> None:
        stop_process(self.proc)

    def records(self) -> list[list[Any]]:
        """Every request so far: [start, method, name, status, error, milliseconds]."""
        return [json.loads(line) for line in self.requests.read_text().splitlines() if line]


@contextmanager
def locust(fleet: Fleet, label: str, *, think_scale: float, users: int) -> Iterator[LocustLoad]:
    """Run the shipped Locust mix (plus the request log) for as long as the block lasts."""
    requests = fleet.workdir / f"requests-{label}.jsonl"
    requests.write_text("")
    log = fleet.workdir / f"locust-{label}.log"
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(users), "-r", str(max(1, users)), "--host", fleet.base,
        "--stop-timeout", "10", "--only-summary", "--csv", str(fleet.workdir / f"locust-{label}"),
    ]  # fmt: skip
    env = child_env(
        FLEET_REQUEST_LOG=str(requests),
        LOAD_USERS=str(min(fleet.options.users, 100)),
        LOAD_PASSWORD=SEED_PASSWORD,
        LOAD_THINK_SCALE=f"{think_scale:g}",
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=fleet.workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    load = LocustLoad(proc=proc, requests=requests, log=log, started=time.time())
    try:
        yield load
    finally:
        load.stop()
    if not load.records():
        raise BenchError(f"locust sent no request:\n{tail(log)}")


def failures(records: list[list[Any]]) -> list[list[Any]]:
    """The failed requests of a request log."""
    return [r for r in records if r[4] is not None]


def describe_failures(failed: list[list[Any]], limit: int = 4) -> str:
    kinds = Counter(" ".join(f"{r[1]} {r[2]}: {r[3]} {r[4]}".split())[:160] for r in failed)
    return "; ".join(f"{n}x {what}" for what, n in kinds.most_common(limit))


def check_rolling_restart(fleet: Fleet) -> None:
    """(d) SIGTERM each instance in turn under load, start it again, wait until it is UP."""
    settle = fleet.options.settle_seconds
    steps = []
    with locust(fleet, "rolling", think_scale=0.1, users=fleet.options.locust_users) as load:
        time.sleep(settle)
        for inst in fleet.instances:
            t0 = time.monotonic()
            code = inst.stop(signal.SIGTERM)
            stopped = time.monotonic() - t0
            down_at = fleet.wait_state(inst.name, "DOWN", 5) if code is not None else time.time()
            inst.start()
            inst.restarts += 1
            fleet.wait_state(inst.name, "UP")
            steps.append(
                f"{inst.name} exit {code} after {stopped:.1f} s, back UP after "
                f"{time.time() - down_at:.1f} s"
            )
            time.sleep(settle)
        records = load.records()
    failed = failures(records)
    exits_ok = all(" exit 0 " in s for s in steps)
    fleet.record(
        "(d) rolling restart",
        not failed and exits_ok,
        f"{len(records)} requests of the Locust mix ({fleet.options.locust_users} users) during "
        f"the restart of all 3 instances; {len(failed)} failed"
        + (f" ({describe_failures(failed)})" if failed else "")
        + "; "
        + "; ".join(steps),
    )


def check_sigkill(fleet: Fleet) -> None:
    """(e) SIGKILL one instance under load: no failed idempotent request once it is DOWN."""
    victim = fleet.instances[1]
    with locust(fleet, "sigkill", think_scale=0.1, users=fleet.options.locust_users) as load:
        time.sleep(fleet.options.settle_seconds)
        killed_at = time.time()
        victim.stop(signal.SIGKILL)
        down_at = fleet.wait_state(victim.name, "DOWN", 10)
        time.sleep(fleet.options.kill_seconds)
        records = load.records()
    victim.start()
    victim.restarts += 1
    fleet.wait_state(victim.name, "UP")
    failed = failures(records)
    after_down = [r for r in failed if r[0] >= down_at]
    idempotent_after = [r for r in after_down if r[1] in IDEMPOTENT]
    before = [r for r in failed if r[0] < down_at]
    fleet.record(
        "(e) SIGKILL one instance",
        not idempotent_after,
        f"{len(records)} requests; HAProxy marked {victim.name} DOWN "
        f"{down_at - killed_at:.2f} s after the SIGKILL; failed before that: "
        f"{sum(r[1] in IDEMPOTENT for r in before)} idempotent, "
        f"{sum(r[1] not in IDEMPOTENT for r in before)} other"
        + (f" ({describe_failures(before)})" if before else "")
        + f"; after: {len(idempotent_after)} idempotent, "
        f"{len(after_down) - len(idempotent_after)} other"
        + (f" ({describe_failures(after_down)})" if after_down else ""),
    )


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of processes and their children so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15]) / tick
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def data_tier_pids(database: str, ours: list[int]) -> list[int]:
    """PostgreSQL backends of `database` (not the other databases of a shared server), plus
    `ours` (PgBouncer, HAProxy)."""
    pids = list(ours)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
                if cmdline.startswith("postgres: ") and f" {database} " in cmdline:
                    pids.append(int(entry.name))
    return pids


@dataclass
class Throughput:
    """One row of (f)."""

    instances: int
    rps: float
    failed: int
    p50_ms: float
    p99_ms: float
    api_cores: float
    data_cores: float
    locust_cores: float
    machine_cores: float


def check_throughput(fleet: Fleet) -> None:
    """(f) The mix without think time through 1, 2 and 3 instances in rotation."""
    names = [inst.name for inst in fleet.instances]
    rows = []
    failed_by_run: list[list[list[Any]]] = []
    users = max(fleet.options.locust_users, 24)
    for count in (1, 2, 3):
        for name in names:
            state = "ready" if names.index(name) < count else "maint"
            fleet.haproxy(f"set server conduit/{name} state {state}")
        time.sleep(0.5)
        api_pids = [inst.proc.pid for inst in fleet.instances if inst.proc is not None]
        with locust(fleet, f"throughput-{count}", think_scale=0, users=users) as load:
            time.sleep(fleet.options.settle_seconds)
            start_records = len(load.records())
            t0 = time.time()
            data_pids = data_tier_pids(fleet.database, fleet.proxy_pids)
            cpu_api, cpu_data = cpu_seconds(api_pids), cpu_seconds(data_pids)
            cpu_locust = cpu_seconds([load.proc.pid])
            busy0, total0 = machine_busy()
            time.sleep(fleet.options.throughput_seconds)
            busy1, total1 = machine_busy()
            seconds = time.time() - t0
            cpu_api = cpu_seconds(api_pids) - cpu_api
            cpu_data = cpu_seconds(data_pids) - cpu_data
            cpu_locust = cpu_seconds([load.proc.pid]) - cpu_locust
            window = load.records()[start_records:]
        done = [r for r in window if t0 <= r[0] <= t0 + seconds]
        latencies = [r[5] for r in done]
        p50, p99 = (
            (statistics.median(latencies), statistics.quantiles(latencies, n=100)[98])
            if len(latencies) > 1
            else (0.0, 0.0)
        )
        cores = os.cpu_count() or 1
        failed_by_run.append(failures(done))
        rows.append(
            Throughput(
                instances=count,
                rps=len(done) / seconds,
                failed=len(failures(done)),
                p50_ms=p50,
                p99_ms=p99,
                api_cores=cpu_api / seconds,
                data_cores=cpu_data / seconds,
                locust_cores=cpu_locust / seconds,
                machine_cores=cores * (busy1 - busy0) / max(1, total1 - total0),
            )
        )
    for name in names:
        fleet.haproxy(f"set server conduit/{name} state ready")
    print("(f) throughput, Locust mix without think time, "
          f"{users} users, {fleet.options.throughput_seconds:g} s each:")  # fmt: skip
    print(
        "    instances   req/s  p50 ms  p99 ms  failed  CPU in cores: API  data tier  Locust"
        "  rest of the machine"
    )
    for r in rows:
        rest = r.machine_cores - r.api_cores - r.data_cores - r.locust_cores
        print(
            f"    {r.instances:9d} {r.rps:7.0f} {r.p50_ms:7.0f} {r.p99_ms:7.0f} {r.failed:7d} "
            f"{r.api_cores:17.2f} {r.data_cores:10.2f} {r.locust_cores:7.2f} {rest:20.2f}"
        )
    failed = [f for load in failed_by_run for f in load]
    ratios = ", ".join(f"{r.instances}: {r.rps / rows[0].rps:.2f}x" for r in rows)
    busiest = max(rows, key=lambda r: r.rps)
    fleet.record(
        "(f) throughput by instances",
        not failed,
        f"relative to 1 instance {ratios}; at {busiest.instances} the {os.cpu_count()} cores "
        f"were {busiest.machine_cores:.2f} busy (API {busiest.api_cores:.2f}, data tier "
        f"{busiest.data_cores:.2f}, Locust {busiest.locust_cores:.2f}, the rest other "
        "processes of the machine)"
        + (f"; failures: {describe_failures(failed)}" if failed else ""),
    )


# ---------------------------------------------------------------------------------------------
# Main


STEPS: list[tuple[str, Callable[[Fleet], None]]] = [
    ("(a) shared rate limit", check_rate_limit),
    ("(b) read back and logout", check_read_back),
    ("(c) webhooks once per endpoint", check_webhooks),
    ("(d) rolling restart", check_rolling_restart),
    ("(e) SIGKILL one instance", check_sigkill),
    ("(f) throughput by instances", check_throughput),
]


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short durations (CI)")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("FLEET_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL server (trust auth from 127.0.0.1) where a database may be created",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("FLEET_REDIS_URL", "redis://127.0.0.1:6379/4"),
        help="a Redis database the run may flush",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database and work directory")
    args = parser.parse_args(argv)
    for tool, path in (("pgbouncer", pgbouncer.PGBOUNCER), ("haproxy", HAPROXY)):
        if not os.access(path, os.X_OK):
            print(f"fleet: {tool} is not installed (apt-get install {tool})", file=sys.stderr)
            return 1
    options = QUICK if args.quick else FULL
    # Ctrl+C and SIGTERM unwind through the ExitStack, which stops everything.
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        with running_fleet(args, options) as fleet:
            for label, step in STEPS:
                try:
                    step(fleet)
                except BenchError as exc:
                    fleet.record(label, False, f"could not run: {exc}")
            checks = fleet.checks
    except BenchError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fleet: interrupted; everything it started is stopped", file=sys.stderr)
        return 1
    passed = sum(c.passed for c in checks)
    print(f"fleet: {passed}/{len(checks)} checks passed in {time.monotonic() - started:.0f} s")
    return 0 if passed == len(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
