"""Test data factories: rows written straight to the database, tokens issued like the API does."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher

from service.app import ConduitASGI
from service.domain import scopes
from service.infra.db import DatabaseState
from service.models import Follow, User
from service.services import sessions
from service.services.security import Tokens

DEFAULT_PASSWORD = "password123"
# Cheap parameters for speed; the app rehashes on login when its policy differs.
_FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
_DEFAULT_HASH = _FAST_HASHER.hash(DEFAULT_PASSWORD)
_sequence = itertools.count(1)


@dataclass(frozen=True)
class TestUser:
    """A user in the database and a valid token for it."""

    __test__ = False

    id: int
    username: str
    email: str
    password: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        """The RealWorld `Authorization: Token <jwt>` header."""
        return {"Authorization": f"Token {self.token}"}


async def make_user(
    app: ConduitASGI,
    *,
    username: str | None = None,
    email: str | None = None,
    password: str = DEFAULT_PASSWORD,
    bio: str | None = None,
    image: str | None = None,
    role: str = "user",
) -> TestUser:
    """Insert a user and return it with a token of a new sign-in session (all the scopes its
    role allows), signed by the app's secret."""
    n = next(_sequence)
    username = username or f"user{n}"
    email = (email or f"{username}@example.com").lower()
    password_hash = _DEFAULT_HASH if password == DEFAULT_PASSWORD else _FAST_HASHER.hash(password)
    state: DatabaseState = app.flask_app.extensions["conduit.db"]
    assert state.sessionmaker is not None
    async with state.sessionmaker() as session:
        user = User(
            username=username,
            email=email,
            password_hash=password_hash,
            bio=bio,
            image=image,
            role=role,
        )
        session.add(user)
        await session.flush()
        granted = scopes.allowed_for(role)
        auth_session = await sessions.start_session(
            session=session, user=user, scopes=granted, lifetime=timedelta(hours=1)
        )
        await session.commit()
        user_id = user.id
    tokens = Tokens(app.flask_app.config["SECRET_KEY"], timedelta(hours=1))
    token = tokens.issue(user_id=user_id, session_id=auth_session.id, scopes=granted)
    return TestUser(id=user_id, username=username, email=email, password=password, token=token)


async def follow(app: ConduitASGI, follower: TestUser, followee: TestUser) -> None:
    """Make `follower` follow `followee` directly in the database."""
    state: DatabaseState = app.flask_app.extensions["conduit.db"]
    assert state.sessionmaker is not None
    async with state.sessionmaker() as session:
        session.add(Follow(follower_id=follower.id, followee_id=followee.id))
        await session.commit()
