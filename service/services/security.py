"""Password hashing (argon2id, off the event loop, bounded) and JWT access tokens."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from service.domain.errors import NotAuthenticated

JWT_ALGORITHM = "HS256"
# A hash of a random password: verifying against it costs the same as a real check, so
# unknown emails take as long as wrong passwords.
_DUMMY_PASSWORD = secrets.token_urlsafe(16)


@dataclass(frozen=True)
class PasswordPolicy:
    """argon2id parameters; the defaults are OWASP's minimum (m=19 MiB, t=2, p=1)."""

    time_cost: int = 2
    memory_cost_kib: int = 19_456
    parallelism: int = 1
    max_concurrent: int = 4


class Passwords:
    """Hash and verify passwords in worker threads, at most `max_concurrent` at a time."""

    def __init__(self, policy: PasswordPolicy) -> None:
        self._hasher = PasswordHasher(
            time_cost=policy.time_cost,
            memory_cost=policy.memory_cost_kib,
            parallelism=policy.parallelism,
            type=Type.ID,
        )
        self._policy = policy
        self._slots: asyncio.Semaphore | None = None
        self._dummy_hash: str | None = None

    def _semaphore(self) -> asyncio.Semaphore:
        # Created lazily so that it binds to the serving loop, not the importing one.
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._policy.max_concurrent)
        return self._slots

    async def hash(self, password: str) -> str:
        """Return an argon2id hash of `password`."""
        async with self._semaphore():
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """Check `password` against `stored_hash`; with no hash, spend the same time and fail."""
        async with self._semaphore():
            if stored_hash is None:
                if self._dummy_hash is None:
                    self._dummy_hash = await asyncio.to_thread(self._hasher.hash, _DUMMY_PASSWORD)
                await asyncio.to_thread(self._check, self._dummy_hash, password)
                return False
            return await asyncio.to_thread(self._check, stored_hash, password)

    def usage(self) -> tuple[int, int]:
        """Hashes running now and hashes waiting for a slot (for the metrics)."""
        if self._slots is None:
            return 0, 0
        # asyncio keeps no public count of a semaphore's holders or waiters.
        waiting = len(getattr(self._slots, "_waiters", None) or ())
        return self._policy.max_concurrent - self._slots._value, waiting

    def needs_rehash(self, stored_hash: str) -> bool:
        """True when `stored_hash` was made with other parameters than the current ones."""
        return self._hasher.check_needs_rehash(stored_hash)

    def _check(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


@dataclass(frozen=True)
class TokenClaims:
    """What a verified access token says."""

    user_id: int
    # The sign-in session (refresh-token family) the token belongs to; revoking it revokes
    # the token.
    session_id: uuid.UUID
    scopes: frozenset[str]
    # Set for tokens of an API client (client_credentials grant).
    client_id: str | None
    token_id: str
    issued_at: datetime
    expires_at: datetime


REQUIRED_CLAIMS = ["sub", "sid", "jti", "scope", "iat", "exp"]


class Tokens:
    """Issue and verify HS256 JWT access tokens.

    Claims: `sub` (user id), `sid` (session id), `jti`, `scope` (space-separated), `cid`
    (client id, client_credentials tokens only), `iat`, `exp`.
    """

    # Tokens verified lately, with their claims: a signed-in request is checked twice (the
    # rate limiter names its principal, the view its viewer) and a client sends the same token
    # many times, while a verification costs ~60 us of HMAC, base64 and JSON.
    MEMO_SIZE = 1024

    def __init__(self, secret: str, lifetime: timedelta) -> None:
        self._secret = secret
        self.lifetime = lifetime
        self._verified: dict[str, TokenClaims] = {}

    def issue(
        self,
        *,
        user_id: int,
        session_id: uuid.UUID,
        scopes: Iterable[str],
        client_id: str | None = None,
        lifetime: timedelta | None = None,
        now: datetime | None = None,
    ) -> str:
        """A signed token for `user_id` in `session_id`, valid for `lifetime` (default: the
        configured one)."""
        issued = now or datetime.now(UTC)
        claims: dict[str, Any] = {
            "sub": str(user_id),
            "sid": str(session_id),
            "jti": secrets.token_urlsafe(12),
            "scope": " ".join(sorted(scopes)),
            "iat": issued,
            "exp": issued + (lifetime or self.lifetime),
        }
        if client_id is not None:
            claims["cid"] = client_id
        return jwt.encode(claims, self._secret, algorithm=JWT_ALGORITHM)

    def verify(self, token: str) -> TokenClaims:
        """Return the claims of a valid token, or raise `NotAuthenticated`."""
        known = self._verified.get(token)
        if known is not None:
            if known.expires_at > datetime.now(UTC):
                return known
            del self._verified[token]
            raise NotAuthenticated("token has expired", field="token")
        claims = self._decode(token)
        if len(self._verified) >= self.MEMO_SIZE:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[token] = claims
        return claims

    def _decode(self, token: str) -> TokenClaims:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[JWT_ALGORITHM],
                options={"require": REQUIRED_CLAIMS},
            )
            user_id = int(claims["sub"])
            session_id = uuid.UUID(claims["sid"])
            scope = claims["scope"]
            client_id = claims.get("cid")
            if not isinstance(scope, str) or not isinstance(client_id, str | None):
                raise TypeError("malformed claims")
            return TokenClaims(
                user_id=user_id,
                session_id=session_id,
                scopes=frozenset(scope.split()),
                client_id=client_id,
                token_id=str(claims["jti"]),
                issued_at=datetime.fromtimestamp(claims["iat"], UTC),
                expires_at=datetime.fromtimestamp(claims["exp"], UTC),
            )
        except jwt.ExpiredSignatureError:
            raise NotAuthenticated("token has expired", field="token") from None
        except (jwt.InvalidTokenError, ValueError, TypeError, AttributeError):
            raise NotAuthenticated("token is invalid", field="token") from None
