"""Idempotency-Key on the non-idempotent writes: replay, mismatch, concurrency, scoping, and
that the key and the effect commit together or not at all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from sqlalchemy import event, func, select, text
from sqlalchemy.orm import Session

from service.app import ConduitASGI
from service.infra.db import DatabaseState
from service.models import Article, Favorite, IdempotencyKey
from tests.factories import TestUser, make_article

MakeUser = Callable[..., Awaitable[TestUser]]
ARTICLES = "/api/v1/articles"


def article(title: str = "Idempotent dragons") -> dict[str, Any]:
    return {"article": {"title": title, "description": "d", "body": "b"}}


def keyed(user: TestUser | None, key: str) -> dict[str, str]:
    headers = {"Idempotency-Key": key}
    return {**user.headers, **headers} if user is not None else headers


async def count(app: ConduitASGI, model: Any) -> int:
    state: DatabaseState = app.flask_app.extensions["conduit.db"]
    assert state.sessionmaker is not None
    async with state.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


@pytest_asyncio.fixture
async def admin_conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


# --- replay ---------------------------------------------------------------------------------


async def test_a_repeated_request_is_replayed_without_a_second_effect(
    client: httpx.AsyncClient, app: ConduitASGI, owner: TestUser
) -> None:
    first = await client.post(ARTICLES, json=article(), headers=keyed(owner, "k-1"))
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    again = await client.post(ARTICLES, json=article(), headers=keyed(owner, "k-1"))
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["content-type"] == first.headers["content-type"]
    # The replay still gets the per-request headers.
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert await count(app, Article) == 1


async def test_json_formatting_and_key_order_do_not_make_another_request(
    client: httpx.AsyncClient, app: ConduitASGI, owner: TestUser
) -> None:
    await client.post(ARTICLES, json=article(), headers=keyed(owner, "k-2"))
    reordered = b'{ "article" : {"body":"b", "description":"d",\n "title":"Idempotent dragons"}}'
    again = await client.post(
        ARTICLES,
        content=reordered,
        headers={**keyed(owner, '"k-2"'), "Content-Type": "application/json"},
    )
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert await count(app, Article) == 1


async def test_without_a_key_every_request_has_its_effect(
    client: httpx.AsyncClient, app: ConduitASGI, owner: TestUser
) -> None:
    for _ in range(2):
        response = await client.post(ARTICLES, json=article(), headers=owner.headers)
        assert response.status_code == 201
    assert await count(app, Article) == 2


async def test_the_same_key_with_another_request_is_refused(
    client: httpx.AsyncClient, app: ConduitASGI, owner: TestUser
) -> None:
    await client.post(ARTICLES, json=article(), headers=keyed(owner, "k-3"))
    other_body = await client.post(ARTICLES, json=article("Else"), headers=keyed(owner, "k-3"))
    assert other_body.status_code == 422
    assert other_body.json() == {
        "errors": {"Idempotency-Key": ["this Idempotency-Key was used with a different request"]}
    }
    slug = (await make_article(client, owner))["slug"]
    other_path = await client.post(f"{ARTICLES}/{slug}/favorite", headers=keyed(owner, "k-3"))
    assert other_path.status_code == 422
    assert await count(app, Article) == 2
    assert await count(app, Favorite) == 0


async def test_a_failed_request_leaves_no_key_and_its_retry_runs(
    client: httpx.AsyncClient, app: ConduitASGI, owner: TestUser
) -> None:
    missing = await client.post(f"{ARTICLES}/nope/favorite", headers=keyed(owner, "k-4"))
    assert missing.status_code == 404
    assert await count(app, IdempotencyKey) == 0
    slug = (await make_article(client, owner, title="nope"))["slug"]
    assert slug == "nope"
    retried = await client.post(f"{ARTICLES}/nope/favorite", headers=keyed(owner, "k-4"))
    assert retried.status_code == 200
    assert "idempotent-replayed" not in retried.headers
    assert retried.json()["article"]["favoritesCount"] == 1


@pytest.mark.parametrize(
    "key", ["", " ", "x" * 256, "with space", "naïve", '"unterminated', '""'], ids=repr
)
async def test_a_malformed_key_is_refused(
    client: httpx.AsyncClient, app: ConduitASGI, owner: TestUser, key: str
) -> None:
    response = await client.post(
        ARTICLES,
        json=article(),
        headers={**owner.headers, "Idempotency-Key": key.encode()},
    )
    assert response.status_code == 422
    assert list(response.json()["errors"]) == ["Idempotency-Key"]
    assert await count(app, Article) == 0


# --- scoping --------------------------------------------------------------------------------


async def test_keys_are_scoped_per_principal(
    client: httpx.AsyncClient, app: ConduitASGI, make_user: MakeUser
) -> None:
    alice, bob = await make_user(), await make_user()
    mine = await client.post(ARTICLES, json=article(), headers=keyed(alice, "shared"))
    theirs = await client.post(ARTICLES, json=article(), headers=keyed(bob, "shared"))
    assert mine.status_code == theirs.status_code == 201
    assert "idempotent-replayed" not in theirs.headers
    assert theirs.json()["article"]["author"]["username"] == bob.username
    assert theirs.json()["article"]["slug"] != mine.json()["article"]["slug"]
    assert await count(app, Article) == 2


async def test_anonymous_keys_are_scoped_by_client_address(app: ConduitASGI) -> None:
    body = {"email": "nobody@example.com"}
    path = "/api/v1/users/password-reset"

    async def post(peer: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(peer, 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return await http.post(path, json=body, headers={"Idempotency-Key": "anon-1"})

    first, replayed, elsewhere = (
        await post("10.0.0.1"),
        await post("10.0.0.1"),
        await post("10.0.0.2"),
    )
    assert first.status_code == replayed.status_code == elsewhere.status_code == 202
    assert "idempotent-replayed" not in first.headers
    assert replayed.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in elsewhere.headers


async def test_register_replays_the_same_account_and_token(client: httpx.AsyncClient) -> None:
    body = {"user": {"username": "once", "email": "once@example.com", "password": "password123"}}
    first = await client.post("/api/v1/users", json=body, headers={"Idempotency-Key": "r-1"})
    again = await client.post("/api/v1/users", json=body, headers={"Idempotency-Key": "r-1"})
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    me = await client.get(
        "/api/v1/user", headers={"Authorization": f"Token {again.json()['user']['token']}"}
    )
    assert me.status_code == 200


async def test_a_stored_answer_is_sealed_at_rest(
    client: httpx.AsyncClient, owner: TestUser, admin_conn: asyncpg.Connection
) -> None:
    body = {"client": {"name": "ci", "scopes": ["articles:read"]}}
    first = await client.post("/api/v1/clients", json=body, headers=keyed(owner, "c-1"))
    again = await client.post("/api/v1/clients", json=body, headers=keyed(owner, "c-1"))
    assert first.status_code == again.status_code == 201
    secret = first.json()["client"]["clientSecret"]
    assert again.json()["client"]["clientSecret"] == secret
    rows = await admin_conn.fetch("SELECT * FROM idempotency_keys")
    assert len(rows) == 1
    assert secret not in str(dict(rows[0]))
    assert rows[0]["principal"] == f"user:{owner.id}"
    assert rows[0]["method"] == "POST"
    assert rows[0]["path"] == "/api/v1/clients"


# --- concurrency ----------------------------------------------------------------------------


async def test_a_duplicate_while_the_first_runs_gets_409_then_the_replay(
    client: httpx.AsyncClient, app: ConduitASGI, owner: TestUser, admin_conn: asyncpg.Connection
) -> None:
    slug = (await make_article(client, owner))["slug"]
    favorite = f"{ARTICLES}/{slug}/favorite"
    # The favorite needs a key-share lock on the article: holding the row keeps it running.
    blocker = admin_conn.transaction()
    await blocker.start()
    await admin_conn.execute("SELECT 1 FROM articles WHERE slug = $1 FOR UPDATE", slug)
    first = asyncio.create_task(client.post(favorite, headers=keyed(owner, "f-1")))
    try:
        for _ in range(200):  # until the first request holds its key
            waiting = await admin_conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            )
            if waiting:
                break
            await asyncio.sleep(0.01)
        duplicate = await client.post(favorite, headers=keyed(owner, "f-1"))
        assert duplicate.status_code == 409
        assert duplicate.json() == {
            "errors": {
                "Idempotency-Key": [
                    "a request with this Idempotency-Key is still being processed: retry later"
                ]
            }
        }
    finally:
        await blocker.rollback()
    original = await first
    assert original.status_code == 200
    replay = await client.post(favorite, headers=keyed(owner, "f-1"))
    assert replay.status_code == 200
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == original.json()
    assert await count(app, Favorite) == 1


async def test_fifty_simultaneous_requests_with_one_key_have_one_effect(
    client: httpx.AsyncClient, app: ConduitASGI, owner: TestUser
) -> None:
    responses = await asyncio.gather(
        *(client.post(ARTICLES, json=article(), headers=keyed(owner, "burst")) for _ in range(50))
    )
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) <= {201, 409}, statuses
    originals = [
        response
        for response in responses
        if response.status_code == 201 and "idempotent-replayed" not in response.headers
    ]
    assert len(originals) == 1
    for response in responses:
        if response.status_code == 201:
            assert response.json() == originals[0].json()
    assert await count(app, Article) == 1
    assert await count(app, IdempotencyKey) == 1


# --- one transaction ------------------------------------------------------------------------


@pytest.mark.parametrize("failing_table", ["articles", "idempotency_keys"])
async def test_a_failed_commit_leaves_neither_the_effect_nor_the_key(
    client: httpx.AsyncClient,
    app: ConduitASGI,
    owner: TestUser,
    admin_conn: asyncpg.Connection,
    failing_table: str,
) -> None:
    # A deferred constraint trigger fails the request's COMMIT itself, after the view and the
    # key's INSERT ran: whichever of the two rows it guards, neither may remain.
    await admin_conn.execute(
        """
        CREATE FUNCTION fail_commit() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'commit refused by the test'; END $$
        """
    )
    await admin_conn.execute(
        f"""
        CREATE CONSTRAINT TRIGGER fail_commit AFTER INSERT ON {failing_table}
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_commit()
        """
    )
    try:
        failed = await client.post(ARTICLES, json=article(), headers=keyed(owner, "crash"))
        assert failed.status_code == 500
        assert await count(app, Article) == 0
        assert await count(app, IdempotencyKey) == 0
    finally:
        await admin_conn.execute(f"DROP TRIGGER fail_commit ON {failing_table}")
        await admin_conn.execute("DROP FUNCTION fail_commit()")
    retried = await client.post(ARTICLES, json=article(), headers=keyed(owner, "crash"))
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    assert await count(app, Article) == 1


async def test_the_key_is_written_by_the_request_session_before_its_commit(
    client: httpx.AsyncClient, app: ConduitASGI, owner: TestUser
) -> None:
    seen: list[tuple[int, int]] = []

    def before_commit(session: Session) -> None:
        counts = session.connection().execute(
            text("SELECT (SELECT count(*) FROM articles), (SELECT count(*) FROM idempotency_keys)")
        )
        seen.append(tuple(counts.one()))  # type: ignore[arg-type]

    event.listen(Session, "before_commit", before_commit)
    try:
        response = await client.post(ARTICLES, json=article(), headers=keyed(owner, "one-tx"))
    finally:
        event.remove(Session, "before_commit", before_commit)
    assert response.status_code == 201
    # The request's single commit (the last; savepoints come before it) found both rows in its
    # own, still open, transaction.
    assert seen[-1] == (1, 1)
    assert all(keys == 0 for _, keys in seen[:-1])
