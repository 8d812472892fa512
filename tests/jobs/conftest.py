"""Fixtures for job tests: a session factory on the test database, and workers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from typing import Any

import pytest_asyncio

from service.infra.settings import Settings
from service.jobs import Handler, Worker, WorkerConfig


@pytest_asyncio.fixture
async def make_worker(settings: Settings) -> AsyncIterator[Callable[..., Worker]]:
    """Factory: `make_worker(handlers={...}, name=..., **changes)`, `changes` being fields of
    its `WorkerConfig`; every worker is closed afterwards.

    Defaults suit tests: tiny backoff, short poll, a bounded grace wait.
    """
    workers: list[Worker] = []
    defaults = WorkerConfig.from_settings(settings)
    defaults = replace(defaults, backoff_base=0.0, poll_interval=0.5, shutdown_grace=5.0)

    def create(
        *, handlers: Mapping[str, Handler], name: str | None = None, **changes: Any
    ) -> Worker:
        config = replace(defaults, **changes)
        worker = Worker(settings, config, handlers=handlers, name=name)
        workers.append(worker)
        return worker

    yield create
    for worker in workers:
        worker.stop()
        await worker.close()
