"""Shared fixtures: real PostgreSQL and Redis (embedded, or TEST_DATABASE_URL / TEST_REDIS_URL).

One database is created per test session and migrated once; after every test the tables are
truncated and the Redis database flushed, so tests can run in any order.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from service.app import ConduitASGI, create_asgi
from service.infra.db import DatabaseState
from service.infra.migrate import upgrade_async
from service.infra.settings import Environment, Settings
from service.models import Base
from tests import factories
from tests.factories import TestUser
from tests.jobs.support import SmtpServer, running_smtp_server

TEST_SECRET = "test-secret-key-" + "x" * 32


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def server_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Admin URL of a PostgreSQL server and URL of a Redis database for this session."""
    database_url = os.environ.get("TEST_DATABASE_URL")
    redis_url = os.environ.get("TEST_REDIS_URL")
    servers = None
    if not database_url or not redis_url:
        warnings.filterwarnings("ignore", module="platformdirs")
        from service.infra.embedded import EmbeddedServers

        servers = EmbeddedServers(tmp_path_factory.mktemp("embedded"))
        database_url = database_url or servers.start_postgres()
        redis_url = redis_url or servers.start_redis()
    yield database_url, redis_url
    if servers is not None:
        servers.stop()


@pytest_asyncio.fixture(scope="session")
async def database_url(server_urls: tuple[str, str]) -> AsyncIterator[str]:
    """A fresh, migrated database on the test server, dropped at the end."""
    admin_url = server_urls[0].replace("postgresql+asyncpg://", "postgresql://")
    name = f"conduit_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(admin_url, name)
    try:
        await upgrade_async(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
def settings(
    database_url: str, server_urls: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Settings of the app under test."""
    return Settings(
        app_env=Environment.TEST,
        database_url=database_url,
        redis_url=server_urls[1],
        secret_key=TEST_SECRET,
        data_dir=Path(tmp_path_factory.mktemp("data")),
        access_log=False,
        threads=16,
        db_pool_size=16,
        # The suite makes many requests from one address within a minute; the limits are
        # tested with apps of their own (tests/http/test_ratelimit.py).
        rate_limit_enabled=False,
    )


@pytest_asyncio.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[ConduitASGI]:
    """The same ASGI app object Hypercorn serves, started once for the session."""
    asgi = create_asgi(settings)
    await asgi.startup()
    yield asgi
    await asgi.shutdown()


@pytest_asyncio.fixture
async def client(app: ConduitASGI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the app through ASGI."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest_asyncio.fixture(autouse=True)
async def _clean_state(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Empty every table and the Redis database after each test that used them."""
    yield
    if "database_url" in request.fixturenames:
        url: str = request.getfixturevalue("database_url")
        tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        finally:
            await conn.close()
    if "server_urls" in request.fixturenames:
        redis = Redis.from_url(request.getfixturevalue("server_urls")[1])
        await redis.flushdb()
        await redis.aclose()


@pytest_asyncio.fixture
async def rds(server_urls: tuple[str, str]) -> AsyncIterator[Redis]:
    """A direct client of the test Redis database (to inspect keys)."""
    client = Redis.from_url(server_urls[1])
    yield client
    await client.aclose()


@pytest.fixture
def make_user(app: ConduitASGI) -> Callable[..., Awaitable[TestUser]]:
    """Factory fixture: `await make_user(username=...)` inserts a user and returns a token."""

    async def create(**kwargs: Any) -> TestUser:
        return await factories.make_user(app, **kwargs)

    return create


@pytest_asyncio.fixture
async def owner(make_user: Callable[..., Awaitable[TestUser]]) -> TestUser:
    """A fresh user, for tests that need just one (e.g. to own webhook endpoints)."""
    return await make_user()


@pytest_asyncio.fixture
async def sessionmaker(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on the test database, independent of the app's engine."""
    assert settings.database_url is not None
    engine = create_async_engine(settings.database_url, pool_size=5)
    yield async_sessionmaker(engine, expire_on_commit=False)
    await engine.dispose()


@pytest.fixture
def maker(app: ConduitASGI) -> async_sessionmaker[AsyncSession]:
    """The app's own session factory (its engine and pool)."""
    state: DatabaseState = app.flask_app.extensions["conduit.db"]
    assert state.sessionmaker is not None
    return state.sessionmaker


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 capturing every message."""
    with running_smtp_server() as server:
        yield server
