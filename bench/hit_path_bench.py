"""CPU per cached anonymous read through the served ASGI app, without an HTTP server.

Calls the app Hypercorn serves (`service.app.create_asgi`) directly with ASGI messages, so the
figure is what our own layers cost per request (security headers, rate limiter, response
cache, its Redis batches) with Hypercorn and the network taken out:

    python -m bench.hit_path_bench                       # GET /api/v1/tags, rate limits on
    python -m bench.hit_path_bench --no-rate-limit --path /api/v1/articles?limit=20

It needs a migrated database (`--database-url`, env `BENCH_DATABASE_URL`; `conduit seed` data
makes the answers realistic) and a Redis database it may write cache entries to. Prints the
median of `--repeats` runs of `--requests` requests, sent `--concurrency` at a time: wall
time, and this process's CPU time (at low concurrency the wall time is mostly waiting for
Redis, which a loaded server spends on other requests).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from service.app import create_asgi
from service.infra.settings import Environment, Settings


def scope_for(path: str) -> dict[str, Any]:
    """An anonymous HTTP/1.1 GET as Hypercorn would pass it."""
    raw, _, query = path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": raw,
        "raw_path": raw.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"accept", b"*/*")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


async def one(app: Any, scope: dict[str, Any]) -> int:
    """Serve one request; its status."""
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def run(args: argparse.Namespace) -> None:
    """Start the app, warm it up, time the batches."""
    settings = Settings(
        app_env=Environment.DEVELOPMENT,
        database_url=args.database_url,
        redis_url=args.redis_url,
        secret_key=secrets.token_urlsafe(48),
        access_log=False,
        rate_limit_enabled=not args.no_rate_limit,
        rate_limit_anonymous_per_minute=10**9,
    )
    app = create_asgi(settings)
    await app.startup()
    try:
        scope = scope_for(args.path)
        for _ in range(3):
            status = await one(app, scope)
        if status != 200:
            raise SystemExit(f"GET {args.path}: HTTP {status}")
        per_request, cpu_per_request = [], []
        for _ in range(args.repeats):
            started, cpu_started = time.perf_counter(), time.process_time()
            done = 0
            while done < args.requests:
                batch = min(args.concurrency, args.requests - done)
                await asyncio.gather(*(one(app, scope) for _ in range(batch)))
                done += batch
            per_request.append((time.perf_counter() - started) / args.requests * 1e6)
            cpu_per_request.append((time.process_time() - cpu_started) / args.requests * 1e6)
        print(
            f"GET {args.path}, rate limits {'off' if args.no_rate_limit else 'on'}, "
            f"{args.concurrency} at a time: median {statistics.median(per_request):.1f} us per "
            f"request, {statistics.median(cpu_per_request):.1f} us CPU "
            f"(runs: {', '.join(f'{v:.1f}' for v in per_request)})"
        )
    finally:
        await app.shutdown()


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """`--database-url` and `--redis-url`, defaulting to BENCH_DATABASE_URL and BENCH_REDIS_URL."""
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1/postgres"),
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser)
    parser.add_argument("--path", default="/api/v1/tags")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-rate-limit", action="store_true")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Hypercorn's uvloop worker needs it anyway
        asyncio.run(run(args))
    else:
        uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
