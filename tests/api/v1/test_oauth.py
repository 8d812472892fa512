"""The OAuth 2.0 token endpoint (RFC 6749) and revocation (RFC 7009).

Helpers defined here (token requests, OAuth error checks, database reads) are shared by the
other token-lifecycle tests (clients, logout, scopes).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
import pytest_asyncio
from redis.asyncio import Redis

from service.app import ConduitASGI, create_asgi
from service.domain import scopes
from service.infra.settings import Settings
from tests.apps import serving
from tests.factories import DEFAULT_PASSWORD, TestUser

MakeUser = Callable[..., Awaitable[TestUser]]
TOKEN = "/api/v1/oauth/token"
REVOKE = "/api/v1/oauth/revoke"
USER = "/api/v1/user"
CLIENTS = "/api/v1/clients"
FEED = "/api/v1/articles/feed"
FORM = "application/x-www-form-urlencoded"
BAD_CREDENTIALS = "username or password is invalid"
REVOKED = {"errors": {"token": ["token has been revoked"]}}
USER_SCOPES = " ".join(sorted(scopes.ALL - {scopes.ADMIN}))
ALL_SCOPES = " ".join(sorted(scopes.ALL))
# RFC 6749 §5.2: error_description is limited to these characters.
NUL = "must not contain NUL characters"
RFC6749_DESCRIPTION_CHARS = {chr(c) for c in range(0x20, 0x7F)} - {'"', "\\"}


# --- helpers shared with the other token-lifecycle tests -------------------------------------


async def token(client: httpx.AsyncClient, **form: str) -> httpx.Response:
    """POST the form `form` to the token endpoint."""
    return await client.post(TOKEN, data=form)


async def raw_token(
    client: httpx.AsyncClient,
    body: str | bytes,
    content_type: str = FORM,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """POST `body` verbatim to the token endpoint."""
    return await client.post(
        TOKEN, content=body, headers={"Content-Type": content_type, **(headers or {})}
    )


def bearer(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


def basic(client_id: str, secret: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


async def password_grant(client: httpx.AsyncClient, user: TestUser, **extra: str) -> dict[str, Any]:
    """A successful password grant for `user` (by email); the token response."""
    response = await token(
        client, grant_type="password", username=user.email, password=DEFAULT_PASSWORD, **extra
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def refresh(client: httpx.AsyncClient, refresh_token: str, **extra: str) -> httpx.Response:
    return await token(client, grant_type="refresh_token", refresh_token=refresh_token, **extra)


async def create_api_client(
    client: httpx.AsyncClient, owner: TestUser, scope_list: list[str], name: str = "export"
) -> dict[str, Any]:
    """Create an API client of `owner` through the API; its `clientId` and `clientSecret`."""
    response = await client.post(
        CLIENTS, json={"client": {"name": name, "scopes": scope_list}}, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()["client"]
    return created


async def client_token(
    client: httpx.AsyncClient, api_client: dict[str, Any], **extra: str
) -> httpx.Response:
    """The client_credentials grant with HTTP Basic authentication."""
    return await client.post(
        TOKEN,
        data={"grant_type": "client_credentials", **extra},
        headers=basic(api_client["clientId"], api_client["clientSecret"]),
    )


def assert_oauth_error(
    response: httpx.Response, error: str, status: int = 400, description: str | None = None
) -> str:
    """An RFC 6749 §5.2 error: exactly `error` and `error_description`, never cached."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert set(body) == {"error", "error_description"}, body
    assert body["error"] == error, body
    assert isinstance(body["error_description"], str)
    assert body["error_description"]
    if description is not None:
        assert body["error_description"] == description
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Basic ")
    else:
        assert "www-authenticate" not in response.headers
    return str(body["error_description"])


def claims_of(app: ConduitASGI, access_token: str) -> dict[str, Any]:
    """The verified claims of an access token issued by `app`."""
    decoded: dict[str, Any] = jwt.decode(
        access_token, app.flask_app.config["SECRET_KEY"], algorithms=["HS256"]
    )
    return decoded


async def query(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Rows of `sql`, read on a connection of its own (what other requests would see)."""
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def redis_get(settings: Settings, name: str) -> bytes | None:
    """A key of the test Redis database, read on a client of its own."""
    assert settings.redis_url is not None
    redis = Redis.from_url(settings.redis_url)
    try:
        value = await redis.get(name)
        assert value is None or isinstance(value, bytes)
        return value
    finally:
        await redis.aclose()


async def status_of(client: httpx.AsyncClient, access_token: str) -> int:
    """The status of GET /user with `access_token` (200 valid, 401 refused)."""
    return (await client.get(USER, headers=bearer(access_token))).status_code


@pytest_asyncio.fixture
async def no_grace_client(settings: Settings, app: ConduitASGI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app with REFRESH_REUSE_GRACE_SECONDS=0 (same database and Redis)."""
    asgi = create_asgi(settings.model_copy(update={"refresh_reuse_grace_seconds": 0, "threads": 4}))
    async with serving(asgi) as http:
        yield http


# --- password grant ----------------------------------------------------------------------------


async def test_password_grant_gives_rfc6749_tokens_that_work(
    client: httpx.AsyncClient, make_user: MakeUser, app: ConduitASGI
) -> None:
    jake = await make_user(username="jake")

    response = await token(
        client, grant_type="password", username="jake@example.com", password=DEFAULT_PASSWORD
    )

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 15 * 60
    assert body["scope"] == USER_SCOPES
    claims = claims_of(app, body["access_token"])
    assert claims["sub"] == str(jake.id)
    assert claims["scope"] == USER_SCOPES
    assert claims["exp"] - claims["iat"] == 15 * 60
    assert "cid" not in claims
    uuid.UUID(claims["sid"])
    me = await client.get(USER, headers=bearer(body["access_token"]))
    assert me.status_code == 200
    assert me.json()["user"]["username"] == jake.username
    # The RealWorld scheme works with the same token.
    realworld = await client.get(USER, headers={"Authorization": f"Token {body['access_token']}"})
    assert realworld.status_code == 200


async def test_password_grant_by_email_or_username_in_any_case(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user(username="jake")

    for username in ["jake", "JAKE", "Jake@Example.COM", "jake@example.com"]:
        response = await token(
            client, grant_type="password", username=username, password=DEFAULT_PASSWORD
        )

        assert response.status_code == 200, (username, response.text)
        me = await client.get(USER, headers=bearer(response.json()["access_token"]))
        assert me.json()["user"]["username"] == "jake"


async def test_password_grant_opens_a_session_with_a_refresh_token_per_login(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str, app: ConduitASGI
) -> None:
    jake = await make_user(username="jake")

    first = await password_grant(client, jake)
    second = await password_grant(client, jake)

    sids = {claims_of(app, t["access_token"])["sid"] for t in (first, second)}
    assert len(sids) == 2
    rows = await query(
        database_url,
        "SELECT s.id, s.scope, s.client_id, s.expires_at - s.created_at AS lifetime,"
        " count(r.id) AS tokens FROM auth_sessions s JOIN refresh_tokens r ON r.session_id = s.id"
        " GROUP BY s.id",
    )
    assert {str(row["id"]) for row in rows} == sids
    for row in rows:
        assert row["scope"] == USER_SCOPES
        assert row["client_id"] is None
        assert row["tokens"] == 1
        assert abs(row["lifetime"] - timedelta(days=30)) < timedelta(seconds=5)


async def test_password_grant_wrong_password_or_unknown_user_is_the_same_invalid_grant(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user(username="jake")
    # At most 4 failures per name: the 5th would start the account backoff.
    attempts = [
        ("jake@example.com", "wrong-password"),
        ("jake", "wrong-password"),
        ("nobody@example.com", DEFAULT_PASSWORD),
        ("nobody", DEFAULT_PASSWORD),
        # Passwords are not trimmed or case-folded.
        ("jake@example.com", DEFAULT_PASSWORD.upper()),
        ("jake@example.com", f" {DEFAULT_PASSWORD}"),
    ]

    for username, password in attempts:
        response = await token(client, grant_type="password", username=username, password=password)

        assert_oauth_error(response, "invalid_grant", description=BAD_CREDENTIALS)


async def test_password_grant_of_a_suspended_user_is_invalid_grant_only_after_the_password(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    jake = await make_user(username="jake")
    await query(database_url, "UPDATE users SET suspended = true WHERE id = $1", jake.id)

    right = await token(
        client, grant_type="password", username=jake.email, password=DEFAULT_PASSWORD
    )
    wrong = await token(client, grant_type="password", username=jake.email, password="guess-123")

    assert_oauth_error(right, "invalid_grant", description="the account is suspended")
    # A guesser learns nothing about the account.
    assert_oauth_error(wrong, "invalid_grant", description=BAD_CREDENTIALS)
    rows = await query(database_url, "SELECT count(*) AS n FROM auth_sessions")
    assert rows[0]["n"] == 1  # only the factory's


async def test_password_grant_narrows_the_scope(
    client: httpx.AsyncClient, make_user: MakeUser, app: ConduitASGI
) -> None:
    jake = await make_user(username="jake")

    body = await password_grant(client, jake, scope="profile:read articles:read")

    assert body["scope"] == "articles:read profile:read"
    assert claims_of(app, body["access_token"])["scope"] == "articles:read profile:read"
    headers = bearer(body["access_token"])
    assert (await client.get(USER, headers=headers)).status_code == 200
    assert (await client.get(FEED, headers=headers)).status_code == 200
    denied = await client.post(
        "/api/v1/articles",
        json={"article": {"title": "t", "description": "d", "body": "b"}},
        headers=headers,
    )
    assert denied.status_code == 403
    assert denied.json() == {"errors": {"scope": ["token lacks the 'articles:write' scope"]}}


async def test_password_grant_with_a_blank_scope_gets_every_allowed_scope(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")

    for scope in ["", "   "]:
        body = await password_grant(client, jake, scope=scope)

        assert body["scope"] == USER_SCOPES


async def test_password_grant_scope_escalation_is_invalid_scope(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    await make_user(username="jake")
    # Each refusal counts as a failed sign-in: alternate the names to stay under the backoff.
    cases = [
        ("jake", "admin", "admin"),
        ("jake@example.com", "articles:read admin", "admin"),
        ("jake", "articles:delete", "articles:delete"),
        ("jake@example.com", "ARTICLES:READ", "ARTICLES:READ"),
        ("jake", "articles:read everything", "everything"),
    ]

    for username, scope, named in cases:
        response = await token(
            client, grant_type="password", username=username, password=DEFAULT_PASSWORD, scope=scope
        )

        description = assert_oauth_error(response, "invalid_scope")
        assert named in description
    rows = await query(database_url, "SELECT count(*) AS n FROM refresh_tokens")
    assert rows[0]["n"] == 0


async def test_password_grant_gives_admins_the_admin_scope(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    boss = await make_user(username="boss", role="admin")

    everything = await password_grant(client, boss)
    only_admin = await password_grant(client, boss, scope="admin")

    assert everything["scope"] == ALL_SCOPES
    assert only_admin["scope"] == "admin"
    listed = await client.get("/api/v1/admin/users", headers=bearer(only_admin["access_token"]))
    assert listed.status_code == 200


async def test_password_grant_upgrades_an_old_password_hash(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    jake = await make_user(username="jake")
    before = await query(database_url, "SELECT password_hash FROM users WHERE id = $1", jake.id)

    await password_grant(client, jake)

    after = await query(database_url, "SELECT password_hash FROM users WHERE id = $1", jake.id)
    assert after[0]["password_hash"] != before[0]["password_hash"]
    assert after[0]["password_hash"].startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    await password_grant(client, jake)  # the new hash verifies


async def test_repeated_failed_password_grants_are_throttled_per_account(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user(username="jake")
    for _ in range(5):
        response = await token(
            client, grant_type="password", username="jake@example.com", password="guess-1234"
        )
        assert_oauth_error(response, "invalid_grant", description=BAD_CREDENTIALS)

    locked = await token(
        client, grant_type="password", username="jake@example.com", password=DEFAULT_PASSWORD
    )

    # The account backoff answers in the error envelope, like every rate limit.
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) >= 1
    assert list(locked.json()["errors"]) == ["body"]


async def test_the_account_backoff_covers_the_username_and_the_email_alike(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user(username="jake")
    for _ in range(5):
        await token(client, grant_type="password", username="jake@example.com", password="guess-1")

    by_username = await token(client, grant_type="password", username="jake", password="guess-2")

    assert by_username.status_code == 429


# --- malformed requests ------------------------------------------------------------------------


async def test_unknown_grant_type_is_unsupported_grant_type(client: httpx.AsyncClient) -> None:
    for grant_type in ["authorization_code", "implicit", "PASSWORD", "urn:x"]:
        response = await token(client, grant_type=grant_type, username="a", password="b")

        assert_oauth_error(response, "unsupported_grant_type")


async def test_missing_or_oversized_parameters_are_invalid_request(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user(username="jake")
    forms: list[dict[str, str]] = [
        {},
        {"grant_type": ""},
        {"username": "jake", "password": DEFAULT_PASSWORD},
        {"grant_type": "password"},
        {"grant_type": "password", "username": "jake"},
        {"grant_type": "password", "password": DEFAULT_PASSWORD},
        {"grant_type": "password", "username": "", "password": DEFAULT_PASSWORD},
        {"grant_type": "refresh_token"},
        {"grant_type": "refresh_token", "refresh_token": ""},
        {"grant_type": "password", "username": "x" * 4097, "password": DEFAULT_PASSWORD},
    ]

    for form in forms:
        response = await token(client, **form)

        assert_oauth_error(response, "invalid_request")


async def test_nul_in_any_parameter_or_credential_is_invalid_request(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    """PostgreSQL cannot store NUL: it must be refused before any query (it used to be 500)."""
    jake = await make_user(username="jake")
    api_client = await create_api_client(client, jake, ["articles:read"])
    secret = api_client["clientSecret"]
    nul_forms: list[tuple[str, dict[str, str], dict[str, str]]] = [
        (TOKEN, {"grant_type": "password", "username": "bob\x00", "password": "x"}, {}),
        (TOKEN, {"grant_type": "password", "username": "jake", "password": "a\x00"}, {}),
        (TOKEN, {"grant_type": "refresh_token", "refresh_token": "r\x00"}, {}),
        (
            TOKEN,
            {"grant_type": "client_credentials", "client_id": "cl_\x00", "client_secret": secret},
            {},
        ),
        (TOKEN, {"grant_type": "client_credentials"}, basic("cl_%00", secret)),
        (TOKEN, {"grant_type": "client_credentials"}, basic("cl_\x00", secret)),
        (TOKEN, {"grant_type": "client_credentials"}, basic(api_client["clientId"], "s%00")),
        (TOKEN, {"grant_type": "password", "scope": "articles:read\x00"}, {}),
        (TOKEN, {"grant_type\x00": "password"}, {}),
        (REVOKE, {"token": "t\x00"}, {}),
        (REVOKE, {"token": "t", "token_type_hint": "refresh_token\x00"}, {}),
        (REVOKE, {"token": "t"}, basic("cl_%00", "x")),
    ]

    for url, form, headers in nul_forms:
        response = await client.post(url, data=form, headers=headers)

        description = assert_oauth_error(response, "invalid_request")
        assert description.endswith("must not contain NUL characters"), (form, description)
    query = await client.post(
        f"{TOKEN}?client_id=cl_%00", data={"grant_type": "password"}, headers=basic("a", "b")
    )
    assert_oauth_error(query, "invalid_request", description="client_id: " + NUL)
    # The refusals changed nothing: the client still authenticates.
    assert (await client_token(client, api_client)).status_code == 200


async def test_a_repeated_parameter_is_invalid_request(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user(username="jake")
    login = "grant_type=password&username=jake&password=password123"
    cases = [
        (f"{login}&scope=a&scope=b", "scope"),
        (f"grant_type=password&{login}", "grant_type"),
        (f"{login}&password=", "password"),
    ]

    for body, name in cases:
        response = await raw_token(client, body)

        assert_oauth_error(
            response, "invalid_request", description=f"parameter '{name}' is repeated"
        )


async def test_unknown_parameters_are_ignored_even_when_repeated(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user(username="jake")
    body = "grant_type=password&username=jake&password=password123&x=1&x=2&=&%C2%BC=a&%C2%BC="

    response = await raw_token(client, body)

    assert response.status_code == 200, response.text


async def test_a_body_that_is_not_form_encoded_is_invalid_request(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user(username="jake")
    bodies = [
        ("application/json", '{"grant_type": "password", "username": "jake", "password": "x"}'),
        ("text/plain", "grant_type=password&username=jake&password=password123"),
        ("multipart/form-data; boundary=x", "--x--"),
    ]

    for content_type, body in bodies:
        response = await raw_token(client, body, content_type=content_type)

        assert_oauth_error(
            response, "invalid_request", description=f"send the parameters as {FORM}"
        )
    empty = await client.post(TOKEN)
    assert_oauth_error(empty, "invalid_request")


async def test_a_form_with_a_charset_is_accepted(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user(username="jake")

    response = await raw_token(
        client,
        "grant_type=password&username=jake&password=password123",
        content_type=f"{FORM}; charset=UTF-8",
    )

    assert response.status_code == 200, response.text


async def test_credentials_in_the_query_string_are_not_read(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user(username="jake")

    response = await client.post(
        TOKEN,
        params={"grant_type": "password", "username": "jake", "password": DEFAULT_PASSWORD},
        headers={"Content-Type": FORM},
    )

    assert_oauth_error(response, "invalid_request")


async def test_get_on_the_token_endpoint_is_405(client: httpx.AsyncClient) -> None:
    response = await client.get(TOKEN)

    assert response.status_code == 405
    assert "POST" in response.headers["allow"]


async def test_error_descriptions_stay_within_the_rfc6749_charset(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    await make_user(username="jake")
    forms = [
        {"grant_type": 'x"\\é'},
        {
            "grant_type": "password",
            "username": "jake",
            "password": DEFAULT_PASSWORD,
            "scope": 'é"\\',
        },
    ]

    for form in forms:
        response = await token(client, **form)

        assert response.status_code == 400
        assert set(response.json()["error_description"]) <= RFC6749_DESCRIPTION_CHARS


# --- client authentication ---------------------------------------------------------------------


@pytest_asyncio.fixture
async def jake(make_user: MakeUser) -> TestUser:
    return await make_user(username="jake")


@pytest_asyncio.fixture
async def reader(client: httpx.AsyncClient, jake: TestUser) -> dict[str, Any]:
    """An API client of jake with `articles:read`."""
    return await create_api_client(client, jake, ["articles:read"])


async def test_client_credentials_with_basic_auth(
    client: httpx.AsyncClient, app: ConduitASGI, jake: TestUser, reader: dict[str, Any]
) -> None:
    response = await client_token(client, reader)

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["scope"] == "articles:read"
    assert body["token_type"] == "Bearer"
    claims = claims_of(app, body["access_token"])
    assert claims["cid"] == reader["clientId"]
    assert claims["sub"] == str(jake.id)
    assert claims["scope"] == "articles:read"
    headers = bearer(body["access_token"])
    assert (await client.get(FEED, headers=headers)).status_code == 200
    denied = await client.get(USER, headers=headers)
    assert denied.status_code == 403
    assert denied.json() == {"errors": {"scope": ["token lacks the 'profile:read' scope"]}}


async def test_client_credentials_with_body_credentials(
    client: httpx.AsyncClient, app: ConduitASGI, reader: dict[str, Any], database_url: str
) -> None:
    response = await token(
        client,
        grant_type="client_credentials",
        client_id=reader["clientId"],
        client_secret=reader["clientSecret"],
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scope"] == "articles:read"
    assert claims_of(app, body["access_token"])["cid"] == reader["clientId"]
    rows = await query(
        database_url,
        "SELECT s.client_id, s.scope, c.last_used_at, s.expires_at - s.created_at AS lifetime"
        " FROM auth_sessions s JOIN api_clients c ON c.id = s.client_id",
    )
    assert len(rows) == 1
    assert rows[0]["scope"] == "articles:read"
    assert rows[0]["last_used_at"] is not None
    assert abs(rows[0]["lifetime"] - timedelta(minutes=15)) < timedelta(seconds=5)
    assert (await query(database_url, "SELECT count(*) AS n FROM refresh_tokens"))[0]["n"] == 0


async def test_basic_credentials_are_form_urlencoded(
    client: httpx.AsyncClient, reader: dict[str, Any]
) -> None:
    # RFC 6749 §2.3.1: the id and secret are form-encoded before Basic encoding.
    encoded_id = "".join(f"%{byte:02X}" for byte in reader["clientId"].encode())
    response = await client.post(
        TOKEN,
        data={"grant_type": "client_credentials"},
        headers=basic(encoded_id, reader["clientSecret"]),
    )

    assert response.status_code == 200, response.text


async def test_client_token_carries_only_the_scopes_asked_for(
    client: httpx.AsyncClient, jake: TestUser, app: ConduitASGI
) -> None:
    writer = await create_api_client(client, jake, ["articles:read", "articles:write"])

    narrowed = await client_token(client, writer, scope="articles:write")

    assert narrowed.status_code == 200, narrowed.text
    assert narrowed.json()["scope"] == "articles:write"
    assert claims_of(app, narrowed.json()["access_token"])["scope"] == "articles:write"


async def test_client_token_with_a_scope_the_client_lacks_is_invalid_scope(
    client: httpx.AsyncClient, reader: dict[str, Any]
) -> None:
    for scope in ["articles:write", "profile:read", "clients:manage", "admin", "nope"]:
        response = await client_token(client, reader, scope=f"articles:read {scope}")

        description = assert_oauth_error(response, "invalid_scope")
        assert scope in description


async def test_client_token_when_the_owner_is_suspended_is_invalid_grant(
    client: httpx.AsyncClient, jake: TestUser, reader: dict[str, Any], database_url: str
) -> None:
    await query(database_url, "UPDATE users SET suspended = true WHERE id = $1", jake.id)

    response = await client_token(client, reader)

    assert_oauth_error(response, "invalid_grant", description="the account is suspended")


async def test_client_token_never_exceeds_what_the_owners_role_now_allows(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str, app: ConduitASGI
) -> None:
    boss = await make_user(username="boss", role="admin")
    auditor = await create_api_client(client, boss, ["admin", "articles:read"])
    assert (await client_token(client, auditor)).json()["scope"] == "admin articles:read"
    await query(database_url, "UPDATE users SET role = 'user' WHERE id = $1", boss.id)

    response = await client_token(client, auditor)

    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "articles:read"
    assert claims_of(app, response.json()["access_token"])["scope"] == "articles:read"


async def test_client_credentials_without_client_authentication_is_invalid_client(
    client: httpx.AsyncClient,
) -> None:
    response = await token(client, grant_type="client_credentials")

    assert_oauth_error(response, "invalid_client", status=401)


async def test_basic_auth_with_a_wrong_secret_is_401_invalid_client(
    client: httpx.AsyncClient, reader: dict[str, Any]
) -> None:
    for grant in ["client_credentials", "password"]:
        response = await client.post(
            TOKEN,
            data={"grant_type": grant, "username": "jake", "password": DEFAULT_PASSWORD},
            headers=basic(reader["clientId"], reader["clientSecret"] + "x"),
        )

        assert_oauth_error(
            response, "invalid_client", status=401, description="client authentication failed"
        )
        assert response.headers["www-authenticate"] == 'Basic realm="conduit", charset="UTF-8"'


async def test_basic_auth_of_an_unknown_client_is_the_same_401(
    client: httpx.AsyncClient, reader: dict[str, Any]
) -> None:
    response = await client.post(
        TOKEN,
        data={"grant_type": "client_credentials"},
        headers=basic("cl_nosuchclient", reader["clientSecret"]),
    )

    assert_oauth_error(
        response, "invalid_client", status=401, description="client authentication failed"
    )


async def test_body_client_auth_with_wrong_credentials_is_401_invalid_client(
    client: httpx.AsyncClient, reader: dict[str, Any]
) -> None:
    for client_id, secret in [
        (reader["clientId"], "cs_wrong"),
        (reader["clientId"], reader["clientSecret"][:-1]),
        ("cl_unknown", reader["clientSecret"]),
    ]:
        response = await token(
            client, grant_type="client_credentials", client_id=client_id, client_secret=secret
        )

        assert_oauth_error(
            response, "invalid_client", status=401, description="client authentication failed"
        )


async def test_body_client_id_or_secret_alone_is_invalid_client(
    client: httpx.AsyncClient, reader: dict[str, Any]
) -> None:
    for form in [
        {"client_id": reader["clientId"]},
        {"client_secret": reader["clientSecret"]},
        # An empty value is an absent one.
        {"client_id": reader["clientId"], "client_secret": ""},
    ]:
        response = await token(client, grant_type="client_credentials", **form)

        assert_oauth_error(
            response,
            "invalid_client",
            status=401,
            description="client_id and client_secret go together",
        )


async def test_basic_and_body_client_authentication_together_is_invalid_request(
    client: httpx.AsyncClient, reader: dict[str, Any]
) -> None:
    for extra in [{"client_id": reader["clientId"]}, {"client_secret": "y"}]:
        response = await client.post(
            TOKEN,
            data={"grant_type": "client_credentials", **extra},
            headers=basic(reader["clientId"], reader["clientSecret"]),
        )

        assert_oauth_error(
            response,
            "invalid_request",
            description="use one client authentication method, not two",
        )


async def test_a_malformed_basic_header_is_401_invalid_client(client: httpx.AsyncClient) -> None:
    headers = [
        "Basic",
        "Basic ",
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon-here").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\xfd").decode(),
        "Basic " + base64.b64encode(b"cl_x:secret").decode()[:-2],
        "basic " + base64.b64encode(b":").decode(),
    ]

    for header in headers:
        response = await client.post(
            TOKEN, data={"grant_type": "client_credentials"}, headers={"Authorization": header}
        )

        assert_oauth_error(response, "invalid_client", status=401)


async def test_api_clients_cannot_use_the_password_or_refresh_grants(
    client: httpx.AsyncClient, jake: TestUser, reader: dict[str, Any]
) -> None:
    tokens = await password_grant(client, jake)

    for grant in ["password", "refresh_token"]:
        response = await client.post(
            TOKEN,
            data={
                "grant_type": grant,
                "username": jake.email,
                "password": DEFAULT_PASSWORD,
                "refresh_token": tokens["refresh_token"],
            },
            headers=basic(reader["clientId"], reader["clientSecret"]),
        )

        assert_oauth_error(response, "unauthorized_client")
    # The refresh token was not consumed by the refused request.
    assert (await refresh(client, tokens["refresh_token"])).status_code == 200


# --- refresh tokens ----------------------------------------------------------------------------


async def test_refresh_rotates_and_the_old_token_dies_once_its_successor_is_used(
    client: httpx.AsyncClient, jake: TestUser, app: ConduitASGI
) -> None:
    first = await password_grant(client, jake)

    second = await refresh(client, first["refresh_token"])

    assert second.status_code == 200, second.text
    assert second.headers["cache-control"] == "no-store"
    rotated = second.json()
    assert set(rotated) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    assert rotated["refresh_token"] != first["refresh_token"]
    assert rotated["scope"] == USER_SCOPES
    first_claims = claims_of(app, first["access_token"])
    rotated_claims = claims_of(app, rotated["access_token"])
    assert rotated_claims["sid"] == first_claims["sid"]
    assert rotated_claims["jti"] != first_claims["jti"]
    third = await refresh(client, rotated["refresh_token"])
    assert third.status_code == 200, third.text
    latest = third.json()

    # The first token again, after its successor was used: a leak; the family is revoked.
    reuse = await refresh(client, first["refresh_token"])
    assert_oauth_error(
        reuse,
        "invalid_grant",
        description="refresh token was already used; the session is revoked",
    )
    after = await refresh(client, latest["refresh_token"])
    assert_oauth_error(after, "invalid_grant", description="refresh token has been revoked")
    for access_token in (first["access_token"], rotated["access_token"], latest["access_token"]):
        me = await client.get(USER, headers=bearer(access_token))
        assert me.status_code == 401
        assert me.json() == REVOKED


async def test_refresh_reuse_after_the_grace_window_revokes_the_family_at_once(
    client: httpx.AsyncClient,
    jake: TestUser,
    app: ConduitASGI,
    database_url: str,
    settings: Settings,
) -> None:
    first = await password_grant(client, jake)
    other = await password_grant(client, jake)  # another session of the same user
    successor = (await refresh(client, first["refresh_token"])).json()
    # The successor is unused, but the exchange is older than the grace window.
    await query(
        database_url,
        "UPDATE refresh_tokens SET used_at = used_at - make_interval(secs => $1)"
        " WHERE used_at IS NOT NULL",
        float(settings.refresh_reuse_grace_seconds + 1),
    )

    reuse = await refresh(client, first["refresh_token"])

    assert_oauth_error(
        reuse,
        "invalid_grant",
        description="refresh token was already used; the session is revoked",
    )
    sid = claims_of(app, first["access_token"])["sid"]
    me = await client.get(USER, headers=bearer(successor["access_token"]))
    assert me.status_code == 401
    assert me.json() == REVOKED
    assert_oauth_error(await refresh(client, successor["refresh_token"]), "invalid_grant")
    rows = await query(
        database_url,
        "SELECT revoked_at, revoked_reason FROM auth_sessions WHERE id = $1::uuid",
        sid,
    )
    assert rows[0]["revoked_at"] is not None
    assert rows[0]["revoked_reason"] == "refresh_token_reuse"
    # The user's other session is not touched.
    assert await status_of(client, other["access_token"]) == 200
    assert (await refresh(client, other["refresh_token"])).status_code == 200


async def test_refresh_reuse_within_the_grace_window_while_the_successor_is_unused(
    client: httpx.AsyncClient, jake: TestUser, app: ConduitASGI
) -> None:
    first = await password_grant(client, jake)
    lost = (await refresh(client, first["refresh_token"])).json()  # the client never saw it

    retry = await refresh(client, first["refresh_token"])

    assert retry.status_code == 200, retry.text
    replacement = retry.json()
    assert replacement["refresh_token"] not in {lost["refresh_token"], first["refresh_token"]}
    assert (
        claims_of(app, replacement["access_token"])["sid"]
        == claims_of(app, first["access_token"])["sid"]
    )
    assert await status_of(client, replacement["access_token"]) == 200
    following = await refresh(client, replacement["refresh_token"])
    assert following.status_code == 200, following.text
    assert await status_of(client, following.json()["access_token"]) == 200


async def test_the_successor_retired_by_a_grace_retry_no_longer_works(
    client: httpx.AsyncClient, jake: TestUser
) -> None:
    first = await password_grant(client, jake)
    lost = (await refresh(client, first["refresh_token"])).json()
    replacement = await refresh(client, first["refresh_token"])
    assert replacement.status_code == 200, replacement.text

    retired = await refresh(client, lost["refresh_token"])

    assert_oauth_error(retired, "invalid_grant")


async def test_without_a_grace_window_reuse_is_refused_immediately(
    no_grace_client: httpx.AsyncClient, jake: TestUser, database_url: str
) -> None:
    first = await password_grant(no_grace_client, jake)
    successor = await refresh(no_grace_client, first["refresh_token"])
    assert successor.status_code == 200, successor.text

    reuse = await refresh(no_grace_client, first["refresh_token"])

    assert_oauth_error(
        reuse,
        "invalid_grant",
        description="refresh token was already used; the session is revoked",
    )
    assert await status_of(no_grace_client, successor.json()["access_token"]) == 401
    assert_oauth_error(
        await refresh(no_grace_client, successor.json()["refresh_token"]), "invalid_grant"
    )
    rows = await query(
        database_url,
        "SELECT revoked_reason FROM auth_sessions WHERE revoked_at IS NOT NULL",
    )
    assert [row["revoked_reason"] for row in rows] == ["refresh_token_reuse"]


async def test_concurrent_refreshes_of_one_token_never_fail_with_a_server_error(
    client: httpx.AsyncClient, jake: TestUser
) -> None:
    first = await password_grant(client, jake)

    responses = await asyncio.gather(*(refresh(client, first["refresh_token"]) for _ in range(6)))

    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 400}, statuses
    assert 200 in statuses


async def wait_for_lock_waiters(conn: asyncpg.Connection, count: int) -> None:
    """Until `count` backends of this database wait for a lock (`conn` must be outside a
    transaction: pg_stat_activity is a snapshot within one)."""
    for _ in range(300):
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        )
        if waiting >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never saw {count} requests waiting for a lock")


async def test_a_grace_retry_racing_the_successor_does_not_deadlock(
    client: httpx.AsyncClient, jake: TestUser, app: ConduitASGI, database_url: str
) -> None:
    first = await password_grant(client, jake)
    successor = (await refresh(client, first["refresh_token"])).json()
    sid = claims_of(app, first["access_token"])["sid"]
    # Hold the session row so both requests queue behind it in a known order: the retry of
    # the old token first (it holds that token's row), then the successor (holds its row).
    blocker = await asyncpg.connect(database_url)
    monitor = await asyncpg.connect(database_url)
    try:
        holding = blocker.transaction()
        await holding.start()
        await blocker.execute("SELECT 1 FROM auth_sessions WHERE id = $1::uuid FOR UPDATE", sid)
        retry = asyncio.ensure_future(refresh(client, first["refresh_token"]))
        await wait_for_lock_waiters(monitor, 1)
        rotate = asyncio.ensure_future(refresh(client, successor["refresh_token"]))
        await wait_for_lock_waiters(monitor, 2)
        await holding.rollback()
        responses = await asyncio.gather(retry, rotate)
    finally:
        await blocker.close()
        await monitor.close()

    statuses = [response.status_code for response in responses]
    assert all(status < 500 for status in statuses), [r.text for r in responses]


async def test_refresh_of_an_unknown_token_is_invalid_grant(
    client: httpx.AsyncClient, jake: TestUser
) -> None:
    await password_grant(client, jake)

    response = await refresh(client, "not-a-refresh-token")

    assert_oauth_error(response, "invalid_grant", description="refresh token is invalid")


async def test_refresh_after_the_user_is_suspended_is_invalid_grant(
    client: httpx.AsyncClient, jake: TestUser, database_url: str
) -> None:
    tokens = await password_grant(client, jake)
    # Suspended behind the API's back: the session itself is still active.
    await query(database_url, "UPDATE users SET suspended = true WHERE id = $1", jake.id)

    response = await refresh(client, tokens["refresh_token"])

    assert_oauth_error(response, "invalid_grant", description="the account is suspended")
    # Refused without consuming the token: it works again once the account is restored.
    await query(database_url, "UPDATE users SET suspended = false WHERE id = $1", jake.id)
    assert (await refresh(client, tokens["refresh_token"])).status_code == 200


async def test_refresh_narrows_the_scope_and_an_omitted_scope_means_the_original_grant(
    client: httpx.AsyncClient, jake: TestUser, app: ConduitASGI
) -> None:
    first = await password_grant(client, jake)

    narrowed = await refresh(client, first["refresh_token"], scope="articles:read")

    assert narrowed.status_code == 200, narrowed.text
    body = narrowed.json()
    assert body["scope"] == "articles:read"
    assert claims_of(app, body["access_token"])["scope"] == "articles:read"
    assert (await client.get(USER, headers=bearer(body["access_token"]))).status_code == 403
    # RFC 6749 §6: an omitted scope is the one originally granted.
    full = await refresh(client, body["refresh_token"])
    assert full.json()["scope"] == USER_SCOPES


async def test_refresh_widening_the_scope_is_invalid_scope_and_consumes_nothing(
    client: httpx.AsyncClient, jake: TestUser
) -> None:
    first = await password_grant(client, jake)

    for scope in ["admin", "articles:read admin", "made:up"]:
        response = await refresh(client, first["refresh_token"], scope=scope)

        assert_oauth_error(response, "invalid_scope")
    again = await refresh(client, first["refresh_token"])
    assert again.status_code == 200, again.text


async def test_refresh_cannot_widen_a_scope_narrowed_at_sign_in(
    client: httpx.AsyncClient, jake: TestUser
) -> None:
    first = await password_grant(client, jake, scope="articles:read")

    widened = await refresh(client, first["refresh_token"], scope="articles:read articles:write")
    same = await refresh(client, first["refresh_token"])

    assert_oauth_error(widened, "invalid_scope")
    assert same.status_code == 200, same.text
    assert same.json()["scope"] == "articles:read"


async def test_refresh_drops_scopes_the_role_no_longer_allows(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    boss = await make_user(username="boss", role="admin")
    first = await password_grant(client, boss)
    assert "admin" in first["scope"].split()
    await query(database_url, "UPDATE users SET role = 'user' WHERE id = $1", boss.id)

    response = await refresh(client, first["refresh_token"])

    assert response.status_code == 200, response.text
    assert response.json()["scope"] == USER_SCOPES


async def test_refresh_of_an_expired_session_is_invalid_grant(
    client: httpx.AsyncClient, jake: TestUser, database_url: str, app: ConduitASGI
) -> None:
    first = await password_grant(client, jake)
    sid = claims_of(app, first["access_token"])["sid"]
    await query(
        database_url,
        "UPDATE auth_sessions SET expires_at = now() - interval '1 second' WHERE id = $1::uuid",
        sid,
    )

    response = await refresh(client, first["refresh_token"])

    assert_oauth_error(response, "invalid_grant", description="refresh token has expired")


async def test_refresh_tokens_are_stored_only_as_a_hash(
    client: httpx.AsyncClient, jake: TestUser, database_url: str
) -> None:
    first = await password_grant(client, jake)
    second = (await refresh(client, first["refresh_token"])).json()

    rows = await query(database_url, "SELECT token_hash FROM refresh_tokens ORDER BY id")
    assert [bytes(row["token_hash"]) for row in rows] == [
        hashlib.sha256(t["refresh_token"].encode()).digest() for t in (first, second)
    ]
    dumped = await query(
        database_url,
        "SELECT row_to_json(t)::text AS row FROM refresh_tokens t"
        " UNION ALL SELECT row_to_json(s)::text FROM auth_sessions s",
    )
    text = "\n".join(row["row"] for row in dumped)
    for t in (first, second):
        assert t["refresh_token"] not in text
        assert t["access_token"] not in text
    # 256 random bits, URL-safe.
    assert len(first["refresh_token"]) >= 43


# --- revocation (RFC 7009) ---------------------------------------------------------------------


async def revoke(client: httpx.AsyncClient, token_value: str, **extra: Any) -> httpx.Response:
    headers = extra.pop("headers", None)
    return await client.post(REVOKE, data={"token": token_value, **extra}, headers=headers)


@pytest.mark.parametrize(
    ("which", "hint"),
    [
        ("access_token", None),
        ("access_token", "refresh_token"),  # a wrong hint is only a hint
        ("refresh_token", None),
        ("refresh_token", "something_else"),
    ],
)
async def test_revoking_either_token_revokes_its_session(
    client: httpx.AsyncClient,
    jake: TestUser,
    database_url: str,
    app: ConduitASGI,
    settings: Settings,
    which: str,
    hint: str | None,
) -> None:
    tokens = await password_grant(client, jake)
    other = await password_grant(client, jake)
    extra = {"token_type_hint": hint} if hint is not None else {}

    response = await revoke(client, tokens[which], **extra)

    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["cache-control"] == "no-store"
    me = await client.get(USER, headers=bearer(tokens["access_token"]))
    assert me.status_code == 401
    assert me.json() == REVOKED
    assert_oauth_error(
        await refresh(client, tokens["refresh_token"]),
        "invalid_grant",
        description="refresh token has been revoked",
    )
    sid = claims_of(app, tokens["access_token"])["sid"]
    rows = await query(
        database_url, "SELECT revoked_reason FROM auth_sessions WHERE id = $1::uuid", sid
    )
    assert rows[0]["revoked_reason"] == "revoked"
    assert await status_of(client, other["access_token"]) == 200


async def test_revoking_an_unknown_token_is_200(client: httpx.AsyncClient, jake: TestUser) -> None:
    tokens = await password_grant(client, jake)

    for value in ["unknown-token", "a.b.c", "x" * 4096, str(uuid.uuid4())]:
        response = await revoke(client, value)

        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
    assert await status_of(client, tokens["access_token"]) == 200


async def test_revoking_twice_or_an_expired_token_is_200(
    client: httpx.AsyncClient, jake: TestUser, app: ConduitASGI
) -> None:
    tokens = await password_grant(client, jake)
    claims = claims_of(app, tokens["access_token"])
    expired = jwt.encode(
        {**claims, "iat": claims["iat"] - 7200, "exp": claims["iat"] - 3600},
        app.flask_app.config["SECRET_KEY"],
        algorithm="HS256",
    )

    assert (await revoke(client, expired)).status_code == 200
    assert await status_of(client, tokens["access_token"]) == 200  # an expired one is ignored
    assert (await revoke(client, tokens["refresh_token"])).status_code == 200
    assert (await revoke(client, tokens["refresh_token"])).status_code == 200
    assert (await revoke(client, tokens["access_token"])).status_code == 200


async def test_revocation_without_a_token_is_invalid_request(client: httpx.AsyncClient) -> None:
    response = await client.post(REVOKE, data={"token_type_hint": "access_token"})

    assert_oauth_error(response, "invalid_request")


async def test_revocation_with_a_json_body_is_invalid_request(client: httpx.AsyncClient) -> None:
    response = await client.post(REVOKE, json={"token": "x"})

    assert_oauth_error(response, "invalid_request")


async def test_a_client_revoking_someone_elses_token_gets_200_but_revokes_nothing(
    client: httpx.AsyncClient, jake: TestUser, reader: dict[str, Any], make_user: MakeUser
) -> None:
    tokens = await password_grant(client, jake)  # jake's own session, not the client's
    ann = await make_user(username="ann")
    other_client = await create_api_client(client, ann, ["articles:read"])
    other_token = (await client_token(client, other_client)).json()["access_token"]

    for value in (tokens["access_token"], tokens["refresh_token"], other_token):
        response = await revoke(
            client, value, headers=basic(reader["clientId"], reader["clientSecret"])
        )
        assert response.status_code == 200

    assert await status_of(client, tokens["access_token"]) == 200
    assert (await client.get(FEED, headers=bearer(other_token))).status_code == 200
    assert (await refresh(client, tokens["refresh_token"])).status_code == 200


async def test_a_client_revokes_its_own_token(
    client: httpx.AsyncClient, reader: dict[str, Any]
) -> None:
    access_token = (await client_token(client, reader)).json()["access_token"]

    response = await client.post(
        REVOKE,
        data={
            "token": access_token,
            "client_id": reader["clientId"],
            "client_secret": reader["clientSecret"],
        },
    )

    assert response.status_code == 200
    assert (await client.get(FEED, headers=bearer(access_token))).status_code == 401


async def test_revocation_with_wrong_client_credentials_is_invalid_client(
    client: httpx.AsyncClient, jake: TestUser, reader: dict[str, Any]
) -> None:
    tokens = await password_grant(client, jake)

    with_basic = await revoke(
        client, tokens["access_token"], headers=basic(reader["clientId"], "cs_wrong")
    )
    in_body = await revoke(
        client, tokens["access_token"], client_id=reader["clientId"], client_secret="cs_wrong"
    )

    assert_oauth_error(with_basic, "invalid_client", status=401)
    assert_oauth_error(in_body, "invalid_client", status=401)
    assert await status_of(client, tokens["access_token"]) == 200


# --- forged and damaged access tokens ----------------------------------------------------------


def _sign(app: ConduitASGI, claims: dict[str, Any], **options: Any) -> str:
    secret = options.pop("key", app.flask_app.config["SECRET_KEY"])
    algorithm = options.pop("algorithm", "HS256")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns about the key length for HS512
        return jwt.encode(claims, secret, algorithm=algorithm)


async def _valid_claims(
    client: httpx.AsyncClient, jake: TestUser, app: ConduitASGI
) -> dict[str, Any]:
    tokens = await password_grant(client, jake)
    return claims_of(app, tokens["access_token"])


async def test_tokens_with_missing_or_malformed_claims_are_401(
    client: httpx.AsyncClient, jake: TestUser, app: ConduitASGI
) -> None:
    claims = await _valid_claims(client, jake, app)
    changes: list[dict[str, Any]] = [
        {"sid": None},
        {"sid": "not-a-uuid"},
        {"sid": 12},
        {"scope": None},
        {"scope": ["articles:read", "profile:read"]},
        {"jti": None},
        {"iat": None},
        {"exp": None},
        {"cid": 5},
        {"sub": "1.5"},
    ]

    for change in changes:
        changed = {**claims, **change}
        for name in [name for name, value in change.items() if value is None]:
            del changed[name]

        response = await client.get(USER, headers=bearer(_sign(app, changed)))

        assert response.status_code == 401, change
        assert response.json() == {"errors": {"token": ["token is invalid"]}}, change
    assert await status_of(client, _sign(app, claims)) == 200


async def test_a_token_of_a_session_that_is_missing_or_not_its_users_is_401(
    client: httpx.AsyncClient, jake: TestUser, app: ConduitASGI, make_user: MakeUser
) -> None:
    claims = await _valid_claims(client, jake, app)
    ann = await make_user(username="ann")
    anns_sid = claims_of(app, ann.token)["sid"]

    for sid in (str(uuid.uuid4()), anns_sid):
        response = await client.get(USER, headers=bearer(_sign(app, {**claims, "sid": sid})))

        assert response.status_code == 401, sid
        assert response.json() == {"errors": {"token": ["token is invalid"]}}
    assert await status_of(client, ann.token) == 200


async def test_a_revocation_made_in_the_database_alone_counts_at_once(
    client: httpx.AsyncClient, jake: TestUser, app: ConduitASGI, database_url: str
) -> None:
    tokens = await password_grant(client, jake)
    assert await status_of(client, tokens["access_token"]) == 200
    sid = claims_of(app, tokens["access_token"])["sid"]
    # Revoked behind the API's back (an operator's UPDATE): nothing else needs telling.
    await query(
        database_url, "UPDATE auth_sessions SET revoked_at = now() WHERE id = $1::uuid", sid
    )

    response = await client.get(USER, headers=bearer(tokens["access_token"]))

    assert response.status_code == 401


async def test_damaged_or_forged_signatures_are_401(
    client: httpx.AsyncClient, jake: TestUser, app: ConduitASGI
) -> None:
    claims = await _valid_claims(client, jake, app)
    good = _sign(app, claims)
    header, payload, signature = good.split(".")
    escalated = {**claims, "scope": ALL_SCOPES}
    escalated_payload = (
        base64.urlsafe_b64encode(json.dumps(escalated).encode()).rstrip(b"=").decode()
    )
    forged = [
        good[:-4],  # truncated signature
        f"{header}.{payload}",  # no signature segment
        f"{header}.{payload}.",  # empty signature
        f"{header}.{escalated_payload}.{signature}",  # payload swapped, old signature
        _sign(app, claims, algorithm="none", key=None),
        _sign(app, claims, key="another-secret-key-" + "y" * 32),
        _sign(app, claims, algorithm="HS512"),  # right key, algorithm not accepted
    ]

    for value in forged:
        response = await client.get(USER, headers=bearer(value))
        assert response.status_code == 401, value
        assert response.json() == {"errors": {"token": ["token is invalid"]}}, value
    assert await status_of(client, good) == 200


async def test_an_expired_token_of_a_live_session_is_401(
    client: httpx.AsyncClient, jake: TestUser, app: ConduitASGI
) -> None:
    claims = await _valid_claims(client, jake, app)
    now = datetime.now(UTC)
    expired = {**claims, "iat": now - timedelta(minutes=20), "exp": now - timedelta(minutes=5)}

    response = await client.get(USER, headers=bearer(_sign(app, expired)))

    assert response.status_code == 401
    assert response.json() == {"errors": {"token": ["token has expired"]}}
