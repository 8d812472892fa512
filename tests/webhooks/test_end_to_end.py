"""Through the API to a receiver that verifies with the official `standardwebhooks` library,
by the real worker and delivery path: favorites by other users, and events raised while the
webhook was disabled (by its owner, or by the service after a 410) recovered once enabled."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from service.infra.mail import Mailer
from service.infra.settings import Settings
from tests.factories import TestUser, make_article
from tests.jobs.support import SmtpServer
from tests.webhooks.receivers import Receiver
from tests.webhooks.support import deliver

MakeUser = Callable[..., Awaitable[TestUser]]
API = "/api/v1"

pytestmark = pytest.mark.usefixtures("api_allows_loopback")


async def call(
    api: httpx.AsyncClient, method: str, path: str, user: TestUser, body: Any = None
) -> dict[str, Any]:
    response = await api.request(method, f"{API}{path}", json=body, headers=user.headers)
    assert response.status_code < 300, response.text
    result: dict[str, Any] = response.json()
    return result


async def subscribe(
    api: httpx.AsyncClient, owner: TestUser, receiver: Receiver, path: str
) -> dict[str, Any]:
    """A webhook of `owner` for every event; the receiver learns its secret."""
    body = {"webhook": {"url": receiver.url(path), "events": ["*"]}}
    webhook: dict[str, Any] = (await call(api, "POST", "/webhooks", owner, body))["webhook"]
    receiver.state.secrets.append(webhook["secret"])
    return webhook


def verified_events(receiver: Receiver, secret: str) -> list[dict[str, Any]]:
    """The events `/verify` accepted, each checked again here with the library."""
    events = []
    for hit in receiver.hits("/verify"):
        assert hit.verified, hit.headers
        events.append(Webhook(secret).verify(hit.body, hit.headers))
    return events


async def test_the_owner_hears_of_favorites_by_other_users(
    api: httpx.AsyncClient, make_user: MakeUser, delivery_settings: Settings, receiver: Receiver
) -> None:
    alice, bob = await make_user(username="alice"), await make_user(username="bob")
    webhook = await subscribe(api, alice, receiver, "/verify")
    slug = (await make_article(api, alice, title="Dragons"))["slug"]
    await call(api, "POST", f"/articles/{slug}/favorite", bob)
    await call(api, "DELETE", f"/articles/{slug}/favorite", bob)
    await deliver(delivery_settings)

    events = {e["type"]: e["data"] for e in verified_events(receiver, webhook["secret"])}
    assert events["article.favorited"] == {
        "article": {"slug": slug, "favoritesCount": 1},
        "profile": {"username": "bob"},
    }
    assert events["article.unfavorited"] == {
        "article": {"slug": slug, "favoritesCount": 0},
        "profile": {"username": "bob"},
    }
    # Bob has no webhook; another user's webhook hears of it too, as the catalogue says.
    carol = await make_user(username="carol")
    await subscribe(api, carol, receiver, "/ok")
    await call(api, "POST", f"/articles/{slug}/favorite", bob)
    await deliver(delivery_settings)
    [to_carol] = receiver.hits("/ok")
    assert json.loads(to_carol.body)["type"] == "article.favorited"


async def recover(
    api: httpx.AsyncClient, owner: TestUser, webhook: dict[str, Any], since: datetime
) -> int:
    body = {"since": since.isoformat().replace("+00:00", "Z")}
    response = await api.post(
        f"{API}/webhooks/{webhook['id']}/recover", json=body, headers=owner.headers
    )
    assert response.status_code == 202, response.text
    recovered: int = response.json()["recovered"]
    return recovered


async def test_an_event_raised_while_disabled_by_the_owner_is_recovered(
    api: httpx.AsyncClient, make_user: MakeUser, delivery_settings: Settings, receiver: Receiver
) -> None:
    alice, bob = await make_user(username="alice"), await make_user(username="bob")
    webhook = await subscribe(api, alice, receiver, "/verify")
    path = f"/webhooks/{webhook['id']}"
    since = datetime.now(UTC)
    await call(api, "PATCH", path, alice, {"webhook": {"enabled": False}})
    slug = (await make_article(api, alice, title="While away"))["slug"]
    await call(api, "POST", f"/articles/{slug}/favorite", bob)
    await deliver(delivery_settings)
    assert receiver.hits("/verify") == []

    log = await call(api, "GET", f"{path}/messages", alice)
    assert [(m["eventType"], m["status"], m["attemptCount"]) for m in log["messages"]] == [
        ("article.favorited", "failed", 0),
        ("article.created", "failed", 0),
    ]
    await call(api, "PATCH", path, alice, {"webhook": {"enabled": True}})
    assert await recover(api, alice, webhook, since) == 2
    await deliver(delivery_settings)

    events = verified_events(receiver, webhook["secret"])
    assert sorted(e["type"] for e in events) == ["article.created", "article.favorited"]
    ids = {hit.headers["webhook-id"] for hit in receiver.hits("/verify")}
    assert ids == {m["id"] for m in log["messages"]}
    log = await call(api, "GET", f"{path}/messages", alice)
    assert {m["status"] for m in log["messages"]} == {"delivered"}


async def test_an_event_raised_after_a_410_disabled_the_webhook_is_recovered(
    api: httpx.AsyncClient,
    make_user: MakeUser,
    delivery_settings: Settings,
    receiver: Receiver,
    smtp_server: SmtpServer,
) -> None:
    alice, bob = await make_user(username="alice"), await make_user(username="bob")
    webhook = await subscribe(api, alice, receiver, "/status/410")
    path = f"/webhooks/{webhook['id']}"
    since = datetime.now(UTC)
    slug = (await make_article(api, alice, title="Gone"))["slug"]
    mailer = Mailer(delivery_settings.model_copy(update={"smtp_url": smtp_server.url}))
    await deliver(delivery_settings, mailer=mailer)
    shown = (await call(api, "GET", path, alice))["webhook"]
    assert (shown["enabled"], shown["disabledReason"]) == (False, "gone")
    [mail] = smtp_server.received
    assert "recover the failed messages" in mail.text
    assert "meanwhile, are kept as failed in its delivery log for 30 days" in mail.text.replace(
        "\n", " "
    )

    # Raised while the service keeps the webhook disabled.
    await call(api, "POST", f"/articles/{slug}/favorite", bob)
    await deliver(delivery_settings, mailer=mailer)
    assert len(receiver.hits("/status/410")) == 1
    body = {"webhook": {"enabled": True, "url": receiver.url("/verify")}}
    await call(api, "PATCH", path, alice, body)
    assert await recover(api, alice, webhook, since) == 2
    await deliver(delivery_settings, mailer=mailer)

    events = verified_events(receiver, webhook["secret"])
    assert sorted(e["type"] for e in events) == ["article.created", "article.favorited"]
    favorited = next(e for e in events if e["type"] == "article.favorited")
    assert favorited["data"]["profile"] == {"username": "bob"}
