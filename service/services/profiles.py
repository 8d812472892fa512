"""Profiles and the follow relation."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from service.domain import events
from service.domain.errors import NotFound, PermissionDenied
from service.models import Follow, User
from service.schemas.profile import ProfileOut
from service.schemas.user import is_valid_username
from service.services import sessions
from service.services.sql import any_ids, one_of_ids
from service.webhooks import catalogue, outbox

SELF_FOLLOW = "you cannot follow or unfollow yourself"


async def following_ids(
    *, session: AsyncSession, viewer: User | None, user_ids: Collection[int]
) -> set[int]:
    """Which of `user_ids` the viewer follows, in one query (empty for anonymous viewers)."""
    if viewer is None or not user_ids:
        return set()
    rows = await session.scalars(
        select(Follow.followee_id).where(
            Follow.follower_id == viewer.id, one_of_ids(Follow.followee_id, user_ids)
        )
    )
    return set(rows)


_FOLLOWING = (
    select(func.array_agg(Follow.followee_id))
    .where(Follow.follower_id == User.id, Follow.followee_id == any_ids("followee_ids"))
    .scalar_subquery()
)


def following_column(user_ids: Collection[int]) -> sessions.ViewerColumn:
    """Which of `user_ids` the viewer follows (an array, NULL for none), to read with the
    viewer (`sessions.viewer`)."""
    return _FOLLOWING, {"followee_ids": sorted(user_ids)}


async def get_by_username(*, session: AsyncSession, username: str) -> User | None:
    """The user called `username`, compared case-insensitively, or None."""
    # A name no account can have (bad characters, too long, NUL) needs no query.
    if not is_valid_username(username):
        return None
    # lower(username) matches the unique index uq_users_username_lower.
    return await session.scalar(
        select(User).where(func.lower(User.username) == func.lower(username))
    )


async def require_user(*, session: AsyncSession, username: str) -> User:
    user = await get_by_username(session=session, username=username)
    if user is None:
        raise NotFound("not found", field="profile")
    return user


async def get_profile(*, session: AsyncSession, viewer: User | None, username: str) -> ProfileOut:
    """The profile of `username` as `viewer` sees it; `NotFound` if there is no such user."""
    user = await require_user(session=session, username=username)
    followed = await following_ids(session=session, viewer=viewer, user_ids=[user.id])
    return ProfileOut.of(user, following=user.id in followed)


async def _someone_else(*, session: AsyncSession, follower: User, username: str) -> User:
    """The user `username`, who must exist and must not be `follower`."""
    user = await require_user(session=session, username=username)
    if user.id == follower.id:
        raise PermissionDenied(SELF_FOLLOW, field="username")
    return user


async def follow(*, session: AsyncSession, follower: User, username: str) -> ProfileOut:
    """Make `follower` follow `username`; following twice changes nothing.

    `NotFound` for no such user; `PermissionDenied` for following oneself.
    """
    user = await _someone_else(session=session, follower=follower, username=username)
    # ON CONFLICT DO NOTHING: idempotent, and safe when the same follow races itself.
    added = await session.scalar(
        insert(Follow)
        .values(follower_id=follower.id, followee_id=user.id)
        .on_conflict_do_nothing(index_elements=[Follow.follower_id, Follow.followee_id])
        .returning(Follow.followee_id)
    )
    if added is not None:
        await _emit(session, events.PROFILE_FOLLOWED, follower, user)
    return ProfileOut.of(user, following=True)


async def _emit(session: AsyncSession, event_type: str, follower: User, followee: User) -> None:
    # Only the follower can see whom they follow (`following` is per viewer).
    await outbox.emit(
        session=session,
        event_type=event_type,
        data=catalogue.follow_data(followee=followee),
        audience=[follower.id],
    )


async def unfollow(*, session: AsyncSession, follower: User, username: str) -> ProfileOut:
    """Make `follower` stop following `username`; unfollowing twice changes nothing.

    `NotFound` for no such user; `PermissionDenied` for unfollowing oneself.
    """
    user = await _someone_else(session=session, follower=follower, username=username)
    removed = await session.scalar(
        delete(Follow)
        .where(Follow.follower_id == follower.id, Follow.followee_id == user.id)
        .returning(Follow.followee_id)
    )
    if removed is not None:
        await _emit(session, events.PROFILE_UNFOLLOWED, follower, user)
    return ProfileOut.of(user, following=False)
