"""Startup and shutdown hooks that the ASGI adapter runs on the server's loop."""

from __future__ import annotations

import gc
import logging
from typing import Protocol

from flask import Flask

logger = logging.getLogger("conduit.lifecycle")

EXTENSION_KEY = "conduit.lifespan"


class StartupError(RuntimeError):
    """A dependency is unusable at start; the message is one line, secrets masked."""


class Resource(Protocol):
    """Something opened at startup and closed at shutdown."""

    async def startup(self) -> None:
        """Open the resource."""

    async def shutdown(self) -> None:
        """Close the resource."""


def register_lifespan(app: Flask, resource: Resource) -> None:
    """Have `resource` opened at startup (in registration order) and closed at shutdown."""
    app.extensions.setdefault(EXTENSION_KEY, []).append(resource)


class AppLifespan:
    """Runs an app's registered resources; what the adapter calls on lifespan events."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._started: list[Resource] = []

    async def startup(self) -> None:
        """Open every resource; if one fails, close those already open and re-raise."""
        for resource in self.app.extensions.get(EXTENSION_KEY, []):
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
