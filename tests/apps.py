"""Extra apps for tests that need other settings than the session's app, and what tests
observe of an app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
from sqlalchemy import event

from service.app import ConduitASGI
from service.db import DatabaseState


@asynccontextmanager
async def running(asgi: ConduitASGI) -> AsyncIterator[ConduitASGI]:
    """Start `asgi` (pools, lifespan), stop it afterwards."""
    await asgi.startup()
    try:
        yield asgi
    finally:
        await asgi.shutdown()
        asgi.executor.shutdown(wait=True)


@asynccontextmanager
async def serving(asgi: ConduitASGI) -> AsyncIterator[httpx.AsyncClient]:
    """Start `asgi` and yield an HTTP client talking to it through ASGI."""
    async with running(asgi):
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


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
