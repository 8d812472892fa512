"""Standard Webhooks v1: secrets, signatures, headers and the payload body.

A message is signed as `HMAC-SHA256(secret, f"{msg_id}.{timestamp}.".encode() + body)` and sent
as `webhook-signature: v1,<base64>`; during a secret rotation the header carries one signature
per active secret, space-separated, and a receiver accepts the message if any of them matches.
Signatures and secrets are never put in exception messages (they could end up in logs).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets as _secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from service.domain.events import rfc3339

SECRET_PREFIX = "whsec_"  # noqa: S105 (the format's prefix, not a secret)
SECRET_BYTES = 32
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
SIGNATURE_VERSION = "v1"

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"

# Printable ASCII without spaces or commas: the id goes into a header and into the signed string.
_MSG_ID = re.compile(r"[!-+\--~]{1,256}")
_EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")


class InvalidWebhookSecret(ValueError):
    """A signing secret is not `whsec_` + base64 of 24-64 bytes."""


def generate_secret(*, nbytes: int = SECRET_BYTES) -> str:
    """Return a new random signing secret, `whsec_<base64 of nbytes random bytes>`."""
    if not MIN_SECRET_BYTES <= nbytes <= MAX_SECRET_BYTES:
        raise ValueError(f"secret size must be {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} bytes")
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(nbytes)).decode("ascii")


def decode_secret(secret: str) -> bytes:
    """Return the key bytes of a `whsec_` secret; raise InvalidWebhookSecret if malformed."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidWebhookSecret(f"webhook secret must start with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidWebhookSecret("webhook secret is not valid base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise InvalidWebhookSecret(
            f"webhook secret must decode to {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} bytes"
        )
    return key


def new_message_id() -> str:
    """Return a fresh message id (`msg_` + 32 hex digits); reuse it for every retry."""
    return f"msg_{uuid.uuid4().hex}"


def _check_message_id(msg_id: str) -> None:
    if not _MSG_ID.fullmatch(msg_id):
        raise ValueError("message id must be 1-256 printable ASCII characters, no spaces/commas")


def sign(*, secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return `v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}." + body>`."""
    _check_message_id(msg_id)
    key = decode_secret(secret)
    signed = f"{msg_id}.{int(timestamp)}.".encode("ascii") + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def signature_header(*, secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the `webhook-signature` value: one signature per distinct secret, space-separated."""
    if isinstance(secrets, str):
        raise TypeError("secrets must be a sequence of secrets, not one string")
    unique = list(dict.fromkeys(secrets))
    if not unique:
        raise ValueError("at least one signing secret is needed")
    return " ".join(
        sign(secret=secret, msg_id=msg_id, timestamp=timestamp, body=body) for secret in unique
    )


def build_headers(
    *, secrets: Sequence[str], msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """Return the three Standard Webhooks headers; `timestamp` (Unix seconds) defaults to now."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(ts),
        HEADER_SIGNATURE: signature_header(secrets=secrets, msg_id=msg_id, timestamp=ts, body=body),
    }


def build_payload(*, event_type: str, timestamp: datetime, data: Mapping[str, Any]) -> bytes:
    """Serialise `{"type", "timestamp", "data"}` compactly (orjson, UTF-8) as the signed body."""
    if not _EVENT_TYPE.fullmatch(event_type):
        raise ValueError("event type must be a dotted lowercase name such as 'article.created'")
    envelope = {"type": event_type, "timestamp": rfc3339(timestamp), "data": data}
    # UTC datetimes inside `data` end in `Z` like the envelope's; naive ones are taken as UTC.
    return orjson.dumps(envelope, option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC)
