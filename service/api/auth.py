"""Who is calling: the `Authorization: Token <jwt>` (or `Bearer <jwt>`) header."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from flask import Flask, current_app, request

from service.db import db
from service.models import User
from service.services import users as users_service
from service.services.errors import NotAuthenticated
from service.services.security import PasswordPolicy, Passwords, TokenClaims, Tokens
from service.settings import Settings

EXTENSION_KEY = "conduit.auth"
SCHEMES = ("token", "bearer")


@dataclass(frozen=True)
class AuthState:
    """The password hasher and token issuer of one app."""

    passwords: Passwords
    tokens: Tokens


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
        app.extensions[EXTENSION_KEY] = AuthState(
            passwords=Passwords(policy),
            tokens=Tokens(secret_key, timedelta(minutes=settings.access_token_minutes)),
        )

    @property
    def passwords(self) -> Passwords:
        """The current app's password hasher."""
        state: AuthState = current_app.extensions[EXTENSION_KEY]
        return state.passwords

    @property
    def tokens(self) -> Tokens:
        """The current app's token issuer."""
        state: AuthState = current_app.extensions[EXTENSION_KEY]
        return state.tokens


auth = Auth()


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


def verify_request(*, required: bool) -> TokenClaims | None:
    """Check the request's token before anything else runs (401 when bad, or absent and
    `required`); None for anonymous callers. Pure CPU: no I/O."""
    token = bearer_token()
    if token is None:
        if required:
            raise NotAuthenticated("authentication required", field="token")
        return None
    return auth.tokens.verify(token)


async def load_viewer(claims: TokenClaims | None) -> User | None:
    """The user a verified token names; 401 if that account no longer exists or is suspended."""
    if claims is None:
        return None
    user = await users_service.get_by_id(session=db.session, user_id=claims.user_id)
    if user is None:
        raise NotAuthenticated("token is invalid", field="token")
    if user.suspended:
        raise NotAuthenticated("account is suspended", field="token")
    return user
