"""What the metrics middleware adds to a request, with prometheus-client in memory and in
multiprocess mode (mmap files, as under `conduit serve --workers N`).

Runs a trivial ASGI app (it names its route, as the Flask hook does, and answers 200) with
and without `MetricsMiddleware`, in this process, and prints the median time per request of
several rounds. The multiprocess figure needs PROMETHEUS_MULTIPROC_DIR set before
prometheus-client is imported, so it runs in a child process.

    python -m bench.metrics_bench [--requests 50000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROUTE = "/api/v1/articles/<slug:slug>"


async def _inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
    from service.infra import metrics

    metrics.note_route(ROUTE)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _per_request(app: Any, requests: int) -> float:
    scope = {"type": "http", "method": "GET", "path": "/api/v1/articles/x"}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        return None

    started = time.perf_counter()
    for _ in range(requests):
        await app(scope, receive, send)
    return (time.perf_counter() - started) / requests * 1e6


async def _measure(requests: int, rounds: int) -> tuple[float, float]:
    from service.http.metrics import MetricsMiddleware

    metered = MetricsMiddleware(_inner)
    bare = [await _per_request(_inner, requests) for _ in range(rounds)]
    with_metrics = [await _per_request(metered, requests) for _ in range(rounds)]
    return statistics.median(bare), statistics.median(with_metrics)


def _report(mode: str, requests: int, rounds: int) -> None:
    bare, metered = asyncio.run(_measure(requests, rounds))
    added = metered - bare
    print(f"{mode:>12}: bare {bare:6.2f} us, metered {metered:6.2f} us, added {added:5.2f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mode", choices=["in-memory", "multiprocess"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        _report(args.mode, args.requests, args.rounds)
        return
    _report("in-memory", args.requests, args.rounds)
    with tempfile.TemporaryDirectory(prefix="metrics-bench-") as directory:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
        argv = ["--requests", str(args.requests), "--rounds", str(args.rounds)]
        command = [sys.executable, "-m", "bench.metrics_bench", *argv, "--mode", "multiprocess"]
        subprocess.run(command, env=env, check=True)


if __name__ == "__main__":
    main()
