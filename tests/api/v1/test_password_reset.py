"""Password reset by email, end to end: the API, the durable job, the worker, a real SMTP
server (aiosmtpd), and the new password."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
import pytest_asyncio

from service.infra.mail import Mailer
from service.infra.settings import Settings
from service.job_registry import create_worker
from service.services.password_reset import hash_token
from tests.factories import TestUser
from tests.jobs.support import SmtpServer

REQUEST = "/api/v1/users/password-reset"
CONFIRM = "/api/v1/users/password-reset/confirm"
NEW_PASSWORD = "brand-new-password"
INVALID_TOKEN = {"errors": {"token": ["is invalid or has expired"]}}

MakeUser = Callable[..., Awaitable[TestUser]]
Deliver = Callable[[], Awaitable[int]]


@pytest_asyncio.fixture
async def deliver(settings: Settings, smtp_server: SmtpServer) -> AsyncIterator[Deliver]:
    """Run the jobs due now with the service's handlers, mailing through `smtp_server`."""
    mail_settings = settings.model_copy(update={"smtp_url": smtp_server.url})
    worker = create_worker(mail_settings, mailer=Mailer(mail_settings), backoff_base=0.0)
    yield worker.run_pending
    await worker.close()


@pytest_asyncio.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def request_reset(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await client.post(REQUEST, json={"email": email})


async def confirm(client: httpx.AsyncClient, token: str, password: str) -> httpx.Response:
    return await client.post(CONFIRM, json={"token": token, "password": password})


async def login(client: httpx.AsyncClient, email: str, password: str) -> int:
    response = await client.post(
        "/api/v1/users/login", json={"user": {"email": email, "password": password}}
    )
    return response.status_code


async def add_session(db: asyncpg.Connection, user_id: int) -> uuid.UUID:
    session_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO auth_sessions (id, user_id, scope, expires_at)"
        " VALUES ($1, $2, 'read write', now() + interval '30 days')",
        session_id,
        user_id,
    )
    return session_id


async def reset_token_for(
    client: httpx.AsyncClient, deliver: Deliver, smtp_server: SmtpServer, email: str
) -> str:
    before = len(smtp_server.received)
    assert (await request_reset(client, email)).status_code == 202
    assert await deliver() >= 1
    mails = await smtp_server.wait_for(before + 1)
    return mails[-1].reset_token


async def test_existing_email_gets_a_mail_with_a_single_use_token(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    deliver: Deliver,
    smtp_server: SmtpServer,
    settings: Settings,
    db: asyncpg.Connection,
) -> None:
    user = await make_user(username="jake", email="jake@jake.jake")
    response = await request_reset(client, "Jake@Jake.jake")
    assert response.status_code == 202
    assert response.json() == {"status": "accepted"}
    # Durable: the job is in the database before anything is sent.
    assert smtp_server.received == []
    [job] = await db.fetch("SELECT kind, payload, status FROM jobs")
    assert job["kind"] == "password_reset.request"
    assert job["status"] == "pending"

    assert await deliver() == 1
    [mail] = await smtp_server.wait_for(1)
    assert mail.recipients == ["jake@jake.jake"]
    assert mail.message["Subject"] == "Reset your Conduit password"
    token = mail.reset_token
    assert len(token) >= 43
    assert settings.password_reset_url.replace("{token}", token) in mail.text

    [stored] = await db.fetch("SELECT * FROM password_reset_tokens")
    assert stored["user_id"] == user.id
    assert bytes(stored["token_hash"]) == hash_token(token)
    assert token.encode() not in bytes(stored["token_hash"])
    assert stored["used_at"] is None
    lifetime = stored["expires_at"] - stored["created_at"]
    assert lifetime == timedelta(minutes=settings.password_reset_minutes)
    assert (await db.fetchval("SELECT status FROM jobs")) == "done"


async def test_unknown_email_gets_the_same_answer_and_no_mail(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    deliver: Deliver,
    smtp_server: SmtpServer,
    db: asyncpg.Connection,
) -> None:
    await make_user(email="jake@jake.jake")
    known = await request_reset(client, "jake@jake.jake")
    unknown = await request_reset(client, "nobody@jake.jake")
    assert unknown.status_code == known.status_code == 202
    assert unknown.content == known.content
    # The same work for both: one job each, of the same shape.
    jobs = await db.fetch("SELECT kind, payload FROM jobs ORDER BY id")
    assert [(j["kind"], j["payload"]) for j in jobs] == [
        ("password_reset.request", '{"email": "jake@jake.jake"}'),
        ("password_reset.request", '{"email": "nobody@jake.jake"}'),
    ]

    assert await deliver() == 2
    await smtp_server.wait_for(1)
    await asyncio.sleep(0.2)
    assert [m.recipients for m in smtp_server.received] == [["jake@jake.jake"]]
    assert await db.fetchval("SELECT count(*) FROM password_reset_tokens") == 1
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE status = 'done'") == 2


async def test_suspended_account_gets_no_mail(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    deliver: Deliver,
    smtp_server: SmtpServer,
    db: asyncpg.Connection,
) -> None:
    user = await make_user(email="jake@jake.jake")
    await db.execute("UPDATE users SET suspended = true WHERE id = $1", user.id)
    assert (await request_reset(client, user.email)).status_code == 202
    assert await deliver() == 1
    assert smtp_server.received == []
    assert await db.fetchval("SELECT count(*) FROM password_reset_tokens") == 0


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"email": "not-an-email"}, {"email": ["is not a valid email address"]}),
        ({"email": ""}, {"email": ["can't be blank"]}),
        ({}, {"email": ["Field required"]}),
    ],
)
async def test_request_validates_the_email(
    client: httpx.AsyncClient, db: asyncpg.Connection, body: dict[str, str], errors: object
) -> None:
    response = await client.post(REQUEST, json=body)
    assert response.status_code == 422
    assert response.json() == {"errors": errors}
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0


async def test_confirm_sets_the_password_and_revokes_every_session(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    deliver: Deliver,
    smtp_server: SmtpServer,
    db: asyncpg.Connection,
) -> None:
    user = await make_user(email="jake@jake.jake", password="old-password")
    other = await make_user(email="other@jake.jake")
    await add_session(db, user.id)
    await add_session(db, user.id)
    other_session = await add_session(db, other.id)
    # The two above and the one of the factory's token.
    sessions = {
        row["id"]
        for row in await db.fetch("SELECT id FROM auth_sessions WHERE user_id = $1", user.id)
    }
    assert len(sessions) == 3
    token = await reset_token_for(client, deliver, smtp_server, user.email)

    response = await confirm(client, token, NEW_PASSWORD)
    assert response.status_code == 204
    assert response.content == b""

    old_token = await client.get("/api/v1/user", headers=user.headers)
    assert old_token.status_code == 401
    assert old_token.json() == {"errors": {"token": ["token has been revoked"]}}
    assert await login(client, user.email, NEW_PASSWORD) == 200
    assert await login(client, user.email, "old-password") == 401
    revoked = await db.fetch(
        "SELECT id, revoked_at, revoked_reason FROM auth_sessions WHERE id = ANY($1::uuid[])",
        list(sessions),
    )
    assert {row["id"] for row in revoked} == sessions
    assert all(row["revoked_at"] is not None for row in revoked)
    assert {row["revoked_reason"] for row in revoked} == {"password_reset"}
    untouched = await db.fetchrow("SELECT * FROM auth_sessions WHERE id = $1", other_session)
    assert untouched is not None
    assert untouched["revoked_at"] is None

    # Single use.
    again = await confirm(client, token, "yet-another-password")
    assert again.status_code == 403
    assert again.json() == INVALID_TOKEN
    assert await login(client, user.email, NEW_PASSWORD) == 200


async def test_confirm_cancels_the_other_outstanding_tokens(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    deliver: Deliver,
    smtp_server: SmtpServer,
    db: asyncpg.Connection,
) -> None:
    user = await make_user(email="jake@jake.jake")
    # A link mailed earlier (more than the resend interval ago), still valid.
    await db.execute(
        "INSERT INTO password_reset_tokens (user_id, token_hash, created_at, expires_at)"
        " VALUES ($1, $2, now() - interval '10 minutes', now() + interval '50 minutes')",
        user.id,
        hash_token("earlier-token"),
    )
    token = await reset_token_for(client, deliver, smtp_server, user.email)
    assert (await confirm(client, token, NEW_PASSWORD)).status_code == 204
    stale = await confirm(client, "earlier-token", "another-password")
    assert stale.status_code == 403
    assert stale.json() == INVALID_TOKEN


async def test_one_mail_per_account_per_minute_however_often_asked(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    deliver: Deliver,
    smtp_server: SmtpServer,
    db: asyncpg.Connection,
) -> None:
    user = await make_user(email="jake@jake.jake")
    for _ in range(3):
        assert (await request_reset(client, user.email)).status_code == 202
    assert await deliver() == 3
    await smtp_server.wait_for(1)
    await asyncio.sleep(0.2)
    assert len(smtp_server.received) == 1
    assert await db.fetchval("SELECT count(*) FROM password_reset_tokens") == 1
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE status = 'done'") == 3


async def test_expired_token_is_refused(
    client: httpx.AsyncClient, make_user: MakeUser, db: asyncpg.Connection
) -> None:
    user = await make_user(password="old-password")
    await db.execute(
        "INSERT INTO password_reset_tokens (user_id, token_hash, expires_at) VALUES ($1, $2, $3)",
        user.id,
        hash_token("expired-token"),
        datetime.now(UTC) - timedelta(seconds=1),
    )
    response = await confirm(client, "expired-token", NEW_PASSWORD)
    assert response.status_code == 403
    assert response.json() == INVALID_TOKEN
    assert await login(client, user.email, "old-password") == 200


@pytest.mark.parametrize(
    "token", ["garbage", "x" * 256, "q3C1uY2qj6Jx2lQ0n0b5f8ZbqGQm0n6v9Zl3kR7wX1s"]
)
async def test_unknown_token_is_refused(client: httpx.AsyncClient, token: str) -> None:
    response = await confirm(client, token, NEW_PASSWORD)
    assert response.status_code == 403
    assert response.json() == INVALID_TOKEN


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        (
            {"token": "t", "password": "short"},
            {"password": ["is too short (minimum is 8 characters)"]},
        ),
        (
            {"token": "t", "password": "p" * 257},
            {"password": ["is too long (maximum is 256 characters)"]},
        ),
        ({"token": "", "password": NEW_PASSWORD}, {"token": ["can't be blank"]}),
        (
            {"token": "t" * 257, "password": NEW_PASSWORD},
            {"token": ["is too long (maximum is 256 characters)"]},
        ),
        ({"token": "t"}, {"password": ["Field required"]}),
    ],
)
async def test_confirm_validates_the_body(
    client: httpx.AsyncClient, body: dict[str, str], errors: object
) -> None:
    response = await client.post(CONFIRM, json=body)
    assert response.status_code == 422
    assert response.json() == {"errors": errors}


async def test_weak_password_leaves_the_token_usable(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    deliver: Deliver,
    smtp_server: SmtpServer,
) -> None:
    user = await make_user(email="jake@jake.jake")
    token = await reset_token_for(client, deliver, smtp_server, user.email)
    weak = await confirm(client, token, "short")
    assert weak.status_code == 422
    assert weak.json() == {"errors": {"password": ["is too short (minimum is 8 characters)"]}}
    assert (await confirm(client, token, NEW_PASSWORD)).status_code == 204


async def test_concurrent_confirmations_with_one_token_succeed_once(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    deliver: Deliver,
    smtp_server: SmtpServer,
) -> None:
    user = await make_user(email="jake@jake.jake")
    token = await reset_token_for(client, deliver, smtp_server, user.email)
    answers = await asyncio.gather(
        *(confirm(client, token, f"password-number-{n}") for n in range(4))
    )
    assert sorted(a.status_code for a in answers) == [204, 403, 403, 403]
    winner = next(n for n, a in enumerate(answers) if a.status_code == 204)
    assert await login(client, user.email, f"password-number-{winner}") == 200


async def test_both_operations_are_documented(client: httpx.AsyncClient) -> None:
    document = (await client.get("/api/v1/openapi.json")).json()
    request_op = document["paths"]["/api/v1/users/password-reset"]["post"]
    confirm_op = document["paths"]["/api/v1/users/password-reset/confirm"]["post"]
    for operation in (request_op, confirm_op):
        assert operation["tags"] == ["User and Authentication"]
        assert operation["security"] == []
        assert "example" in operation["requestBody"]["content"]["application/json"]
    assert request_op["responses"]["202"]["content"]["application/json"]["example"] == {
        "status": "accepted"
    }
    assert "204" in confirm_op["responses"]
    assert confirm_op["responses"]["403"]["content"]["application/json"]["example"] == (
        INVALID_TOKEN
    )
