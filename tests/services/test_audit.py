"""service.services.audit on a real session: rows, JSON details, no secrets, listing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.models import AuditEntry, User
from service.services import audit
from tests.factories import TestUser

MakeUser = Callable[..., Awaitable[TestUser]]


async def user_row(session: AsyncSession, make_user: MakeUser, username: str) -> User:
    made = await make_user(username=username)
    user = await session.get(User, made.id)
    assert user is not None
    return user


async def entry_count(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(AuditEntry)) or 0)


async def test_record_writes_one_row_with_json_details(
    session: AsyncSession, make_user: MakeUser
) -> None:
    actor = await user_row(session, make_user, "boss")
    entry_id = await audit.record(
        session=session,
        actor=actor,
        action="comment.delete",
        target_type="comment",
        target_id=42,
        details={"b": "ü", "a": [1, None]},
    )
    entry = await session.get(AuditEntry, entry_id)
    assert entry is not None
    assert (entry.actor_id, entry.action, entry.target_type, entry.target_id) == (
        actor.id,
        "comment.delete",
        "comment",
        "42",
    )
    # Sorted keys, compact, UTF-8: the same details always make the same text.
    assert entry.details == '{"a":[1,null],"b":"ü"}'
    assert entry.created_at is not None


async def test_record_without_actor_or_details(session: AsyncSession) -> None:
    entry_id = await audit.record(
        session=session,
        actor=None,
        action="user.role_change",
        target_type="user",
        target_id="jake",
        details=None,
    )
    entry = await session.get(AuditEntry, entry_id)
    assert entry is not None
    assert (entry.actor_id, entry.details) == (None, None)


@pytest.mark.parametrize(
    "key",
    ["password", "newPassword", "token", "refresh_token", "secret", "password_hash", "apiKey"],
)
async def test_record_refuses_details_that_may_carry_secrets(
    session: AsyncSession, key: str
) -> None:
    with pytest.raises(ValueError, match="secrets"):
        await audit.record(
            session=session,
            actor=None,
            action="user.role_change",
            target_type="user",
            target_id="jake",
            details={"from": "user", key: "hunter2"},
        )
    assert await entry_count(session) == 0


async def test_entries_live_and_die_with_the_callers_transaction(session: AsyncSession) -> None:
    await audit.record(
        session=session,
        actor=None,
        action="user.suspend",
        target_type="user",
        target_id="jake",
        details={},
    )
    assert await entry_count(session) == 1
    await session.rollback()
    assert await entry_count(session) == 0


async def test_list_entries_newest_first_with_filters(
    session: AsyncSession, make_user: MakeUser
) -> None:
    boss = await user_row(session, make_user, "Boss")
    mod = await user_row(session, make_user, "mod")
    # One transaction: equal timestamps, so the id decides the order.
    for actor, action, target in [
        (boss, "user.role_change", "mod"),
        (mod, "article.delete", "dragons"),
        (None, "user.role_change", "Boss"),
        (boss, "user.suspend", "jake"),
    ]:
        await audit.record(
            session=session,
            actor=actor,
            action=action,
            target_type="article" if action.startswith("article") else "user",
            target_id=target,
            details={"n": target},
        )
    await session.commit()

    page = await audit.list_entries(session=session, limit=20, offset=0)
    assert page.total == 4
    assert [(e.actor, e.action, e.target_id) for e in page.items] == [
        ("Boss", "user.suspend", "jake"),
        (None, "user.role_change", "Boss"),
        ("mod", "article.delete", "dragons"),
        ("Boss", "user.role_change", "mod"),
    ]
    assert page.items[0].details == {"n": "jake"}

    page = await audit.list_entries(session=session, limit=1, offset=1, action="user.role_change")
    assert (page.total, [e.target_id for e in page.items]) == (2, ["mod"])
    page = await audit.list_entries(session=session, limit=20, offset=0, actor="BOSS")
    assert (page.total, [e.target_id for e in page.items]) == (2, ["jake", "mod"])
    page = await audit.list_entries(
        session=session, limit=20, offset=0, actor="boss", action="article.delete"
    )
    assert (page.total, page.items) == (0, [])
    page = await audit.list_entries(session=session, limit=20, offset=0, actor="no such!")
    assert (page.total, page.items) == (0, [])


async def test_entries_outlive_their_actor(session: AsyncSession, make_user: MakeUser) -> None:
    mod = await user_row(session, make_user, "mod")
    await audit.record(
        session=session,
        actor=mod,
        action="article.delete",
        target_type="article",
        target_id="dragons",
        details=None,
    )
    await session.commit()
    await session.execute(delete(User).where(User.id == mod.id))
    await session.commit()
    page = await audit.list_entries(session=session, limit=20, offset=0)
    [entry] = page.items
    assert (entry.actor, entry.target_id, entry.details) == (None, "dragons", {})
