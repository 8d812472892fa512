"""Benchmark the stock asgiref `WsgiToAsgi` against the project's `ConcurrentWsgiToAsgi`.

For each adapter, start a real Hypercorn server (one uvloop worker, loopback only) serving
`bench.adapter_app:<adapter>`, load it with wrk on `/sleep` (an async view awaiting 50 ms)
and `/trivial` (a sync view doing nothing), and print req/s, p50, p99 and errors per cell,
then the pooled/stock ratios and pooled /sleep against the ceiling connections / 0.05 s.

    python -m bench.adapter_bench --duration 10 [--connections 64] [--rounds 1]

This is a script, not a test: it always exits 0 once it has printed its table (1 if a
server does not start, 2 if wrk is missing). Every step is bounded in time.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bench.adapter_app import SLEEP_SECONDS

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
ADAPTERS = ("stock", "pooled", "bare")
ENDPOINTS = ("/sleep", "/trivial")
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
# Extra time a wrk run may take beyond --duration before it is killed.
WRK_SLACK = 30.0
# A drain request waits behind whatever a previous run left queued in the server.
DRAIN_TIMEOUT = 30.0
WARMUP_REQUESTS = 5
# Stop targets: pooled /sleep at >= 75% of the ceiling and >= 20x stock.
TARGET_CEILING_FRACTION = 0.75
TARGET_SLEEP_RATIO = 20.0

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_RE_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_RE_PCT = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RE_SOCKET = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.MULTILINE
)
_RE_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)", re.MULTILINE)
_RE_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.MULTILINE)


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run reported."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int

    @property
    def socket_errors(self) -> int:
        """Connect, read, write and timeout errors together."""
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts

    @property
    def errors(self) -> int:
        """Non-2xx/3xx responses plus socket errors."""
        return self.non_2xx + self.socket_errors


@dataclass(frozen=True)
class Cell:
    """The (median over rounds) result of one adapter on one endpoint."""

    adapter: str
    endpoint: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    detail: str


def parse_wrk(output: str) -> WrkResult:
    """Parse the text wrk 4 prints with `--latency`."""
    rps_match = _RE_RPS.search(output)
    if rps_match is None:
        raise ValueError(f"no 'Requests/sec' in wrk output:\n{output}")
    pct = {m.group(1): float(m.group(2)) * _UNIT_MS[m.group(3)] for m in _RE_PCT.finditer(output)}
    if "50" not in pct or "99" not in pct:
        raise ValueError(f"no latency distribution in wrk output:\n{output}")
    sock = _RE_SOCKET.search(output)
    connect, read, write, timeout = (int(g) for g in sock.groups()) if sock else (0, 0, 0, 0)
    non2xx = _RE_NON2XX.search(output)
    total = _RE_TOTAL.search(output)
    return WrkResult(
        rps=float(rps_match.group(1)),
        p50_ms=pct["50"],
        p99_ms=pct["99"],
        requests=int(total.group(1)) if total else 0,
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        connect_errors=connect,
        read_errors=read,
        write_errors=write,
        timeouts=timeout,
    )


def free_port() -> int:
    """A TCP port on the loopback address that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def get(port: int, path: str, timeout: float) -> int:
    """GET `path` from the local server; return the status code."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _tail(log: IO[bytes], limit: int = 4000) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-limit:]


def wait_until_ready(proc: subprocess.Popen[bytes], port: int, log: IO[bytes]) -> None:
    """Poll GET /trivial until it answers 200, the server dies, or STARTUP_TIMEOUT passes."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            if get(port, "/trivial", timeout=2.0) == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not ready after {STARTUP_TIMEOUT:.0f} s:\n{_tail(log)}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (Hypercorn's graceful shutdown), then SIGTERM, then SIGKILL the process group."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if proc.poll() is not None:
            break
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"  server pid {proc.pid} ignored {sig.name}", file=sys.stderr)
    # The group was created for this server alone (start_new_session): it also holds
    # Hypercorn's worker process, which must not outlive the run.
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=STOP_TIMEOUT)


@contextmanager
def hypercorn_server(adapter: str, threads: int, workers: int, pin: bool) -> Iterator[int]:
    """Run `bench.adapter_app:<adapter>` under Hypercorn on a free loopback port."""
    port = free_port()
    # With --pin the server gets core 0 and wrk core 1, so the load generator does not steal
    # the server's CPU (the machine has 2 cores).
    cmd = [
        *(["taskset", "-c", "0"] if pin else []),
        sys.executable,
        "-m",
        "hypercorn",
        "--worker-class",
        "uvloop",
        "-w",
        str(workers),
        "--bind",
        f"{HOST}:{port}",
        # Hypercorn's access log is off unless --access-logfile is given: none is.
        f"bench.adapter_app:{adapter}",
    ]
    env = dict(os.environ, BENCH_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until_ready(proc, port, log)
            yield port
        finally:
            stop_server(proc)


def drain(port: int) -> None:
    """Wait until requests a previous run left queued have finished (bounded).

    The stock adapter serves requests one at a time in arrival order, so a single request
    answers only once the queue in front of it is empty.
    """
    get(port, "/trivial", timeout=DRAIN_TIMEOUT)


def run_wrk(
    port: int, endpoint: str, duration: int, connections: int, timeout: float, pin: bool
) -> WrkResult:
    """Run wrk against the local server and parse its report."""
    cmd = [
        *(["taskset", "-c", "1"] if pin else []),
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{duration}s",
        f"--timeout={timeout:g}s",
        "--latency",
        f"http://{HOST}:{port}{endpoint}",
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=duration + WRK_SLACK, check=True
    )
    return parse_wrk(done.stdout)


def median_cell(adapter: str, endpoint: str, runs: Sequence[WrkResult]) -> Cell:
    """Combine rounds: median of each column."""
    detail_parts = []
    non2xx = statistics.median(r.non_2xx for r in runs)
    timeouts = statistics.median(r.timeouts for r in runs)
    other = statistics.median(r.connect_errors + r.read_errors + r.write_errors for r in runs)
    if non2xx:
        detail_parts.append(f"non-2xx {non2xx:g}")
    if timeouts:
        detail_parts.append(f"timeout {timeouts:g}")
    if other:
        detail_parts.append(f"conn/read/write {other:g}")
    return Cell(
        adapter=adapter,
        endpoint=endpoint,
        rps=statistics.median(r.rps for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        errors=round(statistics.median(r.errors for r in runs)),
        detail=", ".join(detail_parts),
    )


def ratio(num: float, den: float) -> str:
    """num/den as 'N.NNx', or 'n/a' when den is 0."""
    return f"{num / den:.2f}x" if den > 0 else "n/a"


def print_table(cells: Sequence[Cell], connections: int, rounds: int) -> None:
    """Print the results and the ratios the adapter is judged by."""
    header = f"{'adapter':<8} {'endpoint':<9} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} errors"
    print(header)
    print("-" * len(header) + "------------")
    for c in cells:
        line = f"{c.adapter:<8} {c.endpoint:<9} {c.rps:>9.1f} {c.p50_ms:>9.2f} {c.p99_ms:>9.2f}"
        errors = f"{c.errors}" + (f" ({c.detail})" if c.detail else "")
        print(f"{line} {errors}")
    if rounds > 1:
        print(f"(median of {rounds} rounds per cell)")

    by = {(c.adapter, c.endpoint): c for c in cells}
    sleep_stock, sleep_pooled = by["stock", "/sleep"].rps, by["pooled", "/sleep"].rps
    triv_stock, triv_pooled = by["stock", "/trivial"].rps, by["pooled", "/trivial"].rps
    ceiling = connections / SLEEP_SECONDS
    share = sleep_pooled / ceiling
    print()
    print(f"pooled/stock /sleep:   {ratio(sleep_pooled, sleep_stock)}")
    print(f"pooled/stock /trivial: {ratio(triv_pooled, triv_stock)}")
    print(
        f"pooled /sleep vs ceiling {connections}/{SLEEP_SECONDS:g} = {ceiling:.0f} req/s: "
        f"{share:.1%}"
    )
    sleep_bare, triv_bare = by["bare", "/sleep"].rps, by["bare", "/trivial"].rps
    print(
        f"bare ASGI (no Flask, no adapter) /sleep vs ceiling: {sleep_bare / ceiling:.1%}; "
        f"pooled/bare /sleep: {ratio(sleep_pooled, sleep_bare)}, "
        f"/trivial: {ratio(triv_pooled, triv_bare)}"
    )
    verdicts = [
        (
            f"pooled /sleep >= {TARGET_CEILING_FRACTION:.0%} of ceiling",
            share >= TARGET_CEILING_FRACTION,
        ),
        (
            f"pooled /sleep >= {TARGET_SLEEP_RATIO:g}x stock",
            sleep_stock > 0 and sleep_pooled / sleep_stock >= TARGET_SLEEP_RATIO,
        ),
        ("pooled /trivial no slower than stock", triv_pooled >= triv_stock),
    ]
    print("targets: " + "; ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in verdicts))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds; cells report medians (1)")
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("BENCH_THREADS", "64")),
        help="pooled adapter threads, passed as BENCH_THREADS (env or 64)",
    )
    parser.add_argument(
        "--wrk-timeout",
        type=float,
        default=10.0,
        help="wrk per-request timeout in s (10; wrk's own default of 2 s would censor the "
        "stock adapter's ~connections*50 ms /sleep latencies and count them as errors)",
    )
    parser.add_argument("--workers", type=int, default=1, help="Hypercorn worker processes (1)")
    parser.add_argument(
        "--pin", action="store_true", help="pin the server to core 0 and wrk to core 1"
    )
    args = parser.parse_args(argv)
    for name in ("duration", "connections", "rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.connections < 2:
        parser.error("--connections must be >= 2 (wrk runs 2 threads)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found on PATH", file=sys.stderr)
        return 2
    print(
        f"wrk -t2 -c{args.connections} -d{args.duration}s --timeout={args.wrk_timeout:g}s "
        f"--latency; hypercorn uvloop -w {args.workers}; pooled threads={args.threads}; "
        f"pinned={args.pin}; "
        f"rounds={args.rounds}; cpus={os.cpu_count()}",
        flush=True,
    )
    results: dict[tuple[str, str], list[WrkResult]] = {}
    for rnd in range(1, args.rounds + 1):
        for adapter in ADAPTERS:
            try:
                with hypercorn_server(adapter, args.threads, args.workers, args.pin) as port:
                    for endpoint in ENDPOINTS:
                        for _ in range(WARMUP_REQUESTS):
                            get(port, endpoint, timeout=DRAIN_TIMEOUT)
                        result = run_wrk(
                            port,
                            endpoint,
                            args.duration,
                            args.connections,
                            args.wrk_timeout,
                            args.pin,
                        )
                        drain(port)
                        results.setdefault((adapter, endpoint), []).append(result)
                        print(
                            f"  round {rnd} {adapter:<6} {endpoint:<8} {result.rps:9.1f} req/s "
                            f"p50 {result.p50_ms:.2f} ms p99 {result.p99_ms:.2f} ms "
                            f"errors {result.errors}",
                            file=sys.stderr,
                            flush=True,
                        )
            except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
                print(f"{adapter}: {exc}", file=sys.stderr)
                return 1
    cells = [median_cell(a, e, results[a, e]) for a in ADAPTERS for e in ENDPOINTS]
    print()
    print_table(cells, args.connections, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
