"""API clients (`/api/v1/clients`): create (secret shown once), list, delete, and what deleting
one does to its tokens."""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

import asyncpg
import httpx
from redis.asyncio import Redis

from service.app import ConduitASGI
from service.infra.settings import Settings
from tests.api.v1.test_oauth import (
    CLIENTS,
    FEED,
    REVOKED,
    USER,
    MakeUser,
    assert_oauth_error,
    bearer,
    client_token,
    create_api_client,
    password_grant,
    query,
    status_of,
    token,
    wait_for_lock_waiters,
)
from tests.factories import DEFAULT_PASSWORD, TestUser

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LACKS_CLIENTS_MANAGE = {"errors": {"scope": ["token lacks the 'clients:manage' scope"]}}


async def create(
    client: httpx.AsyncClient, user: TestUser, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.post(CLIENTS, json=body, headers=headers or user.headers)


async def list_clients(client: httpx.AsyncClient, user: TestUser) -> dict[str, Any]:
    response = await client.get(CLIENTS, headers=user.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_create_shows_the_secret_once_and_stores_only_its_sha256(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    jake = await make_user(username="jake")

    response = await create(
        client, jake, {"client": {"name": "nightly export", "scopes": ["articles:read"]}}
    )

    assert response.status_code == 201, response.text
    created = response.json()["client"]
    assert set(created) == {"clientId", "clientSecret", "name", "scopes", "createdAt", "lastUsedAt"}
    assert created["name"] == "nightly export"
    assert created["scopes"] == ["articles:read"]
    assert created["lastUsedAt"] is None
    assert TIMESTAMP.match(created["createdAt"])
    assert created["clientId"].startswith("cl_")
    assert created["clientSecret"].startswith("cs_")
    assert len(created["clientSecret"]) >= 3 + 43  # 256 random bits
    rows = await query(database_url, "SELECT client_id, secret_hash, owner_id FROM api_clients")
    assert len(rows) == 1
    assert rows[0]["client_id"] == created["clientId"]
    assert rows[0]["owner_id"] == jake.id
    assert rows[0]["secret_hash"] == hashlib.sha256(created["clientSecret"].encode()).hexdigest()
    dumped = await query(database_url, "SELECT row_to_json(c)::text AS row FROM api_clients c")
    assert created["clientSecret"] not in dumped[0]["row"]
    assert created["clientSecret"][3:] not in dumped[0]["row"]

    listed = await list_clients(client, jake)
    assert listed == {
        "clients": [{k: v for k, v in created.items() if k != "clientSecret"}],
        "clientsCount": 1,
    }
    assert created["clientSecret"] not in (await client.get(CLIENTS, headers=jake.headers)).text


async def test_two_clients_get_different_ids_and_secrets(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")

    first = await create_api_client(client, jake, ["articles:read"])
    second = await create_api_client(client, jake, ["articles:read"])

    assert first["clientId"] != second["clientId"]
    assert first["clientSecret"] != second["clientSecret"]


async def test_list_shows_only_your_own_clients_oldest_first(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    ann = await make_user(username="ann")
    first = await create_api_client(client, jake, ["articles:read"], name="first")
    await create_api_client(client, ann, ["articles:read"], name="ann's")
    second = await create_api_client(
        client, jake, ["comments:write", "articles:write"], name="second"
    )

    listed = await list_clients(client, jake)

    assert listed["clientsCount"] == 2
    assert [c["clientId"] for c in listed["clients"]] == [first["clientId"], second["clientId"]]
    assert listed["clients"][1]["scopes"] == ["articles:write", "comments:write"]
    assert (await list_clients(client, ann))["clientsCount"] == 1
    fresh = await make_user(username="fresh")
    assert await list_clients(client, fresh) == {"clients": [], "clientsCount": 0}


async def test_last_used_at_is_set_by_a_token_request(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    reader = await create_api_client(client, jake, ["articles:read"])

    assert (await client_token(client, reader)).status_code == 200

    listed = (await list_clients(client, jake))["clients"][0]
    assert listed["lastUsedAt"] is not None
    assert TIMESTAMP.match(listed["lastUsedAt"])


async def test_admins_may_give_their_clients_the_admin_scope(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    boss = await make_user(username="boss", role="admin")

    auditor = await create_api_client(client, boss, ["admin"])

    response = await client_token(client, auditor)
    assert response.json()["scope"] == "admin"
    audit = await client.get("/api/v1/admin/audit", headers=bearer(response.json()["access_token"]))
    assert audit.status_code == 200


async def test_invalid_scopes_or_names_are_422_naming_the_field(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    jake = await make_user(username="jake")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "x", "scopes": ["articles:delete"]}, "scopes"),
        # An integration's credentials cannot mint further credentials.
        ({"name": "x", "scopes": ["clients:manage"]}, "scopes"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x"}, "scopes"),
        ({"name": "x", "scopes": "articles:read"}, "scopes"),
        ({"name": "x", "scopes": [5]}, "scopes"),
        ({"scopes": ["articles:read"]}, "name"),
        ({"name": "", "scopes": ["articles:read"]}, "name"),
        ({"name": "   ", "scopes": ["articles:read"]}, "name"),
        ({"name": "n" * 101, "scopes": ["articles:read"]}, "name"),
        ({"name": "nul \x00", "scopes": ["articles:read"]}, "name"),
    ]

    for body, field in cases:
        response = await create(client, jake, {"client": body})

        assert response.status_code == 422, (body, response.text)
        errors = response.json()["errors"]
        # The field is named, with or without the `client` wrapper.
        named = [name.removeprefix("client.").split(".")[0] for name in errors]
        assert named == [field], (body, errors)
    assert (await query(database_url, "SELECT count(*) AS n FROM api_clients"))[0]["n"] == 0


async def test_scope_errors_name_the_refused_scopes(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")

    response = await create(
        client,
        jake,
        {"client": {"name": "x", "scopes": ["articles:read", "clients:manage", "admin"]}},
    )

    assert response.status_code == 422
    assert response.json() == {"errors": {"scopes": ["not allowed: clients:manage"]}}


async def test_a_scope_the_owners_role_cannot_hold_is_403(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    jake = await make_user(username="jake")

    response = await create(
        client, jake, {"client": {"name": "x", "scopes": ["articles:read", "admin"]}}
    )

    assert response.status_code == 403
    assert response.json() == {"errors": {"scopes": ["your role cannot grant: admin"]}}
    assert (await query(database_url, "SELECT count(*) AS n FROM api_clients"))[0]["n"] == 0


async def test_validation_errors_name_the_field_without_the_wrapper(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")

    response = await create(client, jake, {"client": {"name": "x", "scopes": []}})

    assert response.status_code == 422
    assert list(response.json()["errors"]) == ["scopes"]


async def test_duplicate_scopes_are_refused_or_stored_once(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")

    response = await create(
        client, jake, {"client": {"name": "x", "scopes": ["articles:read", "articles:read"]}}
    )

    if response.status_code == 201:
        assert response.json()["client"]["scopes"] == ["articles:read"]
    else:
        assert response.status_code == 422


async def test_at_most_25_clients_per_user(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    jake = await make_user(username="jake")
    ann = await make_user(username="ann")
    await create_api_client(client, ann, ["articles:read"])  # others' clients do not count
    await query(
        database_url,
        "INSERT INTO api_clients (id, client_id, owner_id, name, secret_hash, scope)"
        " SELECT gen_random_uuid(), 'cl_bulk' || n, $1, 'bulk', 'x', 'articles:read'"
        " FROM generate_series(1, 24) AS n",
        jake.id,
    )
    assert (
        await create(client, jake, {"client": {"name": "25th", "scopes": ["articles:read"]}})
    ).status_code == 201

    response = await create(client, jake, {"client": {"name": "26th", "scopes": ["articles:read"]}})

    assert response.status_code == 409
    assert response.json() == {"errors": {"client": ["at most 25 clients per user"]}}
    assert (await list_clients(client, jake))["clientsCount"] == 25
    # Deleting one makes room again.
    assert (await client.delete(f"{CLIENTS}/cl_bulk1", headers=jake.headers)).status_code == 204
    again = await create(client, jake, {"client": {"name": "again", "scopes": ["articles:read"]}})
    assert again.status_code == 201


async def test_concurrent_creates_do_not_exceed_the_limit(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    jake = await make_user(username="jake")
    await query(
        database_url,
        "INSERT INTO api_clients (id, client_id, owner_id, name, secret_hash, scope)"
        " SELECT gen_random_uuid(), 'cl_bulk' || n, $1, 'bulk', 'x', 'articles:read'"
        " FROM generate_series(1, 24) AS n",
        jake.id,
    )
    body = {"client": {"name": "one more", "scopes": ["articles:read"]}}
    # Hold the owner's row: each request's INSERT (its foreign key check) then waits after
    # the request counted, so both requests are sure to count before either commits.
    blocker = await asyncpg.connect(database_url)
    monitor = await asyncpg.connect(database_url)
    try:
        holding = blocker.transaction()
        await holding.start()
        await blocker.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", jake.id)
        pending = [asyncio.ensure_future(create(client, jake, body)) for _ in range(2)]
        await wait_for_lock_waiters(monitor, 2)
        await holding.rollback()
        responses = await asyncio.gather(*pending)
    finally:
        await blocker.close()
        await monitor.close()

    assert sorted(r.status_code for r in responses) == [201, 409]
    rows = await query(
        database_url, "SELECT count(*) AS n FROM api_clients WHERE owner_id = $1", jake.id
    )
    assert rows[0]["n"] == 25


async def test_delete_your_client_is_204_and_other_peoples_are_404(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    ann = await make_user(username="ann")
    mine = await create_api_client(client, jake, ["articles:read"])
    theirs = await create_api_client(client, ann, ["articles:read"])

    not_mine = await client.delete(f"{CLIENTS}/{theirs['clientId']}", headers=jake.headers)
    unknown = await client.delete(f"{CLIENTS}/cl_nosuchclient", headers=jake.headers)
    deleted = await client.delete(f"{CLIENTS}/{mine['clientId']}", headers=jake.headers)
    twice = await client.delete(f"{CLIENTS}/{mine['clientId']}", headers=jake.headers)

    assert not_mine.status_code == 404
    assert not_mine.json() == {"errors": {"client": ["client not found"]}}
    assert unknown.status_code == 404
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert twice.status_code == 404
    assert (await list_clients(client, jake))["clientsCount"] == 0
    # Ann's client survived jake's attempt and still works.
    assert (await client_token(client, theirs)).status_code == 200


async def test_deleting_a_client_id_with_nul_is_404_and_deletes_nothing(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    mine = await create_api_client(client, jake, ["articles:read"])

    for client_id in ("cl_%00", f"{mine['clientId']}%00", "%00"):
        response = await client.delete(f"{CLIENTS}/{client_id}", headers=jake.headers)

        assert response.status_code == 404, response.text
        assert response.json() == {"errors": {"client": ["client not found"]}}
    assert (await list_clients(client, jake))["clientsCount"] == 1


async def test_deleting_a_client_revokes_its_tokens_at_once(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    database_url: str,
    app: ConduitASGI,
    settings: Settings,
) -> None:
    jake = await make_user(username="jake")
    doomed = await create_api_client(client, jake, ["articles:read"])
    kept = await create_api_client(client, jake, ["articles:read"])
    doomed_tokens = [(await client_token(client, doomed)).json()["access_token"] for _ in range(2)]
    kept_token = (await client_token(client, kept)).json()["access_token"]
    for value in doomed_tokens:
        assert (await client.get(FEED, headers=bearer(value))).status_code == 200

    deleted = await client.delete(f"{CLIENTS}/{doomed['clientId']}", headers=jake.headers)

    assert deleted.status_code == 204
    for value in doomed_tokens:
        refused = await client.get(FEED, headers=bearer(value))
        assert refused.status_code == 401
        assert refused.json() == REVOKED
    assert_oauth_error(await client_token(client, doomed), "invalid_client", status=401)
    # The owner's own session and the other client are untouched.
    assert (await client.get(USER, headers=jake.headers)).status_code == 200
    assert (await client.get(FEED, headers=bearer(kept_token))).status_code == 200
    # The sessions stay as the revocation record.
    rows = await query(
        database_url,
        "SELECT client_id, revoked_reason FROM auth_sessions WHERE revoked_at IS NOT NULL",
    )
    assert len(rows) == 2
    assert {(row["client_id"], row["revoked_reason"]) for row in rows} == {(None, "client_deleted")}


async def test_deleted_clients_tokens_stay_refused_after_redis_lost_its_data(
    client: httpx.AsyncClient, make_user: MakeUser, settings: Settings
) -> None:
    jake = await make_user(username="jake")
    doomed = await create_api_client(client, jake, ["articles:read"])
    value = (await client_token(client, doomed)).json()["access_token"]
    await client.delete(f"{CLIENTS}/{doomed['clientId']}", headers=jake.headers)
    assert settings.redis_url is not None
    redis = Redis.from_url(settings.redis_url)
    await redis.flushdb()
    await redis.aclose()

    assert (await client.get(FEED, headers=bearer(value))).status_code == 401


async def test_suspending_the_owner_revokes_the_client_tokens(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    boss = await make_user(username="boss", role="admin")
    jake = await make_user(username="jake")
    reader = await create_api_client(client, jake, ["articles:read"])
    value = (await client_token(client, reader)).json()["access_token"]

    suspended = await client.patch(
        "/api/v1/admin/users/jake", json={"user": {"suspended": True}}, headers=boss.headers
    )

    assert suspended.status_code == 200, suspended.text
    refused = await client.get(FEED, headers=bearer(value))
    assert refused.status_code == 401
    assert refused.json() == REVOKED
    assert_oauth_error(
        await client_token(client, reader), "invalid_grant", description="the account is suspended"
    )


async def test_clients_need_a_token(client: httpx.AsyncClient) -> None:
    for method, path in [("POST", CLIENTS), ("GET", CLIENTS), ("DELETE", f"{CLIENTS}/cl_x")]:
        response = await client.request(
            method, path, json={"client": {"name": "x", "scopes": ["articles:read"]}}
        )

        assert response.status_code == 401, (method, response.text)
        assert response.json() == {"errors": {"token": ["authentication required"]}}


async def test_a_token_without_clients_manage_is_403(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    jake = await make_user(username="jake")
    existing = await create_api_client(client, jake, ["articles:read"])
    narrowed = await password_grant(client, jake, scope="articles:read profile:read profile:write")
    client_access = (await client_token(client, existing)).json()["access_token"]

    for value in (narrowed["access_token"], client_access):
        for method, path in [
            ("POST", CLIENTS),
            ("GET", CLIENTS),
            ("DELETE", f"{CLIENTS}/{existing['clientId']}"),
        ]:
            response = await client.request(
                method,
                path,
                json={"client": {"name": "x", "scopes": ["articles:read"]}},
                headers=bearer(value),
            )

            assert response.status_code == 403, (method, response.text)
            assert response.json() == LACKS_CLIENTS_MANAGE
    rows = await query(database_url, "SELECT count(*) AS n FROM api_clients")
    assert rows[0]["n"] == 1


async def test_a_client_token_cannot_change_the_owners_password(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    profile = await create_api_client(client, jake, ["profile:read", "profile:write"])
    value = (await client_token(client, profile)).json()["access_token"]

    response = await client.put(
        USER, json={"user": {"password": "taken-over-123"}}, headers=bearer(value)
    )

    assert response.status_code == 403, response.text
    login = await token(client, grant_type="password", username="jake", password="taken-over-123")
    assert login.status_code == 400
    assert (await status_of(client, jake.token)) == 200
    login = await token(client, grant_type="password", username="jake", password=DEFAULT_PASSWORD)
    assert login.status_code == 200
