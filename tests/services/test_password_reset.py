"""Password reset rules, straight on the services: tokens, mail, confirmation, sessions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.domain.errors import PermissionDenied
from service.infra.mail import Mailer, MailNotConfigured
from service.infra.settings import Environment, Settings
from service.models import AuthSession, PasswordResetToken, User
from service.services import password_reset
from service.services.security import PasswordPolicy, Passwords
from service.services.sessions import revoke_all_sessions
from tests.factories import TestUser

MakeUser = Callable[..., Awaitable[TestUser]]
HOUR = timedelta(hours=1)
RESET_URL = "https://conduit.example/reset?token={token}&lang={lang}"


@pytest.fixture
def passwords() -> Passwords:
    return Passwords(PasswordPolicy(time_cost=1, memory_cost_kib=8192, parallelism=1))


@pytest.fixture
def mailer(settings: Settings, tmp_path: Path) -> Mailer:
    """The development mailer: messages land as .eml files in `tmp_path/mail`."""
    return Mailer(settings.model_copy(update={"smtp_url": None, "data_dir": tmp_path}))


def mails(tmp_path: Path) -> list[str]:
    bodies = []
    for path in sorted((tmp_path / "mail").glob("*.eml")):
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        bodies.append(message.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    return bodies


async def send_reset(
    sessionmaker: async_sessionmaker[AsyncSession],
    mailer: Mailer,
    email: str,
    resend_interval: timedelta = password_reset.RESEND_INTERVAL,
) -> bool:
    """What the job does: issue and commit a token, then mail its link."""
    async with sessionmaker.begin() as session:
        issued = await password_reset.issue_reset(
            session=session, email=email, lifetime=HOUR, resend_interval=resend_interval
        )
    if issued is None:
        return False
    await password_reset.mail_reset(
        mailer=mailer, issued=issued, reset_url=RESET_URL, lifetime=HOUR
    )
    return True


async def issue(sessionmaker: async_sessionmaker[AsyncSession], user_id: int) -> str:
    async with sessionmaker.begin() as session:
        return await password_reset.issue_token(session=session, user_id=user_id, lifetime=HOUR)


async def test_tokens_are_random_and_stored_only_hashed(
    sessionmaker: async_sessionmaker[AsyncSession], make_user: MakeUser
) -> None:
    user = await make_user()
    tokens = {await issue(sessionmaker, user.id) for _ in range(5)}
    assert len(tokens) == 5
    async with sessionmaker() as session:
        rows = (await session.scalars(select(PasswordResetToken))).all()
    assert {row.token_hash for row in rows} == {password_reset.hash_token(t) for t in tokens}
    for row in rows:
        assert row.expires_at - row.created_at == HOUR
        assert row.used_at is None


async def test_send_reset_mail_only_to_active_accounts(
    sessionmaker: async_sessionmaker[AsyncSession],
    make_user: MakeUser,
    mailer: Mailer,
    tmp_path: Path,
) -> None:
    await make_user(email="jake@jake.jake")
    suspended = await make_user(email="gone@jake.jake")
    async with sessionmaker.begin() as session:
        (await session.get_one(User, suspended.id)).suspended = True

    async def send(email: str) -> bool:
        return await send_reset(sessionmaker, mailer, email)

    assert await send("nobody@jake.jake") is False
    assert await send("gone@jake.jake") is False
    assert await send("JAKE@jake.jake") is True
    # A second request within the resend interval mails nothing.
    assert await send("jake@jake.jake") is False
    [body] = mails(tmp_path)
    # Only `{token}` is replaced; other braces of the configured URL are left as they are.
    assert "https://conduit.example/reset?token=" in body
    assert "&lang={lang}" in body
    assert "within 60 minutes" in body


async def test_resend_interval(
    sessionmaker: async_sessionmaker[AsyncSession],
    make_user: MakeUser,
    mailer: Mailer,
    tmp_path: Path,
) -> None:
    user = await make_user(email="jake@jake.jake")

    async def send(interval: timedelta) -> bool:
        return await send_reset(sessionmaker, mailer, user.email, interval)

    assert await send(timedelta(minutes=1)) is True
    assert await send(timedelta(minutes=1)) is False
    assert await send(timedelta(0)) is True
    async with sessionmaker.begin() as session:
        # Once the earlier links are older than the interval, a new one goes out.
        await session.execute(
            update(PasswordResetToken).values(created_at=func.now() - timedelta(minutes=2))
        )
    assert await send(timedelta(minutes=1)) is True
    assert len(mails(tmp_path)) == 3


async def test_a_withdrawn_token_is_gone_and_holds_back_no_new_one(
    sessionmaker: async_sessionmaker[AsyncSession], make_user: MakeUser, settings: Settings
) -> None:
    await make_user(email="jake@jake.jake")
    # Production without SMTP_URL: sending raises; the job then withdraws the token.
    production = settings.model_copy(update={"smtp_url": None, "app_env": Environment.PRODUCTION})
    async with sessionmaker.begin() as session:
        issued = await password_reset.issue_reset(
            session=session, email="jake@jake.jake", lifetime=HOUR
        )
    assert issued is not None
    with pytest.raises(MailNotConfigured):
        await password_reset.mail_reset(
            mailer=Mailer(production), issued=issued, reset_url=RESET_URL, lifetime=HOUR
        )
    async with sessionmaker.begin() as session:
        await password_reset.withdraw_reset(session=session, issued=issued)
    async with sessionmaker() as session:
        assert (await session.scalars(select(PasswordResetToken))).all() == []
    async with sessionmaker.begin() as session:
        again = await password_reset.issue_reset(
            session=session, email="jake@jake.jake", lifetime=HOUR
        )
    assert again is not None


async def test_confirm_changes_the_password_and_revokes_sessions(
    sessionmaker: async_sessionmaker[AsyncSession], make_user: MakeUser, passwords: Passwords
) -> None:
    user = await make_user(password="old-password")
    token = await issue(sessionmaker, user.id)
    other_token = await issue(sessionmaker, user.id)
    async with sessionmaker.begin() as session:
        session.add_all(
            [
                AuthSession(user_id=user.id, scope="read", expires_at=_in_a_day()),
                AuthSession(user_id=user.id, scope="read", expires_at=_in_a_day()),
            ]
        )

    async with sessionmaker.begin() as session:
        changed = await password_reset.confirm_reset(
            session=session, token=token, password="new-password", passwords=passwords
        )
    assert changed.id == user.id
    async with sessionmaker() as session:
        stored = await session.get_one(User, user.id)
        assert await passwords.verify(stored.password_hash, "new-password")
        assert not await passwords.verify(stored.password_hash, "old-password")
        tokens = (await session.scalars(select(PasswordResetToken))).all()
        assert all(t.used_at is not None for t in tokens)
        sessions = (await session.scalars(select(AuthSession))).all()
        assert len(sessions) == 3  # the two above and the one of the factory's token
        assert all(s.revoked_reason == "password_reset" for s in sessions)

    for used in (token, other_token):
        with pytest.raises(PermissionDenied) as caught:
            async with sessionmaker.begin() as session:
                await password_reset.confirm_reset(
                    session=session, token=used, password="again-password", passwords=passwords
                )
        assert (caught.value.field, caught.value.message) == ("token", "is invalid or has expired")


async def test_confirm_refuses_expired_and_unknown_tokens(
    sessionmaker: async_sessionmaker[AsyncSession], make_user: MakeUser, passwords: Passwords
) -> None:
    user = await make_user()
    async with sessionmaker.begin() as session:
        expired = await password_reset.issue_token(
            session=session, user_id=user.id, lifetime=-timedelta(seconds=1)
        )
    for token in (expired, "unknown"):
        with pytest.raises(PermissionDenied):
            async with sessionmaker.begin() as session:
                await password_reset.confirm_reset(
                    session=session, token=token, password="new-password", passwords=passwords
                )


async def test_confirm_is_race_safe(
    sessionmaker: async_sessionmaker[AsyncSession], make_user: MakeUser, passwords: Passwords
) -> None:
    """Two transactions confirm one token: the second waits for the first and then loses."""
    user = await make_user()
    token = await issue(sessionmaker, user.id)
    first_done = asyncio.Event()
    commit_first = asyncio.Event()

    async def first() -> None:
        async with sessionmaker.begin() as session:
            await password_reset.confirm_reset(
                session=session, token=token, password="first-password", passwords=passwords
            )
            first_done.set()
            await commit_first.wait()

    async def second() -> None:
        await first_done.wait()
        async with sessionmaker.begin() as session:
            await password_reset.confirm_reset(
                session=session, token=token, password="second-password", passwords=passwords
            )

    winner = asyncio.create_task(first())
    loser = asyncio.create_task(second())
    await asyncio.sleep(0.3)  # the second now waits on the token's row lock
    assert not loser.done()
    commit_first.set()
    await winner
    with pytest.raises(PermissionDenied):
        await loser
    async with sessionmaker() as session:
        stored = await session.get_one(User, user.id)
        assert await passwords.verify(stored.password_hash, "first-password")


async def test_revoke_all_sessions_touches_only_active_sessions_of_the_user(
    sessionmaker: async_sessionmaker[AsyncSession], make_user: MakeUser, database_url: str
) -> None:
    user = await make_user()
    other = await make_user()
    active = [uuid.uuid4(), uuid.uuid4()]
    earlier, others = uuid.uuid4(), uuid.uuid4()
    conn = await asyncpg.connect(database_url)
    try:
        # The session of the factory's token is active too.
        factory_sessions = await conn.fetch(
            "SELECT id FROM auth_sessions WHERE user_id = $1", user.id
        )
        for session_id, owner in [
            (active[0], user.id),
            (active[1], user.id),
            (earlier, user.id),
            (others, other.id),
        ]:
            await conn.execute(
                "INSERT INTO auth_sessions (id, user_id, scope, expires_at)"
                " VALUES ($1, $2, 'read', now() + interval '1 day')",
                session_id,
                owner,
            )
        await conn.execute(
            "UPDATE auth_sessions SET revoked_at = now() - interval '1 hour',"
            " revoked_reason = 'logout' WHERE id = $1",
            earlier,
        )
        async with sessionmaker.begin() as session:
            revoked = await revoke_all_sessions(session=session, user_id=user.id, reason="test")
        active += [row["id"] for row in factory_sessions]
        assert sorted(revoked) == sorted(active)
        rows = {
            row["id"]: row
            for row in await conn.fetch("SELECT id, revoked_at, revoked_reason FROM auth_sessions")
        }
    finally:
        await conn.close()
    assert [rows[i]["revoked_reason"] for i in active] == ["test"] * 3
    assert rows[earlier]["revoked_reason"] == "logout"
    assert rows[others]["revoked_at"] is None


def _in_a_day() -> datetime:
    return datetime.now(UTC) + timedelta(days=1)
