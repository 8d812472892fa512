"""The OAuth 2.0 token endpoint (RFC 6749) and revocation (RFC 7009)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tests.factories import DEFAULT_PASSWORD, TestUser

MakeUser = Callable[..., Awaitable[TestUser]]
TOKEN = "/api/v1/oauth/token"
REVOKE = "/api/v1/oauth/revoke"
USER = "/api/v1/user"


async def token(client: httpx.AsyncClient, **form: str) -> httpx.Response:
    return await client.post(TOKEN, data=form)


def bearer(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


async def password_grant(
    client: httpx.AsyncClient, user: TestUser, **extra: str
) -> dict[str, Any]:
    response = await token(
        client, grant_type="password", username=user.email, password=DEFAULT_PASSWORD, **extra
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_password_grant_gives_rfc6749_tokens_that_work(
    client: httpx.AsyncClient, make_user: MakeUser
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
    assert "admin" not in body["scope"].split()
    me = await client.get(USER, headers=bearer(body["access_token"]))
    assert me.status_code == 200
    assert me.json()["user"]["username"] == jake.username


async def test_refresh_rotates_and_reuse_revokes_the_family(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    first = await password_grant(client, jake)

    second = await token(client, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert second.status_code == 200, second.text
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]
    third = await token(
        client, grant_type="refresh_token", refresh_token=rotated["refresh_token"]
    )
    assert third.status_code == 200, third.text
    latest = third.json()

    # The first token again, after its successor was used: a leak; the family is revoked.
    reuse = await token(client, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert reuse.status_code == 400
    assert reuse.json()["error"] == "invalid_grant"
    after = await token(client, grant_type="refresh_token", refresh_token=latest["refresh_token"])
    assert after.status_code == 400
    assert after.json()["error"] == "invalid_grant"
    me = await client.get(USER, headers=bearer(latest["access_token"]))
    assert me.status_code == 401
    assert me.json() == {"errors": {"token": ["token has been revoked"]}}


async def test_client_credentials_and_revocation(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    created = await client.post(
        "/api/v1/clients",
        json={"client": {"name": "export", "scopes": ["articles:read"]}},
        headers=jake.headers,
    )
    assert created.status_code == 201, created.text
    info = created.json()["client"]
    response = await client.post(
        TOKEN,
        data={"grant_type": "client_credentials"},
        auth=(info["clientId"], info["clientSecret"]),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scope"] == "articles:read"
    assert "refresh_token" not in body
    headers = bearer(body["access_token"])
    assert (await client.get("/api/v1/articles/feed", headers=headers)).status_code == 200
    denied = await client.get(USER, headers=headers)
    assert denied.status_code == 403
    assert denied.json() == {"errors": {"scope": ["token lacks the 'profile:read' scope"]}}

    revoked = await client.post(REVOKE, data={"token": body["access_token"]})
    assert revoked.status_code == 200
    assert (await client.get("/api/v1/articles/feed", headers=headers)).status_code == 401
