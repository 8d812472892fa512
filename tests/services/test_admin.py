"""service.services.admin on real sessions: the last-admin lock, transactions, escaping."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.domain.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from service.models import AuditEntry, User
from service.schemas.admin import AdminUserUpdate
from service.services import admin
from tests.factories import TestUser

MakeUser = Callable[..., Awaitable[TestUser]]


async def user_row(
    maker: async_sessionmaker[AsyncSession], make_user: MakeUser, role: str = "user", **kw: Any
) -> User:
    made = await make_user(**kw)
    async with maker() as session:
        await session.execute(update(User).where(User.id == made.id).values(role=role))
        await session.commit()
        user = await session.get(User, made.id)
        assert user is not None
        return user


def change(**fields: Any) -> AdminUserUpdate:
    return AdminUserUpdate.model_validate(fields)


async def audit_count(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(AuditEntry)) or 0)


def test_escape_like() -> None:
    assert admin.escape_like("a_b%c\\d") == "a\\_b\\%c\\\\d"
    assert admin.escape_like("plain") == "plain"


@pytest.mark.parametrize(
    ("role", "expected"), [("user", False), ("moderator", True), ("admin", True)]
)
def test_may_moderate(role: str, expected: bool) -> None:
    assert admin.may_moderate(User(role=role)) is expected


async def test_a_waiting_demotion_sees_the_committed_one_and_is_refused(
    maker: async_sessionmaker[AsyncSession], make_user: MakeUser
) -> None:
    first = await user_row(maker, make_user, "admin", username="first")
    second = await user_row(maker, make_user, "admin", username="second")
    async with maker() as one, maker() as two:
        await admin.update_user(
            session=one, actor=first, username="second", data=change(role="user")
        )
        # The second transaction must wait for the first's locks on the admin rows ...
        waiting = asyncio.create_task(
            admin.update_user(session=two, actor=second, username="first", data=change(role="user"))
        )
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await one.commit()
        # ... and then count the admins as they are after its commit: one.
        with pytest.raises(Conflict) as refused:
            await waiting
        assert (refused.value.field, refused.value.message) == ("role", admin.LAST_ADMIN)
        await two.rollback()
    async with maker() as check:
        rows = (await check.execute(select(User.username, User.role))).all()
        roles = dict(rows)
        assert roles == {"first": "admin", "second": "user"}


async def test_an_actor_demoted_while_waiting_is_refused(
    maker: async_sessionmaker[AsyncSession], make_user: MakeUser
) -> None:
    first = await user_row(maker, make_user, "admin", username="first")
    second = await user_row(maker, make_user, "admin", username="second")
    await user_row(maker, make_user, "admin", username="third")
    await user_row(maker, make_user, username="jake")
    async with maker() as one, maker() as two:
        await admin.update_user(
            session=one, actor=first, username="second", data=change(role="user")
        )
        # `second` was an admin when its request began; it is not when the lock is granted.
        waiting = asyncio.create_task(
            admin.update_user(session=two, actor=second, username="jake", data=change(role="admin"))
        )
        await asyncio.sleep(0.3)
        await one.commit()
        with pytest.raises(PermissionDenied) as refused:
            await waiting
        assert refused.value.field == "role"
        await two.rollback()
    async with maker() as check:
        jake = await check.scalar(select(User.role).where(User.username == "jake"))
        assert jake == "user"


async def test_changes_and_their_audit_entries_roll_back_together(
    session: AsyncSession, maker: async_sessionmaker[AsyncSession], make_user: MakeUser
) -> None:
    boss = await user_row(maker, make_user, "admin", username="boss")
    await user_row(maker, make_user, username="jake")
    result = await admin.update_user(
        session=session, actor=boss, username="jake", data=change(role="moderator")
    )
    assert (result.old_role, result.user.role) == ("user", "moderator")
    assert await audit_count(session) == 1
    await session.rollback()
    assert await audit_count(session) == 0
    assert await session.scalar(select(User.role).where(User.username == "jake")) == "user"


async def test_the_command_line_is_an_actor_of_none(
    session: AsyncSession, maker: async_sessionmaker[AsyncSession], make_user: MakeUser
) -> None:
    await user_row(maker, make_user, username="jake")
    result = await admin.update_user(
        session=session, actor=None, username="jake", data=change(role="admin"), via="cli"
    )
    assert result.user.role == "admin"
    entry = await session.scalar(select(AuditEntry))
    assert entry is not None
    assert (entry.actor_id, entry.details) == (None, '{"from":"user","to":"admin","via":"cli"}')


async def test_update_errors(
    session: AsyncSession, maker: async_sessionmaker[AsyncSession], make_user: MakeUser
) -> None:
    boss = await user_row(maker, make_user, "admin", username="boss")
    with pytest.raises(InvalidInput):
        await admin.update_user(session=session, actor=boss, username="boss", data=change())
    for name in ("ghost", "not a name", "x" * 65, "a\x00b"):
        with pytest.raises(NotFound):
            await admin.update_user(
                session=session, actor=boss, username=name, data=change(role="user")
            )


async def test_list_users_filters_combine(
    session: AsyncSession, maker: async_sessionmaker[AsyncSession], make_user: MakeUser
) -> None:
    await user_row(maker, make_user, "moderator", username="mod_one")
    await user_row(maker, make_user, "moderator", username="modtwo")
    await user_row(maker, make_user, username="mod_three")
    page = await admin.list_users(
        session=session, limit=10, offset=0, role="moderator", suspended=False, q="_"
    )
    assert ([user.username for user in page.items], page.total) == (["mod_one"], 1)
