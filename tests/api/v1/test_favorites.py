"""POST/DELETE /api/v1/articles/{slug}/favorite."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from service.app import ConduitASGI
from service.infra.db import DatabaseState
from service.models import Favorite
from tests.factories import TestUser, make_article

MakeUser = Callable[..., Awaitable[TestUser]]


async def favorite(
    client: httpx.AsyncClient, method: str, slug: str, user: TestUser
) -> dict[str, Any]:
    response = await client.request(
        method, f"/api/v1/articles/{slug}/favorite", headers=user.headers
    )
    assert response.status_code == 200, response.text
    article: dict[str, Any] = response.json()["article"]
    return article


async def favorite_rows(app: ConduitASGI) -> int:
    state: DatabaseState = app.flask_app.extensions["conduit.db"]
    assert state.sessionmaker is not None
    async with state.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(Favorite)) or 0)


async def test_favorite_returns_the_whole_article(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    author, fan = await make_user(username="author"), await make_user()
    slug = (await make_article(client, author, tags=["t"]))["slug"]
    article = await favorite(client, "POST", slug, fan)
    assert article["favorited"] is True
    assert article["favoritesCount"] == 1
    assert article["body"] == "b"
    assert article["slug"] == slug
    assert article["tagList"] == ["t"]
    assert article["author"] == {"username": "author", "bio": "", "image": "", "following": False}


async def test_favorite_and_unfavorite_are_idempotent(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    author, fan = await make_user(), await make_user()
    slug = (await make_article(client, author, tags=["t"]))["slug"]
    for _ in range(2):
        article = await favorite(client, "POST", slug, fan)
        assert (article["favorited"], article["favoritesCount"]) == (True, 1)
    assert await favorite_rows(app) == 1
    for _ in range(2):
        article = await favorite(client, "DELETE", slug, fan)
        assert (article["favorited"], article["favoritesCount"]) == (False, 0)
    assert await favorite_rows(app) == 0


async def test_concurrent_favorites_by_one_user_count_once(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    author, fan = await make_user(), await make_user()
    slug = (await make_article(client, author, tags=["t"]))["slug"]
    responses = await asyncio.gather(
        *(client.post(f"/api/v1/articles/{slug}/favorite", headers=fan.headers) for _ in range(8))
    )
    assert [r.status_code for r in responses] == [200] * 8
    assert await favorite_rows(app) == 1


async def test_counts_and_favorited_are_per_viewer(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    author, a, b, c = [await make_user() for _ in range(4)]
    slug = (await make_article(client, author, tags=["t"]))["slug"]
    assert (await favorite(client, "POST", slug, a))["favoritesCount"] == 1
    article = await favorite(client, "POST", slug, b)
    assert (article["favorited"], article["favoritesCount"]) == (True, 2)
    url = f"/api/v1/articles/{slug}"
    seen_by_c = (await client.get(url, headers=c.headers)).json()["article"]
    assert (seen_by_c["favorited"], seen_by_c["favoritesCount"]) == (False, 2)
    seen_anonymously = (await client.get(url)).json()["article"]
    assert (seen_anonymously["favorited"], seen_anonymously["favoritesCount"]) == (False, 2)
    article = await favorite(client, "DELETE", slug, a)
    assert (article["favorited"], article["favoritesCount"]) == (False, 1)
    seen_by_b = (await client.get(url, headers=b.headers)).json()["article"]
    assert (seen_by_b["favorited"], seen_by_b["favoritesCount"]) == (True, 1)


async def test_unfavorite_without_favorite_is_fine(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    author, user = await make_user(), await make_user()
    slug = (await make_article(client, author, tags=["t"]))["slug"]
    article = await favorite(client, "DELETE", slug, user)
    assert (article["favorited"], article["favoritesCount"]) == (False, 0)


async def test_authors_may_favorite_their_own_article(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    author = await make_user()
    slug = (await make_article(client, author, tags=["t"]))["slug"]
    article = await favorite(client, "POST", slug, author)
    assert (article["favorited"], article["favoritesCount"]) == (True, 1)


async def test_favorited_filter_follows_favorites(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    author, fan = await make_user(), await make_user(username="fan")
    liked = (await make_article(client, author, title="liked", tags=["t"]))["slug"]
    await make_article(client, author, title="not liked", tags=["t"])
    await favorite(client, "POST", liked, fan)
    listed = (await client.get("/api/v1/articles?favorited=fan")).json()
    assert [a["slug"] for a in listed["articles"]] == [liked]
    assert listed["articlesCount"] == 1
    assert listed["articles"][0]["favoritesCount"] == 1
    assert listed["articles"][0]["favorited"] is False  # anonymous viewer
    await favorite(client, "DELETE", liked, fan)
    assert (await client.get("/api/v1/articles?favorited=fan")).json() == {
        "articles": [],
        "articlesCount": 0,
    }


@pytest.mark.parametrize("method", ["POST", "DELETE"])
async def test_favorite_requires_a_token(
    client: httpx.AsyncClient, make_user: MakeUser, method: str
) -> None:
    slug = (await make_article(client, await make_user(), tags=["t"]))["slug"]
    response = await client.request(method, f"/api/v1/articles/{slug}/favorite")
    assert response.status_code == 401


@pytest.mark.parametrize("method", ["POST", "DELETE"])
@pytest.mark.parametrize("slug", ["nope", "a%00b", "x" * 3000])
async def test_favorite_unknown_article_is_404(
    client: httpx.AsyncClient, make_user: MakeUser, method: str, slug: str
) -> None:
    user = await make_user()
    response = await client.request(
        method, f"/api/v1/articles/{slug}/favorite", headers=user.headers
    )
    assert response.status_code == 404
    assert response.json() == {"errors": {"article": ["article not found"]}}


async def test_favorites_racing_an_article_delete_never_fail_with_500(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    author = await make_user()
    fans = [await make_user() for _ in range(6)]
    for round_ in range(3):
        slug = (await make_article(client, author, title=f"race {round_}", tags=["t"]))["slug"]
        requests = [
            client.post(f"/api/v1/articles/{slug}/favorite", headers=fan.headers) for fan in fans
        ]
        requests.insert(3, client.delete(f"/api/v1/articles/{slug}", headers=author.headers))
        responses = await asyncio.gather(*requests)
        assert {r.status_code for r in responses} <= {200, 204, 404}
        assert responses[3].status_code == 204
    assert await favorite_rows(app) == 0
