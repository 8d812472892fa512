"""Sign-in sessions (`auth_sessions`) and their rotating refresh tokens.

Every access token names its session (`sid`). Revoking a session stops its access tokens at
once and its refresh token: every signed-in request loads its user together with the
session's row (`viewer`), so the database decides on each request, with no copy elsewhere
that could lag behind it.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.domain import scopes as scopes_service
from service.models import ApiClient, AuthSession, RefreshToken, User

REUSE_REASON = "refresh_token_reuse"


def _hash(token: str) -> bytes:
    # Refresh tokens are 256 random bits: a fast hash is enough to make a stolen table useless.
    return hashlib.sha256(token.encode()).digest()


async def start_session(
    *,
    session: AsyncSession,
    user: User,
    scopes: Iterable[str],
    lifetime: timedelta,
    client: ApiClient | None = None,
) -> AuthSession:
    """Open a sign-in session for `user` with `scopes`, ending after `lifetime`."""
    auth_session = AuthSession(
        id=uuid.uuid4(),
        user_id=user.id,
        client_id=client.id if client is not None else None,
        scope=scopes_service.format_scope(scopes),
        expires_at=datetime.now(UTC) + lifetime,
    )
    session.add(auth_session)
    await session.flush()
    return auth_session


async def issue_refresh_token(*, session: AsyncSession, auth_session: AuthSession) -> str:
    """A new refresh token of `auth_session`; only its hash is stored."""
    token = secrets.token_urlsafe(32)
    row = RefreshToken(session_id=auth_session.id, token_hash=_hash(token))
    session.add(row)
    await session.flush()
    return token


@dataclass(frozen=True)
class Rotation:
    """The result of presenting a refresh token."""

    # The session and the successor token; both None when the token was refused.
    auth_session: AuthSession | None
    refresh_token: str | None
    # Why it was refused (the OAuth `error_description`), None on success.
    refused: str | None = None
    # True when refusing it revoked the session (a reused token): commit anyway.
    revoked: bool = False


async def rotate_refresh_token(
    *, session: AsyncSession, token: str, grace: timedelta, now: datetime | None = None
) -> Rotation:
    """Exchange `token` for its successor (RFC 9700 §4.14 rotation).

    A token already exchanged and presented again means it leaked: the whole session (the
    token family) is revoked, unless it comes back within `grace` of its exchange while the
    successor is still unused, which is what a client that lost the response does; then the
    unused successor is retired and a new one issued. The caller must commit even when the
    token is refused when `Rotation.revoked` says so, so that the revocation sticks.
    """
    now = now or datetime.now(UTC)
    found = await session.scalar(
        select(RefreshToken.session_id).where(RefreshToken.token_hash == _hash(token))
    )
    if found is None:
        return Rotation(None, None, "refresh token is invalid")
    # The session row first: every rotation of a family queues on it, so the token rows
    # locked below are only ever taken in one order (no deadlock between a retry and the
    # successor's own rotation).
    auth_session = await session.get(AuthSession, found, with_for_update=True)
    row = await session.scalar(
        select(RefreshToken)
        .where(RefreshToken.token_hash == _hash(token))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if row is None:
        return Rotation(None, None, "refresh token is invalid")
    if auth_session is None or auth_session.revoked_at is not None:
        return Rotation(None, None, "refresh token has been revoked")
    if auth_session.expires_at <= now:
        return Rotation(None, None, "refresh token has expired")
    retired: RefreshToken | None = None
    if row.used_at is not None:
        successor = (
            await session.get(RefreshToken, row.replaced_by_id, with_for_update=True)
            if row.replaced_by_id is not None
            else None
        )
        lost_response = (
            now - row.used_at <= grace and successor is not None and successor.used_at is None
        )
        if not lost_response or successor is None:
            await revoke_session(session=session, session_id=auth_session.id, reason=REUSE_REASON)
            return Rotation(
                None, None, "refresh token was already used; the session is revoked", True
            )
        # The successor was never received: retire it unlinked, so presenting it is reuse.
        retired = successor
    new_token = secrets.token_urlsafe(32)
    new_row = RefreshToken(session_id=auth_session.id, token_hash=_hash(new_token))
    session.add(new_row)
    await session.flush()
    if retired is not None:
        retired.used_at = now
    else:
        row.used_at = now
    row.replaced_by_id = new_row.id
    auth_session.last_used_at = now
    await session.flush()
    return Rotation(auth_session, new_token)


async def find_by_refresh_token(*, session: AsyncSession, token: str) -> AuthSession | None:
    """The session a refresh token (used or not) belongs to."""
    return await session.scalar(
        select(AuthSession)
        .join(RefreshToken, RefreshToken.session_id == AuthSession.id)
        .where(RefreshToken.token_hash == _hash(token))
    )


async def revoke_session(*, session: AsyncSession, session_id: uuid.UUID, reason: str) -> bool:
    """Revoke one session; False when it was already revoked or does not exist."""
    revoked = await session.scalar(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=func.now(), revoked_reason=reason)
        .returning(AuthSession.id)
        .execution_options(synchronize_session=False)
    )
    return revoked is not None


async def revoke_all_sessions(
    *, session: AsyncSession, user_id: int, reason: str, client_id: uuid.UUID | None = None
) -> list[uuid.UUID]:
    """Revoke every active sign-in session of `user_id` (only those of the API client
    `client_id` when given); return their ids.

    Runs in the caller's transaction. Sessions revoked earlier keep their original reason.
    """
    query = update(AuthSession).where(
        AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None)
    )
    if client_id is not None:
        query = query.where(AuthSession.client_id == client_id)
    return list(
        await session.scalars(
            query.values(revoked_at=func.now(), revoked_reason=reason)
            .returning(AuthSession.id)
            .execution_options(synchronize_session=False)
        )
    )


@dataclass(frozen=True)
class Viewer:
    """The user a token's session belongs to, whether that session was revoked, and the
    values of the `extra` columns asked for with it."""

    user: User
    revoked: bool
    extra: tuple[Any, ...] = ()


# A column to read with the viewer: a scalar subquery correlated with `User.id`, built once
# with bound parameters, and its parameters' values for this request.
ViewerColumn = tuple[ColumnElement[Any], Mapping[str, Any]]


# Built once per combination of extra columns (module constants): building and cache-keying
# a statement per request costs more than running it.
@functools.cache
def _viewer_statement(columns: tuple[ColumnElement[Any], ...]) -> Select[Any]:
    return (
        select(User, AuthSession.revoked_at, *columns)
        .join(AuthSession, AuthSession.user_id == User.id)
        .where(User.id == bindparam("viewer_id"), AuthSession.id == bindparam("session_id"))
    )


async def viewer(
    *,
    session: AsyncSession,
    user_id: int,
    session_id: uuid.UUID,
    extra: Sequence[ViewerColumn] = (),
) -> Viewer | None:
    """The user of session `session_id` of `user_id` and whether it was revoked; None when the
    session does not exist or is not theirs. One query: the user's row with its session's,
    and `extra` columns (what a read needs to know about its viewer, same round trip)."""
    params: dict[str, Any] = {"viewer_id": user_id, "session_id": session_id}
    for _, values in extra:
        params.update(values)
    statement = _viewer_statement(tuple(column for column, _ in extra))
    row = (await session.execute(statement, params)).first()
    if row is None:
        return None
    return Viewer(user=row[0], revoked=row[1] is not None, extra=tuple(row[2:]))
