"""Webhook signing secrets at rest: sealed with the Fernet keys of WEBHOOK_SECRET_KEYS.

A stored secret is `fernet:<token>`: a Fernet token (AES-128-CBC and HMAC-SHA256, so
authenticated) of the `whsec_...` secret, made with the first key. Every key of the list opens
(MultiFernet), so the key is rotated by putting a new key first, running `conduit webhooks
reencrypt-secrets` (which seals every stored secret with the first key), then dropping the old
key. A stored value without the prefix is a secret written before encryption existed: it is read
as it is, and sealed by that same command. Nothing here puts a secret or a key in a message.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

SEALED_PREFIX = "fernet:"
CANNOT_DECRYPT = (
    "the endpoint's signing secret cannot be decrypted with any key of WEBHOOK_SECRET_KEYS"
)
KEYS_FORMAT = "comma-separated Fernet keys (url-safe base64 of 32 random bytes)"


class UnreadableSecret(Exception):
    """A stored secret that no key of WEBHOOK_SECRET_KEYS opens (wrong key, or damaged)."""


def generate_key() -> str:
    """A new random Fernet key, in the form WEBHOOK_SECRET_KEYS takes."""
    return Fernet.generate_key().decode("ascii")


def parse_keys(value: str) -> list[str]:
    """The keys of a WEBHOOK_SECRET_KEYS value; ValueError (never quoting it) if malformed."""
    # Comma-separated, blanks dropped (as settings.split_list: settings imports this module).
    keys = [key.strip() for key in value.split(",") if key.strip()]
    if not keys:
        raise ValueError(f"must be {KEYS_FORMAT}")
    for number, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except ValueError:
            raise ValueError(
                f"key {number} of {len(keys)} is not a Fernet key: {KEYS_FORMAT}"
            ) from None
    if len(set(keys)) != len(keys):
        raise ValueError("the same key is listed twice")
    return keys


class SecretBox:
    """Seals secrets with the first key; opens what any key sealed."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        fernets = [Fernet(key) for key in keys]
        self._first = fernets[0]
        self._any = MultiFernet(fernets)

    def seal(self, secret: str) -> str:
        """The stored form of `secret`."""
        return SEALED_PREFIX + self._any.encrypt(secret.encode()).decode("ascii")

    def open(self, stored: str) -> str:
        """The secret a stored value holds; `UnreadableSecret` if no key opens it."""
        if not stored.startswith(SEALED_PREFIX):
            return stored  # written before encryption
        try:
            return self._any.decrypt(_token(stored)).decode()
        except (InvalidToken, UnicodeError):
            raise UnreadableSecret(CANNOT_DECRYPT) from None

    def sealed(self, stored: str) -> str:
        """`stored` as it is if sealed already (by any key), else sealed: no decryption."""
        return stored if stored.startswith(SEALED_PREFIX) else self.seal(stored)

    def reseal(self, stored: str) -> str | None:
        """`stored` sealed with the first key, or None when it is already."""
        if stored.startswith(SEALED_PREFIX):
            try:
                self._first.decrypt(_token(stored))
            except (InvalidToken, UnicodeError):
                pass
            else:
                return None
        return self.seal(self.open(stored))


def _token(stored: str) -> bytes:
    return stored[len(SEALED_PREFIX) :].encode("ascii")


@functools.lru_cache(maxsize=8)
def box_for(keys: str) -> SecretBox:
    """The box of a WEBHOOK_SECRET_KEYS value (one per value: deliveries call it often)."""
    return SecretBox(parse_keys(keys))
