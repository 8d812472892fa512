"""Webhook endpoints API: CRUD, ownership, scopes, SSRF refusals, rotation, ping, the delivery
log, redelivery, recovery and the event catalogue."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence, Set
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jsonschema_rs
import orjson
import pytest
from sqlalchemy import func, select, update
from standardwebhooks import Webhook

from service.app import ConduitASGI
from service.domain import events, scopes
from service.infra.db import DatabaseState
from service.infra.secret_box import SEALED_PREFIX
from service.infra.settings import Settings
from service.models import (
    AuditEntry,
    Job,
    User,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookEvent,
    WebhookMessage,
)
from service.services import sessions
from service.services.security import Tokens
from service.services.webhooks import MAX_ENDPOINTS_PER_USER
from service.webhooks import outbox, signing
from tests.factories import TestUser

MakeUser = Callable[..., Awaitable[TestUser]]
BASE = "/api/v1/webhooks"
URL = "https://hooks.example.com/conduit"
NOT_FOUND = {"errors": {"webhook": ["webhook not found"]}}
MESSAGE_NOT_FOUND = {"errors": {"message": ["message not found"]}}
WEBHOOK_FIELDS = {
    "id",
    "url",
    "description",
    "events",
    "enabled",
    "disabledReason",
    "rateLimit",
    "failingSince",
    "previousSecretExpiresAt",
    "owner",
    "createdAt",
    "updatedAt",
}
MESSAGE_FIELDS = {
    "id",
    "eventType",
    "status",
    "attemptCount",
    "nextAttemptAt",
    "lastAttemptAt",
    "deliveredAt",
    "createdAt",
}


def sessionmaker(app: ConduitASGI) -> Any:
    state: DatabaseState = app.flask_app.extensions["conduit.db"]
    assert state.sessionmaker is not None
    return state.sessionmaker


def error_fields(response: httpx.Response) -> dict[str, list[str]]:
    """The error envelope with the request's `webhook` wrapper dropped from field names.

    `service.api.errors.validation_errors` drops the wrapper of users, articles and comments;
    this accepts both spellings so the tests hold whether or not it drops `webhook` too.
    """
    errors: dict[str, list[str]] = response.json()["errors"]
    return {key.removeprefix("webhook."): value for key, value in errors.items()}


async def create(client: httpx.AsyncClient, user: TestUser, **fields: Any) -> httpx.Response:
    body = {"url": URL, "events": ["article.created"], **fields}
    return await client.post(BASE, json={"webhook": body}, headers=user.headers)


async def created(client: httpx.AsyncClient, user: TestUser, **fields: Any) -> dict[str, Any]:
    response = await create(client, user, **fields)
    assert response.status_code == 201, response.text
    webhook: dict[str, Any] = response.json()["webhook"]
    return webhook


async def endpoint_row(app: ConduitASGI, webhook_id: str) -> WebhookEndpoint | None:
    async with sessionmaker(app)() as session:
        row: WebhookEndpoint | None = await session.get(WebhookEndpoint, uuid.UUID(webhook_id))
        return row


def opened(app: ConduitASGI, stored: str | None) -> str:
    """A stored secret in clear; it must be stored sealed (docs/webhooks.md, secrets at rest)."""
    assert stored is not None
    assert stored.startswith(SEALED_PREFIX)
    settings: Settings = app.flask_app.config["CONDUIT_SETTINGS"]
    return settings.webhook_secret_box.open(stored)


async def set_endpoint(app: ConduitASGI, webhook_id: str, **values: Any) -> None:
    async with sessionmaker(app)() as session:
        await session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == uuid.UUID(webhook_id))
            .values(**values)
        )
        await session.commit()


async def delivery_jobs(app: ConduitASGI) -> list[Job]:
    async with sessionmaker(app)() as session:
        jobs = await session.scalars(
            select(Job).where(Job.kind == outbox.DELIVER_JOB).order_by(Job.id)
        )
        return list(jobs)


async def add_message(
    app: ConduitASGI,
    webhook_id: str,
    *,
    status: str = "delivered",
    created_at: datetime | None = None,
    event_type: str = events.ARTICLE_CREATED,
    attempts: Sequence[Mapping[str, Any]] = (),
) -> str:
    """Insert an event and its message (and attempts) for the endpoint; return the message id."""
    moment = created_at or datetime.now(UTC)
    message_id = signing.new_message_id()
    async with sessionmaker(app)() as session:
        event = WebhookEvent(type=event_type, data={"n": message_id}, created_at=moment)
        session.add(event)
        await session.flush()
        session.add(
            WebhookMessage(
                id=message_id,
                endpoint_id=uuid.UUID(webhook_id),
                event_id=event.id,
                status=status,
                attempts=len(attempts),
                next_attempt_at=moment if status == "pending" else None,
                last_attempt_at=moment if attempts else None,
                delivered_at=moment if status == "delivered" else None,
                created_at=moment,
            )
        )
        await session.flush()
        for number, attempt in enumerate(attempts, start=1):
            session.add(
                WebhookAttempt(
                    message_id=message_id,
                    attempt=number,
                    started_at=moment + timedelta(seconds=number),
                    duration_ms=attempt.get("duration_ms", 12),
                    status_code=attempt.get("status_code"),
                    response_excerpt=attempt.get("response_excerpt"),
                    error=attempt.get("error"),
                )
            )
        await session.commit()
    return message_id


async def scoped_headers(app: ConduitASGI, user: TestUser, granted: Set[str]) -> dict[str, str]:
    """A token of `user` carrying only `granted`."""
    async with sessionmaker(app)() as session:
        row = await session.get(User, user.id)
        auth_session = await sessions.start_session(
            session=session, user=row, scopes=frozenset(granted), lifetime=timedelta(hours=1)
        )
        await session.commit()
    tokens = Tokens(app.flask_app.config["SECRET_KEY"], timedelta(hours=1))
    token = tokens.issue(user_id=user.id, session_id=auth_session.id, scopes=frozenset(granted))
    return {"Authorization": f"Token {token}"}


@pytest.fixture
def override_settings(app: ConduitASGI) -> Iterator[Callable[..., None]]:
    """`override_settings(webhook_allowlist=...)`: the app's settings for this test only."""
    config = app.flask_app.config
    original: Settings = config["CONDUIT_SETTINGS"]

    def override(**values: Any) -> None:
        config["CONDUIT_SETTINGS"] = original.model_copy(update=values)

    yield override
    config["CONDUIT_SETTINGS"] = original


@pytest.fixture
async def jake(make_user: MakeUser) -> TestUser:
    return await make_user(username="jake")


@pytest.fixture
async def admin(make_user: MakeUser) -> TestUser:
    return await make_user(username="boss", role="admin")


# --- create, read, list ----------------------------------------------------------------------


async def test_create_shows_the_secret_once(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser
) -> None:
    response = await create(
        client, jake, events=["article.created", "comment.created"], description="indexer"
    )
    assert response.status_code == 201
    webhook = response.json()["webhook"]
    assert set(webhook) == WEBHOOK_FIELDS | {"secret"}
    assert webhook["url"] == URL
    assert webhook["events"] == ["article.created", "comment.created"]
    assert webhook["description"] == "indexer"
    assert webhook["enabled"] is True
    assert webhook["owner"] == "jake"
    assert webhook["disabledReason"] is None
    assert webhook["rateLimit"] is None
    assert webhook["previousSecretExpiresAt"] is None
    secret = webhook["secret"]
    assert secret.startswith("whsec_")
    assert len(signing.decode_secret(secret)) == signing.SECRET_BYTES

    row = await endpoint_row(app, webhook["id"])
    assert row is not None
    assert opened(app, row.secret) == secret
    assert row.owner_id == jake.id

    shown = await client.get(f"{BASE}/{webhook['id']}", headers=jake.headers)
    assert shown.status_code == 200
    assert shown.json()["webhook"] == {k: v for k, v in webhook.items() if k != "secret"}
    listed = await client.get(BASE, headers=jake.headers)
    assert "secret" not in listed.text
    assert secret not in listed.text


async def test_create_defaults_and_canonical_url(client: httpx.AsyncClient, jake: TestUser) -> None:
    webhook = await created(
        client, jake, url="HTTPS://Hooks.Example.COM:8443", events=["*", "user.updated"]
    )
    assert webhook["url"] == "https://hooks.example.com:8443/"
    assert webhook["events"] == ["*"]
    assert webhook["description"] == ""
    limited = await created(client, jake, rateLimit=5)
    assert limited["rateLimit"] == 5
    # JSON Schema's integers include 5.0.
    assert (await created(client, jake, rateLimit=1000.0))["rateLimit"] == 1000


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"url": None}, "url"),
        ({"url": ""}, "url"),
        ({"url": 5}, "url"),
        ({"events": []}, "events"),
        ({"events": "article.created"}, "events"),
        ({"events": ["article.created", "article.created"]}, "events"),
        ({"events": ["article.exploded"]}, "events.0"),
        ({"events": ["ARTICLE.CREATED"]}, "events.0"),
        ({"description": "x" * 501}, "description"),
        ({"description": "a\x00b"}, "description"),
        ({"rateLimit": 0}, "rateLimit"),
        ({"rateLimit": 1001}, "rateLimit"),
        ({"rateLimit": "5"}, "rateLimit"),
        ({"rateLimit": 2.5}, "rateLimit"),
        ({"rateLimit": True}, "rateLimit"),
        ({"rateLimit": 10**30}, "rateLimit"),
        ({"rateLimit": 2**64 - 1}, "rateLimit"),
        ({"rateLimit": -(2**63)}, "rateLimit"),
    ],
)
async def test_create_validation_names_the_field(
    client: httpx.AsyncClient, jake: TestUser, fields: dict[str, Any], field: str
) -> None:
    response = await create(client, jake, **fields)
    assert response.status_code == 422, response.text
    assert field in error_fields(response), response.json()


async def test_unknown_event_type_is_named_in_the_error(
    client: httpx.AsyncClient, jake: TestUser
) -> None:
    response = await create(client, jake, events=["article.created", "article.exploded"])
    assert response.status_code == 422
    [message] = error_fields(response)["events.1"]
    assert message == (
        "unknown event type 'article.exploded' (see GET /api/v1/webhooks/event-types)"
    )


async def test_create_requires_the_url_and_events(
    client: httpx.AsyncClient, jake: TestUser
) -> None:
    response = await client.post(BASE, json={"webhook": {}}, headers=jake.headers)
    assert response.status_code == 422
    assert {"url", "events"} <= set(error_fields(response))
    wrapped = await client.post(BASE, json={"url": URL, "events": ["*"]}, headers=jake.headers)
    assert wrapped.status_code == 422
    assert "webhook" in wrapped.json()["errors"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("https://[::ffff:127.0.0.1]/hook", "IPv4-mapped"),
        ("https://[::1]:8443/", "loopback"),
        ("https://10.1.2.3/", "private"),
        ("https://[fd00:ec2::254]/", "metadata"),
        ("https://localhost:3000/hook", "loopback"),
        ("https://api.localhost/hook", "loopback"),
        ("https://127.1/", "ambiguous"),
        ("https://0x7f000001/", "ambiguous"),
        ("https://93.184.216.34/", "allowlist"),
        ("ftp://hooks.example.com/", "https"),
        ("https://user:pw@hooks.example.com/", "credentials"),
        ("https://hooks.example.com/#top", "fragment"),
        ("https://hooks.example.com:0/", "port"),
        ("https://hooks.example.com:99999/", "port"),
        ("https://hooks.example.com:0443/", "port"),
        ("https://bücher.example/", "ASCII"),
        ("https://hooks.example.com/a b", "spaces"),
    ],
)
async def test_create_refuses_unsafe_urls(
    client: httpx.AsyncClient, jake: TestUser, url: str, reason: str
) -> None:
    response = await create(client, jake, url=url)
    assert response.status_code == 422, response.text
    [message] = error_fields(response)["url"]
    assert reason in message
    assert url not in message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/hook",
        "http://169.254.169.254/",
        "https://[::ffff:127.0.0.1]/hook",
        "https://localhost:8443/",
    ],
)
async def test_allowlisted_addresses_are_accepted(
    client: httpx.AsyncClient,
    jake: TestUser,
    override_settings: Callable[..., None],
    url: str,
) -> None:
    refused = await create(client, jake, url=url)
    assert refused.status_code == 422
    override_settings(webhook_allowlist="127.0.0.0/8, ::1, 169.254.169.254")
    response = await create(client, jake, url=url)
    assert response.status_code == 201, response.text


async def test_names_under_localhost_are_refused_with_loopback_allowlisted(
    client: httpx.AsyncClient, jake: TestUser, override_settings: Callable[..., None]
) -> None:
    override_settings(webhook_allowlist="127.0.0.0/8, ::1")
    assert (await create(client, jake, url="https://localhost/hook")).status_code == 201
    response = await create(client, jake, url="https://foo.localhost/hook")
    assert response.status_code == 422
    [message] = error_fields(response)["url"]
    assert "foo.localhost" in message
    assert "under .localhost" in message
    webhook = await created(client, jake)
    patched = await client.patch(
        f"{BASE}/{webhook['id']}",
        json={"webhook": {"url": "https://api.localhost/"}},
        headers=jake.headers,
    )
    assert patched.status_code == 422
    assert "under .localhost" in error_fields(patched)["url"][0]


async def test_plain_http_follows_the_setting(
    client: httpx.AsyncClient, jake: TestUser, override_settings: Callable[..., None]
) -> None:
    # Outside production plain http is allowed unless the setting says otherwise.
    assert (await create(client, jake, url="http://hooks.example.com/")).status_code == 201
    override_settings(webhook_allow_http=False)
    response = await create(client, jake, url="http://hooks.example.com/")
    assert response.status_code == 422
    assert error_fields(response) == {"url": ["the URL must use https"]}


async def test_create_is_limited_per_user(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser, make_user: MakeUser
) -> None:
    async with sessionmaker(app)() as session:
        session.add_all(
            WebhookEndpoint(owner_id=jake.id, url=URL, events=["*"], secret="whsec_x")
            for _ in range(MAX_ENDPOINTS_PER_USER)
        )
        await session.commit()
    response = await create(client, jake)
    assert response.status_code == 409
    assert response.json() == {
        "errors": {"webhook": [f"at most {MAX_ENDPOINTS_PER_USER} webhooks per user"]}
    }
    other = await make_user()
    assert (await create(client, other)).status_code == 201


async def test_concurrent_creates_do_not_exceed_the_limit(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser
) -> None:
    async with sessionmaker(app)() as session:
        session.add_all(
            WebhookEndpoint(owner_id=jake.id, url=URL, events=["*"], secret="whsec_x")
            for _ in range(MAX_ENDPOINTS_PER_USER - 1)
        )
        await session.commit()
    responses = await asyncio.gather(*(create(client, jake) for _ in range(6)))
    assert sorted(response.status_code for response in responses) == [201] + [409] * 5
    async with sessionmaker(app)() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(WebhookEndpoint)
            .where(WebhookEndpoint.owner_id == jake.id)
        )
    assert count == MAX_ENDPOINTS_PER_USER


async def test_list_is_paginated_newest_first(client: httpx.AsyncClient, jake: TestUser) -> None:
    ids = [(await created(client, jake, description=f"n{n}"))["id"] for n in range(3)]
    first = await client.get(BASE, params={"limit": 2}, headers=jake.headers)
    assert first.status_code == 200
    body = first.json()
    assert body["webhooksCount"] == 3
    assert [w["id"] for w in body["webhooks"]] == [ids[2], ids[1]]
    assert set(body["webhooks"][0]) == WEBHOOK_FIELDS
    rest = await client.get(BASE, params={"limit": 2, "offset": 2}, headers=jake.headers)
    assert [w["id"] for w in rest.json()["webhooks"]] == [ids[0]]
    bad = await client.get(BASE, params={"limit": 0}, headers=jake.headers)
    assert bad.status_code == 422
    assert "limit" in bad.json()["errors"]


# --- access ----------------------------------------------------------------------------------


async def test_other_users_get_404_everywhere(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser, make_user: MakeUser
) -> None:
    webhook = await created(client, jake)
    message_id = await add_message(app, webhook["id"], status="failed")
    other = await make_user()
    path = f"{BASE}/{webhook['id']}"
    since = {"since": "2020-01-01T00:00:00Z"}
    attempts = [
        client.get(path, headers=other.headers),
        client.patch(path, json={"webhook": {"enabled": False}}, headers=other.headers),
        client.delete(path, headers=other.headers),
        client.post(f"{path}/rotate-secret", headers=other.headers),
        client.post(f"{path}/ping", headers=other.headers),
        client.get(f"{path}/messages", headers=other.headers),
        client.get(f"{path}/messages/{message_id}", headers=other.headers),
        client.post(f"{path}/messages/{message_id}/redeliver", headers=other.headers),
        client.post(f"{path}/recover", json=since, headers=other.headers),
    ]
    for attempt in attempts:
        response = await attempt
        assert response.status_code == 404, (response.request.url, response.text)
        assert response.json() == NOT_FOUND
    listed = await client.get(BASE, headers=other.headers)
    assert listed.json() == {"webhooks": [], "webhooksCount": 0}
    row = await endpoint_row(app, webhook["id"])
    assert row is not None
    assert row.enabled


async def test_admins_see_and_manage_every_webhook_audited(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser, admin: TestUser
) -> None:
    webhook = await created(client, jake)
    own = await created(client, admin)
    listed = (await client.get(BASE, headers=admin.headers)).json()
    assert listed["webhooksCount"] == 2
    assert {(w["id"], w["owner"]) for w in listed["webhooks"]} == {
        (webhook["id"], "jake"),
        (own["id"], "boss"),
    }
    path = f"{BASE}/{webhook['id']}"
    assert (await client.get(path, headers=admin.headers)).json()["webhook"]["owner"] == "jake"

    disabled = await client.patch(path, json={"webhook": {"enabled": False}}, headers=admin.headers)
    assert disabled.status_code == 200
    assert disabled.json()["webhook"]["disabledReason"] == "manual"
    # The new secret would be shown to whoever rotates it: owners only.
    rotated = await client.post(f"{path}/rotate-secret", headers=admin.headers)
    assert rotated.status_code == 403
    assert rotated.json() == {"errors": {"webhook": ["only the owner may rotate the secret"]}}
    assert (await client.delete(path, headers=admin.headers)).status_code == 204
    # Changes to their own webhooks are not audited.
    await client.patch(
        f"{BASE}/{own['id']}", json={"webhook": {"description": "x"}}, headers=admin.headers
    )

    async with sessionmaker(app)() as session:
        entries = list(await session.scalars(select(AuditEntry).order_by(AuditEntry.id)))
    assert [(e.action, e.target_type, e.target_id) for e in entries] == [
        ("webhook.update", "webhook", webhook["id"]),
        ("webhook.delete", "webhook", webhook["id"]),
    ]
    assert orjson.loads(entries[0].details or "{}") == {"owner": "jake", "fields": ["enabled"]}


async def test_requires_the_webhooks_scope(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser
) -> None:
    webhook = await created(client, jake)
    narrow = await scoped_headers(app, jake, scopes.ALL - {scopes.WEBHOOKS_MANAGE, scopes.ADMIN})
    denied = {"errors": {"scope": ["token lacks the 'webhooks:manage' scope"]}}
    for method, path in [
        ("GET", BASE),
        ("POST", BASE),
        ("GET", f"{BASE}/{webhook['id']}"),
        ("POST", f"{BASE}/{webhook['id']}/ping"),
    ]:
        response = await client.request(method, path, headers=narrow, json={})
        assert response.status_code == 403, (method, path)
        assert response.json() == denied
    anonymous = await client.get(BASE)
    assert anonymous.status_code == 401
    only = await scoped_headers(app, jake, {scopes.WEBHOOKS_MANAGE})
    assert (await client.get(BASE, headers=only)).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/not-a-uuid",
        "/123",
        "/0b7e8e04-5c4e-4a0c-9d57-3c8f4e1c2a1",
        "/0b7e8e045c4e4a0c9d573c8f4e1c2a10",
        "/not-a-uuid/messages",
        "/not-a-uuid/ping",
    ],
)
async def test_ids_that_are_not_uuids_are_not_found(
    client: httpx.AsyncClient, jake: TestUser, path: str
) -> None:
    method = "POST" if path.endswith("ping") else "GET"
    response = await client.request(method, BASE + path, headers=jake.headers)
    assert response.status_code == 404
    assert response.json() == {"errors": {"body": ["not found"]}}


async def test_unknown_uuid_is_not_found(client: httpx.AsyncClient, jake: TestUser) -> None:
    response = await client.get(f"{BASE}/{uuid.uuid4()}", headers=jake.headers)
    assert response.status_code == 404
    assert response.json() == NOT_FOUND
    upper = await client.get(f"{BASE}/{str(uuid.uuid4()).upper()}", headers=jake.headers)
    assert upper.json() == NOT_FOUND


# --- update, delete, rotate ------------------------------------------------------------------


async def test_update_changes_only_what_is_sent(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser
) -> None:
    webhook = await created(client, jake, rateLimit=10, description="before")
    path = f"{BASE}/{webhook['id']}"
    response = await client.patch(
        path,
        json={"webhook": {"url": "https://other.example.org/x?token=1", "events": ["*"]}},
        headers=jake.headers,
    )
    assert response.status_code == 200
    body = response.json()["webhook"]
    assert body["url"] == "https://other.example.org/x?token=1"
    assert body["events"] == ["*"]
    assert body["description"] == "before"
    assert body["rateLimit"] == 10
    assert body["updatedAt"] >= webhook["updatedAt"]

    cleared = await client.patch(path, json={"webhook": {"rateLimit": None}}, headers=jake.headers)
    assert cleared.json()["webhook"]["rateLimit"] is None
    nothing = await client.patch(path, json={"webhook": {}}, headers=jake.headers)
    assert nothing.status_code == 200
    assert nothing.json()["webhook"]["url"] == body["url"]
    row = await endpoint_row(app, webhook["id"])
    assert row is not None
    assert opened(app, row.secret) == webhook["secret"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"url": None}, "url"),
        ({"events": None}, "events"),
        ({"description": None}, "description"),
        ({"enabled": None}, "enabled"),
        ({"enabled": "true"}, "enabled"),
        ({"events": ["nope"]}, "events.0"),
        ({"url": "http://192.168.1.1/"}, "url"),
    ],
)
async def test_update_validation(
    client: httpx.AsyncClient, jake: TestUser, fields: dict[str, Any], field: str
) -> None:
    webhook = await created(client, jake)
    response = await client.patch(
        f"{BASE}/{webhook['id']}", json={"webhook": fields}, headers=jake.headers
    )
    assert response.status_code == 422
    assert field in error_fields(response)


async def test_disable_and_reenable(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser
) -> None:
    webhook = await created(client, jake)
    path = f"{BASE}/{webhook['id']}"
    off = await client.patch(path, json={"webhook": {"enabled": False}}, headers=jake.headers)
    assert (off.json()["webhook"]["enabled"], off.json()["webhook"]["disabledReason"]) == (
        False,
        "manual",
    )
    # Disabled by the worker: the receiver answered 410 after days of failures.
    failing_since = datetime.now(UTC) - timedelta(days=5)
    await set_endpoint(
        app, webhook["id"], enabled=False, disabled_reason="gone", failing_since=failing_since
    )
    shown = (await client.get(path, headers=jake.headers)).json()["webhook"]
    assert shown["disabledReason"] == "gone"
    assert shown["failingSince"] is not None
    # Disabling again keeps the reason.
    await client.patch(path, json={"webhook": {"enabled": False}}, headers=jake.headers)
    assert (await endpoint_row(app, webhook["id"])).disabled_reason == "gone"  # type: ignore[union-attr]
    on = await client.patch(path, json={"webhook": {"enabled": True}}, headers=jake.headers)
    body = on.json()["webhook"]
    assert (body["enabled"], body["disabledReason"], body["failingSince"]) == (True, None, None)


async def test_delete_removes_the_log(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser
) -> None:
    webhook = await created(client, jake)
    await add_message(app, webhook["id"], attempts=[{"status_code": 200}])
    path = f"{BASE}/{webhook['id']}"
    response = await client.delete(path, headers=jake.headers)
    assert response.status_code == 204
    assert response.content == b""
    assert (await client.get(path, headers=jake.headers)).json() == NOT_FOUND
    assert (await client.delete(path, headers=jake.headers)).status_code == 404
    async with sessionmaker(app)() as session:
        assert list(await session.scalars(select(WebhookMessage))) == []
        assert list(await session.scalars(select(WebhookAttempt))) == []


async def test_delete_removes_the_events_no_other_webhook_has(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser, make_user: MakeUser
) -> None:
    webhook = await created(client, jake)
    other = await created(client, await make_user())
    own = await add_message(app, webhook["id"])
    shared = await add_message(app, webhook["id"])
    async with sessionmaker(app)() as session:
        event_id = (await session.get(WebhookMessage, shared)).event_id  # type: ignore[union-attr]
        session.add(
            WebhookMessage(
                id=signing.new_message_id(),
                endpoint_id=uuid.UUID(other["id"]),
                event_id=event_id,
                status="delivered",
            )
        )
        await session.commit()
    kept = await add_message(app, other["id"])
    response = await client.delete(f"{BASE}/{webhook['id']}", headers=jake.headers)
    assert response.status_code == 204
    async with sessionmaker(app)() as session:
        events = set(await session.scalars(select(WebhookEvent.id)))
        messages = set(await session.scalars(select(WebhookMessage.id)))
        kept_event = (await session.get(WebhookMessage, kept)).event_id  # type: ignore[union-attr]
    assert events == {event_id, kept_event}
    assert own not in messages
    assert shared not in messages
    assert len(messages) == 2


async def test_rotation_keeps_the_old_secret_for_a_day(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser
) -> None:
    webhook = await created(client, jake)
    old = webhook["secret"]
    response = await client.post(f"{BASE}/{webhook['id']}/rotate-secret", headers=jake.headers)
    assert response.status_code == 200
    body = response.json()["webhook"]
    assert set(body) == WEBHOOK_FIELDS | {"secret"}
    new = body["secret"]
    assert new.startswith("whsec_")
    assert new != old
    expires = datetime.fromisoformat(body["previousSecretExpiresAt"])
    assert abs(expires - (datetime.now(UTC) + timedelta(hours=24))) < timedelta(minutes=1)

    row = await endpoint_row(app, webhook["id"])
    assert row is not None
    assert (opened(app, row.secret), opened(app, row.previous_secret)) == (new, old)
    # Signed with both, as deliveries are during the overlap: receivers on either secret verify.
    body_bytes = b'{"type":"webhook.ping"}'
    headers = signing.build_headers(secrets=[new, old], msg_id="msg_1", body=body_bytes)
    for secret in (old, new):
        Webhook(secret).verify(body_bytes, headers)

    shown = (await client.get(f"{BASE}/{webhook['id']}", headers=jake.headers)).json()["webhook"]
    assert shown["previousSecretExpiresAt"] == body["previousSecretExpiresAt"]
    assert "secret" not in shown
    await set_endpoint(
        app, webhook["id"], previous_secret_expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    later = (await client.get(f"{BASE}/{webhook['id']}", headers=jake.headers)).json()
    assert later["webhook"]["previousSecretExpiresAt"] is None

    again = await client.post(f"{BASE}/{webhook['id']}/rotate-secret", headers=jake.headers)
    row = await endpoint_row(app, webhook["id"])
    assert row is not None
    assert (opened(app, row.secret), opened(app, row.previous_secret)) == (
        again.json()["webhook"]["secret"],
        new,
    )


# --- ping ------------------------------------------------------------------------------------


async def test_ping_queues_one_message_and_job(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser
) -> None:
    # Subscribed to something else: a ping goes to the endpoint regardless.
    webhook = await created(client, jake, events=["comment.created"])
    other = await created(client, jake, events=["*"])
    response = await client.post(f"{BASE}/{webhook['id']}/ping", headers=jake.headers)
    assert response.status_code == 202
    message = response.json()["message"]
    assert set(message) == MESSAGE_FIELDS
    assert message["id"].startswith("msg_")
    assert (message["eventType"], message["status"], message["attemptCount"]) == (
        "webhook.ping",
        "pending",
        0,
    )
    assert message["nextAttemptAt"] is not None

    async with sessionmaker(app)() as session:
        messages = list(await session.scalars(select(WebhookMessage)))
        assert [(m.id, m.endpoint_id) for m in messages] == [
            (message["id"], uuid.UUID(webhook["id"]))
        ]
        event = await session.get(WebhookEvent, messages[0].event_id)
        assert event is not None
        assert event.type == "webhook.ping"
        assert event.data == {"webhookId": webhook["id"], "message": "ping"}
    jobs = await delivery_jobs(app)
    assert [(job.payload, job.status) for job in jobs] == [
        ({"messageId": message["id"]}, "pending")
    ]
    assert jobs[0].max_attempts == outbox.DELIVERY_JOB_ATTEMPTS
    log = await client.get(f"{BASE}/{other['id']}/messages", headers=jake.headers)
    assert log.json()["messagesCount"] == 0


async def test_ping_of_a_disabled_webhook_conflicts(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser
) -> None:
    webhook = await created(client, jake)
    await client.patch(
        f"{BASE}/{webhook['id']}", json={"webhook": {"enabled": False}}, headers=jake.headers
    )
    response = await client.post(f"{BASE}/{webhook['id']}/ping", headers=jake.headers)
    assert response.status_code == 409
    assert response.json() == {"errors": {"webhook": ["the endpoint is disabled; enable it first"]}}
    assert await delivery_jobs(app) == []


# --- the delivery log ------------------------------------------------------------------------


async def test_delivery_log_paginates_newest_first_and_filters(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser
) -> None:
    webhook = await created(client, jake)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    statuses = ["delivered", "failed", "pending", "delivered", "failed"]
    ids = [
        await add_message(
            app, webhook["id"], status=status, created_at=start + timedelta(minutes=n)
        )
        for n, status in enumerate(statuses)
    ]
    # Another endpoint's messages never show.
    other = await created(client, jake)
    await add_message(app, other["id"], status="failed")

    path = f"{BASE}/{webhook['id']}/messages"
    page = (await client.get(path, params={"limit": 2}, headers=jake.headers)).json()
    assert page["messagesCount"] == 5
    assert [m["id"] for m in page["messages"]] == [ids[4], ids[3]]
    assert set(page["messages"][0]) == MESSAGE_FIELDS
    rest = (await client.get(path, params={"offset": 2}, headers=jake.headers)).json()
    assert [m["id"] for m in rest["messages"]] == [ids[2], ids[1], ids[0]]

    failed = (await client.get(path, params={"status": "failed"}, headers=jake.headers)).json()
    assert failed["messagesCount"] == 2
    assert [m["id"] for m in failed["messages"]] == [ids[4], ids[1]]
    assert {m["status"] for m in failed["messages"]} == {"failed"}
    pending = (await client.get(path, params={"status": "pending"}, headers=jake.headers)).json()
    assert [m["id"] for m in pending["messages"]] == [ids[2]]
    assert pending["messages"][0]["nextAttemptAt"] == "2026-01-01T00:02:00.000Z"
    bad = await client.get(path, params={"status": "lost"}, headers=jake.headers)
    assert bad.status_code == 422
    assert "status" in bad.json()["errors"]


async def test_message_detail_has_payload_and_attempts(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser
) -> None:
    webhook = await created(client, jake)
    moment = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    message_id = await add_message(
        app,
        webhook["id"],
        status="delivered",
        created_at=moment,
        attempts=[
            {"status_code": None, "error": "connection failed: Connection refused"},
            {"status_code": 503, "response_excerpt": "busy", "duration_ms": 40},
            {"status_code": 200, "response_excerpt": "ok"},
        ],
    )
    response = await client.get(
        f"{BASE}/{webhook['id']}/messages/{message_id}", headers=jake.headers
    )
    assert response.status_code == 200
    message = response.json()["message"]
    assert set(message) == MESSAGE_FIELDS | {"payload", "attempts"}
    assert message["attemptCount"] == 3
    assert message["status"] == "delivered"
    assert message["payload"] == {
        "type": "article.created",
        "timestamp": "2026-01-02T03:04:05.678000Z",
        "data": {"n": message_id},
    }
    assert message["attempts"] == [
        {
            "attempt": 1,
            "startedAt": "2026-01-02T03:04:06.678Z",
            "statusCode": None,
            "durationMs": 12,
            "responseExcerpt": None,
            "error": "connection failed: Connection refused",
        },
        {
            "attempt": 2,
            "startedAt": "2026-01-02T03:04:07.678Z",
            "statusCode": 503,
            "durationMs": 40,
            "responseExcerpt": "busy",
            "error": None,
        },
        {
            "attempt": 3,
            "startedAt": "2026-01-02T03:04:08.678Z",
            "statusCode": 200,
            "durationMs": 12,
            "responseExcerpt": "ok",
            "error": None,
        },
    ]
    listed = (await client.get(f"{BASE}/{webhook['id']}/messages", headers=jake.headers)).json()
    assert listed["messages"][0]["attemptCount"] == 3


@pytest.mark.parametrize("message_id", ["msg_missing", "x" * 41, "msg%2C1", "%C3%A9"])
async def test_unknown_messages_are_not_found(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser, message_id: str
) -> None:
    webhook = await created(client, jake)
    path = f"{BASE}/{webhook['id']}/messages/{message_id}"
    assert (await client.get(path, headers=jake.headers)).json() == MESSAGE_NOT_FOUND
    redeliver = await client.post(f"{path}/redeliver", headers=jake.headers)
    assert redeliver.status_code == 404
    assert redeliver.json() == MESSAGE_NOT_FOUND


async def test_a_message_of_another_webhook_is_not_found(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser
) -> None:
    first = await created(client, jake)
    second = await created(client, jake)
    message_id = await add_message(app, first["id"], status="failed")
    path = f"{BASE}/{second['id']}/messages/{message_id}"
    assert (await client.get(path, headers=jake.headers)).json() == MESSAGE_NOT_FOUND
    assert (await client.post(f"{path}/redeliver", headers=jake.headers)).status_code == 404


# --- redelivery and recovery -----------------------------------------------------------------


@pytest.mark.parametrize("status", ["failed", "delivered", "pending"])
async def test_redeliver_queues_the_same_message(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser, status: str
) -> None:
    webhook = await created(client, jake)
    message_id = await add_message(
        app, webhook["id"], status=status, attempts=[{"status_code": 500}] * 2
    )
    path = f"{BASE}/{webhook['id']}/messages/{message_id}/redeliver"
    response = await client.post(path, headers=jake.headers)
    assert response.status_code == 202
    message = response.json()["message"]
    assert set(message) == MESSAGE_FIELDS
    assert (message["id"], message["status"], message["attemptCount"]) == (
        message_id,
        "pending",
        2,
    )
    assert message["nextAttemptAt"] is not None
    async with sessionmaker(app)() as session:
        row = await session.get(WebhookMessage, message_id)
        assert row is not None
        # The attempt count goes on: the delivery job names the attempt it is to make.
        assert (row.status, row.attempts) == ("pending", 2)
    jobs = await delivery_jobs(app)
    assert [job.payload for job in jobs] == [
        {"messageId": message_id, "attempt": 2, "manual": True}
    ]
    assert jobs[0].max_attempts == outbox.DELIVERY_JOB_ATTEMPTS


async def test_redeliver_and_recover_need_an_enabled_webhook(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser
) -> None:
    webhook = await created(client, jake)
    message_id = await add_message(app, webhook["id"], status="failed")
    await set_endpoint(app, webhook["id"], enabled=False, disabled_reason="failing")
    path = f"{BASE}/{webhook['id']}"
    redeliver = await client.post(f"{path}/messages/{message_id}/redeliver", headers=jake.headers)
    assert redeliver.status_code == 409
    recover = await client.post(
        f"{path}/recover", json={"since": "2020-01-01T00:00:00Z"}, headers=jake.headers
    )
    assert recover.status_code == 409
    assert recover.json() == {"errors": {"webhook": ["the endpoint is disabled; enable it first"]}}
    assert await delivery_jobs(app) == []


async def test_recover_requeues_failed_messages_since(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser
) -> None:
    webhook = await created(client, jake)
    other = await created(client, jake)
    t = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    before = await add_message(
        app, webhook["id"], status="failed", created_at=t - timedelta(seconds=1)
    )
    at = await add_message(app, webhook["id"], status="failed", created_at=t)
    after = await add_message(
        app, webhook["id"], status="failed", created_at=t + timedelta(hours=5)
    )
    delivered = await add_message(
        app, webhook["id"], status="delivered", created_at=t + timedelta(hours=1)
    )
    elsewhere = await add_message(
        app, other["id"], status="failed", created_at=t + timedelta(hours=1)
    )

    response = await client.post(
        f"{BASE}/{webhook['id']}/recover",
        # The same moment, written in another time zone.
        json={"since": "2026-03-01T13:00:00+01:00"},
        headers=jake.headers,
    )
    assert response.status_code == 202
    assert response.json() == {"recovered": 2}
    async with sessionmaker(app)() as session:
        rows = {m.id: m for m in await session.scalars(select(WebhookMessage))}
    assert {mid for mid, m in rows.items() if m.status == "pending"} == {at, after}
    assert rows[before].status == "failed"
    assert rows[delivered].status == "delivered"
    assert rows[elsewhere].status == "failed"
    jobs = await delivery_jobs(app)
    assert sorted(job.payload["messageId"] for job in jobs) == sorted([at, after])
    assert {job.payload["manual"] for job in jobs} == {True}
    assert {(job.status, job.max_attempts) for job in jobs} == {
        ("pending", outbox.DELIVERY_JOB_ATTEMPTS)
    }
    again = await client.post(
        f"{BASE}/{webhook['id']}/recover",
        json={"since": "2026-03-01T12:00:00Z"},
        headers=jake.headers,
    )
    assert again.json() == {"recovered": 0}


@pytest.mark.parametrize(
    "since",
    [
        "yesterday",
        "2026-03-01",
        "2026-03-01T12:00:00",
        "2026-03-01 12:00:00Z",
        "2026-02-30T12:00:00Z",
        "2026-03-01T25:00:00Z",
        "0001-01-01T00:00:00+01:00",
        1772366400,
        None,
    ],
)
async def test_recover_needs_an_rfc3339_timestamp(
    client: httpx.AsyncClient, jake: TestUser, since: Any
) -> None:
    webhook = await created(client, jake)
    response = await client.post(
        f"{BASE}/{webhook['id']}/recover", json={"since": since}, headers=jake.headers
    )
    assert response.status_code == 422
    assert list(response.json()["errors"]) == ["since"]


async def test_recover_accepts_lowercase_and_fractions(
    client: httpx.AsyncClient, jake: TestUser
) -> None:
    webhook = await created(client, jake)
    response = await client.post(
        f"{BASE}/{webhook['id']}/recover",
        json={"since": "2026-03-01t12:00:00.123456789z"},
        headers=jake.headers,
    )
    assert response.status_code == 202


# --- the catalogue ---------------------------------------------------------------------------


async def test_event_type_catalogue(client: httpx.AsyncClient) -> None:
    response = await client.get(f"{BASE}/event-types")
    assert response.status_code == 200
    entries = response.json()["eventTypes"]
    assert [entry["type"] for entry in entries] == list(events.EVENT_TYPES)
    for entry in entries:
        assert set(entry) == {"type", "description", "schema", "example"}
        assert entry["description"]
        assert "$ref" not in orjson.dumps(entry["schema"]).decode()
        assert entry["schema"]["type"] == "object"
        validator = jsonschema_rs.validator_for(entry["schema"])
        assert validator.is_valid(entry["example"]), entry["type"]
        assert not validator.is_valid({**entry["example"], "extra": 1}), entry["type"]
    by_type = {entry["type"]: entry for entry in entries}
    article = by_type["article.created"]["schema"]["properties"]["article"]
    assert set(article["required"]) == {
        "slug",
        "title",
        "description",
        "body",
        "tagList",
        "createdAt",
        "updatedAt",
        "favoritesCount",
        "author",
    }
    text = response.text
    assert '"favorited"' not in text
    assert '"following"' not in text


# --- the documented response schemas --------------------------------------------------------


async def test_responses_match_the_openapi_document(
    app: ConduitASGI, client: httpx.AsyncClient, jake: TestUser
) -> None:
    document = (await client.get("/api/v1/openapi.json")).json()

    def check(response: httpx.Response, path: str, method: str) -> None:
        operation = document["paths"][path][method]
        documented = operation["responses"][str(response.status_code)]
        schema = documented["content"]["application/json"]["schema"]
        bundled = {**schema, "components": document["components"]}
        validator = jsonschema_rs.Draft202012Validator(bundled, validate_formats=True)
        errors = [error.message for error in validator.iter_errors(response.json())]
        assert errors == [], (method, path, response.status_code)

    one = "/api/v1/webhooks/{webhook_id}"
    created_response = await create(client, jake, rateLimit=3)
    check(created_response, "/api/v1/webhooks", "post")
    webhook = created_response.json()["webhook"]
    path = f"{BASE}/{webhook['id']}"
    await set_endpoint(app, webhook["id"], failing_since=datetime.now(UTC))
    check(await client.get(path, headers=jake.headers), one, "get")
    check(await client.get(BASE, headers=jake.headers), "/api/v1/webhooks", "get")
    check(
        await client.patch(path, json={"webhook": {"enabled": False}}, headers=jake.headers),
        one,
        "patch",
    )
    check(
        await client.post(f"{path}/rotate-secret", headers=jake.headers),
        f"{one}/rotate-secret",
        "post",
    )
    await client.patch(path, json={"webhook": {"enabled": True}}, headers=jake.headers)
    check(await client.post(f"{path}/ping", headers=jake.headers), f"{one}/ping", "post")
    message_id = await add_message(
        app, webhook["id"], status="failed", attempts=[{"status_code": None, "error": "x"}]
    )
    check(await client.get(f"{path}/messages", headers=jake.headers), f"{one}/messages", "get")
    detail = f"{one}/messages/{{message_id}}"
    check(await client.get(f"{path}/messages/{message_id}", headers=jake.headers), detail, "get")
    check(
        await client.post(f"{path}/messages/{message_id}/redeliver", headers=jake.headers),
        f"{detail}/redeliver",
        "post",
    )
    check(
        await client.post(
            f"{path}/recover", json={"since": "2020-01-01T00:00:00Z"}, headers=jake.headers
        ),
        f"{one}/recover",
        "post",
    )
    check(await client.get(f"{BASE}/event-types"), "/api/v1/webhooks/event-types", "get")
    for response, where in [
        (await client.get(f"{BASE}/{uuid.uuid4()}", headers=jake.headers), (one, "get")),
        (await create(client, jake, url="http://10.0.0.1/"), ("/api/v1/webhooks", "post")),
    ]:
        check(response, *where)
