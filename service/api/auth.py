"""Who is calling: the `Authorization: Token <jwt>` (or `Bearer <jwt>`) header."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from flask import Flask, request
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from service.domain import scopes as scopes_service
from service.domain.errors import NotAuthenticated, PermissionDenied
from service.infra.db import db
from service.infra.extensions import Extension
from service.infra.redis import redis
from service.infra.settings import Settings
from service.jobs.queue import enqueue
from service.models import User
from service.services import revocation, sessions
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
    """The password hasher, token issuer and revocation check of one app."""

    passwords: Passwords
    tokens: Tokens
    # Lifetime of the access tokens of the OAuth token endpoint.
    oauth_token_lifetime: timedelta
    refresh_lifetime: timedelta
    refresh_grace: timedelta
    revocations: revocation.RevocationCheck


AUTH: Extension[AuthState] = Extension("conduit.auth")


class Auth:
    """Flask extension holding the app's `Passwords`, `Tokens` and revocation check."""

    def init_app(self, app: Flask, settings: Settings, secret_key: str) -> None:
        """Bind hashing and token settings to `app`; publish revocations after commits."""
        policy = PasswordPolicy(
            time_cost=settings.password_time_cost,
            memory_cost_kib=settings.password_memory_kib,
            parallelism=settings.password_parallelism,
            max_concurrent=settings.password_max_concurrent,
        )
        longest = max(settings.access_token_minutes, settings.oauth_access_token_minutes)
        AUTH.bind(
            app,
            AuthState(
                passwords=Passwords(policy),
                tokens=Tokens(secret_key, timedelta(minutes=settings.access_token_minutes)),
                oauth_token_lifetime=timedelta(minutes=settings.oauth_access_token_minutes),
                refresh_lifetime=timedelta(days=settings.refresh_token_days),
                refresh_grace=timedelta(seconds=settings.refresh_reuse_grace_seconds),
                # A marker outlives the longest-lived access token (plus clock skew).
                revocations=revocation.RevocationCheck(ttl_seconds=longest * 60 + 60),
            ),
        )
        db.on_commit(app, publish_revocations)

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


async def publish_revocations(session: AsyncSession) -> None:
    """After a commit: mark the sessions it revoked in Redis, or leave a job to do it."""
    revoked = sessions.take_revoked(session)
    if not revoked:
        return
    ttl = auth.state.revocations.ttl_seconds
    try:
        await revocation.publish(redis=redis.client, session_ids=revoked, ttl_seconds=ttl)
    except (RedisError, OSError) as exc:
        logger.warning("revocations not published (%s); queued for retry", type(exc).__name__)
        auth.state.revocations.redis_failed()
        await enqueue(
            session=session,
            kind=revocation.PUBLISH_JOB,
            payload={"sessionIds": sorted(str(sid) for sid in revoked), "ttlSeconds": ttl},
        )
        await session.commit()


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


async def load_viewer(claims: TokenClaims | None) -> User | None:
    """The user a verified token names; 401 if its session was revoked, or the account no
    longer exists or is suspended.

    Redis's revocation markers refuse a revoked token before any query; the user is then
    loaded together with the token's session, so the database has the last word even when a
    marker is missing.
    """
    if claims is None:
        return None
    revoked = await auth.state.revocations.is_revoked(
        redis=redis.client, session=db.session, session_id=claims.session_id
    )
    if revoked:
        raise NotAuthenticated("token has been revoked", field="token")
    user = await sessions.signed_in_user(
        session=db.session, user_id=claims.user_id, session_id=claims.session_id
    )
    if user is None:
        raise NotAuthenticated("token is invalid", field="token")
    if user.suspended:
        raise NotAuthenticated("account is suspended", field="token")
    return user


def current_claims() -> TokenClaims:
    """The verified claims of the request's token (views with `auth="required"` only)."""
    token = bearer_token()
    if token is None:
        raise NotAuthenticated("authentication required", field="token")
    return auth.tokens.verify(token)
