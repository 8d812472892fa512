"""Administration of accounts: listing, roles, suspension, and who may moderate content.

At least one admin who is not suspended must remain: a change that would remove the last one
is refused. Two admins demoting each other at once must not both succeed, so every change of a
role or of suspension first locks the rows of all active admins (in id order, the same order
for every transaction) and counts them under that lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.domain.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from service.domain.pages import Page, Position, Window
from service.models import User
from service.schemas.admin import AdminUserUpdate
from service.schemas.user import is_valid_username
from service.services import audit, keyset, sessions

ADMIN = "admin"
# Roles whose holders may delete anyone's article or comment.
MODERATION_ROLES = frozenset({"moderator", ADMIN})
LAST_ADMIN = "at least one active admin must remain"
SELF_SUSPEND = "admins cannot suspend themselves"

Via = Literal["api", "cli"]


def may_moderate(user: User) -> bool:
    """True when `user` may delete content that is not theirs."""
    return user.role in MODERATION_ROLES


@dataclass(frozen=True)
class UserChange:
    """A user after a change, and their role and suspension before it."""

    user: User
    old_role: str
    old_suspended: bool


NEWEST_USERS = keyset.Ordering(keys=(User.created_at, User.id))


def escape_like(text: str) -> str:
    """`text` as a literal inside a LIKE pattern whose escape character is a backslash."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def list_users(
    *,
    session: AsyncSession,
    limit: int,
    offset: int,
    role: str | None = None,
    suspended: bool | None = None,
    q: str | None = None,
    position: Position | None = None,
) -> Page[User]:
    """Users newest first (from `position` if given); `q` matches part of the username or
    email, in any case."""
    conditions: list[ColumnElement[bool]] = []
    if role is not None:
        conditions.append(User.role == role)
    if suspended is not None:
        conditions.append(User.suspended.is_(suspended))
    if q:
        pattern = f"%{escape_like(q)}%"
        conditions.append(
            or_(User.username.ilike(pattern, escape="\\"), User.email.ilike(pattern, escape="\\"))
        )
    total = await session.scalar(select(func.count()).select_from(User).where(*conditions))
    window = Window(limit=limit, offset=offset, position=position)
    rows, edges = await keyset.read(session, select(User).where(*conditions), NEWEST_USERS, window)
    return Page(items=[row[0] for row in rows], total=total or 0, edges=edges)


async def _lock_active_admins(session: AsyncSession) -> set[int]:
    # READ COMMITTED re-checks each row's newest version once its lock is granted: an admin
    # demoted or suspended by the transaction we waited for is no longer counted.
    rows = await session.scalars(
        select(User.id)
        .where(User.role == ADMIN, User.suspended.is_(false()))
        .order_by(User.id)
        .with_for_update()
    )
    return set(rows)


async def _lock_user(session: AsyncSession, username: str) -> User:
    user = None
    if is_valid_username(username):
        user = await session.scalar(
            select(User)
            .where(func.lower(User.username) == func.lower(username))
            .with_for_update()
            # The caller's own row may already be in the session with older values.
            .execution_options(populate_existing=True)
        )
    if user is None:
        raise NotFound("user not found", field="user")
    return user


async def update_user(
    *,
    session: AsyncSession,
    actor: User | None,
    username: str,
    data: AdminUserUpdate,
    via: Via = "api",
) -> UserChange:
    """Change `username`'s role and/or suspension, with one audit entry per change.

    `actor` None is the command line. `NotFound` for no such user; `Conflict` when the change
    would leave no active admin, or when an admin would suspend themselves; `InvalidInput` for
    an empty change. Suspending revokes every sign-in session of the user.
    """
    changes: dict[str, Any] = data.model_dump(exclude_unset=True)
    if not changes:
        raise InvalidInput("at least one of role, suspended is required", field="body")
    # Admins first, then the target: one lock order for every change, so no deadlock.
    active_admins = await _lock_active_admins(session)
    user = await _lock_user(session, username)
    old_role, old_suspended = user.role, user.suspended
    role: str = changes.get("role", old_role)
    suspended: bool = changes.get("suspended", old_suspended)

    stays_active_admin = role == ADMIN and not suspended
    if user.id in active_admins and not stays_active_admin and len(active_admins) <= 1:
        raise Conflict(LAST_ADMIN, field="role")
    if suspended and not user.suspended and actor is not None and actor.id == user.id:
        raise Conflict(SELF_SUSPEND, field="suspended")
    if actor is not None and actor.id not in active_admins:
        # Demoted or suspended by a transaction that committed while this one waited.
        raise PermissionDenied(f"requires one of: {ADMIN}", field="role")

    if role != user.role:
        await audit.record(
            session=session,
            actor=actor,
            action="user.role_change",
            target_type="user",
            target_id=user.username,
            details={"from": user.role, "to": role, "via": via},
        )
        user.role = role
    if suspended != user.suspended:
        details: dict[str, Any] = {"via": via}
        if suspended:
            revoked = await sessions.revoke_all_sessions(
                session=session, user_id=user.id, reason="suspended"
            )
            details["revokedSessions"] = len(revoked)
        await audit.record(
            session=session,
            actor=actor,
            action="user.suspend" if suspended else "user.unsuspend",
            target_type="user",
            target_id=user.username,
            details=details,
        )
        user.suspended = suspended
    await session.flush()
    return UserChange(user=user, old_role=old_role, old_suspended=old_suspended)
