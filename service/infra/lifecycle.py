"""Startup and shutdown hooks that the ASGI adapter runs on the server's loop."""

from __future__ import annotations

import gc
import logging
from typing import Protocol

from flask import Flask

from service.infra.extensions import Extension

logger = logging.getLogger("conduit.lifecycle")


class StartupError(RuntimeError):
    """A dependency is unusable at start; the message is one line, secrets masked."""


class Resource(Protocol):
    """Something opened at startup and closed at shutdown."""

    async def startup(self) -> None:
        """Open the resource."""

    async def shutdown(self) -> None:
        """Close the resource."""


# The resources of an app, in registration order.
LIFESPAN: Extension[list[Resource]] = Extension("conduit.lifespan")


def register_lifespan(app: Flask, resource: Resource) -> None:
    """Have `resource` opened at startup (in registration order) and closed at shutdown."""
    resources = LIFESPAN.find(app)
    if resources is None:
        resources = LIFESPAN.bind(app, [])
    resources.append(resource)


class AppLifespan:
    """Runs an app's registered resources; what the adapter calls on lifespan events."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._started: list[Resource] = []

    async def startup(self) -> None:
        """Open every resource; if one fails, close those already open and re-raise."""
        for resource in LIFESPAN.find(self.app) or ():
            try:
                await resource.startup()
            except BaseException:
                await self.shutdown()
                raise
            self._started.append(resource)
        # Everything made so far (modules, routes, pools) lives as long as the process: keep
        # it out of the collector's full passes, which otherwise stall the event loop.
        gc.collect()
        gc.freeze()

    async def shutdown(self) -> None:
        """Close the opened resources in reverse order."""
        while self._started:
            resource = self._started.pop()
            try:
                await resource.shutdown()
            except Exception:
                logger.exception("error while closing %s", type(resource).__name__)


class Drain:
    """Whether this process is shutting down, and the requests it is still answering.

    Process-wide: a signal stops the whole process. Once `draining`, readiness answers 503 (a
    load balancer stops sending) and every response closes its connection (a client does not
    send its next request on a connection about to close); requests in flight still finish.
    """

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0

    def begin(self) -> None:
        """Start draining (idempotent)."""
        self.draining = True


DRAIN = Drain()
