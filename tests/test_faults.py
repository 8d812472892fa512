"""Dependency failures through a TCP proxy: a cut database or Redis gives 503s, then recovery."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest_asyncio

from service.app import ConduitASGI, create_asgi
from service.infra.settings import Settings, normalise_database_url
from tests.tcp_proxy import TcpProxy, postgres_socket, redis_proxy


def _database_proxy(url: str) -> tuple[TcpProxy, str]:
    """A proxy to the database of `url` and the URL that goes through it."""
    parts = urlsplit(url)
    socket_dir = parse_qs(parts.query).get("host")
    if socket_dir:
        proxy = TcpProxy(unix=postgres_socket(socket_dir[0]))
    else:
        proxy = TcpProxy(host=parts.hostname or "127.0.0.1", port=parts.port or 5432)
    userinfo = parts.netloc.rpartition("@")[0]
    return proxy, f"postgresql://{userinfo}@127.0.0.1:{{port}}{parts.path}"


@dataclass
class Proxied:
    """An app whose database and Redis connections go through proxies."""

    client: httpx.AsyncClient
    database: TcpProxy
    redis: TcpProxy


@pytest_asyncio.fixture
async def proxied(settings: Settings, app: ConduitASGI) -> AsyncIterator[Proxied]:
    """Start both proxies and an app configured to use them."""
    assert settings.database_url is not None
    assert settings.redis_url is not None
    database, database_url = _database_proxy(settings.database_url)
    redis, redis_url = redis_proxy(settings.redis_url)
    await database.start()
    await redis.start()
    asgi = create_asgi(
        settings.model_copy(
            update={
                "database_url": normalise_database_url(database_url.format(port=database.port)),
                "redis_url": redis_url.format(port=redis.port),
                "db_connect_timeout": 2.0,
                "redis_socket_timeout": 0.5,
                "threads": 8,
            }
        )
    )
    try:
        await asgi.startup()
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield Proxied(client=http, database=database, redis=redis)
    finally:
        await asgi.shutdown()
        await database.stop()
        await redis.stop()


async def test_database_outage_gives_503_then_recovers(proxied: Proxied) -> None:
    http = proxied.client
    assert (await http.get("/readyz")).status_code == 200
    assert (await http.get("/api/v1/tags")).status_code == 200

    await proxied.database.stop()

    ready = await http.get("/readyz")
    assert ready.status_code == 503
    assert ready.headers["content-type"] == "application/json"
    assert ready.headers["retry-after"] == "1"
    assert list(ready.json()["errors"]) == ["database"]

    # An answer the cache holds needs no database (no write can have changed it meanwhile)...
    tags = await http.get("/api/v1/tags")
    assert tags.status_code == 200, tags.text
    assert tags.json() == {"tags": []}
    # ...one it does not hold is a clean 503.
    articles = await http.get("/api/v1/articles")
    assert articles.status_code == 503
    assert articles.headers["content-type"] == "application/json"
    assert articles.json() == {"errors": {"database": ["database unavailable, try again later"]}}

    await proxied.database.start()

    ready = await http.get("/readyz")
    assert ready.status_code == 200, ready.text
    articles = await http.get("/api/v1/articles")
    assert articles.status_code == 200, articles.text
    assert articles.json() == {"articles": [], "articlesCount": 0}


async def test_redis_outage_leaves_the_instance_ready_but_degraded(proxied: Proxied) -> None:
    http = proxied.client
    assert (await http.get("/readyz")).status_code == 200

    await proxied.redis.stop()

    # Requests are still answered (from PostgreSQL): the balancer must keep the instance.
    ready = await http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "degraded"
    assert ready.json()["checks"]["database"] == "ok"
    assert ready.json()["checks"]["redis"].startswith("unreachable (")
    assert (await http.get("/api/v1/tags")).status_code == 200

    await proxied.redis.start()

    ready = await http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}


async def test_both_down_are_both_named_and_liveness_is_unaffected(proxied: Proxied) -> None:
    http = proxied.client
    await proxied.database.stop()
    await proxied.redis.stop()

    ready = await http.get("/readyz")
    assert ready.status_code == 503
    assert set(ready.json()["errors"]) == {"database", "redis"}
    for messages in ready.json()["errors"].values():
        assert len(messages) == 1
        assert messages[0].startswith("unreachable (")
    # Liveness does no I/O: a dependency outage must not get the process restarted.
    health = await http.get("/healthz")
    assert health.status_code == 200

    await proxied.database.start()
    await proxied.redis.start()
    assert (await http.get("/readyz")).status_code == 200
