"""OAuth 2.0 grants (RFC 6749 §4.3 password, §4.4 client credentials, §6 refresh) and token
revocation (RFC 7009). Failures raise `OAuthError` with the RFC's error codes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.domain import scopes as scopes_service
from service.domain.errors import NotAuthenticated, OAuthError
from service.models import ApiClient, AuthSession, User
from service.services import clients as clients_service
from service.services import sessions
from service.services.security import Passwords, Tokens

INVALID_CLIENT = "client authentication failed"
BAD_CREDENTIALS = "username or password is invalid"
SUSPENDED = "the account is suspended"
LOGOUT_REASON = "logout"
REVOKED_REASON = "revoked"


@dataclass(frozen=True)
class Grant:
    """What a successful grant yields: the session to issue an access token in."""

    user: User
    auth_session: AuthSession
    scopes: frozenset[str]
    client: ApiClient | None = None
    refresh_token: str | None = None


def _granted(requested: frozenset[str] | None, allowed: frozenset[str]) -> frozenset[str]:
    if requested is None:
        return allowed
    extra = sorted(requested - allowed)
    if extra:
        raise OAuthError("invalid_scope", f"scope not allowed: {' '.join(extra)}")
    return requested


async def _user(session: AsyncSession, user_id: int) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise OAuthError("invalid_grant", "the account no longer exists")
    if user.suspended:
        raise OAuthError("invalid_grant", SUSPENDED)
    return user


async def authenticate_client(
    *, session: AsyncSession, client_id: str, client_secret: str
) -> ApiClient:
    """The client these credentials name, or `invalid_client`."""
    client = await clients_service.find_client(
        session=session, client_id=client_id, secret=client_secret
    )
    if client is None:
        # 401 however the client authenticated (RFC 6749 §5.2 allows it for body credentials).
        raise OAuthError("invalid_client", INVALID_CLIENT, status=401)
    return client


def _login_column(username: str) -> Any:
    return User.email if "@" in username else func.lower(User.username)


async def login_key(*, session: AsyncSession, username: str) -> str:
    """What the per-account failed-login backoff is keyed by: the account's email whether
    the caller typed it or the username (else what was typed), so both share one counter."""
    email = await session.scalar(
        select(User.email).where(_login_column(username) == username.lower())
    )
    return email or username


async def password_grant(
    *,
    session: AsyncSession,
    passwords: Passwords,
    username: str,
    password: str,
    requested: frozenset[str] | None,
    lifetime: timedelta,
) -> Grant:
    """Sign a person in with their email (or username) and password: a session with a
    refresh token, holding `requested` (default: every scope their role allows)."""
    user = await session.scalar(select(User).where(_login_column(username) == username.lower()))
    # An unknown name still costs one verification: timing does not reveal accounts.
    valid = await passwords.verify(user.password_hash if user is not None else None, password)
    if user is None or not valid:
        raise OAuthError("invalid_grant", BAD_CREDENTIALS)
    if user.suspended:
        raise OAuthError("invalid_grant", SUSPENDED)
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = await passwords.hash(password)
    granted = _granted(requested, scopes_service.allowed_for(user.role))
    auth_session = await sessions.start_session(
        session=session, user=user, scopes=granted, lifetime=lifetime
    )
    refresh_token = await sessions.issue_refresh_token(session=session, auth_session=auth_session)
    return Grant(user, auth_session, granted, refresh_token=refresh_token)


async def refresh_grant(
    *,
    session: AsyncSession,
    token: str,
    requested: frozenset[str] | None,
    grace: timedelta,
) -> Grant:
    """Rotate a refresh token: its successor and the session's scopes (or fewer, when
    `requested`), never more than the user's role now allows.

    A refused token raises `OAuthError`; when that is because a used token came back, the
    session has been revoked in `session`'s transaction, which the caller must still commit
    (`OAuthError.commit` is True then).
    """
    rotation = await sessions.rotate_refresh_token(session=session, token=token, grace=grace)
    if rotation.auth_session is None or rotation.refresh_token is None:
        raise OAuthError(
            "invalid_grant",
            rotation.refused or "refresh token is invalid",
            commit=rotation.revoked,
        )
    auth_session = rotation.auth_session
    user = await _user(session, auth_session.user_id)
    held = frozenset(auth_session.scope.split())
    granted = _granted(requested, held) & scopes_service.allowed_for(user.role)
    return Grant(user, auth_session, granted, refresh_token=rotation.refresh_token)


async def client_credentials_grant(
    *,
    session: AsyncSession,
    client: ApiClient,
    requested: frozenset[str] | None,
    lifetime: timedelta,
) -> Grant:
    """A session for an API client, acting for its owner with the client's scopes (or fewer),
    never more than the owner's role now allows; no refresh token (RFC 6749 §4.4.3)."""
    owner = await _user(session, client.owner_id)
    held = frozenset(client.scope.split())
    granted = _granted(requested, held) & scopes_service.allowed_for_client(owner.role)
    auth_session = await sessions.start_session(
        session=session, user=owner, scopes=granted, lifetime=lifetime, client=client
    )
    client.last_used_at = datetime.now(UTC)
    return Grant(owner, auth_session, granted, client=client)


async def revoke_token(
    *, session: AsyncSession, tokens: Tokens, token: str, client: ApiClient | None
) -> None:
    """Revoke the session of a refresh or access token (RFC 7009 §2.1).

    Unknown, invalid or expired tokens are ignored (§2.2: the answer is the same). When the
    caller authenticated as a client, only that client's tokens are revoked.
    """
    auth_session = await sessions.find_by_refresh_token(session=session, token=token)
    if auth_session is None:
        try:
            claims = tokens.verify(token)
        except NotAuthenticated:
            return
        auth_session = await session.get(AuthSession, claims.session_id)
        if auth_session is None or auth_session.user_id != claims.user_id:
            return
    if client is not None and auth_session.client_id != client.id:
        return
    await sessions.revoke_session(
        session=session, session_id=auth_session.id, reason=REVOKED_REASON
    )
