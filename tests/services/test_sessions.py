"""Sign-in sessions and refresh-token rotation (service.services.sessions), on PostgreSQL."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.models import ApiClient, AuthSession, RefreshToken, User
from service.services import sessions
from tests.factories import TestUser

MakeUser = Callable[..., Awaitable[TestUser]]
GRACE = timedelta(seconds=30)
REUSED = "refresh token was already used; the session is revoked"


@pytest_asyncio.fixture
async def db(maker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with maker() as session:
        yield session


async def signed_in(
    db: AsyncSession, user: TestUser, *, lifetime: timedelta = timedelta(days=1)
) -> tuple[AuthSession, str]:
    """A committed session of `user` and its first refresh token."""
    row = await db.get(User, user.id)
    assert row is not None
    auth_session = await sessions.start_session(
        session=db, user=row, scopes={"profile:read", "articles:read"}, lifetime=lifetime
    )
    token = await sessions.issue_refresh_token(session=db, auth_session=auth_session)
    await db.commit()
    return auth_session, token


async def rotate(
    maker: async_sessionmaker[AsyncSession],
    token: str,
    *,
    now: datetime | None = None,
    grace: timedelta = GRACE,
) -> tuple[sessions.Rotation, set[uuid.UUID]]:
    """Present `token` in a transaction of its own, committed; the rotation and the ids of the
    sessions it revoked."""
    async with maker() as session:
        before = await revoked_ids(session)
        rotation = await sessions.rotate_refresh_token(
            session=session, token=token, grace=grace, now=now
        )
        await session.commit()
        return rotation, await revoked_ids(session) - before


async def revoked_ids(session: AsyncSession) -> set[uuid.UUID]:
    """Every revoked session's id."""
    return set(
        await session.scalars(select(AuthSession.id).where(AuthSession.revoked_at.is_not(None)))
    )


async def session_row(maker: async_sessionmaker[AsyncSession], sid: uuid.UUID) -> AuthSession:
    async with maker() as session:
        row = await session.get(AuthSession, sid)
        assert row is not None
        return row


async def test_start_session_stores_scopes_sorted_and_the_lifetime(
    db: AsyncSession, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")

    auth_session, token = await signed_in(db, jake, lifetime=timedelta(hours=2))

    assert auth_session.scope == "articles:read profile:read"
    assert auth_session.client_id is None
    assert auth_session.revoked_at is None
    remaining = auth_session.expires_at - datetime.now(UTC)
    assert timedelta(hours=2) - timedelta(seconds=5) < remaining <= timedelta(hours=2)
    stored = list(await db.scalars(select(RefreshToken.token_hash)))
    assert stored == [hashlib.sha256(token.encode()).digest()]


async def test_rotation_gives_a_new_token_and_links_the_old_one(
    maker: async_sessionmaker[AsyncSession], db: AsyncSession, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    auth_session, first = await signed_in(db, jake)
    now = datetime.now(UTC)

    rotation, noted = await rotate(maker, first, now=now)

    assert rotation.refused is None
    assert rotation.revoked is False
    assert rotation.auth_session is not None
    assert rotation.auth_session.id == auth_session.id
    assert rotation.refresh_token not in {None, first}
    assert noted == set()
    async with maker() as session:
        rows = list(await session.scalars(select(RefreshToken).order_by(RefreshToken.id)))
        assert len(rows) == 2
        assert rows[0].used_at == now
        assert rows[0].replaced_by_id == rows[1].id
        assert rows[1].used_at is None
        assert rows[1].replaced_by_id is None
    assert (await session_row(maker, auth_session.id)).last_used_at == now


async def test_a_chain_of_rotations_each_works_once(
    maker: async_sessionmaker[AsyncSession], db: AsyncSession, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    _, token = await signed_in(db, jake)
    start = datetime.now(UTC)

    for step in range(5):
        rotation, _ = await rotate(maker, token, now=start + timedelta(minutes=step))
        assert rotation.refresh_token is not None
        token = rotation.refresh_token

    assert (await rotate(maker, token, now=start + timedelta(minutes=6)))[0].refused is None


async def test_reuse_after_the_grace_window_revokes_the_session(
    maker: async_sessionmaker[AsyncSession], db: AsyncSession, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    auth_session, first = await signed_in(db, jake)
    used = datetime.now(UTC)
    successor, _ = await rotate(maker, first, now=used)
    assert successor.refresh_token is not None

    reuse, noted = await rotate(maker, first, now=used + GRACE + timedelta(seconds=1))

    assert reuse == sessions.Rotation(None, None, REUSED, True)
    assert noted == {auth_session.id}
    row = await session_row(maker, auth_session.id)
    assert row.revoked_at is not None
    assert row.revoked_reason == sessions.REUSE_REASON
    # The whole family: the unused successor is dead too.
    after, _ = await rotate(maker, successor.refresh_token)
    assert after.refused == "refresh token has been revoked"


async def test_reuse_exactly_at_the_end_of_the_grace_window_is_still_a_retry(
    maker: async_sessionmaker[AsyncSession], db: AsyncSession, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    _, first = await signed_in(db, jake)
    used = datetime.now(UTC)
    await rotate(maker, first, now=used)

    retry, noted = await rotate(maker, first, now=used + GRACE)

    assert retry.refused is None
    assert noted == set()


async def test_reuse_within_the_grace_window_retires_the_unused_successor(
    maker: async_sessionmaker[AsyncSession], db: AsyncSession, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    auth_session, first = await signed_in(db, jake)
    used = datetime.now(UTC)
    lost, _ = await rotate(maker, first, now=used)

    retry, noted = await rotate(maker, first, now=used + timedelta(seconds=5))

    assert retry.refused is None
    assert retry.refresh_token not in {None, first, lost.refresh_token}
    assert noted == set()
    assert (await session_row(maker, auth_session.id)).revoked_at is None
    async with maker() as session:
        lost_row = await session.scalar(
            select(RefreshToken).where(
                RefreshToken.token_hash == hashlib.sha256(str(lost.refresh_token).encode()).digest()
            )
        )
        assert lost_row is not None
        assert lost_row.used_at == used + timedelta(seconds=5)
    assert retry.refresh_token is not None
    following, _ = await rotate(maker, retry.refresh_token, now=used + timedelta(seconds=6))
    assert following.refused is None


async def test_the_retired_successor_is_refused(
    maker: async_sessionmaker[AsyncSession], db: AsyncSession, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    _, first = await signed_in(db, jake)
    used = datetime.now(UTC)
    lost, _ = await rotate(maker, first, now=used)
    await rotate(maker, first, now=used + timedelta(seconds=1))
    assert lost.refresh_token is not None

    retired, _ = await rotate(maker, lost.refresh_token, now=used + timedelta(seconds=2))

    assert retired.refused is not None


async def test_reuse_within_the_grace_window_after_the_successor_was_used_revokes(
    maker: async_sessionmaker[AsyncSession], db: AsyncSession, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    auth_session, first = await signed_in(db, jake)
    used = datetime.now(UTC)
    successor, _ = await rotate(maker, first, now=used)
    assert successor.refresh_token is not None
    await rotate(maker, successor.refresh_token, now=used + timedelta(seconds=1))

    reuse, noted = await rotate(maker, first, now=used + timedelta(seconds=2))

    assert reuse.revoked is True
    assert reuse.refused == REUSED
    assert noted == {auth_session.id}


async def test_with_no_grace_any_reuse_revokes(
    maker: async_sessionmaker[AsyncSession], db: AsyncSession, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    auth_session, first = await signed_in(db, jake)
    used = datetime.now(UTC)
    await rotate(maker, first, now=used, grace=timedelta(0))

    reuse, noted = await rotate(
        maker, first, now=used + timedelta(microseconds=1), grace=timedelta(0)
    )

    assert reuse.revoked is True
    assert noted == {auth_session.id}


async def test_unknown_expired_and_revoked_tokens_are_refused_without_revoking(
    maker: async_sessionmaker[AsyncSession], db: AsyncSession, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    auth_session, token = await signed_in(db, jake, lifetime=timedelta(hours=1))

    unknown, _ = await rotate(maker, "no-such-token")
    expired, noted = await rotate(maker, token, now=datetime.now(UTC) + timedelta(hours=2))

    assert unknown == sessions.Rotation(None, None, "refresh token is invalid")
    assert expired == sessions.Rotation(None, None, "refresh token has expired")
    assert noted == set()
    assert (await session_row(maker, auth_session.id)).revoked_at is None
    async with maker() as session:
        assert await sessions.revoke_session(
            session=session, session_id=auth_session.id, reason="test"
        )
        await session.commit()
    revoked, noted = await rotate(maker, token)
    assert revoked == sessions.Rotation(None, None, "refresh token has been revoked")
    assert noted == set()


async def test_revoke_session_once_and_note_it(
    maker: async_sessionmaker[AsyncSession], db: AsyncSession, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    auth_session, _ = await signed_in(db, jake)

    async with maker() as session:
        first = await sessions.revoke_session(
            session=session, session_id=auth_session.id, reason="logout"
        )
        second = await sessions.revoke_session(
            session=session, session_id=auth_session.id, reason="other"
        )
        missing = await sessions.revoke_session(
            session=session, session_id=uuid.uuid4(), reason="logout"
        )
        await session.commit()

    assert (first, second, missing) == (True, False, False)
    assert (await session_row(maker, auth_session.id)).revoked_reason == "logout"


async def test_revoke_all_sessions_of_a_user_keeps_earlier_reasons(
    maker: async_sessionmaker[AsyncSession], db: AsyncSession, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    ann = await make_user(username="ann")
    one, _ = await signed_in(db, jake)
    two, _ = await signed_in(db, jake)
    anns, _ = await signed_in(db, ann)
    async with maker() as session:
        await sessions.revoke_session(session=session, session_id=one.id, reason="logout")
        await session.commit()

    async with maker() as session:
        revoked = await sessions.revoke_all_sessions(
            session=session, user_id=jake.id, reason="password_changed"
        )
        await session.commit()

    # Two: `two` and the factory's session; `one` was revoked before.
    assert len(revoked) == 2
    assert two.id in revoked
    assert (await session_row(maker, one.id)).revoked_reason == "logout"
    assert (await session_row(maker, two.id)).revoked_reason == "password_changed"
    assert (await session_row(maker, anns.id)).revoked_at is None


async def test_revoke_all_sessions_of_one_client(
    maker: async_sessionmaker[AsyncSession], db: AsyncSession, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    user = await db.get(User, jake.id)
    assert user is not None
    api_client = ApiClient(
        client_id="cl_test", owner_id=jake.id, name="t", secret_hash="x", scope="articles:read"
    )
    db.add(api_client)
    await db.flush()
    of_client = await sessions.start_session(
        session=db,
        user=user,
        scopes={"articles:read"},
        lifetime=timedelta(minutes=15),
        client=api_client,
    )
    personal, _ = await signed_in(db, jake)
    await db.commit()

    async with maker() as session:
        revoked = await sessions.revoke_all_sessions(
            session=session, user_id=jake.id, reason="client_deleted", client_id=api_client.id
        )
        await session.commit()

    assert revoked == [of_client.id]
    assert (await session_row(maker, personal.id)).revoked_at is None


async def test_find_by_refresh_token(
    maker: async_sessionmaker[AsyncSession], db: AsyncSession, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    auth_session, first = await signed_in(db, jake)
    await rotate(maker, first)

    async with maker() as session:
        found = await sessions.find_by_refresh_token(session=session, token=first)
        unknown = await sessions.find_by_refresh_token(session=session, token="nope")

    # A used token still names its session (for revocation by RFC 7009).
    assert found is not None
    assert found.id == auth_session.id
    assert unknown is None
