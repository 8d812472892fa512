"""Extra apps for tests that need other settings than the session's app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from service.app import ConduitASGI


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
