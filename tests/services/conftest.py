"""Fixtures of the service-layer tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


@pytest_asyncio.fixture
async def session(maker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session of the app's engine, as the routes get one; the test decides whether to
    commit."""
    async with maker() as db_session:
        yield db_session
