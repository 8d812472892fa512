"""Test data factories: users written straight to the database with tokens issued like the API
does; articles and comments created over HTTP, so slugs, tags, events and caches follow."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from argon2 import PasswordHasher
from sqlalchemy import insert

from service.app import ConduitASGI
from service.domain import scopes
from service.infra.db import DatabaseState
from service.models import Article, Follow, User
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


async def make_article(
    client: httpx.AsyncClient,
    author: TestUser,
    *,
    title: str | None = None,
    description: str = "d",
    body: str = "b",
    tags: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Create an article of `author` through POST /api/v1/articles and return its JSON.

    The title is unique per call unless given; the rest is the shortest valid content, so a
    test passes whatever it looks at. Without `tags` the request has no `tagList` at all."""
    article: dict[str, Any] = {
        "title": f"Article {next(_sequence)}" if title is None else title,
        "description": description,
        "body": body,
    }
    if tags is not None:
        article["tagList"] = list(tags)
    response = await client.post(
        "/api/v1/articles", json={"article": article}, headers=author.headers
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()["article"]
    return created


async def make_comment(
    client: httpx.AsyncClient, author: TestUser, slug: str, *, body: str | None = None
) -> dict[str, Any]:
    """Comment as `author` on the article `slug` through the API and return the comment's
    JSON; the body is unique per call unless given."""
    response = await client.post(
        f"/api/v1/articles/{slug}/comments",
        json={"comment": {"body": f"Comment {next(_sequence)}" if body is None else body}},
        headers=author.headers,
    )
    assert response.status_code == 200, response.text
    comment: dict[str, Any] = response.json()["comment"]
    return comment


async def insert_articles(
    app: ConduitASGI, author: TestUser, count: int, *, prefix: str = "bulk"
) -> list[str]:
    """Insert `count` articles of `author` straight into the database in one statement (one
    transaction: they share one `created_at`, so only the id orders them); their slugs.

    For lists long enough to page through; write before the first read (no cache bump)."""
    slugs = [f"{prefix}-{n}" for n in range(count)]
    state: DatabaseState = app.flask_app.extensions["conduit.db"]
    assert state.sessionmaker is not None
    async with state.sessionmaker() as session:
        await session.execute(
            insert(Article),
            [
                {
                    "slug": slug,
                    "title": slug,
                    "description": "d",
                    "body": "b",
                    "author_id": author.id,
                }
                for slug in slugs
            ],
        )
        await session.commit()
    return slugs
