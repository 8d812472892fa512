"""Signing secrets at rest: sealed in PostgreSQL with WEBHOOK_SECRET_KEYS, opened only to sign;
a wrong key fails clearly; the key rotates with `reencrypt_secrets`."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from service.infra.secret_box import (
    CANNOT_DECRYPT,
    SEALED_PREFIX,
    SecretBox,
    UnreadableSecret,
    box_for,
    generate_key,
    parse_keys,
)
from service.infra.settings import Settings
from service.models import User
from service.schemas.webhook import WebhookCreate
from service.services import webhooks as webhooks_service
from service.webhooks.config import DeliveryConfig
from service.webhooks.reencrypt import ReencryptReport, reencrypt_secrets
from service.webhooks.signing import SECRET_PREFIX, generate_secret
from tests.factories import TestUser
from tests.webhooks.conftest import LOOPBACK
from tests.webhooks.receivers import Receiver
from tests.webhooks.support import (
    Sessions,
    add_endpoint,
    attempts,
    deliver,
    emit,
    messages,
    sql,
)

MakeUser = Callable[..., Awaitable[TestUser]]
SLOW = DeliveryConfig()  # the real schedule: one attempt, its retry seconds away
KEY_A, KEY_B, KEY_C = generate_key(), generate_key(), generate_key()


def keyed(settings: Settings, *keys: str) -> Settings:
    """`settings` with WEBHOOK_SECRET_KEYS set to `keys`."""
    return settings.model_copy(update={"webhook_secret_keys": SecretStr(",".join(keys))})


def assert_sealed(stored: str | None, *secrets: str) -> None:
    """`stored` is a sealed value that shows none of `secrets`, nor the `whsec_` format."""
    assert stored is not None
    assert stored.startswith(SEALED_PREFIX)
    assert SECRET_PREFIX not in stored
    for secret in secrets:
        assert secret not in stored
        assert secret.removeprefix(SECRET_PREFIX) not in stored


# --- the box ---------------------------------------------------------------------------------


def test_a_sealed_secret_shows_neither_the_secret_nor_its_format() -> None:
    box = SecretBox([KEY_A])
    secret = generate_secret()
    stored = box.seal(secret)
    assert_sealed(stored, secret)
    assert box.open(stored) == secret
    assert box.seal(secret) != stored  # a fresh IV every time: equal secrets do not show


def test_a_secret_from_before_encryption_is_read_as_it_is() -> None:
    secret = generate_secret()
    assert SecretBox([KEY_A]).open(secret) == secret


@pytest.mark.parametrize(
    "stored",
    [
        SecretBox([KEY_B]).seal("whsec_c2VjcmV0LW9mLWFub3RoZXIta2V5LXh4eHh4eA=="),
        SEALED_PREFIX + "not-a-token",
        SEALED_PREFIX + "gAAAAAé",
        SEALED_PREFIX,
    ],
    ids=["other-key", "garbage", "not-ascii", "empty"],
)
def test_a_value_no_key_opens_fails_clearly(stored: str) -> None:
    with pytest.raises(UnreadableSecret) as caught:
        SecretBox([KEY_A]).open(stored)
    assert str(caught.value) == CANNOT_DECRYPT


def test_every_listed_key_opens_and_the_first_seals() -> None:
    secret = generate_secret()
    old = SecretBox([KEY_A]).seal(secret)
    rotating = SecretBox([KEY_B, KEY_A])
    assert rotating.open(old) == secret
    resealed = rotating.reseal(old)
    assert resealed is not None
    assert SecretBox([KEY_B]).open(resealed) == secret
    with pytest.raises(UnreadableSecret):
        SecretBox([KEY_A]).open(resealed)
    assert rotating.reseal(resealed) is None  # already under the first key
    legacy = rotating.reseal(secret)
    assert legacy is not None
    assert SecretBox([KEY_B]).open(legacy) == secret


def test_sealed_seals_only_plain_values_and_never_decrypts() -> None:
    box = SecretBox([KEY_A])
    foreign = SecretBox([KEY_C]).seal(generate_secret())
    assert box.sealed(foreign) == foreign
    secret = generate_secret()
    assert box.open(box.sealed(secret)) == secret


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (" , ", "must be comma-separated Fernet keys"),
        ("not-a-key", "key 1 of 1 is not a Fernet key"),
        (f"{KEY_A},{KEY_A[:-4]}", "key 2 of 2 is not a Fernet key"),
        (f"{KEY_A}, {KEY_A}", "the same key is listed twice"),
    ],
)
def test_malformed_key_lists_are_refused_without_quoting_them(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_keys(value)
    assert KEY_A not in str(caught.value)
    assert "not-a-key" not in str(caught.value)


def test_one_box_per_key_list() -> None:
    assert box_for(f"{KEY_A},{KEY_B}") is box_for(f"{KEY_A},{KEY_B}")
    assert parse_keys(f" {KEY_A} ,{KEY_B},") == [KEY_A, KEY_B]
    with pytest.raises(ValueError, match="at least one key"):
        SecretBox([])


# --- in the database and on the wire ---------------------------------------------------------


async def _owner(sessionmaker: Sessions, make_user: MakeUser) -> User:
    test_user = await make_user()
    async with sessionmaker() as session:
        user = await session.get(User, test_user.id)
    assert user is not None
    return user


async def _stored(database_url: str, endpoint_id: uuid.UUID) -> tuple[str, str | None]:
    [row] = await sql(
        database_url,
        "SELECT secret, previous_secret FROM webhook_endpoints WHERE id = $1",
        endpoint_id,
    )
    return row["secret"], row["previous_secret"]


async def test_created_and_rotated_secrets_are_sealed_and_deliveries_verify(
    delivery_settings: Settings,
    sessionmaker: Sessions,
    make_user: MakeUser,
    receiver: Receiver,
    database_url: str,
) -> None:
    settings = keyed(delivery_settings, KEY_A)
    box = settings.webhook_secret_box
    owner = await _owner(sessionmaker, make_user)
    async with sessionmaker.begin() as session:
        created = await webhooks_service.create_endpoint(
            session=session,
            owner=owner,
            data=WebhookCreate(url=receiver.url("/verify"), events=["*"]),
            policy=LOOPBACK,
            box=box,
        )
    first = created.secret
    assert first.startswith(SECRET_PREFIX)
    secret, previous = await _stored(database_url, created.endpoint.id)
    assert_sealed(secret, first)
    assert previous is None

    async with sessionmaker.begin() as session:
        rotated = await webhooks_service.rotate_secret(
            session=session, viewer=owner, endpoint_id=created.endpoint.id, box=box
        )
    second = rotated.secret
    secret, previous = await _stored(database_url, created.endpoint.id)
    assert_sealed(secret, first, second)
    assert_sealed(previous, first, second)
    assert previous is not None
    assert (box.open(secret), box.open(previous)) == (second, first)

    receiver.state.secrets.append(second)
    await emit(sessionmaker)
    assert await deliver(settings) == 1
    [seen] = receiver.hits("/verify")
    assert seen.verified
    for shown in (first, second):  # both sign during the overlap
        assert Webhook(shown).verify(seen.body, seen.headers)["type"] == "article.created"
    [message] = await messages(sessionmaker)
    assert message.status == "delivered"


async def test_rotation_seals_a_secret_from_before_encryption(
    delivery_settings: Settings, sessionmaker: Sessions, make_user: MakeUser, database_url: str
) -> None:
    box = keyed(delivery_settings, KEY_A).webhook_secret_box
    owner = await _owner(sessionmaker, make_user)
    plain = generate_secret()
    endpoint = await add_endpoint(
        sessionmaker, owner_id=owner.id, url="https://hooks.example.com/x", secret=plain
    )
    async with sessionmaker.begin() as session:
        await webhooks_service.rotate_secret(
            session=session, viewer=owner, endpoint_id=endpoint.id, box=box
        )
    _, previous = await _stored(database_url, endpoint.id)
    assert_sealed(previous, plain)
    assert box.open(previous or "") == plain


async def test_a_wrong_key_is_a_failed_attempt_not_a_garbage_signature(
    delivery_settings: Settings,
    sessionmaker: Sessions,
    owner: TestUser,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = generate_secret()
    endpoint = await add_endpoint(
        sessionmaker,
        owner_id=owner.id,
        url=receiver.url("/ok"),
        secret=SecretBox([KEY_A]).seal(secret),
    )
    await emit(sessionmaker)
    with caplog.at_level(logging.ERROR, logger="conduit.webhooks"):
        await deliver(keyed(delivery_settings, KEY_B), config=SLOW)
    assert receiver.hits("/ok") == []  # nothing signed with anything else
    [attempt] = await attempts(sessionmaker)
    assert (attempt.status_code, attempt.error) == (None, CANNOT_DECRYPT)
    assert f"webhook {endpoint.id}: {CANNOT_DECRYPT}" in caplog.messages
    assert secret not in caplog.text
    assert KEY_A not in caplog.text
    assert KEY_B not in caplog.text


async def test_an_unreadable_previous_secret_fails_the_same_way(
    delivery_settings: Settings, sessionmaker: Sessions, owner: TestUser, receiver: Receiver
) -> None:
    await add_endpoint(
        sessionmaker,
        owner_id=owner.id,
        url=receiver.url("/ok"),
        secret=SecretBox([KEY_B]).seal(generate_secret()),
        previous_secret=SecretBox([KEY_A]).seal(generate_secret()),
        previous_secret_expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    await emit(sessionmaker)
    await deliver(keyed(delivery_settings, KEY_B), config=SLOW)
    assert receiver.hits("/ok") == []
    [attempt] = await attempts(sessionmaker)
    assert attempt.error == CANNOT_DECRYPT


# --- rotating the key ------------------------------------------------------------------------


async def test_reencrypt_moves_every_secret_to_the_first_key_in_batches(
    delivery_settings: Settings,
    sessionmaker: Sessions,
    owner: TestUser,
    receiver: Receiver,
    database_url: str,
) -> None:
    old = SecretBox([KEY_A])
    current, previous, legacy, expired = (generate_secret() for _ in range(4))
    soon = datetime.now(UTC) + timedelta(hours=1)
    rotating = await add_endpoint(
        sessionmaker,
        owner_id=owner.id,
        url=receiver.url("/verify"),
        secret=old.seal(current),
        previous_secret=old.seal(previous),
        previous_secret_expires_at=soon,
    )
    # Not subscribed to what the test emits: only `rotating` gets a delivery.
    plain = await add_endpoint(
        sessionmaker,
        owner_id=owner.id,
        url="https://hooks.example.com/a",
        events=["comment.created"],
        secret=legacy,
    )
    stale = await add_endpoint(
        sessionmaker,
        owner_id=owner.id,
        url="https://hooks.example.com/b",
        events=["comment.created"],
        secret=old.seal(current),
        previous_secret=old.seal(expired),
        previous_secret_expires_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    updated = "SELECT id, updated_at FROM webhook_endpoints ORDER BY id"
    before = [tuple(row) for row in await sql(database_url, updated)]

    new_first = SecretBox([KEY_B, KEY_A])
    report = await reencrypt_secrets(sessionmaker=sessionmaker, box=new_first, batch_size=2)
    assert report == ReencryptReport(resealed=4, current=0, expired_dropped=1)

    only_new = SecretBox([KEY_B])
    stored = {e.id: await _stored(database_url, e.id) for e in (rotating, plain, stale)}
    assert [only_new.open(s) for s in stored[rotating.id] if s is not None] == [current, previous]
    assert stored[plain.id][1] is None
    assert only_new.open(stored[plain.id][0]) == legacy
    assert stored[stale.id][1] is None
    assert only_new.open(stored[stale.id][0]) == current
    for secret, prev in stored.values():
        assert_sealed(secret, current, previous, legacy, expired)
        if prev is not None:
            assert_sealed(prev, current, previous, legacy, expired)
    [stale_row] = await sql(
        database_url,
        "SELECT previous_secret_expires_at FROM webhook_endpoints WHERE id = $1",
        stale.id,
    )
    assert stale_row["previous_secret_expires_at"] is None
    # Not the owner's change: updatedAt stays.
    assert [tuple(row) for row in await sql(database_url, updated)] == before

    again = await reencrypt_secrets(sessionmaker=sessionmaker, box=new_first, batch_size=1)
    assert again == ReencryptReport(resealed=0, current=4, expired_dropped=0)
    assert {e.id: await _stored(database_url, e.id) for e in (rotating, plain, stale)} == stored

    # The old key dropped: deliveries still verify with the secrets the owner was shown.
    receiver.state.secrets.append(current)
    await emit(sessionmaker)
    assert await deliver(keyed(delivery_settings, KEY_B)) == 1
    [seen] = receiver.hits("/verify")
    assert seen.verified
    Webhook(previous).verify(seen.body, seen.headers)


async def test_reencrypt_leaves_and_names_what_no_key_opens(
    sessionmaker: Sessions, owner: TestUser, database_url: str
) -> None:
    lost = await add_endpoint(
        sessionmaker,
        owner_id=owner.id,
        url="https://hooks.example.com/lost",
        secret=SecretBox([KEY_C]).seal(generate_secret()),
    )
    fine = await add_endpoint(
        sessionmaker,
        owner_id=owner.id,
        url="https://hooks.example.com/fine",
        secret=SecretBox([KEY_A]).seal(generate_secret()),
    )
    lost_before = await _stored(database_url, lost.id)
    report = await reencrypt_secrets(
        sessionmaker=sessionmaker, box=SecretBox([KEY_B, KEY_A]), batch_size=10
    )
    assert report == ReencryptReport(resealed=1, current=0, unreadable=[lost.id])
    assert "1 endpoint(s) unreadable" in report.summary()
    assert await _stored(database_url, lost.id) == lost_before
    SecretBox([KEY_B]).open((await _stored(database_url, fine.id))[0])
    with pytest.raises(ValueError, match="at least 1"):
        await reencrypt_secrets(sessionmaker=sessionmaker, box=SecretBox([KEY_B]), batch_size=0)
