"""The API behind a real PgBouncer in transaction mode (`DB_PGBOUNCER`).

PgBouncer is Debian's (1.18: no prepared-statement tracking). The app's pool is wider than
PgBouncer's, so concurrent requests share server connections and consecutive transactions of
one client connection land on different ones: what breaks named or cached prepared statements,
statements prepared outside a transaction, and session state.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text

from service.app import ConduitASGI, create_asgi
from service.infra.db import DatabaseState
from service.infra.settings import Settings
from tests import pgbouncer

pytestmark = pytest.mark.skipif(
    not pgbouncer.available(), reason="pgbouncer is not installed (apt-get install pgbouncer)"
)

ARTICLES = "/api/v1/articles"
SERVER_CONNECTIONS = 3
CLIENTS = 12


@pytest_asyncio.fixture
async def bounced(database_url: str, settings: Settings) -> AsyncIterator[ConduitASGI]:
    """The app with DATABASE_URL through PgBouncer and `DB_PGBOUNCER` on."""
    with pgbouncer.running_pgbouncer(
        database_url,
        pool_size=SERVER_CONNECTIONS,
        # What the role's default does in production (ALTER ROLE ... SET statement_timeout).
        connect_query="SET statement_timeout = 5000",
    ) as bouncer:
        app = create_asgi(
            settings.model_copy(
                update={
                    "database_url": bouncer.url.replace("postgresql://", "postgresql+asyncpg://"),
                    "db_pgbouncer": True,
                }
            )
        )
        await app.startup()
        try:
            yield app
        finally:
            await app.shutdown()


def _expect(response: httpx.Response, status: int, errors: list[str]) -> dict[str, Any]:
    if response.status_code != status:
        errors.append(
            f"{response.request.method} {response.request.url.path}: "
            f"{response.status_code} {response.text[:300]}"
        )
        return {}
    return response.json() if response.content else {}


async def _visit(http: httpx.AsyncClient, n: int, errors: list[str]) -> None:
    """One user's hot path: register, write, read signed in, comment, favorite, replay."""
    body = {"user": {"username": f"pgb{n}", "email": f"pgb{n}@example.com", "password": "x" * 12}}
    user = _expect(await http.post("/api/v1/users", json=body), 201, errors)
    if not user:
        return
    auth = {"Authorization": f"Token {user['user']['token']}"}
    article = {
        "article": {"title": f"Bounced {n}", "description": "d", "body": "b", "tagList": ["pgb"]}
    }
    keyed = {**auth, "Idempotency-Key": f"pgb-{n}"}
    created = _expect(await http.post(ARTICLES, json=article, headers=keyed), 201, errors)
    replay = await http.post(ARTICLES, json=article, headers=keyed)
    _expect(replay, 201, errors)
    if replay.headers.get("idempotent-replayed") != "true" or replay.json() != created:
        errors.append(f"user {n}: the keyed create was not replayed")
    if not created:
        return
    slug = created["article"]["slug"]
    for _ in range(3):
        _expect(await http.get(ARTICLES, params={"limit": 20}, headers=auth), 200, errors)
        _expect(await http.get(f"{ARTICLES}/feed", headers=auth), 200, errors)
        _expect(await http.get(f"{ARTICLES}/{slug}", headers=auth), 200, errors)
        _expect(await http.get("/api/v1/user", headers=auth), 200, errors)
    comment = {"comment": {"body": f"comment {n}"}}
    _expect(await http.post(f"{ARTICLES}/{slug}/comments", json=comment, headers=auth), 200, errors)
    favorited = _expect(await http.post(f"{ARTICLES}/{slug}/favorite", headers=auth), 200, errors)
    if favorited and favorited["article"]["favoritesCount"] != 1:
        errors.append(f"user {n}: favorite not counted: {favorited}")
    listed = _expect(await http.get(f"{ARTICLES}/{slug}/comments", headers=auth), 200, errors)
    if listed and [c["body"] for c in listed["comments"]] != [f"comment {n}"]:
        errors.append(f"user {n}: comments read back as {listed}")


async def test_the_hot_paths_run_through_pgbouncer_in_transaction_mode(
    bounced: ConduitASGI,
) -> None:
    transport = httpx.ASGITransport(app=bounced)
    errors: list[str] = []
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        await asyncio.gather(*(_visit(http, n, errors) for n in range(CLIENTS)))
        listed = await http.get(ARTICLES, params={"tag": "pgb", "limit": 100})
    assert errors == []
    assert listed.status_code == 200
    assert listed.json()["articlesCount"] == CLIENTS


async def test_reads_take_a_transaction_and_the_server_keeps_the_statement_timeout(
    bounced: ConduitASGI,
) -> None:
    state: DatabaseState = bounced.flask_app.extensions["conduit.db"]
    # The read engine is the transactional one: outside a transaction PgBouncer may run
    # asyncpg's Bind on another server connection than its Parse.
    assert state.autocommit_engine is state.engine
    assert state.engine is not None
    async with state.engine.connect() as conn:
        # Set by PgBouncer's connect_query here, by the role's default in production: the
        # app sends no statement_timeout startup parameter (PgBouncer would refuse it).
        assert await conn.scalar(text("SELECT current_setting('statement_timeout')")) == "5s"
        assert await conn.scalar(text("SELECT current_setting('application_name')")) == "conduit"
