"""Password reset by email.

The request only enqueues a job (`password_reset.request`) in the request's transaction, so
answering takes the same work whether or not the address has an account: nothing reveals
which emails are registered. The worker then looks the account up and, if there is one (not
suspended, and not sent a link in the last minute), stores a new token (only its SHA-256),
commits, and only then mails the link (withdrawing the token if the mail does not go out).
Confirming uses the token once: it is marked used with a conditional UPDATE (two concurrent
confirmations cannot both win), the password changes, the user's other reset tokens are
cancelled and every sign-in session is revoked.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.domain.errors import PermissionDenied
from service.infra.mail import Mailer
from service.jobs.queue import enqueue
from service.models import PasswordResetToken, User
from service.services.security import Passwords
from service.services.sessions import revoke_all_sessions

REQUEST_JOB = "password_reset.request"
INVALID_TOKEN = "is invalid or has expired"  # noqa: S105 - a message, not a secret
REVOKE_REASON = "password_reset"
MAIL_SUBJECT = "Reset your Conduit password"
TOKEN_BYTES = 32
# At most one reset mail per account in this interval, however many requests arrive.
RESEND_INTERVAL = timedelta(minutes=1)
# First key of the per-account advisory lock taken while a reset mail is issued.
ADVISORY_LOCK_NAMESPACE = 0x5245_5354  # "REST"


def hash_token(token: str) -> bytes:
    """The stored form of a reset token (SHA-256: tokens are random, no salt is needed)."""
    return hashlib.sha256(token.encode()).digest()


async def request_reset(*, session: AsyncSession, email: str) -> None:
    """Enqueue the job that mails a reset link to `email` if it has an account.

    Deliberately no look-up here: the same work happens for every address.
    """
    await enqueue(session=session, kind=REQUEST_JOB, payload={"email": email})


@dataclass(frozen=True)
class IssuedReset:
    """A committed reset token still to be mailed (the only place it exists in clear)."""

    token_id: int
    email: str
    token: str


async def _store_token(
    *, session: AsyncSession, user_id: int, lifetime: timedelta
) -> tuple[int, str]:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    row = PasswordResetToken(
        user_id=user_id, token_hash=hash_token(token), expires_at=func.now() + lifetime
    )
    session.add(row)
    await session.flush()
    return row.id, token


async def issue_token(*, session: AsyncSession, user_id: int, lifetime: timedelta) -> str:
    """Store a new single-use token for `user_id` (hashed) and return it in clear."""
    _, token = await _store_token(session=session, user_id=user_id, lifetime=lifetime)
    return token


def reset_mail_text(*, link: str, minutes: int) -> str:
    """The body of the reset mail."""
    return (
        "Someone (hopefully you) asked to reset the password of your Conduit account.\n\n"
        f"To choose a new password, open this link within {minutes} minutes:\n\n"
        f"{link}\n\n"
        "The link works once. If you did not ask for it, ignore this mail: your password "
        "stays as it is.\n"
    )


async def issue_reset(
    *,
    session: AsyncSession,
    email: str,
    lifetime: timedelta,
    resend_interval: timedelta = RESEND_INTERVAL,
) -> IssuedReset | None:
    """Store a reset token for the account with `email`, to be mailed by `mail_reset` once the
    caller has committed; None when nothing is to be sent.

    Suspended accounts get nothing, and neither does an account that was issued a link less
    than `resend_interval` ago (whoever asks, however often, one mail per interval). The
    commit comes before the mail because whoever reads the mail may follow its link at once:
    a token still in an open transaction would be refused.
    """
    user = await session.scalar(select(User).where(User.email == email.lower()))
    if user is None or user.suspended:
        return None
    # Concurrent requests for one account are decided one after the other. An advisory lock,
    # not a row lock: the user row stays free for logins and profile updates.
    await session.execute(select(func.pg_advisory_xact_lock(ADVISORY_LOCK_NAMESPACE, user.id)))
    if resend_interval > timedelta(0):
        recent = await session.scalar(
            select(PasswordResetToken.id)
            .where(
                PasswordResetToken.user_id == user.id,
                PasswordResetToken.used_at.is_(None),
                PasswordResetToken.created_at > func.now() - resend_interval,
            )
            .limit(1)
        )
        if recent is not None:
            # The mail sent moments ago is still valid: do not let anyone flood the inbox.
            return None
    token_id, token = await _store_token(session=session, user_id=user.id, lifetime=lifetime)
    return IssuedReset(token_id=token_id, email=user.email, token=token)


async def mail_reset(
    *, mailer: Mailer, issued: IssuedReset, reset_url: str, lifetime: timedelta
) -> None:
    """Mail the link of a committed reset token; raises `MailError` when it did not go out
    (then `withdraw_reset` it, so that it does not count as sent)."""
    # `replace`, not `format`: other braces in the configured URL are left alone.
    link = reset_url.replace("{token}", issued.token)
    minutes = int(lifetime.total_seconds() // 60)
    await mailer.send(issued.email, MAIL_SUBJECT, reset_mail_text(link=link, minutes=minutes))


async def withdraw_reset(*, session: AsyncSession, issued: IssuedReset) -> None:
    """Delete a token whose mail did not go out: nobody knows it, and left in place it would
    hold back the retry's mail for the resend interval."""
    await session.execute(
        delete(PasswordResetToken).where(
            PasswordResetToken.id == issued.token_id, PasswordResetToken.used_at.is_(None)
        )
    )


async def confirm_reset(
    *, session: AsyncSession, token: str, password: str, passwords: Passwords
) -> User:
    """Set a new password with a reset token; `PermissionDenied` (field `token`) when the token is
    unknown, expired or used. Uses the token, cancels the user's other reset tokens and
    revokes all their sign-in sessions, in the caller's transaction."""
    token_hash = hash_token(token)
    now = func.now()
    found = await session.scalar(
        select(PasswordResetToken.id).where(
            PasswordResetToken.token_hash == token_hash,
            PasswordResetToken.used_at.is_(None),
            PasswordResetToken.expires_at > now,
        )
    )
    if found is None:
        raise PermissionDenied(INVALID_TOKEN, field="token")
    # Hashed only for a token that exists, so guessing costs no argon2 work.
    password_hash = await passwords.hash(password)
    # The decisive check: of concurrent confirmations, only one sees `used_at IS NULL` (the
    # others wait for its row lock, then re-check and find it used).
    user_id = await session.scalar(
        update(PasswordResetToken)
        .where(
            PasswordResetToken.id == found,
            PasswordResetToken.used_at.is_(None),
            PasswordResetToken.expires_at > now,
        )
        .values(used_at=now)
        .returning(PasswordResetToken.user_id)
        .execution_options(synchronize_session=False)
    )
    user = await session.get(User, user_id) if user_id is not None else None
    if user is None or user.suspended:
        raise PermissionDenied(INVALID_TOKEN, field="token")
    user.password_hash = password_hash
    await session.execute(
        update(PasswordResetToken)
        .where(PasswordResetToken.user_id == user.id, PasswordResetToken.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    await revoke_all_sessions(session=session, user_id=user.id, reason=REVOKE_REASON)
    await session.flush()
    return user
