"""Fixtures for job tests: a session factory on the test database, and workers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_asyncio

from service.infra.settings import Settings
from service.jobs.worker import Worker


@pytest_asyncio.fixture
async def make_worker(settings: Settings) -> AsyncIterator[Callable[..., Worker]]:
    """Factory: `make_worker(handlers={...}, **options)`; every worker is closed afterwards.

    Defaults suit tests: tiny backoff, short poll, no grace wait.
    """
    workers: list[Worker] = []

    def create(**options: Any) -> Worker:
        options.setdefault("backoff_base", 0.0)
        options.setdefault("poll_interval", 0.5)
        options.setdefault("shutdown_grace", 5.0)
        worker = Worker(settings, **options)
        workers.append(worker)
        return worker

    yield create
    for worker in workers:
        worker.stop()
        await worker.close()
