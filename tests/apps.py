"""Extra apps for tests that need other settings than the session's app, and what tests
observe of an app."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
from hypercorn.asyncio import serve
from hypercorn.config import Config
from sqlalchemy import event

from service.app import ConduitASGI
from service.cli import HYPERCORN_TOML
from service.infra.db import DatabaseState

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


@asynccontextmanager
async def running(asgi: ConduitASGI) -> AsyncIterator[ConduitASGI]:
    """Start `asgi` (pools, lifespan), stop it afterwards."""
    await asgi.startup()
    try:
        yield asgi
    finally:
        await asgi.shutdown()


@asynccontextmanager
async def serving(asgi: ConduitASGI) -> AsyncIterator[httpx.AsyncClient]:
    """Start `asgi` and yield an HTTP client talking to it through ASGI."""
    async with running(asgi):
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


@asynccontextmanager
async def over_tcp(asgi: ASGIApp, **overrides: Any) -> AsyncIterator[int]:
    """Serve the started `asgi` with Hypercorn on a free port of 127.0.0.1, configured by the
    repository's hypercorn.toml and then `overrides`; yield the port."""
    config = Config.from_toml(str(HYPERCORN_TOML))
    config.workers = 1  # one server in this process: the test's loop
    for name, value in overrides.items():
        setattr(config, name, value)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        # Hypercorn takes the descriptor over (and closes it): give it a copy.
        config.bind = [f"fd://{os.dup(listener.fileno())}"]

    async def without_lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await asgi(scope, receive, send)
            return
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})

    stop = asyncio.Event()
    server = asyncio.create_task(serve(without_lifespan, config, shutdown_trigger=stop.wait))
    try:
        yield port
    finally:
        stop.set()
        await server


@contextmanager
def count_statements(app: ConduitASGI) -> Iterator[list[str]]:
    """Record every statement the app's engine sends while the block runs."""
    state: DatabaseState = app.flask_app.extensions["conduit.db"]
    assert state.engine is not None
    engine = state.engine.sync_engine
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)
