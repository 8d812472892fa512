"""Revoked sessions and suspended accounts are refused on the very next request: the database
decides on every request (the user is read with the token's session), whatever Redis does.
Real PostgreSQL and Redis throughout; Redis outages are a cut TCP proxy (tests/tcp_proxy.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest_asyncio
from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.app import ConduitASGI, create_asgi
from service.infra.settings import Settings
from service.models import AuthSession, User
from tests.api.v1.test_oauth import (
    REVOKED,
    USER,
    bearer,
    claims_of,
    password_grant,
    query,
    status_of,
)
from tests.apps import serving
from tests.factories import TestUser
from tests.tcp_proxy import TcpProxy, redis_proxy

MakeUser = Callable[..., Awaitable[TestUser]]


@pytest_asyncio.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    """A client of the test Redis database."""
    assert settings.redis_url is not None
    client = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


# --- through the app ---------------------------------------------------------------------------


@dataclass
class ProxiedRedis:
    """An app whose Redis connections go through a proxy that the test can cut."""

    client: httpx.AsyncClient
    proxy: TcpProxy


@pytest_asyncio.fixture
async def proxied(settings: Settings, app: ConduitASGI) -> AsyncIterator[ProxiedRedis]:
    assert settings.redis_url is not None
    proxy, proxied_url = redis_proxy(settings.redis_url)
    await proxy.start()
    asgi = create_asgi(
        settings.model_copy(
            update={
                "redis_url": proxied_url.format(port=proxy.port),
                "redis_socket_timeout": 0.5,
                "threads": 4,
            }
        )
    )
    try:
        async with serving(asgi) as http:
            yield ProxiedRedis(client=http, proxy=proxy)
    finally:
        await proxy.stop()


async def test_while_redis_is_down_revoked_tokens_are_refused_and_valid_ones_accepted(
    proxied: ProxiedRedis, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    revoked = await password_grant(client, jake)
    valid = await password_grant(client, jake)
    assert (
        await client.post("/api/v1/users/logout", headers=bearer(revoked["access_token"]))
    ).status_code == 204

    await proxied.proxy.stop()

    refused = await proxied.client.get(USER, headers=bearer(revoked["access_token"]))
    assert refused.status_code == 401
    assert refused.json() == REVOKED
    accepted = await proxied.client.get(USER, headers=bearer(valid["access_token"]))
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["user"]["username"] == "jake"


async def test_after_redis_lost_its_data_revoked_tokens_stay_refused(
    client: httpx.AsyncClient, make_user: MakeUser, redis: Redis
) -> None:
    jake = await make_user(username="jake")
    revoked = await password_grant(client, jake)
    valid = await password_grant(client, jake)
    await client.post("/api/v1/users/logout", headers=bearer(revoked["access_token"]))
    assert await status_of(client, revoked["access_token"]) == 401

    await redis.flushdb()  # what a restart of a Redis that keeps nothing on disk does

    assert await status_of(client, revoked["access_token"]) == 401
    assert await status_of(client, valid["access_token"]) == 200


async def test_a_logout_while_redis_is_down_holds_at_once_and_leaves_no_job(
    proxied: ProxiedRedis, client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    jake = await make_user(username="jake")
    tokens = await password_grant(client, jake)
    await proxied.proxy.stop()

    logout = await proxied.client.post(
        "/api/v1/users/logout", headers=bearer(tokens["access_token"])
    )

    assert logout.status_code == 204, logout.text
    assert await status_of(proxied.client, tokens["access_token"]) == 401
    assert await status_of(client, tokens["access_token"]) == 401
    assert await query(database_url, "SELECT kind FROM jobs") == []


async def test_a_session_revoked_in_the_database_is_refused_on_the_next_request(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    app: ConduitASGI,
    maker: async_sessionmaker[AsyncSession],
) -> None:
    jake = await make_user(username="jake")
    tokens = await password_grant(client, jake)
    assert await status_of(client, tokens["access_token"]) == 200
    sid = uuid.UUID(claims_of(app, tokens["access_token"])["sid"])
    async with maker() as session:
        await session.execute(
            update(AuthSession).where(AuthSession.id == sid).values(revoked_at=datetime.now(UTC))
        )
        await session.commit()

    refused = await client.get(USER, headers=bearer(tokens["access_token"]))

    assert refused.status_code == 401
    assert refused.json() == REVOKED


async def test_a_suspension_refuses_the_next_request(
    client: httpx.AsyncClient, make_user: MakeUser, maker: async_sessionmaker[AsyncSession]
) -> None:
    jake = await make_user(username="jake")
    tokens = await password_grant(client, jake)
    assert await status_of(client, tokens["access_token"]) == 200
    async with maker() as session:
        await session.execute(update(User).where(User.id == jake.id).values(suspended=True))
        await session.commit()

    refused = await client.get(USER, headers=bearer(tokens["access_token"]))

    assert refused.status_code == 401
    assert refused.json() == {"errors": {"token": ["account is suspended"]}}


async def test_a_revocation_made_while_redis_was_down_holds_once_redis_is_back(
    proxied: ProxiedRedis,
    client: httpx.AsyncClient,
    make_user: MakeUser,
) -> None:
    jake = await make_user(username="jake")
    tokens = await password_grant(client, jake)
    assert await status_of(proxied.client, tokens["access_token"]) == 200
    await proxied.proxy.stop()
    logout = await proxied.client.post(
        "/api/v1/users/logout", headers=bearer(tokens["access_token"])
    )
    assert logout.status_code == 204

    await proxied.proxy.start()  # Redis is back, its data intact; the job has not run yet

    assert await status_of(proxied.client, tokens["access_token"]) == 401
    assert await status_of(client, tokens["access_token"]) == 401


async def test_reads_that_load_the_viewer_late_still_refuse_a_revoked_token_first(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    tokens = await password_grant(client, jake)
    headers = bearer(tokens["access_token"])
    paths = [
        "/api/v1/articles",
        "/api/v1/articles/no-such-article",  # 401, not the view's 404
        "/api/v1/articles/no-such-article/comments",
        "/api/v1/profiles/jake",
        "/api/v1/profiles/nobody-here",
    ]
    for path in paths:
        assert (await client.get(path, headers=headers)).status_code in {200, 404}, path
    assert (await client.post("/api/v1/users/logout", headers=headers)).status_code == 204

    for path in paths:
        refused = await client.get(path, headers=headers)
        assert refused.status_code == 401, path
        assert refused.json() == REVOKED, path
