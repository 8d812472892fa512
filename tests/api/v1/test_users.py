"""POST /users, POST /users/login, GET/PUT/PATCH /user."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
import sqlalchemy as sa

from service.app import ConduitASGI
from service.models import User
from tests.factories import TestUser

MakeUser = Callable[..., Awaitable[TestUser]]

USERS = "/api/v1/users"
LOGIN = "/api/v1/users/login"
USER = "/api/v1/user"
APP_HASH_PARAMS = "m=19456,t=2,p=1"
PASSWORD = "jakejake"


async def query(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Rows of `sql`, read on a connection of its own (what other requests would see)."""
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def count_users(database_url: str) -> int:
    rows = await query(database_url, "SELECT count(*) AS n FROM users")
    return int(rows[0]["n"])


async def register(
    client: httpx.AsyncClient,
    username: str = "jake",
    email: str = "jake@jake.jake",
    password: str = PASSWORD,
) -> httpx.Response:
    body = {"user": {"username": username, "email": email, "password": password}}
    return await client.post(USERS, json=body)


def token_header(token: str, scheme: str = "Token") -> dict[str, str]:
    return {"Authorization": f"{scheme} {token}"}


def signed(app: ConduitASGI, claims: dict[str, Any], key: str | None = None) -> str:
    return jwt.encode(claims, key or app.flask_app.config["SECRET_KEY"], algorithm="HS256")


def claims_for(user_id: int, *, issued: datetime | None = None) -> dict[str, Any]:
    issued = issued or datetime.now(UTC)
    return {
        "sub": str(user_id),
        "sid": str(uuid.uuid4()),
        "jti": "test",
        "scope": "profile:read",
        "iat": issued,
        "exp": issued + timedelta(hours=1),
    }


# --- registration ---------------------------------------------------------------------------


async def test_register_returns_201_with_the_user_and_a_working_token(
    client: httpx.AsyncClient, database_url: str
) -> None:
    response = await register(client)

    assert response.status_code == 201
    user = response.json()["user"]
    token = user.pop("token")
    assert user == {"email": "jake@jake.jake", "username": "jake", "bio": "", "image": ""}
    me = await client.get(USER, headers=token_header(token))
    assert me.status_code == 200
    assert me.json()["user"]["username"] == "jake"
    rows = await query(database_url, "SELECT username, email, bio, image, password_hash FROM users")
    assert len(rows) == 1
    assert rows[0]["bio"] is None
    assert rows[0]["image"] is None
    # Hashed with the app's policy, never stored in the clear.
    assert rows[0]["password_hash"].startswith(f"$argon2id$v=19${APP_HASH_PARAMS}$")
    assert "jakejake" not in rows[0]["password_hash"]


async def test_register_lower_cases_the_email(client: httpx.AsyncClient, database_url: str) -> None:
    response = await register(client, email="Jake@Example.COM")

    assert response.status_code == 201
    assert response.json()["user"]["email"] == "jake@example.com"
    rows = await query(database_url, "SELECT email FROM users")
    assert [row["email"] for row in rows] == ["jake@example.com"]


@pytest.mark.parametrize("field", ["email", "username"])
@pytest.mark.parametrize("padding", [" ", "\t", "\n", "\u00a0"])
async def test_register_does_not_trim_email_or_username(
    client: httpx.AsyncClient, database_url: str, field: str, padding: str
) -> None:
    # The documented patterns admit no whitespace, so neither does the API (it never trims).
    valid = {"username": "jake", "email": "jake@example.com"}
    for padded in (padding + valid[field], valid[field] + padding):
        response = await register(client, **{**valid, field: padded})

        assert response.status_code == 422
        assert list(response.json()["errors"]) == [field]
    assert await count_users(database_url) == 0


@pytest.mark.parametrize("email", ["jake@jake.jake", "JAKE@Jake.Jake"])
async def test_register_taken_email_is_409_naming_email(
    client: httpx.AsyncClient, database_url: str, email: str
) -> None:
    assert (await register(client)).status_code == 201

    response = await register(client, username="other", email=email)

    assert response.status_code == 409
    assert response.json() == {"errors": {"email": ["has already been taken"]}}
    assert await count_users(database_url) == 1


@pytest.mark.parametrize("username", ["jake", "JAKE", "Jake"])
async def test_register_taken_username_is_409_naming_username(
    client: httpx.AsyncClient, database_url: str, username: str
) -> None:
    assert (await register(client)).status_code == 201

    response = await register(client, username=username, email="other@jake.jake")

    assert response.status_code == 409
    assert response.json() == {"errors": {"username": ["has already been taken"]}}
    assert await count_users(database_url) == 1


async def test_concurrent_registrations_of_one_username_let_exactly_one_win(
    client: httpx.AsyncClient, database_url: str
) -> None:
    responses = await asyncio.gather(
        *(
            register(client, username="Jake" if n % 2 else "jake", email=f"{n}@x.io")
            for n in range(6)
        )
    )

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201, 409, 409, 409, 409, 409]
    for response in responses:
        if response.status_code == 409:
            assert response.json() == {"errors": {"username": ["has already been taken"]}}
    assert await count_users(database_url) == 1


async def test_concurrent_registrations_of_one_email_let_exactly_one_win(
    client: httpx.AsyncClient, database_url: str
) -> None:
    responses = await asyncio.gather(
        *(register(client, username=f"user{n}", email="same@x.io") for n in range(4))
    )

    assert sorted(response.status_code for response in responses) == [201, 409, 409, 409]
    assert await count_users(database_url) == 1


@pytest.mark.parametrize(
    ("user", "field", "message"),
    [
        ({"email": "a@b.co", "password": "jakejake"}, "username", "Field required"),
        ({"username": "jake", "password": "jakejake"}, "email", "Field required"),
        ({"username": "jake", "email": "a@b.co"}, "password", "Field required"),
        ({"username": "", "email": "a@b.co", "password": "jakejake"}, "username", None),
        ({"username": "   ", "email": "a@b.co", "password": "jakejake"}, "username", None),
        ({"username": "jake", "email": "", "password": "jakejake"}, "email", None),
        ({"username": "jake", "email": "a@b.co", "password": ""}, "password", None),
        ({"username": "jake", "email": "not-an-email", "password": "jakejake"}, "email", None),
        ({"username": "jake", "email": "a@b.co", "password": "short"}, "password", None),
        ({"username": "jake", "email": "a@b.co", "password": "x" * 257}, "password", None),
        ({"username": "j" * 65, "email": "a@b.co", "password": "jakejake"}, "username", None),
        ({"username": "jake", "email": "a" * 250 + "@b.co", "password": "jakejake"}, "email", None),
        ({"username": "ja ke", "email": "a@b.co", "password": "jakejake"}, "username", None),
        ({"username": "ja/ke", "email": "a@b.co", "password": "jakejake"}, "username", None),
        ({"username": "..", "email": "a@b.co", "password": "jakejake"}, "username", None),
        ({"username": "jäke", "email": "a@b.co", "password": "jakejake"}, "username", None),
        ({"username": "ja\x00ke", "email": "a@b.co", "password": "jakejake"}, "username", None),
        (
            {"username": "x'); DROP TABLE users;--", "email": "a@b.co", "password": "jakejake"},
            "username",
            None,
        ),
        ({"username": 5, "email": "a@b.co", "password": "jakejake"}, "username", None),
        ({"username": "jake", "email": 5, "password": "jakejake"}, "email", None),
        ({"username": "jake", "email": "a@b.co", "password": 12345678}, "password", None),
        ({"username": None, "email": "a@b.co", "password": "jakejake"}, "username", None),
    ],
)
async def test_register_rejects_invalid_fields_with_422_naming_the_field(
    client: httpx.AsyncClient,
    database_url: str,
    user: dict[str, Any],
    field: str,
    message: str | None,
) -> None:
    response = await client.post(USERS, json={"user": user})

    assert response.status_code == 422
    errors = response.json()["errors"]
    assert list(errors) == [field]
    assert all(isinstance(text, str) and text for text in errors[field])
    if message is not None:
        assert errors[field] == [message]
    assert await count_users(database_url) == 0


async def test_register_error_messages_are_readable(client: httpx.AsyncClient) -> None:
    blank = await client.post(USERS, json={"user": {"username": "", "email": "", "password": ""}})
    chars = await register(client, username="bad name!")
    short = await register(client, password="short")

    assert blank.json() == {
        "errors": {
            "username": ["can't be blank"],
            "email": ["can't be blank"],
            "password": ["can't be blank"],
        }
    }
    assert chars.json() == {
        "errors": {"username": ["may contain only letters, digits, '_', '-' and '.'"]}
    }
    assert short.json() == {"errors": {"password": ["is too short (minimum is 8 characters)"]}}


async def test_register_accepts_every_allowed_username_character(
    client: httpx.AsyncClient,
) -> None:
    response = await register(client, username="Jake_the-2nd.x")

    assert response.status_code == 201
    assert response.json()["user"]["username"] == "Jake_the-2nd.x"


async def test_register_without_the_user_wrapper_is_422_naming_user(
    client: httpx.AsyncClient, database_url: str
) -> None:
    response = await client.post(
        USERS, json={"username": "jake", "email": "a@b.co", "password": "jakejake"}
    )

    assert response.status_code == 422
    assert response.json() == {"errors": {"user": ["Field required"]}}
    assert await count_users(database_url) == 0


@pytest.mark.parametrize("body", [[], "user", 5, None, {"user": None}, {"user": []}])
async def test_register_with_a_body_of_the_wrong_shape_is_422(
    client: httpx.AsyncClient, body: Any
) -> None:
    response = await client.post(
        USERS, content=json.dumps(body), headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 422
    assert "errors" in response.json()


async def test_register_with_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        USERS, content=b'{"user": {"username": ', headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json() == {"errors": {"body": ["malformed request"]}}


async def test_register_with_a_lone_surrogate_is_400_not_500(client: httpx.AsyncClient) -> None:
    content = b'{"user": {"username": "jake", "email": "a@b.co", "password": "\\ud800xxxxxxx"}}'

    response = await client.post(
        USERS, content=content, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400


async def test_register_with_a_text_body_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        USERS,
        content=b'{"user": {"username": "jake", "email": "a@b.co", "password": "jakejake"}}',
        headers={"Content-Type": "text/plain"},
    )

    assert response.status_code == 415
    assert list(response.json()["errors"]) == ["body"]


async def test_register_ignores_unknown_fields(client: httpx.AsyncClient) -> None:
    body = {
        "user": {
            "username": "jake",
            "email": "a@b.co",
            "password": "jakejake",
            "bio": "sneaky",
            "id": 1,
        }
    }

    response = await client.post(USERS, json=body)

    assert response.status_code == 201
    assert response.json()["user"]["bio"] == ""


# --- login ----------------------------------------------------------------------------------


async def test_login_returns_the_user_and_a_working_token(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake", bio="I work at statefarm")

    response = await client.post(
        LOGIN, json={"user": {"email": jake.email, "password": jake.password}}
    )

    assert response.status_code == 200
    user = response.json()["user"]
    token = user.pop("token")
    assert user == {
        "email": jake.email,
        "username": "jake",
        "bio": "I work at statefarm",
        "image": "",
    }
    me = await client.get(USER, headers=token_header(token))
    assert me.status_code == 200
    assert me.json()["user"]["email"] == jake.email


async def test_login_email_is_case_insensitive(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")

    response = await client.post(
        LOGIN, json={"user": {"email": jake.email.upper(), "password": jake.password}}
    )

    assert response.status_code == 200


async def test_login_with_a_wrong_password_or_unknown_email_is_the_same_401(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")

    wrong_password = await client.post(
        LOGIN, json={"user": {"email": jake.email, "password": "not-the-password"}}
    )
    unknown_email = await client.post(
        LOGIN, json={"user": {"email": "nobody@jake.jake", "password": jake.password}}
    )

    expected = {"errors": {"credentials": ["email or password is invalid"]}}
    assert wrong_password.status_code == 401
    assert wrong_password.json() == expected
    assert unknown_email.status_code == 401
    assert unknown_email.json() == expected


async def test_login_password_is_not_trimmed(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")

    response = await client.post(
        LOGIN, json={"user": {"email": jake.email, "password": f" {jake.password}"}}
    )

    assert response.status_code == 401


@pytest.mark.parametrize(
    ("user", "field"),
    [
        ({"email": "jake@jake.jake"}, "password"),
        ({"password": "jakejake"}, "email"),
        ({"email": "", "password": "jakejake"}, "email"),
        ({"email": "jake@jake.jake", "password": ""}, "password"),
        ({"email": 5, "password": "jakejake"}, "email"),
        ({"email": "jake@jake.jake", "password": "x" * 257}, "password"),
    ],
)
async def test_login_with_invalid_fields_is_422(
    client: httpx.AsyncClient, user: dict[str, Any], field: str
) -> None:
    response = await client.post(LOGIN, json={"user": user})

    assert response.status_code == 422
    assert list(response.json()["errors"]) == [field]


async def test_login_rehashes_a_password_hashed_with_other_parameters(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    jake = await make_user(username="jake")
    sql = "SELECT password_hash FROM users WHERE id = $1"
    before = (await query(database_url, sql, jake.id))[0]["password_hash"]
    assert APP_HASH_PARAMS not in before  # the factory's cheap parameters

    first = await client.post(
        LOGIN, json={"user": {"email": jake.email, "password": jake.password}}
    )
    after = (await query(database_url, sql, jake.id))[0]["password_hash"]
    second = await client.post(
        LOGIN, json={"user": {"email": jake.email, "password": jake.password}}
    )
    again = (await query(database_url, sql, jake.id))[0]["password_hash"]

    assert first.status_code == 200
    assert after != before
    assert after.startswith(f"$argon2id$v=19${APP_HASH_PARAMS}$")
    assert second.status_code == 200
    assert again == after  # already current: not rewritten


async def test_failed_login_does_not_rehash(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    jake = await make_user(username="jake")
    sql = "SELECT password_hash FROM users WHERE id = $1"
    before = (await query(database_url, sql, jake.id))[0]["password_hash"]

    response = await client.post(
        LOGIN, json={"user": {"email": jake.email, "password": "wrong-password"}}
    )

    assert response.status_code == 401
    assert (await query(database_url, sql, jake.id))[0]["password_hash"] == before


# --- current user and tokens ----------------------------------------------------------------


async def test_current_user_requires_a_token(client: httpx.AsyncClient) -> None:
    response = await client.get(USER)

    assert response.status_code == 401
    assert response.json() == {"errors": {"token": ["authentication required"]}}


@pytest.mark.parametrize("scheme", ["Token", "Bearer", "bearer", "TOKEN"])
async def test_current_user_with_token_or_bearer_scheme(
    client: httpx.AsyncClient, make_user: MakeUser, scheme: str
) -> None:
    jake = await make_user(username="jake", bio="bio", image="https://x.io/j.png")

    response = await client.get(USER, headers=token_header(jake.token, scheme))

    assert response.status_code == 200
    assert response.json() == {
        "user": {
            "email": jake.email,
            "token": jake.token,
            "username": "jake",
            "bio": "bio",
            "image": "https://x.io/j.png",
        }
    }


@pytest.mark.parametrize(
    "header",
    [
        "Token",
        "Token ",
        "Basic amFrZTpqYWtl",
        "Token not-a-jwt",
        "Token a.b.c",
        "Token eyJhbGciOiJIUzI1NiJ9.e30.",
        "jake",
    ],
)
async def test_current_user_with_a_malformed_authorization_header_is_401(
    client: httpx.AsyncClient, header: str
) -> None:
    response = await client.get(USER, headers={"Authorization": header})

    assert response.status_code == 401
    assert list(response.json()["errors"]) == ["token"]


async def test_current_user_with_an_expired_token_is_401(
    client: httpx.AsyncClient, app: ConduitASGI, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    issued = datetime.now(UTC) - timedelta(hours=2)
    token = signed(app, claims_for(jake.id, issued=issued))

    response = await client.get(USER, headers=token_header(token))

    assert response.status_code == 401
    assert response.json() == {"errors": {"token": ["token has expired"]}}


async def test_current_user_with_a_token_signed_by_another_key_is_401(
    client: httpx.AsyncClient, app: ConduitASGI, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    token = signed(app, claims_for(jake.id), key="another-secret-key-" + "y" * 32)

    response = await client.get(USER, headers=token_header(token))

    assert response.status_code == 401
    assert response.json() == {"errors": {"token": ["token is invalid"]}}


async def test_current_user_with_an_unsigned_alg_none_token_is_401(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    token = jwt.encode(claims_for(jake.id), None, algorithm="none")

    response = await client.get(USER, headers=token_header(token))

    assert response.status_code == 401
    assert response.json() == {"errors": {"token": ["token is invalid"]}}


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "not-a-number"},
        {"sub": None},
        {},
    ],
)
async def test_current_user_with_bad_claims_is_401(
    client: httpx.AsyncClient, app: ConduitASGI, claims: dict[str, Any]
) -> None:
    now = datetime.now(UTC)
    token = signed(app, {"iat": now, "exp": now + timedelta(hours=1), **claims})

    response = await client.get(USER, headers=token_header(token))

    assert response.status_code == 401


async def test_token_of_a_deleted_user_is_401(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    jake = await make_user(username="jake")
    await query(database_url, "DELETE FROM users WHERE id = $1", jake.id)

    response = await client.get(USER, headers=jake.headers)

    assert response.status_code == 401
    assert response.json() == {"errors": {"token": ["token is invalid"]}}


# --- updates --------------------------------------------------------------------------------


async def update(
    client: httpx.AsyncClient, user: TestUser, body: Any, method: str = "PUT"
) -> httpx.Response:
    return await client.request(method, USER, json=body, headers=user.headers)


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("email", "New@Example.com", "new@example.com"),
        ("username", "jacob", "jacob"),
        ("bio", "I like to skateboard", "I like to skateboard"),
        ("image", "https://i.stack.imgur.com/xHWG8.jpg", "https://i.stack.imgur.com/xHWG8.jpg"),
    ],
)
async def test_update_one_field_keeps_the_others(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    database_url: str,
    method: str,
    field: str,
    value: str,
    expected: str,
) -> None:
    jake = await make_user(username="jake", bio="old bio", image="https://x.io/old.png")
    original = {
        "email": jake.email,
        "username": "jake",
        "bio": "old bio",
        "image": "https://x.io/old.png",
    }

    response = await update(client, jake, {"user": {field: value}}, method)

    assert response.status_code == 200
    user = response.json()["user"]
    token = user.pop("token")
    assert user == {**original, field: expected}
    rows = await query(database_url, "SELECT email, username, bio, image FROM users")
    assert dict(rows[0]) == {**original, field: expected}
    # The fresh token works.
    me = await client.get(USER, headers=token_header(token))
    assert me.status_code == 200
    assert me.json()["user"][field] == expected


async def test_update_several_fields_at_once(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")

    response = await update(
        client, jake, {"user": {"username": "jacob", "bio": "hi", "image": "http://x.io/a.png"}}
    )

    assert response.status_code == 200
    user = response.json()["user"]
    assert (user["username"], user["bio"], user["image"]) == ("jacob", "hi", "http://x.io/a.png")


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
@pytest.mark.parametrize("value", [None, ""])
async def test_update_clears_bio_and_image_with_null_or_empty(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str, method: str, value: Any
) -> None:
    jake = await make_user(username="jake", bio="old", image="https://x.io/old.png")

    response = await update(client, jake, {"user": {"bio": value, "image": value}}, method)

    assert response.status_code == 200
    assert response.json()["user"]["bio"] == ""
    assert response.json()["user"]["image"] == ""
    rows = await query(database_url, "SELECT bio, image FROM users")
    assert (rows[0]["bio"], rows[0]["image"]) == (None, None)


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_update_with_no_fields_is_422(
    client: httpx.AsyncClient, make_user: MakeUser, method: str
) -> None:
    jake = await make_user(username="jake")

    response = await update(client, jake, {"user": {}}, method)

    assert response.status_code == 422
    assert response.json() == {
        "errors": {"body": ["at least one of email, username, password, bio, image is required"]}
    }


async def test_update_with_only_unknown_fields_is_422(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")

    response = await update(client, jake, {"user": {"token": "x", "following": True}})

    assert response.status_code == 422


@pytest.mark.parametrize("field", ["email", "username", "password"])
async def test_update_cannot_null_a_required_field(
    client: httpx.AsyncClient, make_user: MakeUser, field: str
) -> None:
    jake = await make_user(username="jake")

    response = await update(client, jake, {"user": {field: None}})

    assert response.status_code == 422
    assert response.json() == {"errors": {field: ["can't be null"]}}


@pytest.mark.parametrize("email", ["taken@jake.jake", "TAKEN@Jake.Jake"])
async def test_update_to_a_taken_email_is_409_and_changes_nothing(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str, email: str
) -> None:
    jake = await make_user(username="jake")
    await make_user(username="other", email="taken@jake.jake")

    response = await update(client, jake, {"user": {"email": email, "bio": "new bio"}})

    assert response.status_code == 409
    assert response.json() == {"errors": {"email": ["has already been taken"]}}
    rows = await query(database_url, "SELECT email, bio FROM users WHERE id = $1", jake.id)
    assert (rows[0]["email"], rows[0]["bio"]) == (jake.email, None)


async def test_update_to_a_taken_username_in_another_case_is_409(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    await make_user(username="Other")

    response = await update(client, jake, {"user": {"username": "oTHER"}})

    assert response.status_code == 409
    assert response.json() == {"errors": {"username": ["has already been taken"]}}


async def test_update_to_own_email_or_username_in_another_case_is_allowed(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")

    response = await update(
        client, jake, {"user": {"email": jake.email.upper(), "username": "JAKE"}}
    )

    assert response.status_code == 200
    assert response.json()["user"]["email"] == jake.email
    assert response.json()["user"]["username"] == "JAKE"


async def test_password_change_then_login_with_the_new_password(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    jake = await make_user(username="jake")

    response = await update(client, jake, {"user": {"password": "new-password"}})

    assert response.status_code == 200
    assert "password" not in response.json()["user"]
    rows = await query(database_url, "SELECT password_hash FROM users")
    assert rows[0]["password_hash"].startswith(f"$argon2id$v=19${APP_HASH_PARAMS}$")
    old = await client.post(LOGIN, json={"user": {"email": jake.email, "password": jake.password}})
    new = await client.post(LOGIN, json={"user": {"email": jake.email, "password": "new-password"}})
    assert old.status_code == 401
    assert new.status_code == 200


@pytest.mark.parametrize(
    ("user", "field"),
    [
        ({"email": 5}, "email"),
        ({"email": "not-an-email"}, "email"),
        ({"email": ""}, "email"),
        ({"username": ""}, "username"),
        ({"username": "has space"}, "username"),
        ({"username": "u" * 65}, "username"),
        ({"password": "short"}, "password"),
        ({"password": "p" * 257}, "password"),
        ({"bio": "b" * 2001}, "bio"),
        ({"bio": 5}, "bio"),
        ({"bio": "nul \x00 inside"}, "bio"),
        ({"image": "i" * 2001}, "image"),
        ({"image": "not a url"}, "image"),
        ({"image": "javascript:alert(1)"}, "image"),
        ({"image": ["https://x.io/a.png"]}, "image"),
        # The image must match its documented pattern exactly: nothing is trimmed.
        ({"image": " https://x.io/a.png"}, "image"),
        ({"image": "https://x.io/a.png\n"}, "image"),
        ({"image": "https://x.io/a b.png"}, "image"),
        ({"image": "https://x.io/ü.png"}, "image"),
        ({"image": "http://"}, "image"),
        ({"image": "ftp://x.io/a.png"}, "image"),
        ({"image": "http://[::1]/a.png"}, "image"),
        ({"image": "http://[/a.png"}, "image"),
        ({"email": "jäke@x.io"}, "email"),
        ({"email": "a..b@x.io"}, "email"),
        ({"email": "a@localhost"}, "email"),
        ({"email": "a@-x.io"}, "email"),
        ({"username": "..."}, "username"),
        ({"username": "ja\nke"}, "username"),
    ],
)
async def test_update_with_invalid_fields_is_422_and_changes_nothing(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    database_url: str,
    user: dict[str, Any],
    field: str,
) -> None:
    jake = await make_user(username="jake", bio="kept")

    response = await update(client, jake, {"user": user})

    assert response.status_code == 422
    assert list(response.json()["errors"]) == [field]
    rows = await query(database_url, "SELECT email, username, bio FROM users")
    assert dict(rows[0]) == {"email": jake.email, "username": "jake", "bio": "kept"}


@pytest.mark.parametrize(
    "image",
    [
        "HTTPS://X.IO/A.PNG",
        "http://x.io",
        "https://user:pw@x.io:8080/a/[b].png?x=1&y=%20#frag",
        "https://x.io/~a/(b)/c;d=e,f!*'$+",
    ],
)
async def test_update_accepts_documented_image_urls_verbatim(
    client: httpx.AsyncClient, make_user: MakeUser, image: str
) -> None:
    jake = await make_user(username="jake")

    response = await update(client, jake, {"user": {"image": image}})

    assert response.status_code == 200
    assert response.json()["user"]["image"] == image


async def test_update_accepts_the_maximum_lengths(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    image = "https://x.io/" + "i" * (2000 - len("https://x.io/"))

    response = await update(
        client, jake, {"user": {"username": "u" * 64, "bio": "b" * 2000, "image": image}}
    )

    assert response.status_code == 200
    assert response.json()["user"]["bio"] == "b" * 2000


@pytest.mark.parametrize(
    "bio",
    [
        "Robert'); DROP TABLE users;-- \\ % _ \" ` $1 :name",
        "Ünïcödé ✓ 日本語 🐉 עברית",
        "line one\nline two\ttabbed",
        "<script>alert(1)</script>",
    ],
)
async def test_update_stores_and_returns_text_verbatim(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str, bio: str
) -> None:
    jake = await make_user(username="jake")

    response = await update(client, jake, {"user": {"bio": bio}})

    assert response.status_code == 200
    assert response.json()["user"]["bio"] == bio
    rows = await query(database_url, "SELECT bio FROM users")
    assert rows[0]["bio"] == bio
    assert await count_users(database_url) == 1


async def test_update_requires_a_token(client: httpx.AsyncClient) -> None:
    response = await client.put(USER, json={"user": {"bio": "x"}})

    assert response.status_code == 401


async def test_update_without_the_wrapper_is_422(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")

    response = await update(client, jake, {"bio": "x"})

    assert response.status_code == 422
    assert response.json() == {"errors": {"user": ["Field required"]}}


async def test_update_with_malformed_json_is_400_and_text_is_415(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")

    malformed = await client.put(
        USER, content=b"{", headers={**jake.headers, "Content-Type": "application/json"}
    )
    text = await client.put(
        USER,
        content=b'{"user": {"bio": "x"}}',
        headers={**jake.headers, "Content-Type": "text/plain"},
    )

    assert malformed.status_code == 400
    assert text.status_code == 415


# --- OpenAPI --------------------------------------------------------------------------------


async def test_openapi_documents_the_user_operations(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/openapi.json")

    assert response.status_code == 200
    paths = response.json()["paths"]
    register_op = paths["/api/v1/users"]["post"]
    assert register_op["tags"] == ["User and Authentication"]
    assert register_op["summary"] == "Register a new user."
    assert set(register_op["responses"]) == {"201", "400", "409", "413", "415", "422", "429", "503"}
    # Rate limited (any operation, and login/register especially): the header says when to retry.
    retry_after = register_op["responses"]["429"]["headers"]["Retry-After"]
    assert retry_after["required"] is True
    assert retry_after["schema"] == {"type": "integer", "minimum": 0}
    taken = register_op["responses"]["409"]["content"]["application/json"]["example"]
    assert taken == {"errors": {"username": ["has already been taken"]}}
    assert "example" in register_op["requestBody"]["content"]["application/json"]
    assert "401" in paths["/api/v1/users/login"]["post"]["responses"]
    user_path = paths["/api/v1/user"]
    assert set(user_path) >= {"get", "put", "patch"}
    for method in ("put", "patch"):
        responses = user_path[method]["responses"]
        # 403: a token without the `profile:write` scope.
        assert set(responses) == {
            "200",
            "400",
            "401",
            "403",
            "409",
            "412",  # a stale If-Match
            "413",
            "415",
            "422",
            "428",  # no If-Match while PRECONDITION_REQUIRED is on
            "429",
            "503",
        }
        taken = responses["409"]["content"]["application/json"]["example"]
        assert taken == {"errors": {"email": ["has already been taken"]}}
    assert "partial" in user_path["put"]["summary"]
    assert "partial" in user_path["patch"]["summary"]
    assert user_path["get"]["security"] == [{"OAuth2": ["profile:read"]}, {"Token": []}]


async def test_openapi_user_schemas_state_the_validation_rules(client: httpx.AsyncClient) -> None:
    schemas = (await client.get("/api/v1/openapi.json")).json()["components"]["schemas"]

    create = schemas["UserCreate"]["properties"]
    assert create["username"]["pattern"] == "^[A-Za-z0-9_.-]*[A-Za-z0-9_-][A-Za-z0-9_.-]*$"
    assert (create["username"]["minLength"], create["username"]["maxLength"]) == (1, 64)
    assert create["email"]["maxLength"] == 254
    assert "format" not in create["email"]  # the pattern says exactly what is accepted
    assert (create["password"]["minLength"], create["password"]["maxLength"]) == (8, 256)
    update_schema = schemas["UserUpdate"]
    # At least one known field must be sent.
    assert update_schema["anyOf"] == [
        {"required": [name]} for name in ("email", "username", "password", "bio", "image")
    ]
    image = update_schema["properties"]["image"]["anyOf"]
    assert image[1] == {"type": "null"}
    assert image[0]["maxLength"] == 2000
    assert "format" not in image[0]
    assert image[0]["pattern"].startswith("^(?:[Hh][Tt][Tt][Pp][Ss]?://")


async def _suspend(app: ConduitASGI, user_id: int) -> None:
    state = app.flask_app.extensions["conduit.db"]
    async with state.sessionmaker() as session:
        await session.execute(sa.update(User).where(User.id == user_id).values(suspended=True))
        await session.commit()


async def test_suspended_user_cannot_log_in_even_with_the_right_password(
    client: httpx.AsyncClient, app: ConduitASGI, make_user: MakeUser
) -> None:
    user = await make_user(username="suspendme")
    await _suspend(app, user.id)
    wrong = await client.post(
        "/api/v1/users/login", json={"user": {"email": user.email, "password": "wrong-password"}}
    )
    right = await client.post(
        "/api/v1/users/login", json={"user": {"email": user.email, "password": user.password}}
    )
    assert wrong.status_code == 401
    assert right.status_code == 403
    assert right.json() == {"errors": {"account": ["is suspended"]}}


async def test_suspended_users_tokens_are_refused(
    client: httpx.AsyncClient, app: ConduitASGI, make_user: MakeUser
) -> None:
    user = await make_user(username="suspended2")
    assert (await client.get("/api/v1/user", headers=user.headers)).status_code == 200
    await _suspend(app, user.id)
    response = await client.get("/api/v1/user", headers=user.headers)
    assert response.status_code == 401
    assert response.json() == {"errors": {"token": ["account is suspended"]}}


async def test_update_cannot_assign_role_suspension_or_ids(
    client: httpx.AsyncClient, make_user: MakeUser, database_url: str
) -> None:
    """Mass assignment (OWASP API3): fields outside the documented ones are ignored."""
    jake = await make_user(username="jake")
    body = {
        "user": {"bio": "hi", "role": "admin", "suspended": True, "id": 999, "passwordHash": "x"}
    }

    response = await update(client, jake, body)

    assert response.status_code == 200, response.text
    assert "role" not in response.json()["user"]
    rows = await query(
        database_url, "SELECT id, role, suspended, bio FROM users WHERE username = 'jake'"
    )
    assert [dict(row) for row in rows] == [
        {"id": jake.id, "role": "user", "suspended": False, "bio": "hi"}
    ]
    assert (await client.get("/api/v1/admin/users", headers=jake.headers)).status_code == 403
