"""The application factory: configuration, one unit of work per request, startup failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import orjson
import pytest
import pytest_asyncio
from flask import Blueprint, Response, jsonify, session
from sqlalchemy import event

from service.api.jsonprovider import OrjsonProvider
from service.app import ConduitASGI, create_app
from service.domain.errors import Conflict
from service.infra.db import DatabaseState, db
from service.infra.lifecycle import StartupError
from service.infra.settings import Settings
from service.models import Tag
from tests.net import free_port


def _unit_of_work_blueprint() -> Blueprint:
    bp = Blueprint("uow_test", __name__, url_prefix="/t")

    @bp.post("/tags/<name>")
    async def uow_add_tags(name: str) -> Response:
        db.session.add(Tag(name=name))
        await db.session.flush()
        db.session.add(Tag(name=f"{name}-2"))
        await db.session.flush()
        return jsonify({"ok": True})

    @bp.post("/tags/<name>/fail")
    async def uow_add_tag_then_fail(name: str) -> Response:
        db.session.add(Tag(name=name))
        await db.session.flush()
        raise Conflict("changed my mind", field="tag")

    @bp.get("/nothing")
    async def uow_read_nothing() -> Response:
        return jsonify({"at": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)})

    return bp


@dataclass
class UowApp:
    client: httpx.AsyncClient
    commits: list[str]


@pytest_asyncio.fixture(scope="module")
async def uow_app(settings: Settings, app: ConduitASGI) -> AsyncIterator[UowApp]:
    """An app with test-only views, counting the commits its engine makes."""
    flask_app = create_app(settings)
    flask_app.register_blueprint(_unit_of_work_blueprint())
    asgi = ConduitASGI(flask_app, settings)
    await asgi.startup()
    commits: list[str] = []
    state: DatabaseState = flask_app.extensions["conduit.db"]
    assert state.engine is not None
    event.listen(state.engine.sync_engine, "commit", lambda conn: commits.append("commit"))
    try:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield UowApp(client=http, commits=commits)
    finally:
        await asgi.shutdown()


async def tag_names(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        return [row["name"] for row in await conn.fetch("SELECT name FROM tags ORDER BY name")]
    finally:
        await conn.close()


async def test_successful_request_commits_once(uow_app: UowApp, database_url: str) -> None:
    uow_app.commits.clear()
    response = await uow_app.client.post("/t/tags/kept")
    assert response.status_code == 200
    assert await tag_names(database_url) == ["kept", "kept-2"]
    assert uow_app.commits == ["commit"]


async def test_failed_request_rolls_back(uow_app: UowApp, database_url: str) -> None:
    uow_app.commits.clear()
    response = await uow_app.client.post("/t/tags/dropped/fail")
    assert response.status_code == 409
    assert response.json() == {"errors": {"tag": ["changed my mind"]}}
    assert await tag_names(database_url) == []
    assert uow_app.commits == []


async def test_request_without_database_work_opens_no_transaction(uow_app: UowApp) -> None:
    uow_app.commits.clear()
    response = await uow_app.client.get("/t/nothing")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"at": "2026-01-02T03:04:05.678000+00:00"}
    assert uow_app.commits == []


def test_session_outside_a_request_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="outside a unit of work"):
        _ = db.session


def test_json_provider_serialises_native_types() -> None:
    provider = OrjsonProvider(create_app_stub())
    value = {
        "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "id": UUID(int=1),
        1: "non-str key",
    }
    assert orjson.loads(provider.dumps(value)) == {
        "when": "2026-01-02T03:04:05+00:00",
        "id": "00000000-0000-0000-0000-000000000001",
        "1": "non-str key",
    }
    assert provider.loads(b'{"a": [1, 2]}') == {"a": [1, 2]}


def create_app_stub() -> Any:
    from flask import Flask

    return Flask("stub")


def test_create_app_in_development_generates_the_secret(settings: Settings, tmp_path: Path) -> None:
    flask_app = create_app(settings.model_copy(update={"secret_key": None, "data_dir": tmp_path}))
    assert flask_app.config["SECRET_KEY"] == (tmp_path / "secret_key").read_text()
    assert flask_app.config["MAX_CONTENT_LENGTH"] == settings.max_body_bytes


def test_create_app_names_missing_urls(settings: Settings) -> None:
    with pytest.raises(ValueError, match=r"^DATABASE_URL, REDIS_URL not set"):
        create_app(settings.model_copy(update={"database_url": None, "redis_url": None}))


async def test_startup_fails_clearly_when_the_database_is_unreachable(
    settings: Settings, app: ConduitASGI
) -> None:
    port = free_port()
    broken = settings.model_copy(
        update={"database_url": f"postgresql+asyncpg://app:hunter2@127.0.0.1:{port}/conduit"}
    )
    asgi = ConduitASGI(create_app(broken), broken)
    with pytest.raises(StartupError) as caught:
        await asgi.startup()
    message = str(caught.value)
    assert message.startswith(
        f"database unreachable at postgresql+asyncpg://app:***@127.0.0.1:{port}/conduit: "
    )
    assert "hunter2" not in message
    assert "\n" not in message


async def conduit_connections(database_url: str) -> int:
    """Open connections of the service's engines to the test database."""
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'conduit'"
        )
    finally:
        await conn.close()
    return count


async def test_startup_failure_closes_what_was_opened(
    settings: Settings, app: ConduitASGI, database_url: str
) -> None:
    port = free_port()
    broken = settings.model_copy(update={"redis_url": f"redis://:hunter2@127.0.0.1:{port}/0"})
    asgi = ConduitASGI(create_app(broken), broken)
    before = await conduit_connections(database_url)
    with pytest.raises(StartupError) as caught:
        await asgi.startup()
    assert str(caught.value).startswith(f"redis unreachable at redis://:***@127.0.0.1:{port}/0: ")
    # The database opened first (its check left a pooled connection); it was closed again.
    # A closed connection's server process exits asynchronously: poll, bounded.
    for _ in range(50):
        if await conduit_connections(database_url) == before:
            break
        await asyncio.sleep(0.1)
    assert await conduit_connections(database_url) == before


async def test_no_cookie_session_is_opened_or_set(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    flask_app = create_app(settings)
    with flask_app.test_request_context("/api/v1/user"):
        assert session.__class__.__name__ == "NullSession"
        with pytest.raises(RuntimeError):
            session["user"] = 1
    registered = await client.post(
        "/api/v1/users",
        json={
            "user": {"username": "nocookie", "email": "nocookie@example.com", "password": "p" * 12}
        },
    )
    assert registered.status_code == 201, registered.text
    token = registered.json()["user"]["token"]
    me = await client.get("/api/v1/user", headers={"Authorization": f"Token {token}"})
    assert me.status_code == 200
    assert "set-cookie" not in registered.headers
    assert "set-cookie" not in me.headers
