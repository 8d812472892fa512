"""Revoked sessions in Redis (service.services.revocation): markers, the sentinel reload after
Redis lost its data, the database fallback while Redis is unreachable, and the durable job
that writes markers a failed publish left out. Real PostgreSQL and Redis throughout; Redis
outages are a closed port or a cut TCP proxy (tests/tcp_proxy.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import pytest_asyncio
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.app import ConduitASGI, create_asgi
from service.infra.mail import Mailer
from service.infra.settings import Settings
from service.job_registry import publish_revocations
from service.jobs.worker import JobContext, PermanentJobError
from service.models import AuthSession, User
from service.services import revocation, sessions
from tests.api.v1.test_oauth import (
    REVOKED,
    USER,
    bearer,
    claims_of,
    password_grant,
    query,
    status_of,
)
from tests.factories import TestUser
from tests.net import free_port
from tests.tcp_proxy import TcpProxy, redis_proxy

MakeUser = Callable[..., Awaitable[TestUser]]
TTL = 600


@pytest_asyncio.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    """A client of the test Redis database."""
    assert settings.redis_url is not None
    client = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def dead_redis() -> AsyncIterator[Redis]:
    """A client of a port where nothing listens."""
    port = free_port()
    client = Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    yield client
    await client.aclose()


async def new_session(
    maker: async_sessionmaker[AsyncSession],
    user: TestUser,
    *,
    revoked_ago: timedelta | None = None,
) -> uuid.UUID:
    """A committed session of `user`, revoked `revoked_ago` ago when given (database only)."""
    async with maker() as session:
        row = await session.get(User, user.id)
        assert row is not None
        auth_session = await sessions.start_session(
            session=session, user=row, scopes={"profile:read"}, lifetime=timedelta(days=1)
        )
        if revoked_ago is not None:
            auth_session.revoked_at = datetime.now(UTC) - revoked_ago
            auth_session.revoked_reason = "test"
        await session.commit()
        return auth_session.id


async def revoke_in_database(maker: async_sessionmaker[AsyncSession], sid: uuid.UUID) -> None:
    """Revoke `sid` behind Redis's back (no marker)."""
    async with maker() as session:
        await session.execute(
            update(AuthSession).where(AuthSession.id == sid).values(revoked_at=datetime.now(UTC))
        )
        await session.commit()


# --- markers and the sentinel ------------------------------------------------------------------


async def test_publish_writes_a_marker_per_session_with_the_ttl(redis: Redis) -> None:
    ids = [uuid.uuid4(), uuid.uuid4()]

    await revocation.publish(redis=redis, session_ids=ids, ttl_seconds=TTL)

    for sid in ids:
        assert await redis.get(revocation.key(sid)) == b"1"
        assert TTL - 5 <= await redis.ttl(revocation.key(sid)) <= TTL
    assert revocation.key(ids[0]) == f"auth:revoked:{ids[0]}"


async def test_reload_marks_sessions_revoked_within_the_ttl_then_sets_the_sentinel(
    redis: Redis, maker: async_sessionmaker[AsyncSession], make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    recent = await new_session(maker, jake, revoked_ago=timedelta(seconds=10))
    old = await new_session(maker, jake, revoked_ago=timedelta(seconds=TTL + 60))
    active = await new_session(maker, jake)

    async with maker() as session:
        reloaded = await revocation.reload(redis=redis, session=session, ttl_seconds=TTL)

    assert reloaded == {recent}
    assert await redis.get(revocation.key(recent)) == b"1"
    # An old revocation outlived every access token of its session: no marker needed.
    assert await redis.get(revocation.key(old)) is None
    assert await redis.get(revocation.key(active)) is None
    assert await redis.get(revocation.SENTINEL) == b"1"
    assert await redis.ttl(revocation.SENTINEL) == -1


async def test_check_trusts_redis_once_the_sentinel_is_set(
    redis: Redis, maker: async_sessionmaker[AsyncSession], make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    marked = await new_session(maker, jake)
    unmarked = await new_session(maker, jake)
    await redis.set(revocation.SENTINEL, b"1")
    await revocation.publish(redis=redis, session_ids=[marked], ttl_seconds=TTL)
    await revoke_in_database(maker, unmarked)  # no marker: Redis does not know
    check = revocation.RevocationCheck(ttl_seconds=TTL)

    async with maker() as session:
        assert await check.is_revoked(redis=redis, session=session, session_id=marked)
        # Redis answers without the database: an unpublished revocation is not seen.
        assert not await check.is_revoked(redis=redis, session=session, session_id=unmarked)


async def test_check_reloads_the_markers_when_the_sentinel_is_missing(
    redis: Redis, maker: async_sessionmaker[AsyncSession], make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    revoked = await new_session(maker, jake, revoked_ago=timedelta(seconds=1))
    other_revoked = await new_session(maker, jake, revoked_ago=timedelta(seconds=2))
    active = await new_session(maker, jake)
    check = revocation.RevocationCheck(ttl_seconds=TTL)

    async with maker() as session:
        first = await check.is_revoked(redis=redis, session=session, session_id=active)
        assert await redis.get(revocation.SENTINEL) == b"1"
        second = await check.is_revoked(redis=redis, session=session, session_id=revoked)
        third = await check.is_revoked(redis=redis, session=session, session_id=other_revoked)

    assert (first, second, third) == (False, True, True)
    assert await redis.get(revocation.key(revoked)) == b"1"


async def test_check_asks_the_database_while_redis_is_unreachable(
    dead_redis: Redis,
    redis: Redis,
    maker: async_sessionmaker[AsyncSession],
    make_user: MakeUser,
) -> None:
    jake = await make_user(username="jake")
    revoked = await new_session(maker, jake, revoked_ago=timedelta(seconds=1))
    active = await new_session(maker, jake)
    check = revocation.RevocationCheck(ttl_seconds=TTL)

    async with maker() as session:
        assert await check.is_revoked(redis=dead_redis, session=session, session_id=revoked)
        assert not await check.is_revoked(redis=dead_redis, session=session, session_id=active)
        assert await check.is_revoked(redis=dead_redis, session=session, session_id=uuid.uuid4())
        # Within the retry window even a working Redis is not asked: a marker-only
        # revocation is not seen, the database's word counts.
        await redis.set(revocation.SENTINEL, b"1")
        await revocation.publish(redis=redis, session_ids=[active], ttl_seconds=TTL)
        assert not await check.is_revoked(redis=redis, session=session, session_id=active)


async def test_check_goes_back_to_redis_after_the_retry_window(
    dead_redis: Redis,
    redis: Redis,
    maker: async_sessionmaker[AsyncSession],
    make_user: MakeUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(revocation, "RETRY_REDIS_AFTER_SECONDS", 0.0)
    jake = await make_user(username="jake")
    active = await new_session(maker, jake)
    check = revocation.RevocationCheck(ttl_seconds=TTL)
    await redis.set(revocation.SENTINEL, b"1")
    await revocation.publish(redis=redis, session_ids=[active], ttl_seconds=TTL)

    async with maker() as session:
        assert not await check.is_revoked(redis=dead_redis, session=session, session_id=active)
        assert await check.is_revoked(redis=redis, session=session, session_id=active)


# --- the durable publish job -------------------------------------------------------------------


def job_context(settings: Settings, maker: async_sessionmaker[AsyncSession]) -> JobContext:
    return JobContext(
        job_id=1,
        kind=revocation.PUBLISH_JOB,
        attempt=1,
        max_attempts=8,
        settings=settings,
        sessionmaker=maker,
        mailer=Mailer(settings),
    )


async def test_the_publish_job_writes_the_markers(
    settings: Settings, maker: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    ids = [uuid.uuid4(), uuid.uuid4()]

    await publish_revocations(
        {"sessionIds": [str(sid) for sid in ids], "ttlSeconds": TTL}, job_context(settings, maker)
    )

    for sid in ids:
        assert await redis.get(revocation.key(sid)) == b"1"
        assert TTL - 5 <= await redis.ttl(revocation.key(sid)) <= TTL


async def test_a_malformed_publish_job_fails_for_good(
    settings: Settings, maker: async_sessionmaker[AsyncSession]
) -> None:
    payloads: list[dict[str, object]] = [
        {},
        {"sessionIds": ["not-a-uuid"], "ttlSeconds": TTL},
        {"sessionIds": [str(uuid.uuid4())]},
        {"sessionIds": None, "ttlSeconds": TTL},
        {"sessionIds": [str(uuid.uuid4())], "ttlSeconds": "soon"},
    ]

    for payload in payloads:
        with pytest.raises(PermanentJobError):
            await publish_revocations(payload, job_context(settings, maker))


async def test_the_publish_job_is_retried_while_redis_is_unreachable(
    settings: Settings, maker: async_sessionmaker[AsyncSession]
) -> None:
    port = free_port()
    unreachable = settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{port}/0", "redis_socket_timeout": 0.5}
    )

    # A connection error, not a permanent one: the worker retries it.
    with pytest.raises(RedisError):
        await publish_revocations(
            {"sessionIds": [str(uuid.uuid4())], "ttlSeconds": TTL},
            job_context(unreachable, maker),
        )


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
        await asgi.startup()
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield ProxiedRedis(client=http, proxy=proxy)
    finally:
        await asgi.shutdown()
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
    client: httpx.AsyncClient, make_user: MakeUser, redis: Redis, app: ConduitASGI
) -> None:
    jake = await make_user(username="jake")
    revoked = await password_grant(client, jake)
    valid = await password_grant(client, jake)
    await client.post("/api/v1/users/logout", headers=bearer(revoked["access_token"]))
    assert await status_of(client, revoked["access_token"]) == 401

    await redis.flushdb()  # what a restart of a Redis that keeps nothing on disk does

    assert await status_of(client, revoked["access_token"]) == 401
    assert await status_of(client, valid["access_token"]) == 200
    sid = uuid.UUID(claims_of(app, revoked["access_token"])["sid"])
    assert await redis.get(revocation.SENTINEL) == b"1"
    assert await redis.get(revocation.key(sid)) == b"1"


async def test_a_failed_publish_leaves_a_job_that_writes_the_marker(
    proxied: ProxiedRedis,
    client: httpx.AsyncClient,
    make_user: MakeUser,
    app: ConduitASGI,
    settings: Settings,
    maker: async_sessionmaker[AsyncSession],
    redis: Redis,
    database_url: str,
) -> None:
    jake = await make_user(username="jake")
    tokens = await password_grant(client, jake)
    sid = claims_of(app, tokens["access_token"])["sid"]
    await proxied.proxy.stop()

    logout = await proxied.client.post(
        "/api/v1/users/logout", headers=bearer(tokens["access_token"])
    )

    assert logout.status_code == 204, logout.text
    jobs = await query(database_url, "SELECT kind, payload, status FROM jobs")
    assert len(jobs) == 1
    assert jobs[0]["kind"] == revocation.PUBLISH_JOB
    assert jobs[0]["status"] == "pending"
    payload = json.loads(jobs[0]["payload"])
    assert payload["sessionIds"] == [sid]
    ttl = app.flask_app.extensions["conduit.auth"].revocations.ttl_seconds
    assert payload["ttlSeconds"] == ttl
    assert await redis.get(revocation.key(uuid.UUID(sid))) is None
    # Meanwhile the database says it: this app, with Redis down, refuses the token.
    assert (
        await proxied.client.get(USER, headers=bearer(tokens["access_token"]))
    ).status_code == 401

    await publish_revocations(payload, job_context(settings, maker))

    assert await redis.get(revocation.key(uuid.UUID(sid))) == b"1"
    assert ttl - 5 <= await redis.ttl(revocation.key(uuid.UUID(sid))) <= ttl


async def test_a_revocation_made_while_redis_was_down_holds_once_redis_is_back(
    proxied: ProxiedRedis,
    client: httpx.AsyncClient,
    make_user: MakeUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(revocation, "RETRY_REDIS_AFTER_SECONDS", 0.0)
    jake = await make_user(username="jake")
    tokens = await password_grant(client, jake)
    # A token was checked: the sentinel is set, Redis is trusted.
    assert await status_of(proxied.client, tokens["access_token"]) == 200
    await proxied.proxy.stop()
    logout = await proxied.client.post(
        "/api/v1/users/logout", headers=bearer(tokens["access_token"])
    )
    assert logout.status_code == 204

    await proxied.proxy.start()  # Redis is back, its data intact; the job has not run yet

    assert await status_of(proxied.client, tokens["access_token"]) == 401
    assert await status_of(client, tokens["access_token"]) == 401
