"""Who is calling: the `Authorization: Token <jwt>` (or `Bearer <jwt>`) header."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import Flask, request

from service.domain import scopes as scopes_service
from service.domain.errors import NotAuthenticated, PermissionDenied
from service.infra.db import db
from service.infra.extensions import Extension
from service.infra.settings import Settings
from service.models import User
from service.services import sessions
from service.services.security import PasswordPolicy, Passwords, TokenClaims, Tokens

logger = logging.getLogger("conduit.auth")

SCHEMES = ("token", "bearer")
REALM = "conduit"


def challenge(*, token_refused: bool) -> str:
    """The `WWW-Authenticate` value of a 401 (RFC 9110 §11.6.1, RFC 6750 §3): both schemes
    this API accepts, each saying `invalid_token` when the request's token was refused."""
    error = ', error="invalid_token"' if token_refused else ""
    return f'Token realm="{REALM}"{error}, Bearer realm="{REALM}"{error}'


@dataclass(frozen=True)
class AuthState:
    """The password hasher and token issuer of one app."""

    passwords: Passwords
    tokens: Tokens
    # Lifetime of the access tokens of the OAuth token endpoint.
    oauth_token_lifetime: timedelta
    refresh_lifetime: timedelta
    refresh_grace: timedelta


AUTH: Extension[AuthState] = Extension("conduit.auth")


class Auth:
    """Flask extension holding the app's `Passwords` and `Tokens`."""

    def init_app(self, app: Flask, settings: Settings, secret_key: str) -> None:
        """Bind hashing and token settings to `app`."""
        policy = PasswordPolicy(
            time_cost=settings.password_time_cost,
            memory_cost_kib=settings.password_memory_kib,
            parallelism=settings.password_parallelism,
            max_concurrent=settings.password_max_concurrent,
        )
        AUTH.bind(
            app,
            AuthState(
                passwords=Passwords(policy),
                tokens=Tokens(secret_key, timedelta(minutes=settings.access_token_minutes)),
                oauth_token_lifetime=timedelta(minutes=settings.oauth_access_token_minutes),
                refresh_lifetime=timedelta(days=settings.refresh_token_days),
                refresh_grace=timedelta(seconds=settings.refresh_reuse_grace_seconds),
            ),
        )

    @property
    def state(self) -> AuthState:
        """The current app's auth state."""
        return AUTH.get()

    @property
    def passwords(self) -> Passwords:
        """The current app's password hasher."""
        return self.state.passwords

    @property
    def tokens(self) -> Tokens:
        """The current app's token issuer."""
        return self.state.tokens


auth = Auth()


async def sign_in(user: User, *, scopes: Iterable[str] | None = None) -> str:
    """Open a sign-in session for `user` and return its access token (RealWorld's `token`).

    The token carries `scopes`, by default every scope the user's role allows; it lives as
    long as `ACCESS_TOKEN_MINUTES` says and has no refresh token.
    """
    granted = frozenset(scopes) if scopes is not None else scopes_service.allowed_for(user.role)
    tokens = auth.tokens
    auth_session = await sessions.start_session(
        session=db.session, user=user, scopes=granted, lifetime=tokens.lifetime
    )
    return tokens.issue(user_id=user.id, session_id=auth_session.id, scopes=granted)


def bearer_token() -> str | None:
    """The token of the `Authorization` header, or None when there is no header."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() not in SCHEMES or not token:
        raise NotAuthenticated("expected 'Authorization: Token <jwt>'", field="token")
    return token


def verify_request(*, required: bool, scope: str | None) -> TokenClaims | None:
    """Check the request's token before anything else runs: 401 when bad (or absent and
    `required`), 403 when it lacks `scope`; None for anonymous callers. Pure CPU: no I/O."""
    token = bearer_token()
    if token is None:
        if required:
            raise NotAuthenticated("authentication required", field="token")
        return None
    claims = auth.tokens.verify(token)
    if scope is not None and scope not in claims.scopes:
        raise PermissionDenied(f"token lacks the '{scope}' scope", field="scope")
    return claims


async def load_viewer(
    claims: TokenClaims | None, extra: Sequence[sessions.ViewerColumn] = ()
) -> tuple[User | None, tuple[Any, ...]]:
    """The user a verified token names, with the values of `extra` columns (see
    `sessions.viewer`); 401 if its session was revoked, or the account no longer exists or
    is suspended.

    One query reads the user with the token's session, so a revocation or a suspension
    refuses the very next request, on every instance, with nothing else to keep in step
    (docs/performance.md: cheaper than asking Redis first).
    """
    if claims is None:
        return None, ()
    found = await sessions.viewer(
        session=db.session, user_id=claims.user_id, session_id=claims.session_id, extra=extra
    )
    if found is None:
        raise NotAuthenticated("token is invalid", field="token")
    if found.revoked:
        raise NotAuthenticated("token has been revoked", field="token")
    if found.user.suspended:
        raise NotAuthenticated("account is suspended", field="token")
    return found.user, found.extra


class PendingViewer:
    """The caller of a read whose user is not loaded yet: the view loads it together with
    what it needs to know about them (`load(extra)`), one query instead of two.

    `operation(defer_viewer=True)` passes one to the view and makes sure it was loaded (so
    the token was checked) before any answer leaves, the view's errors included.
    """

    def __init__(self, claims: TokenClaims | None) -> None:
        self.claims = claims
        self.loaded = False

    async def load(self, extra: Sequence[sessions.ViewerColumn] = ()) -> tuple[Any, ...] | None:
        """Check the token and load the user with `extra`; their values, or None for an
        anonymous caller."""
        user, values = await load_viewer(self.claims, extra)
        self.loaded = True
        return values if user is not None else None


def current_claims() -> TokenClaims:
    """The verified claims of the request's token (views with `auth="required"` only)."""
    token = bearer_token()
    if token is None:
        raise NotAuthenticated("authentication required", field="token")
    return auth.tokens.verify(token)
