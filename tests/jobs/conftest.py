"""Fixtures for job tests: a session factory on the test database, and workers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from service.jobs.worker import Worker
from service.settings import Settings
from tests.jobs.support import SmtpServer, running_smtp_server


@pytest_asyncio.fixture
async def sessionmaker(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on the test database, independent of the app's engine."""
    assert settings.database_url is not None
    engine = create_async_engine(settings.database_url, pool_size=5)
    yield async_sessionmaker(engine, expire_on_commit=False)
    await engine.dispose()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 capturing every message."""
    with running_smtp_server() as server:
        yield server


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
