"""service.services.profiles against the real database."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.domain.errors import NotFound, PermissionDenied
from service.models import Follow, User
from service.services import profiles as profiles_service
from service.services.profiles import SELF_FOLLOW
from tests.factories import TestUser

MakeUser = Callable[..., Awaitable[TestUser]]


async def load(session: AsyncSession, user: TestUser) -> User:
    found = await session.get(User, user.id)
    assert found is not None
    return found


async def follows(session: AsyncSession) -> list[tuple[int, int]]:
    rows = await session.execute(
        select(Follow.follower_id, Follow.followee_id).order_by(
            Follow.follower_id, Follow.followee_id
        )
    )
    return [(follower, followee) for follower, followee in rows.all()]


async def test_get_by_username_ignores_case(session: AsyncSession, make_user: MakeUser) -> None:
    jake = await make_user(username="Jake")

    for lookup in ("Jake", "jake", "JAKE"):
        user = await profiles_service.get_by_username(session=session, username=lookup)
        assert user is not None
        assert user.id == jake.id
    assert await profiles_service.get_by_username(session=session, username="jak") is None
    assert await profiles_service.get_by_username(session=session, username="ja\x00ke") is None
    assert await profiles_service.get_by_username(session=session, username="j" * 500) is None


async def test_follow_is_idempotent_and_unfollow_removes_it(
    session: AsyncSession, make_user: MakeUser
) -> None:
    jake = await load(session, await make_user(username="jake"))
    celeb = await make_user(username="celeb")

    first = await profiles_service.follow(session=session, follower=jake, username="celeb")
    second = await profiles_service.follow(session=session, follower=jake, username="CELEB")

    assert first.following is second.following is True
    assert await follows(session) == [(jake.id, celeb.id)]

    gone = await profiles_service.unfollow(session=session, follower=jake, username="celeb")
    again = await profiles_service.unfollow(session=session, follower=jake, username="celeb")

    assert gone.following is again.following is False
    assert await follows(session) == []


async def test_follow_yourself_is_forbidden(session: AsyncSession, make_user: MakeUser) -> None:
    jake = await load(session, await make_user(username="jake"))

    for action in (profiles_service.follow, profiles_service.unfollow):
        with pytest.raises(PermissionDenied) as caught:
            await action(session=session, follower=jake, username="JAKE")
        assert (caught.value.field, caught.value.message) == ("username", SELF_FOLLOW)


async def test_unknown_username_is_not_found(session: AsyncSession, make_user: MakeUser) -> None:
    jake = await load(session, await make_user(username="jake"))

    with pytest.raises(NotFound):
        await profiles_service.follow(session=session, follower=jake, username="nobody")
    with pytest.raises(NotFound):
        await profiles_service.unfollow(session=session, follower=jake, username="nobody")
    with pytest.raises(NotFound):
        await profiles_service.get_profile(session=session, viewer=None, username="nobody")


async def test_get_profile_reports_following_for_the_viewer(
    session: AsyncSession, make_user: MakeUser
) -> None:
    jake = await load(session, await make_user(username="jake"))
    other = await load(session, await make_user(username="other"))
    await make_user(username="celeb", bio="famous")
    await profiles_service.follow(session=session, follower=jake, username="celeb")

    as_jake = await profiles_service.get_profile(session=session, viewer=jake, username="celeb")
    as_other = await profiles_service.get_profile(session=session, viewer=other, username="celeb")
    anonymous = await profiles_service.get_profile(session=session, viewer=None, username="celeb")

    assert as_jake.to_json() == {
        "username": "celeb",
        "bio": "famous",
        "image": "",
        "following": True,
    }
    assert as_other.following is False
    assert anonymous.following is False


async def test_following_ids_answers_for_many_users_at_once(
    session: AsyncSession, make_user: MakeUser
) -> None:
    jake = await load(session, await make_user(username="jake"))
    a = await make_user(username="a")
    b = await make_user(username="b")
    c = await make_user(username="c")
    await profiles_service.follow(session=session, follower=jake, username="a")
    await profiles_service.follow(session=session, follower=jake, username="c")

    found = await profiles_service.following_ids(
        session=session, viewer=jake, user_ids=[a.id, b.id, c.id, a.id]
    )

    assert found == {a.id, c.id}
    assert (
        await profiles_service.following_ids(session=session, viewer=None, user_ids=[a.id]) == set()
    )
    assert await profiles_service.following_ids(session=session, viewer=jake, user_ids=[]) == set()
