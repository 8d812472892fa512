"""Moderation: moderators and admins may delete anyone's article or comment, and it is audited."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from service.app import ConduitASGI
from service.infra.db import DatabaseState
from service.models import Article, AuditEntry, Comment
from tests.factories import TestUser, make_article, make_comment

MakeUser = Callable[..., Awaitable[TestUser]]


def sessionmaker(app: ConduitASGI) -> Any:
    state: DatabaseState = app.flask_app.extensions["conduit.db"]
    assert state.sessionmaker is not None
    return state.sessionmaker


async def user_with_role(app: ConduitASGI, make_user: MakeUser, role: str, **kw: Any) -> TestUser:
    return await make_user(role=role, **kw)


async def audit_rows(app: ConduitASGI) -> list[AuditEntry]:
    async with sessionmaker(app)() as session:
        return list(await session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


async def count(app: ConduitASGI, model: type[Article] | type[Comment]) -> int:
    async with sessionmaker(app)() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
async def author(make_user: MakeUser) -> TestUser:
    return await make_user(username="jake")


@pytest.mark.parametrize("role", ["moderator", "admin"])
async def test_moderators_and_admins_delete_anyones_article(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser, author: TestUser, role: str
) -> None:
    moderator = await user_with_role(app, make_user, role, username="mod")
    slug = (await make_article(client, author, title="How to train your dragon"))["slug"]
    await make_comment(client, author, slug)

    response = await client.delete(f"/api/v1/articles/{slug}", headers=moderator.headers)
    assert response.status_code == 204
    assert (await client.get(f"/api/v1/articles/{slug}")).status_code == 404
    assert await count(app, Comment) == 0
    [entry] = await audit_rows(app)
    assert (entry.actor_id, entry.action, entry.target_type, entry.target_id) == (
        moderator.id,
        "article.delete",
        "article",
        slug,
    )
    assert entry.details == '{"author":"jake","title":"How to train your dragon"}'


@pytest.mark.parametrize("role", ["moderator", "admin"])
async def test_moderators_and_admins_delete_anyones_comment(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser, author: TestUser, role: str
) -> None:
    moderator = await user_with_role(app, make_user, role, username="mod")
    slug = (await make_article(client, author))["slug"]
    comment_id = (await make_comment(client, author, slug))["id"]
    kept = (await make_comment(client, author, slug))["id"]

    response = await client.delete(
        f"/api/v1/articles/{slug}/comments/{comment_id}", headers=moderator.headers
    )
    assert response.status_code == 204
    listed = (await client.get(f"/api/v1/articles/{slug}/comments")).json()["comments"]
    assert [comment["id"] for comment in listed] == [kept]
    [entry] = await audit_rows(app)
    assert (entry.actor_id, entry.action, entry.target_type, entry.target_id) == (
        moderator.id,
        "comment.delete",
        "comment",
        str(comment_id),
    )
    assert entry.details == f'{{"article":"{slug}","author":"jake"}}'


async def test_moderation_actions_appear_in_the_audit_log(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser, author: TestUser
) -> None:
    moderator = await user_with_role(app, make_user, "moderator", username="mod")
    admin = await user_with_role(app, make_user, "admin", username="boss")
    slug = (await make_article(client, author, title="Dragons"))["slug"]
    comment_id = (await make_comment(client, author, slug))["id"]
    path = f"/api/v1/articles/{slug}"
    assert (
        await client.delete(f"{path}/comments/{comment_id}", headers=moderator.headers)
    ).status_code == 204
    assert (await client.delete(path, headers=moderator.headers)).status_code == 204

    response = await client.get(
        "/api/v1/admin/audit", params={"actor": "mod"}, headers=admin.headers
    )
    assert response.status_code == 200
    entries = response.json()["entries"]
    assert [
        (e["actor"], e["action"], e["targetType"], e["targetId"], e["details"]) for e in entries
    ] == [
        ("mod", "article.delete", "article", slug, {"author": "jake", "title": "Dragons"}),
        ("mod", "comment.delete", "comment", str(comment_id), {"article": slug, "author": "jake"}),
    ]


async def test_plain_users_cannot_delete_someone_elses_content(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser, author: TestUser
) -> None:
    plain = await make_user(username="plain")
    slug = (await make_article(client, author))["slug"]
    comment_id = (await make_comment(client, author, slug))["id"]

    response = await client.delete(f"/api/v1/articles/{slug}", headers=plain.headers)
    assert response.status_code == 403
    assert response.json() == {"errors": {"article": ["only the author may change this article"]}}
    response = await client.delete(
        f"/api/v1/articles/{slug}/comments/{comment_id}", headers=plain.headers
    )
    assert response.status_code == 403
    assert response.json() == {"errors": {"comment": ["only the author may delete this comment"]}}
    assert (await count(app, Article), await count(app, Comment)) == (1, 1)
    assert await audit_rows(app) == []


async def test_moderation_needs_a_token(client: httpx.AsyncClient, author: TestUser) -> None:
    slug = (await make_article(client, author))["slug"]
    comment_id = (await make_comment(client, author, slug))["id"]
    assert (await client.delete(f"/api/v1/articles/{slug}")).status_code == 401
    response = await client.delete(f"/api/v1/articles/{slug}/comments/{comment_id}")
    assert response.status_code == 401


async def test_authors_deleting_their_own_content_are_not_audited(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    # Even a moderator's own deletions are ordinary author actions.
    moderator = await user_with_role(app, make_user, "moderator", username="mod")
    slug = (await make_article(client, moderator))["slug"]
    comment_id = (await make_comment(client, moderator, slug))["id"]
    response = await client.delete(
        f"/api/v1/articles/{slug}/comments/{comment_id}", headers=moderator.headers
    )
    assert response.status_code == 204
    assert (
        await client.delete(f"/api/v1/articles/{slug}", headers=moderator.headers)
    ).status_code == 204
    assert await audit_rows(app) == []


async def test_moderators_get_404_for_missing_content(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser, author: TestUser
) -> None:
    moderator = await user_with_role(app, make_user, "moderator", username="mod")
    slug = (await make_article(client, author, title="One"))["slug"]
    other = (await make_article(client, author, title="Two"))["slug"]
    comment_id = (await make_comment(client, author, other))["id"]

    response = await client.delete("/api/v1/articles/no-such-article", headers=moderator.headers)
    assert response.status_code == 404
    for path in (
        f"/api/v1/articles/{slug}/comments/{comment_id}",  # a comment on another article
        f"/api/v1/articles/{slug}/comments/999999",
        f"/api/v1/articles/{slug}/comments/{2**63}",
    ):
        response = await client.delete(path, headers=moderator.headers)
        assert response.status_code == 404, path
        assert response.json() == {"errors": {"comment": ["comment not found"]}}
    assert await count(app, Comment) == 1
    assert await audit_rows(app) == []


async def test_moderators_may_delete_but_not_edit_others_articles(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser, author: TestUser
) -> None:
    moderator = await user_with_role(app, make_user, "moderator", username="mod")
    slug = (await make_article(client, author))["slug"]
    response = await client.put(
        f"/api/v1/articles/{slug}",
        json={"article": {"body": "vandalised"}},
        headers=moderator.headers,
    )
    assert response.status_code == 403
