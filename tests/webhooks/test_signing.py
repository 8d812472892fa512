"""Standard Webhooks signing, checked against the official `standardwebhooks` library."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.webhooks import signing
from service.webhooks.signing import (
    InvalidWebhookSecret,
    build_headers,
    build_payload,
    decode_secret,
    generate_secret,
    new_message_id,
    sign,
    signature_header,
)

MOMENT = datetime(2024, 5, 17, 9, 30, 15, 123456, tzinfo=UTC)


def _message(secrets: list[str]) -> tuple[bytes, dict[str, str]]:
    body = build_payload(
        event_type="article.created",
        timestamp=MOMENT,
        data={"article": {"slug": "how-to-train", "title": "Ünïcödé ✓", "tagList": ["a"]}},
    )
    return body, build_headers(secrets=secrets, msg_id=new_message_id(), body=body)


def test_generated_secret_has_the_standard_format() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert decode_secret(secret) == base64.b64decode(secret[6:])
    assert generate_secret() != secret
    assert len(decode_secret(generate_secret(nbytes=64))) == 64
    with pytest.raises(ValueError, match="24-64"):
        generate_secret(nbytes=16)


@pytest.mark.parametrize(
    "secret",
    [
        "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0",  # no prefix
        "whsec_not*base64!",
        "whsec_" + base64.b64encode(b"x" * 16).decode(),  # too short
        "whsec_" + base64.b64encode(b"x" * 65).decode(),  # too long
        "whsec_",
    ],
)
def test_malformed_secrets_are_refused_without_echoing_them(secret: str) -> None:
    with pytest.raises(InvalidWebhookSecret) as caught:
        decode_secret(secret)
    assert secret.removeprefix("whsec_") not in str(caught.value) or secret == "whsec_"


def test_signature_matches_the_reference_implementation() -> None:
    secret = generate_secret()
    body = b'{"test":2432232314}'
    ours = sign(
        secret=secret, msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp=1614265330, body=body
    )
    theirs = Webhook(secret).sign(
        "msg_p5jXN8AQM9LWM0D4loKWxJek", datetime.fromtimestamp(1614265330, UTC), body.decode()
    )
    assert ours == theirs
    assert ours.startswith("v1,")


def test_official_library_verifies_a_signed_message() -> None:
    secret = generate_secret()
    body, headers = _message([secret])
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    payload = Webhook(secret).verify(body, headers)
    assert payload["type"] == "article.created"
    assert payload["data"]["article"]["title"] == "Ünïcödé ✓"


def test_rotation_signs_with_both_secrets_and_either_verifies() -> None:
    old, new = generate_secret(), generate_secret()
    body, headers = _message([new, old])
    signatures = headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    assert all(s.startswith("v1,") for s in signatures)
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(body, headers)


def test_tampering_fails_verification() -> None:
    secret = generate_secret()
    body, headers = _message([secret])
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"how-to-train", b"how-to-trail"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-id": new_message_id()})
    shifted = str(int(headers["webhook-timestamp"]) + 1)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-timestamp": shifted})


def test_stale_timestamp_is_rejected_by_receivers() -> None:
    secret = generate_secret()
    body = build_payload(event_type="webhook.ping", timestamp=MOMENT, data={})
    old = int(time.time()) - 600
    headers = build_headers(secrets=[secret], msg_id="msg_1", body=body, timestamp=old)
    assert headers["webhook-timestamp"] == str(old)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(body, headers)


def test_signature_header_rules() -> None:
    secret = generate_secret()
    once = signature_header(secrets=[secret], msg_id="msg_1", timestamp=1, body=b"{}")
    assert (
        signature_header(secrets=[secret, secret], msg_id="msg_1", timestamp=1, body=b"{}") == once
    )
    with pytest.raises(ValueError, match="at least one"):
        signature_header(secrets=[], msg_id="msg_1", timestamp=1, body=b"{}")
    with pytest.raises(TypeError):
        signature_header(secrets=secret, msg_id="msg_1", timestamp=1, body=b"{}")


@pytest.mark.parametrize("msg_id", ["", "msg 1", "msg,1", "msg\r\nx: y", "m" * 257, "msg_é"])
def test_message_ids_that_would_break_the_header_are_refused(msg_id: str) -> None:
    with pytest.raises(ValueError, match="message id"):
        sign(secret=generate_secret(), msg_id=msg_id, timestamp=1, body=b"{}")


def test_message_ids_are_unique_and_prefixed() -> None:
    ids = {new_message_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("msg_") for i in ids)


def test_payload_is_compact_ordered_and_rfc3339_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    body = build_payload(
        event_type="comment.created",
        timestamp=MOMENT.astimezone(plus_two),
        data={"comment": {"id": 7, "createdAt": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)}},
    )
    assert body == (
        b'{"type":"comment.created","timestamp":"2024-05-17T09:30:15.123456Z",'
        b'"data":{"comment":{"id":7,"createdAt":"2024-01-02T03:04:05Z"}}}'
    )
    parsed = orjson.loads(body)
    assert list(parsed) == ["type", "timestamp", "data"]
    assert datetime.fromisoformat(parsed["timestamp"]) == MOMENT


def test_payload_refuses_naive_timestamps_and_bad_event_types() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build_payload(event_type="webhook.ping", timestamp=datetime(2024, 1, 1), data={})
    for bad in ("Article.Created", "article", "article..created", "article.created ", ""):
        with pytest.raises(ValueError, match="event type"):
            build_payload(event_type=bad, timestamp=MOMENT, data={})


def test_module_constants_name_the_standard_headers() -> None:
    assert (signing.HEADER_ID, signing.HEADER_TIMESTAMP, signing.HEADER_SIGNATURE) == (
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    )
