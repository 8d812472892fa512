"""Accounts: registration, login, profile updates.

Uniqueness of emails and usernames is decided by the database (unique constraints), never by
a look-up first: inserts and updates run in a savepoint and a violation becomes `Conflict`
naming the field, so concurrent registrations cannot both win. A taken email or username is a
conflict with existing state (409), not an invalid request: the same body could succeed later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.caching import generations
from service.domain import events
from service.domain.errors import (
    Conflict,
    DomainError,
    InvalidInput,
    NotAuthenticated,
    PermissionDenied,
)
from service.models import User
from service.schemas.user import UPDATABLE, UserCreate, UserLogin, UserUpdate
from service.services import sessions
from service.services.security import Passwords
from service.webhooks import catalogue, outbox

TAKEN = "has already been taken"
BAD_CREDENTIALS = "email or password is invalid"
PASSWORD_CHANGED = "password_changed"  # noqa: S105 (a revocation reason)

# Constraint (or unique index) name -> the error, the field the client must change, and why.
_CONSTRAINT_ERRORS: dict[str, tuple[type[DomainError], str, str]] = {
    "uq_users_email": (Conflict, "email", TAKEN),
    "uq_users_username_lower": (Conflict, "username", TAKEN),
    "ck_users_email_lower": (InvalidInput, "email", "is not a valid email address"),
}


def constraint_name(exc: IntegrityError) -> str | None:
    """The name of the constraint `exc` violated, if the driver or the message tells."""
    # asyncpg raises e.g. UniqueViolationError(constraint_name=...); SQLAlchemy's adapter
    # wraps it, keeping the original as __cause__.
    for error in (exc.orig, getattr(exc.orig, "__cause__", None)):
        name = getattr(error, "constraint_name", None)
        if isinstance(name, str):
            return name
    message = str(exc.orig)
    return next((name for name in _CONSTRAINT_ERRORS if f'"{name}"' in message), None)


async def _flush_in_savepoint(session: AsyncSession, change: Callable[[], None]) -> None:
    """Make `change` and flush it in a savepoint; a taken username or email becomes its
    domain error (409) and leaves the transaction usable."""
    try:
        async with session.begin_nested():
            change()
            await session.flush()
    except IntegrityError as exc:
        error = _as_domain_error(exc)
        if error is None:
            raise
        raise error from None


def _as_domain_error(exc: IntegrityError) -> DomainError | None:
    found = _CONSTRAINT_ERRORS.get(constraint_name(exc) or "")
    if found is None:
        return None
    kind, field, message = found
    return kind(message, field=field)


async def get_by_id(*, session: AsyncSession, user_id: int) -> User | None:
    """The user with `user_id`, or None."""
    return await session.get(User, user_id)


async def get_by_email(*, session: AsyncSession, email: str) -> User | None:
    """The user with `email` (compared lower-cased, as stored), or None."""
    return await session.scalar(select(User).where(User.email == email.lower()))


async def register(*, session: AsyncSession, data: UserCreate, passwords: Passwords) -> User:
    """Create an account; a taken email or username raises `Conflict` naming it."""
    # Hash before the first query, so no connection is held during the expensive part.
    password_hash = await passwords.hash(data.password)
    user = User(
        username=data.username,
        email=data.email.lower(),
        password_hash=password_hash,
        bio=None,
        image=None,
    )
    await _flush_in_savepoint(session, lambda: session.add(user))
    return user


SUSPENDED = "is suspended"


async def authenticate(*, session: AsyncSession, data: UserLogin, passwords: Passwords) -> User:
    """The user with these credentials, or `NotAuthenticated` (same answer for either mistake).

    An unknown email still costs one password verification, so timing does not reveal which
    emails have accounts. A hash made with older parameters is replaced after a successful
    login, the only moment the plain password is known.
    """
    user = await get_by_email(session=session, email=data.email)
    stored = user.password_hash if user is not None else None
    valid = await passwords.verify(stored, data.password)
    if user is None or not valid:
        raise NotAuthenticated(BAD_CREDENTIALS, field="credentials")
    if user.suspended:
        # Only said after the right password, so it reveals nothing to a guesser.
        raise PermissionDenied(SUSPENDED, field="account")
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = await passwords.hash(data.password)
    return user


async def update_user(
    *, session: AsyncSession, user: User, data: UserUpdate, passwords: Passwords
) -> User:
    """Apply the fields sent in `data` (a partial update); bio/image `null` or "" clear them.

    A taken email or username raises `Conflict` naming it; an empty update `InvalidInput`.
    A new password revokes every sign-in session of the user.
    """
    changes: dict[str, Any] = data.model_dump(exclude_unset=True)
    if not changes:
        raise InvalidInput(f"at least one of {', '.join(UPDATABLE)} is required", field="body")
    password = changes.pop("password", None)
    if password is not None:
        changes["password_hash"] = await passwords.hash(password)
    if "email" in changes:
        changes["email"] = changes["email"].lower()
    for name in ("bio", "image"):
        if name in changes and not changes[name]:
            changes[name] = None

    def assign() -> None:
        for name, value in changes.items():
            setattr(user, name, value)

    # Assign inside the savepoint: begin_nested() flushes pending changes first, and a
    # violation there would abort the whole transaction instead of the savepoint.
    await _flush_in_savepoint(session, assign)
    if password is not None:
        await sessions.revoke_all_sessions(
            session=session, user_id=user.id, reason=PASSWORD_CHANGED
        )
    # Author fields appear in articles, comments and profiles.
    generations.note_changed(
        session, generations.ARTICLES, generations.COMMENTS, generations.PROFILES
    )
    # The user's own endpoints only: the event carries the email address.
    await outbox.emit(
        session=session,
        event_type=events.USER_UPDATED,
        data=catalogue.user_data(user),
        audience=[user.id],
    )
    return user
