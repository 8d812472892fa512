"""GET /api/v1/tags."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from tests.factories import TestUser, make_article

MakeUser = Callable[..., Awaitable[TestUser]]


async def test_tags_empty_without_articles(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/tags")
    assert response.status_code == 200
    assert response.json() == {"tags": []}


async def test_tags_in_use_once_each_alphabetically(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    await make_article(client, user, tags=["training", "dragons", "Zebra"])
    await make_article(client, user, tags=["dragons", "ängste", "apples", "Apples"])
    response = await client.get("/api/v1/tags")
    assert response.status_code == 200
    assert response.json() == {
        "tags": ["Apples", "apples", "dragons", "training", "Zebra", "ängste"]
    }


async def test_tags_of_deleted_or_retagged_articles_disappear(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    deleted = (await make_article(client, user, tags=["only-deleted", "shared"]))["slug"]
    retagged = (await make_article(client, user, tags=["only-retagged", "shared"]))["slug"]
    assert (
        await client.delete(f"/api/v1/articles/{deleted}", headers=user.headers)
    ).status_code == 204
    response = await client.put(
        f"/api/v1/articles/{retagged}",
        json={"article": {"tagList": ["shared"]}},
        headers=user.headers,
    )
    assert response.status_code == 200
    assert (await client.get("/api/v1/tags")).json() == {"tags": ["shared"]}


async def test_tags_ignore_a_token(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    await make_article(client, user, tags=["x"])
    response = await client.get("/api/v1/tags", headers=user.headers)
    assert response.json() == {"tags": ["x"]}
