"""Ending sessions: logout (the current session only), password change (every session) and
suspension by an admin (every session)."""

from __future__ import annotations

import httpx
import pytest

from service.app import ConduitASGI
from service.infra.settings import Settings
from tests.api.v1.test_oauth import (
    REVOKED,
    USER,
    USER_SCOPES,
    MakeUser,
    assert_oauth_error,
    bearer,
    claims_of,
    password_grant,
    query,
    refresh,
    status_of,
    token,
)

LOGOUT = "/api/v1/users/logout"
LOGIN = "/api/v1/users/login"


async def test_logout_revokes_only_the_current_session(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    app: ConduitASGI,
    database_url: str,
    settings: Settings,
) -> None:
    jake = await make_user(username="jake")
    laptop = await password_grant(client, jake)
    phone = await password_grant(client, jake)

    response = await client.post(LOGOUT, headers=bearer(laptop["access_token"]))

    assert response.status_code == 204
    assert response.content == b""
    after = await client.get(USER, headers=bearer(laptop["access_token"]))
    assert after.status_code == 401
    assert after.json() == REVOKED
    assert_oauth_error(
        await refresh(client, laptop["refresh_token"]),
        "invalid_grant",
        description="refresh token has been revoked",
    )
    # The other sign-ins of the same user keep working.
    assert await status_of(client, phone["access_token"]) == 200
    assert (await refresh(client, phone["refresh_token"])).status_code == 200
    assert (await client.get(USER, headers=jake.headers)).status_code == 200
    sid = claims_of(app, laptop["access_token"])["sid"]
    rows = await query(
        database_url,
        "SELECT id, revoked_reason FROM auth_sessions WHERE revoked_at IS NOT NULL",
    )
    assert [(str(row["id"]), row["revoked_reason"]) for row in rows] == [(sid, "logout")]


async def test_logout_of_a_realworld_login(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    jake = await make_user(username="jake")
    login = await client.post(
        LOGIN, json={"user": {"email": jake.email, "password": jake.password}}
    )
    realworld = {"Authorization": f"Token {login.json()['user']['token']}"}

    response = await client.post(LOGOUT, headers=realworld)

    assert response.status_code == 204
    assert (await client.get(USER, headers=realworld)).status_code == 401
    assert (await client.get(USER, headers=jake.headers)).status_code == 200


async def test_logout_twice_is_401(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    jake = await make_user(username="jake")

    first = await client.post(LOGOUT, headers=jake.headers)
    second = await client.post(LOGOUT, headers=jake.headers)

    assert first.status_code == 204
    assert second.status_code == 401
    assert second.json() == REVOKED


async def test_logout_needs_a_token_with_profile_read(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    narrowed = await password_grant(client, jake, scope="articles:read")

    anonymous = await client.post(LOGOUT)
    denied = await client.post(LOGOUT, headers=bearer(narrowed["access_token"]))

    assert anonymous.status_code == 401
    assert anonymous.json() == {"errors": {"token": ["authentication required"]}}
    assert denied.status_code == 403
    assert denied.json() == {"errors": {"scope": ["token lacks the 'profile:read' scope"]}}
    assert (
        await client.get("/api/v1/articles/feed", headers=bearer(narrowed["access_token"]))
    ).status_code == 200


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_password_change_revokes_every_session_and_answers_with_a_new_one(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    app: ConduitASGI,
    database_url: str,
    method: str,
) -> None:
    jake = await make_user(username="jake")
    ann = await make_user(username="ann")
    laptop = await password_grant(client, jake)
    phone = await password_grant(client, jake)

    response = await client.request(
        method, USER, json={"user": {"password": "a-new-password"}}, headers=jake.headers
    )

    assert response.status_code == 200, response.text
    new_token = response.json()["user"]["token"]
    assert new_token != jake.token
    for old in (jake.token, laptop["access_token"], phone["access_token"]):
        refused = await client.get(USER, headers=bearer(old))
        assert refused.status_code == 401
        assert refused.json() == REVOKED
    for tokens in (laptop, phone):
        assert_oauth_error(
            await refresh(client, tokens["refresh_token"]),
            "invalid_grant",
            description="refresh token has been revoked",
        )
    me = await client.get(USER, headers=bearer(new_token))
    assert me.status_code == 200
    assert me.json()["user"]["token"] == new_token
    new_claims = claims_of(app, new_token)
    assert new_claims["scope"] == USER_SCOPES
    rows = await query(
        database_url,
        "SELECT id, revoked_reason FROM auth_sessions WHERE user_id = $1",
        jake.id,
    )
    reasons = {str(row["id"]): row["revoked_reason"] for row in rows}
    assert reasons.pop(new_claims["sid"]) is None
    assert set(reasons.values()) == {"password_changed"}
    assert len(reasons) == 3
    # Other people are not signed out.
    assert (await client.get(USER, headers=ann.headers)).status_code == 200
    # The new password works, the old one does not.
    assert (
        await token(client, grant_type="password", username="jake", password="a-new-password")
    ).status_code == 200
    assert (
        await token(client, grant_type="password", username="jake", password=jake.password)
    ).status_code == 400


async def test_password_change_keeps_the_scopes_of_the_token_used(
    client: httpx.AsyncClient, make_user: MakeUser, app: ConduitASGI
) -> None:
    jake = await make_user(username="jake")
    narrowed = await password_grant(client, jake, scope="profile:read profile:write")

    response = await client.put(
        USER,
        json={"user": {"password": "a-new-password"}},
        headers=bearer(narrowed["access_token"]),
    )

    assert response.status_code == 200, response.text
    new_token = response.json()["user"]["token"]
    assert claims_of(app, new_token)["scope"] == "profile:read profile:write"
    assert await status_of(client, narrowed["access_token"]) == 401
    assert await status_of(client, new_token) == 200


async def test_other_profile_changes_revoke_nothing(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    jake = await make_user(username="jake")
    laptop = await password_grant(client, jake)

    response = await client.put(
        USER, json={"user": {"email": "jacob@example.com", "bio": "hi"}}, headers=jake.headers
    )

    assert response.status_code == 200, response.text
    assert response.json()["user"]["token"] == jake.token
    assert await status_of(client, jake.token) == 200
    assert await status_of(client, laptop["access_token"]) == 200
    assert (await refresh(client, laptop["refresh_token"])).status_code == 200
    rows = await query(
        database_url, "SELECT count(*) AS n FROM auth_sessions WHERE revoked_at IS NOT NULL"
    )
    assert rows[0]["n"] == 0


async def test_a_failed_password_change_revokes_nothing(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    await make_user(username="ann")
    laptop = await password_grant(client, jake)

    taken = await client.put(
        USER,
        json={"user": {"password": "a-new-password", "username": "ann"}},
        headers=jake.headers,
    )

    assert taken.status_code == 409
    assert await status_of(client, jake.token) == 200
    assert (await refresh(client, laptop["refresh_token"])).status_code == 200


async def test_suspension_by_an_admin_revokes_every_session_for_good(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    boss = await make_user(username="boss", role="admin")
    jake = await make_user(username="jake")
    laptop = await password_grant(client, jake)
    admin_path = "/api/v1/admin/users/jake"

    suspended = await client.patch(
        admin_path, json={"user": {"suspended": True}}, headers=boss.headers
    )

    assert suspended.status_code == 200, suspended.text
    for value in (jake.token, laptop["access_token"]):
        refused = await client.get(USER, headers=bearer(value))
        assert refused.status_code == 401
        assert refused.json() == REVOKED
    assert_oauth_error(
        await refresh(client, laptop["refresh_token"]),
        "invalid_grant",
        description="refresh token has been revoked",
    )
    assert_oauth_error(
        await token(client, grant_type="password", username="jake", password=jake.password),
        "invalid_grant",
        description="the account is suspended",
    )

    restored = await client.patch(
        admin_path, json={"user": {"suspended": False}}, headers=boss.headers
    )

    assert restored.status_code == 200
    # The old sessions stay revoked; signing in again works.
    assert await status_of(client, laptop["access_token"]) == 401
    assert_oauth_error(await refresh(client, laptop["refresh_token"]), "invalid_grant")
    fresh = await password_grant(client, jake)
    assert await status_of(client, fresh["access_token"]) == 200
    assert await status_of(client, boss.token) == 200
