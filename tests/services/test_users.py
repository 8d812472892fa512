"""service.services.users against the real database."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.domain.errors import Conflict, InvalidInput, NotAuthenticated
from service.models import User
from service.schemas.user import UserCreate, UserLogin, UserUpdate
from service.services import users as users_service
from service.services.security import PasswordPolicy, Passwords
from tests.factories import TestUser

MakeUser = Callable[..., Awaitable[TestUser]]


@pytest.fixture(scope="module")
def passwords() -> Passwords:
    return Passwords(PasswordPolicy())


def new_user(username: str = "jake", email: str = "jake@jake.jake") -> UserCreate:
    return UserCreate.model_validate({"username": username, "email": email, "password": "jakejake"})


async def user_count(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(User)) or 0)


async def test_register_creates_a_user_with_a_hashed_password(
    session: AsyncSession, passwords: Passwords
) -> None:
    user = await users_service.register(
        session=session, data=new_user(email="Jake@Jake.Jake"), passwords=passwords
    )
    await session.commit()

    assert user.id is not None
    assert user.email == "jake@jake.jake"
    assert user.bio is None
    assert user.image is None
    assert await passwords.verify(user.password_hash, "jakejake")


async def test_a_taken_username_leaves_the_transaction_usable(
    session: AsyncSession, passwords: Passwords
) -> None:
    await users_service.register(session=session, data=new_user(), passwords=passwords)

    with pytest.raises(Conflict) as caught:
        await users_service.register(
            session=session, data=new_user("JAKE", "other@jake.jake"), passwords=passwords
        )

    assert (caught.value.field, caught.value.message) == ("username", "has already been taken")
    # Only the savepoint rolled back: the first user is still there and more work succeeds.
    await users_service.register(
        session=session, data=new_user("third", "third@jake.jake"), passwords=passwords
    )
    await session.commit()
    assert await user_count(session) == 2


async def test_a_taken_email_raises_conflict_naming_email(
    session: AsyncSession, passwords: Passwords
) -> None:
    await users_service.register(session=session, data=new_user(), passwords=passwords)

    with pytest.raises(Conflict) as caught:
        await users_service.register(
            session=session, data=new_user("other", "JAKE@jake.jake"), passwords=passwords
        )

    assert (caught.value.field, caught.value.message) == ("email", "has already been taken")


async def test_other_integrity_errors_are_not_disguised(
    session: AsyncSession, passwords: Passwords
) -> None:
    # A violation that is not about a taken email/username must surface as what it is.
    data = UserCreate.model_construct(
        username=None,  # type: ignore[arg-type]  # NOT NULL violation, past validation
        email="jake@jake.jake",
        password="jakejake",
    )

    with pytest.raises(IntegrityError) as caught:
        await users_service.register(session=session, data=data, passwords=passwords)

    assert users_service.constraint_name(caught.value) is None


async def test_authenticate_accepts_the_right_password_only(
    session: AsyncSession, passwords: Passwords, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")

    user = await users_service.authenticate(
        session=session,
        data=UserLogin(email=jake.email.upper(), password=jake.password),
        passwords=passwords,
    )
    assert user.id == jake.id

    for email, password in [(jake.email, "wrong-password"), ("nobody@x.io", jake.password)]:
        with pytest.raises(NotAuthenticated) as caught:
            await users_service.authenticate(
                session=session, data=UserLogin(email=email, password=password), passwords=passwords
            )
        assert (caught.value.field, caught.value.message) == (
            "credentials",
            "email or password is invalid",
        )


async def test_authenticate_upgrades_an_outdated_hash(
    session: AsyncSession, passwords: Passwords, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    stored = await session.scalar(select(User.password_hash).where(User.id == jake.id))
    assert stored is not None
    assert passwords.needs_rehash(stored)

    user = await users_service.authenticate(
        session=session,
        data=UserLogin(email=jake.email, password=jake.password),
        passwords=passwords,
    )
    await session.commit()

    assert user.password_hash != stored
    assert not passwords.needs_rehash(user.password_hash)
    assert await passwords.verify(user.password_hash, jake.password)


async def test_update_user_applies_only_the_fields_sent(
    session: AsyncSession, passwords: Passwords, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake", bio="old", image="https://x.io/a.png")
    user = await session.get(User, jake.id)
    assert user is not None

    await users_service.update_user(
        session=session,
        user=user,
        data=UserUpdate.model_validate({"bio": "new", "image": None}),
        passwords=passwords,
    )
    await session.commit()

    assert (user.username, user.email, user.bio, user.image) == ("jake", jake.email, "new", None)


async def test_update_user_with_nothing_to_change_raises(
    session: AsyncSession, passwords: Passwords, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    user = await session.get(User, jake.id)
    assert user is not None

    with pytest.raises(InvalidInput) as caught:
        await users_service.update_user(
            session=session, user=user, data=UserUpdate(), passwords=passwords
        )

    assert caught.value.field == "body"


async def test_update_user_to_a_taken_email_keeps_the_transaction_usable(
    session: AsyncSession, passwords: Passwords, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    other = await make_user(username="other")
    user = await session.get(User, jake.id)
    assert user is not None

    with pytest.raises(Conflict) as caught:
        await users_service.update_user(
            session=session,
            user=user,
            data=UserUpdate.model_validate({"email": other.email}),
            passwords=passwords,
        )

    assert (caught.value.field, caught.value.message) == ("email", "has already been taken")
    # The outer transaction still works after the savepoint rolled back.
    assert await user_count(session) == 2


async def test_update_user_password_is_hashed(
    session: AsyncSession, passwords: Passwords, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake")
    user = await session.get(User, jake.id)
    assert user is not None

    await users_service.update_user(
        session=session,
        user=user,
        data=UserUpdate.model_validate({"password": "brand-new-pw"}),
        passwords=passwords,
    )

    assert user.password_hash != "brand-new-pw"
    assert await passwords.verify(user.password_hash, "brand-new-pw")


async def test_constraint_name_reads_the_violated_constraint(
    session: AsyncSession, make_user: MakeUser
) -> None:
    await make_user(username="jake", email="jake@jake.jake")
    session.add(User(username="JAKE", email="x@jake.jake", password_hash="x"))

    with pytest.raises(IntegrityError) as caught:
        await session.flush()

    assert users_service.constraint_name(caught.value) == "uq_users_username_lower"
