"""Minimal Flask app served through both ASGI adapters, for `bench.adapter_bench`.

Hypercorn imports `bench.adapter_app:stock` or `bench.adapter_app:pooled`. The pooled
adapter's concurrency comes from the environment variable BENCH_THREADS (default 64).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any

from asgiref.wsgi import WsgiToAsgi
from flask import Flask

from service.http.adapter import ConcurrentWsgiToAsgi, run_on_serving_loop

SLEEP_SECONDS = 0.05
THREADS = int(os.environ.get("BENCH_THREADS", "64"))


class BenchFlask(Flask):
    """Flask running async views the way the service does (`ConduitFlask`, minus the DB).

    Under the pooled adapter they run on the serving loop; under the stock adapter there is no
    serving loop and `run_on_serving_loop` falls back to asgiref's `async_to_sync`, as stock.
    """

    def async_to_sync(self, func: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
        """Run `func` on the serving loop."""
        return run_on_serving_loop(func)


flask_app = BenchFlask(__name__)


@flask_app.get("/sleep")
async def sleep_view() -> dict[str, Any]:
    """Simulate a view awaiting I/O (a database or Redis round trip) for 50 ms."""
    await asyncio.sleep(SLEEP_SECONDS)
    return {"ok": True, "slept": SLEEP_SECONDS}


@flask_app.get("/trivial")
def trivial_view() -> dict[str, Any]:
    """Do no work: measures the per-request overhead of server, adapter and Flask."""
    return {"ok": True}


# asgiref's WsgiToAsgi.__init__ has no annotations.
stock: Any = WsgiToAsgi(flask_app)  # type: ignore[no-untyped-call]
pooled = ConcurrentWsgiToAsgi(flask_app, concurrency=THREADS, max_body_bytes=1_048_576)


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A plain ASGI app with the same two endpoints and no Flask or adapter at all.

    It measures what Hypercorn itself can do on this machine: the practical ceiling that no
    WSGI adapter can exceed.
    """
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/sleep":
        await asyncio.sleep(SLEEP_SECONDS)
        body = b'{"ok":true,"slept":0.05}'
    else:
        body = b'{"ok":true}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
