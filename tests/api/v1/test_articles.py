"""Articles: create, read, list (filters, paging), feed, update, delete."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import func, select

from service.app import ConduitASGI
from service.infra.db import DatabaseState
from service.models import Article, ArticleTag, Comment, Favorite
from tests.factories import TestUser, follow, make_article

MakeUser = Callable[..., Awaitable[TestUser]]
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SUMMARY_KEYS = {
    "slug",
    "title",
    "description",
    "tagList",
    "createdAt",
    "updatedAt",
    "favorited",
    "favoritesCount",
    "author",
}


def new_article(**fields: Any) -> dict[str, Any]:
    article = {"title": "How to train your dragon", "description": "Ever wonder how?"}
    article["body"] = "You have to believe"
    return {"article": {**article, **fields}}


async def count_rows(app: ConduitASGI, model: Any, *where: Any) -> int:
    state: DatabaseState = app.flask_app.extensions["conduit.db"]
    assert state.sessionmaker is not None
    async with state.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def slugs_of(response: httpx.Response) -> list[str]:
    return [article["slug"] for article in response.json()["articles"]]


# --- create -------------------------------------------------------------------------------


async def test_create_returns_201_with_the_article(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake = await make_user(username="jake", bio="I work at statefarm", image="https://i/x.jpg")
    response = await client.post(
        "/api/v1/articles",
        json=new_article(tagList=["training", "dragons"]),
        headers=jake.headers,
    )
    assert response.status_code == 201
    article = response.json()["article"]
    created, updated = article.pop("createdAt"), article.pop("updatedAt")
    assert TIMESTAMP.match(created)
    assert created == updated
    assert article == {
        "slug": "how-to-train-your-dragon",
        "title": "How to train your dragon",
        "description": "Ever wonder how?",
        "body": "You have to believe",
        "tagList": ["dragons", "training"],
        "favorited": False,
        "favoritesCount": 0,
        "author": {
            "username": "jake",
            "bio": "I work at statefarm",
            "image": "https://i/x.jpg",
            "following": False,
        },
    }


async def test_create_without_tags_has_empty_tag_list(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    article = await make_article(client, user)
    assert article["tagList"] == []
    assert article["author"]["bio"] == ""
    assert article["author"]["image"] == ""


async def test_create_requires_a_token(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/articles", json=new_article())
    assert response.status_code == 401
    assert list(response.json()["errors"]) == ["token"]


async def test_create_rejects_a_bad_token(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/articles", json=new_article(), headers={"Authorization": "Token nope"}
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("article", "field"),
    [
        ({"description": "d", "body": "b"}, "title"),
        ({"title": "t", "body": "b"}, "description"),
        ({"title": "t", "description": "d"}, "body"),
        ({"title": "   ", "description": "d", "body": "b"}, "title"),
        ({"title": "t", "description": "", "body": "b"}, "description"),
        ({"title": "t", "description": "d", "body": " \n\t "}, "body"),
        ({"title": "x" * 201, "description": "d", "body": "b"}, "title"),
        # Lengths count what was sent (as the schema's maxLength does), before trimming.
        ({"title": " " + "x" * 200, "description": "d", "body": "b"}, "title"),
        # Whitespace is what str.isspace() says, documented as an explicit class.
        ({"title": "\u3000\u2028\x1c", "description": "d", "body": "b"}, "title"),
        ({"title": "t", "description": "\xa0\x85", "body": "b"}, "description"),
        ({"title": "t", "description": "d", "body": "\u2003"}, "body"),
        ({"title": "t", "description": "d", "body": "b", "tagList": ["\u205f"]}, "tagList.0"),
        ({"title": "t", "description": "x" * 1001, "body": "b"}, "description"),
        ({"title": "t", "description": "d", "body": "x" * 100_001}, "body"),
        ({"title": 123, "description": "d", "body": "b"}, "title"),
        ({"title": None, "description": "d", "body": "b"}, "title"),
        ({"title": ["t"], "description": "d", "body": "b"}, "title"),
        ({"title": "t", "description": {"a": 1}, "body": "b"}, "description"),
        ({"title": "t", "description": "d", "body": True}, "body"),
        ({"title": "t\x00", "description": "d", "body": "b"}, "title"),
        ({"title": "t", "description": "d\x00", "body": "b"}, "description"),
        ({"title": "t", "description": "d", "body": "b\x00"}, "body"),
        ({"title": "t", "description": "d", "body": "b", "tagList": "dragons"}, "tagList"),
        ({"title": "t", "description": "d", "body": "b", "tagList": None}, "tagList"),
        ({"title": "t", "description": "d", "body": "b", "tagList": [1]}, "tagList.0"),
        ({"title": "t", "description": "d", "body": "b", "tagList": ["ok", " "]}, "tagList.1"),
        ({"title": "t", "description": "d", "body": "b", "tagList": ["x" * 65]}, "tagList.0"),
        ({"title": "t", "description": "d", "body": "b", "tagList": ["a\x00"]}, "tagList.0"),
        (
            {
                "title": "t",
                "description": "d",
                "body": "b",
                "tagList": [f"t{i}" for i in range(21)],
            },
            "tagList",
        ),
    ],
)
async def test_create_validation_names_the_field(
    client: httpx.AsyncClient, make_user: MakeUser, article: dict[str, Any], field: str
) -> None:
    user = await make_user()
    response = await client.post(
        "/api/v1/articles", json={"article": article}, headers=user.headers
    )
    assert response.status_code == 422, response.text
    assert field in response.json()["errors"]
    assert await count_rows_via_client(client) == 0


async def count_rows_via_client(client: httpx.AsyncClient) -> int:
    count: int = (await client.get("/api/v1/articles")).json()["articlesCount"]
    return count


@pytest.mark.parametrize("payload", [{}, {"article": "x"}, {"article": None}, [], "text", 1])
async def test_create_wrong_envelope_is_422(
    client: httpx.AsyncClient, make_user: MakeUser, payload: Any
) -> None:
    user = await make_user()
    response = await client.post("/api/v1/articles", json=payload, headers=user.headers)
    assert response.status_code == 422
    assert response.json()["errors"]


async def test_create_malformed_json_is_400(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    response = await client.post(
        "/api/v1/articles",
        content=b'{"article": {"title": ',
        headers={**user.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert "errors" in response.json()


async def test_create_lone_surrogate_is_400(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    response = await client.post(
        "/api/v1/articles",
        content=b'{"article": {"title": "\\ud800", "description": "d", "body": "b"}}',
        headers={**user.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400


async def test_create_non_json_is_415(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    response = await client.post(
        "/api/v1/articles",
        content=b"title=x",
        headers={**user.headers, "Content-Type": "text/plain"},
    )
    assert response.status_code == 415


async def test_create_accepts_limits_exactly(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    article = await make_article(
        client,
        user,
        title="T" * 200,
        description="d" * 1000,
        body="b" * 100_000,
        tags=[f"{i:02d}" + "x" * 62 for i in range(20)],
    )
    assert len(article["title"]) == 200
    assert len(article["body"]) == 100_000
    assert len(article["tagList"]) == 20
    assert len(article["slug"]) <= 200


async def test_create_stores_text_verbatim(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    title = "Robert'); DROP TABLE articles;-- %_\\ 日本語 🐉"
    body = "    indented code\n\n* list with 'quotes' and \"double\" -- ; \\ %"
    article = await make_article(
        client,
        user,
        title=f"  {title}  ",
        description="  <script>alert(1)</script> ' OR 1=1 --  ",
        body=body,
        tags=["  sql'; DROP TABLE tags;--  ", "ünïcödé", "%_"],
    )
    assert article["title"] == title
    assert article["description"] == "<script>alert(1)</script> ' OR 1=1 --"
    assert article["body"] == body
    assert article["tagList"] == ["%_", "sql'; DROP TABLE tags;--", "ünïcödé"]
    response = await client.get(f"/api/v1/articles/{quote(article['slug'])}")
    assert response.status_code == 200
    assert response.json()["article"]["title"] == title
    tags = (await client.get("/api/v1/tags")).json()["tags"]
    assert tags == ["%_", "sql'; DROP TABLE tags;--", "ünïcödé"]


async def test_tags_are_trimmed_deduplicated_and_sorted(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    article = await make_article(client, user, tags=[" b ", "a", "b", "A", "B", "c", "a"])
    assert article["tagList"] == ["A", "a", "B", "b", "c"]
    fetched = (await client.get(f"/api/v1/articles/{article['slug']}")).json()["article"]
    assert fetched["tagList"] == ["A", "a", "B", "b", "c"]


# --- slugs --------------------------------------------------------------------------------


async def test_slug_keeps_unicode_letters(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    article = await make_article(client, user, title="Ça va? 日本語!")
    assert article["slug"] == "ça-va-日本語"
    response = await client.get(f"/api/v1/articles/{quote(article['slug'])}")
    assert response.status_code == 200
    assert response.json()["article"]["title"] == "Ça va? 日本語!"


async def test_same_title_gets_numbered_slugs(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    slugs = [(await make_article(client, user, title="Same title"))["slug"] for _ in range(3)]
    assert slugs == ["same-title", "same-title-2", "same-title-3"]


async def test_concurrent_creates_with_one_title_all_succeed(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    users = [await make_user() for _ in range(2)]
    responses = await asyncio.gather(
        *(
            client.post(
                "/api/v1/articles",
                json=new_article(title="Race", tagList=["shared", f"own{i}"]),
                headers=users[i % 2].headers,
            )
            for i in range(10)
        )
    )
    assert [r.status_code for r in responses] == [201] * 10
    slugs = {r.json()["article"]["slug"] for r in responses}
    assert len(slugs) == 10
    assert "race" in slugs
    listed = await client.get("/api/v1/articles", params={"tag": "shared"})
    assert listed.json()["articlesCount"] == 10


async def test_title_without_letters_gets_a_fallback_slug(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    article = await make_article(client, user, title="?!? ...")
    assert article["slug"] == "article"


async def test_title_feed_does_not_hide_behind_the_feed_route(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    article = await make_article(client, user, title="Feed")
    assert article["slug"] == "feed-2"
    response = await client.get("/api/v1/articles/feed-2")
    assert response.json()["article"]["title"] == "Feed"


async def test_feed_is_not_a_slug(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()

    options = await client.options("/api/v1/articles/feed")
    # Only the feed's own methods: the slug routes do not match "feed".
    assert options.status_code == 200
    assert set(options.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    for method in ("PUT", "PATCH", "DELETE"):
        response = await client.request(method, "/api/v1/articles/feed", headers=user.headers)
        assert response.status_code == 405
        assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    for path in ("/api/v1/articles/feed/comments", "/api/v1/articles/feed/favorite"):
        response = await client.post(path, json={}, headers=user.headers)
        assert response.status_code == 404
        assert response.json() == {"errors": {"body": ["not found"]}}
    # Only the exact segment is excluded.
    for slug in ("feeds", "xfeed", "Feed", "feed%0A"):
        response = await client.get(f"/api/v1/articles/{slug}")
        assert response.status_code == 404
        assert response.json() == {"errors": {"article": ["article not found"]}}


async def test_openapi_slug_parameter_excludes_feed(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/api/v1/openapi.json")).json()["paths"]

    slug_paths = [path for path in paths if "{slug}" in path]
    assert len(slug_paths) == 4
    for path in slug_paths:
        for operation in paths[path].values():
            slug = next(p for p in operation["parameters"] if p["name"] == "slug")
            assert slug["in"] == "path"
            assert slug["required"] is True
            assert slug["schema"]["type"] == "string"
            assert slug["schema"]["pattern"] == "^(?!(?:feed)$)[^/]+$"


# --- read ---------------------------------------------------------------------------------


async def test_get_article_anonymously(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    user = await make_user(username="jake")
    created = await make_article(client, user, tags=["x"])
    response = await client.get(f"/api/v1/articles/{created['slug']}")
    assert response.status_code == 200
    assert response.json() == {"article": created}


async def test_get_article_shows_following_for_the_viewer(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    author, fan, other = await make_user(), await make_user(), await make_user()
    created = await make_article(client, author)
    await follow(app, fan, author)
    url = f"/api/v1/articles/{created['slug']}"
    assert (await client.get(url, headers=fan.headers)).json()["article"]["author"]["following"]
    assert not (await client.get(url, headers=other.headers)).json()["article"]["author"][
        "following"
    ]
    assert not (await client.get(url)).json()["article"]["author"]["following"]


@pytest.mark.parametrize(
    "slug", ["nope", "%00", "a%00b", "x" * 5000, "'%3B DROP TABLE articles;--", "%F0%9F%90%89"]
)
async def test_get_unknown_article_is_404(client: httpx.AsyncClient, slug: str) -> None:
    response = await client.get(f"/api/v1/articles/{slug}")
    assert response.status_code == 404
    assert response.json() == {"errors": {"article": ["article not found"]}}


async def test_get_article_with_a_bad_token_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/articles/x", headers={"Authorization": "Token bad"})
    assert response.status_code == 401


# --- list ---------------------------------------------------------------------------------


async def test_list_is_empty_without_articles(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/articles")
    assert response.status_code == 200
    assert response.json() == {"articles": [], "articlesCount": 0}


async def test_list_items_have_no_body_and_newest_first(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user(username="jake")
    first = await make_article(client, user, title="First", tags=["b", "a"])
    second = await make_article(client, user, title="Second")
    response = await client.get("/api/v1/articles")
    assert response.status_code == 200
    data = response.json()
    assert data["articlesCount"] == 2
    assert [a["slug"] for a in data["articles"]] == [second["slug"], first["slug"]]
    for item in data["articles"]:
        assert set(item) == SUMMARY_KEYS
        assert TIMESTAMP.match(item["createdAt"])
        assert TIMESTAMP.match(item["updatedAt"])
    expected = {key: value for key, value in first.items() if key != "body"}
    assert data["articles"][1] == expected
    assert data["articles"][1]["tagList"] == ["a", "b"]


async def test_list_filters_alone_and_combined(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    jake, jane = await make_user(username="jake"), await make_user(username="jane")
    a1 = (await make_article(client, jake, title="a1", tags=["dragons"]))["slug"]
    a2 = (await make_article(client, jake, title="a2", tags=["training"]))["slug"]
    b1 = (await make_article(client, jane, title="b1", tags=["dragons", "training"]))["slug"]
    for slug in (a1, b1):
        favorite = await client.post(f"/api/v1/articles/{slug}/favorite", headers=jane.headers)
        assert favorite.status_code == 200

    async def slugs(**params: str) -> list[str]:
        response = await client.get("/api/v1/articles", params=params)
        assert response.status_code == 200
        assert response.json()["articlesCount"] == len(response.json()["articles"])
        return slugs_of(response)

    assert await slugs() == [b1, a2, a1]
    assert await slugs(tag="dragons") == [b1, a1]
    assert await slugs(author="jake") == [a2, a1]
    assert await slugs(author="JAKE") == [a2, a1]
    assert await slugs(favorited="jane") == [b1, a1]
    assert await slugs(tag="training", author="jake") == [a2]
    assert await slugs(tag="dragons", favorited="jane") == [b1, a1]
    assert await slugs(author="jake", favorited="jane") == [a1]
    assert await slugs(tag="training", author="jake", favorited="jane") == []
    assert await slugs(tag="Dragons") == []
    assert await slugs(favorited="jake") == []
    assert await slugs(tag="", author="", favorited="") == [b1, a2, a1]


@pytest.mark.parametrize("param", ["tag", "author", "favorited"])
@pytest.mark.parametrize(
    "value",
    ["nobody", "' OR 1=1 --", "%", "_", "\\", "日本語🐉", "x" * 5000, " dragons", "a;b"],
)
async def test_list_unknown_filter_values_give_empty_200(
    client: httpx.AsyncClient, make_user: MakeUser, param: str, value: str
) -> None:
    user = await make_user(username="jake")
    await make_article(client, user, tags=["dragons"])
    response = await client.get("/api/v1/articles", params={param: value})
    assert response.status_code == 200
    assert response.json() == {"articles": [], "articlesCount": 0}


@pytest.mark.parametrize("param", ["tag", "author", "favorited"])
async def test_list_nul_in_filter_is_422(client: httpx.AsyncClient, param: str) -> None:
    response = await client.get(f"/api/v1/articles?{param}=a%00b")
    assert response.status_code == 422
    assert list(response.json()["errors"]) == [param]


async def test_list_paging(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    created = [(await make_article(client, user, title=f"p{i}"))["slug"] for i in range(5)]
    newest_first = created[::-1]

    async def page(**params: int) -> httpx.Response:
        response = await client.get("/api/v1/articles", params=params)
        assert response.status_code == 200
        return response

    assert slugs_of(await page(limit=2)) == newest_first[:2]
    assert slugs_of(await page(limit=2, offset=2)) == newest_first[2:4]
    assert slugs_of(await page(limit=2, offset=4)) == newest_first[4:]
    assert slugs_of(await page(offset=1)) == newest_first[1:]
    assert slugs_of(await page(limit=1)) == newest_first[:1]
    assert slugs_of(await page(limit=100)) == newest_first
    for params in ({"offset": 5}, {"offset": 10_000_000}, {"limit": 3, "offset": 4}):
        response = await page(**params)
        expected = newest_first[params["offset"] :][: params.get("limit", 20)]
        assert slugs_of(response) == expected
        assert response.json()["articlesCount"] == 5


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=", "limit"),
        ("limit=1.5", "limit"),
        ("limit=99999999999999999999999", "limit"),
        ("offset=-1", "offset"),
        ("offset=abc", "offset"),
        ("offset=10000001", "offset"),
        # Integers as a schema's `integer` reads them: a sign and ASCII digits, nothing else.
        ("limit=5.0", "limit"),
        ("limit=%205", "limit"),
        ("limit=5%20", "limit"),
        ("limit=5_0", "limit"),
        ("limit=0x5", "limit"),
        ("limit=%D9%A5", "limit"),
        ("offset=1e3", "offset"),
        ("offset=" + "9" * 5000, "offset"),
    ],
)
async def test_list_bad_paging_is_422(client: httpx.AsyncClient, query: str, field: str) -> None:
    for path in ("/api/v1/articles",):
        response = await client.get(f"{path}?{query}")
        assert response.status_code == 422
        assert list(response.json()["errors"]) == [field]


@pytest.mark.parametrize(
    ("query", "count"),
    [("limit=%2B2", 2), ("limit=02", 2), ("offset=-0", 3), ("offset=" + "0" * 5000 + "1", 2)],
)
async def test_list_paging_reads_signs_and_leading_zeros(
    client: httpx.AsyncClient, make_user: MakeUser, query: str, count: int
) -> None:
    user = await make_user()
    for i in range(3):
        await make_article(client, user, title=f"p{i}")

    response = await client.get(f"/api/v1/articles?{query}")

    assert response.status_code == 200
    assert len(response.json()["articles"]) == count


async def test_list_favorited_is_per_viewer(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    author, fan, other = await make_user(), await make_user(), await make_user()
    slug = (await make_article(client, author))["slug"]
    await client.post(f"/api/v1/articles/{slug}/favorite", headers=fan.headers)
    for headers, favorited in ((fan.headers, True), (other.headers, False), ({}, False)):
        item = (await client.get("/api/v1/articles", headers=headers)).json()["articles"][0]
        assert item["favorited"] is favorited
        assert item["favoritesCount"] == 1


# --- feed ---------------------------------------------------------------------------------


async def test_feed_lists_followed_authors_only(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    reader, followed, ignored = await make_user(), await make_user(), await make_user()
    await follow(app, reader, followed)
    old = (await make_article(client, followed, title="old"))["slug"]
    await make_article(client, ignored, title="ignored")
    await make_article(client, reader, title="own")
    new = (await make_article(client, followed, title="new"))["slug"]
    response = await client.get("/api/v1/articles/feed", headers=reader.headers)
    assert response.status_code == 200
    data = response.json()
    assert data["articlesCount"] == 2
    assert slugs_of(response) == [new, old]
    for item in data["articles"]:
        assert set(item) == SUMMARY_KEYS
        assert item["author"]["following"] is True
    paged = await client.get("/api/v1/articles/feed?limit=1&offset=1", headers=reader.headers)
    assert slugs_of(paged) == [old]
    assert paged.json()["articlesCount"] == 2
    past = await client.get("/api/v1/articles/feed?offset=50", headers=reader.headers)
    assert past.json() == {"articles": [], "articlesCount": 2}


async def test_feed_is_empty_without_follows(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    reader, author = await make_user(), await make_user()
    await make_article(client, author)
    response = await client.get("/api/v1/articles/feed", headers=reader.headers)
    assert response.json() == {"articles": [], "articlesCount": 0}


async def test_feed_requires_a_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/articles/feed")).status_code == 401


@pytest.mark.parametrize(("query", "field"), [("limit=0", "limit"), ("offset=x", "offset")])
async def test_feed_bad_paging_is_422(
    client: httpx.AsyncClient, make_user: MakeUser, query: str, field: str
) -> None:
    reader = await make_user()
    response = await client.get(f"/api/v1/articles/feed?{query}", headers=reader.headers)
    assert response.status_code == 422
    assert list(response.json()["errors"]) == [field]


# --- update -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_update_changes_only_given_fields(
    client: httpx.AsyncClient, make_user: MakeUser, method: str
) -> None:
    user = await make_user()
    created = await make_article(client, user, tags=["keep"])
    response = await client.request(
        method,
        f"/api/v1/articles/{created['slug']}",
        json={"article": {"body": "With two hands", "title": "  A new title  "}},
        headers=user.headers,
    )
    assert response.status_code == 200
    article = response.json()["article"]
    assert article["body"] == "With two hands"
    assert article["title"] == "A new title"
    assert article["slug"] == created["slug"]  # slugs are stable across title edits
    assert article["description"] == created["description"]
    assert article["tagList"] == ["keep"]
    assert article["createdAt"] == created["createdAt"]
    assert article["updatedAt"] > created["updatedAt"]
    fetched = await client.get(f"/api/v1/articles/{created['slug']}")
    assert fetched.json()["article"] == article


async def test_update_replaces_and_clears_tags(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    slug = (await make_article(client, user, tags=["old", "both"]))["slug"]
    url = f"/api/v1/articles/{slug}"
    response = await client.put(
        url, json={"article": {"tagList": ["new", "both", " new "]}}, headers=user.headers
    )
    assert response.json()["article"]["tagList"] == ["both", "new"]
    assert (await client.get("/api/v1/tags")).json()["tags"] == ["both", "new"]
    response = await client.patch(url, json={"article": {"tagList": []}}, headers=user.headers)
    assert response.json()["article"]["tagList"] == []
    assert (await client.get("/api/v1/tags")).json()["tags"] == []


async def test_update_with_nothing_changes_nothing(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    created = await make_article(client, user)
    response = await client.put(
        f"/api/v1/articles/{created['slug']}",
        json={"article": {"unknown": "ignored"}},
        headers=user.headers,
    )
    assert response.status_code == 200
    assert response.json()["article"] == created


@pytest.mark.parametrize(
    ("article", "field"),
    [
        ({"title": ""}, "title"),
        ({"title": None}, "title"),
        ({"description": None}, "description"),
        ({"body": None}, "body"),
        ({"tagList": None}, "tagList"),
        ({"body": "   "}, "body"),
        ({"title": 5}, "title"),
        ({"title": "x" * 201}, "title"),
        ({"tagList": ["x" * 65]}, "tagList.0"),
    ],
)
async def test_update_validation_names_the_field(
    client: httpx.AsyncClient, make_user: MakeUser, article: dict[str, Any], field: str
) -> None:
    user = await make_user()
    created = await make_article(client, user)
    response = await client.put(
        f"/api/v1/articles/{created['slug']}", json={"article": article}, headers=user.headers
    )
    assert response.status_code == 422
    assert list(response.json()["errors"]) == [field]
    unchanged = await client.get(f"/api/v1/articles/{created['slug']}")
    assert unchanged.json()["article"] == created


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_update_by_another_user_is_403(
    client: httpx.AsyncClient, make_user: MakeUser, method: str
) -> None:
    author, intruder = await make_user(), await make_user()
    created = await make_article(client, author)
    response = await client.request(
        method,
        f"/api/v1/articles/{created['slug']}",
        json={"article": {"title": "Hijacked"}},
        headers=intruder.headers,
    )
    assert response.status_code == 403
    assert list(response.json()["errors"]) == ["article"]
    fetched = await client.get(f"/api/v1/articles/{created['slug']}")
    assert fetched.json()["article"]["title"] == created["title"]


async def test_update_unknown_article_is_404(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    for slug in ("nope", "a%00b"):
        response = await client.put(
            f"/api/v1/articles/{slug}", json={"article": {"title": "x"}}, headers=user.headers
        )
        assert response.status_code == 404


async def test_update_requires_a_token(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    user = await make_user()
    created = await make_article(client, user)
    response = await client.put(
        f"/api/v1/articles/{created['slug']}", json={"article": {"title": "x"}}
    )
    assert response.status_code == 401


# --- delete -------------------------------------------------------------------------------


async def test_delete_cascades_and_is_not_repeatable(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    author, fan = await make_user(), await make_user()
    slug = (await make_article(client, author, tags=["gone"]))["slug"]
    kept = (await make_article(client, author, title="kept", tags=["stays"]))["slug"]
    await client.post(f"/api/v1/articles/{slug}/favorite", headers=fan.headers)
    await client.post(
        f"/api/v1/articles/{slug}/comments", json={"comment": {"body": "hi"}}, headers=fan.headers
    )
    article_id = await _article_id(app, slug)
    response = await client.delete(f"/api/v1/articles/{slug}", headers=author.headers)
    assert response.status_code == 204
    assert response.content == b""
    assert (await client.get(f"/api/v1/articles/{slug}")).status_code == 404
    assert await count_rows(app, Comment, Comment.article_id == article_id) == 0
    assert await count_rows(app, Favorite, Favorite.article_id == article_id) == 0
    assert await count_rows(app, ArticleTag, ArticleTag.article_id == article_id) == 0
    assert (await client.get("/api/v1/tags")).json()["tags"] == ["stays"]
    assert (await client.get(f"/api/v1/articles/{kept}")).status_code == 200
    again = await client.delete(f"/api/v1/articles/{slug}", headers=author.headers)
    assert again.status_code == 404


async def _article_id(app: ConduitASGI, slug: str) -> int:
    state: DatabaseState = app.flask_app.extensions["conduit.db"]
    assert state.sessionmaker is not None
    async with state.sessionmaker() as session:
        found = await session.scalar(select(Article.id).where(Article.slug == slug))
    assert found is not None
    return found


async def test_delete_by_another_user_is_403(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    author, intruder = await make_user(), await make_user()
    slug = (await make_article(client, author))["slug"]
    response = await client.delete(f"/api/v1/articles/{slug}", headers=intruder.headers)
    assert response.status_code == 403
    assert (await client.get(f"/api/v1/articles/{slug}")).status_code == 200


async def test_delete_requires_a_token(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    slug = (await make_article(client, await make_user()))["slug"]
    assert (await client.delete(f"/api/v1/articles/{slug}")).status_code == 401
    assert (await client.get(f"/api/v1/articles/{slug}")).status_code == 200


async def test_delete_unknown_article_is_404(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    response = await client.delete("/api/v1/articles/nope", headers=user.headers)
    assert response.status_code == 404
