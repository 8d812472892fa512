"""List endpoints run a fixed number of SQL statements, whatever the page size (no N+1)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest_asyncio

from service.app import ConduitASGI, create_asgi
from service.infra.db import DatabaseState
from service.infra.settings import Settings
from service.models import Article, ArticleTag, Comment, Favorite, Follow, Tag
from tests.apps import count_statements, running
from tests.factories import TestUser

MakeUser = Callable[..., Awaitable[TestUser]]
_numbers = itertools.count(1)


@pytest_asyncio.fixture(scope="module")
async def app(settings: Settings) -> AsyncIterator[ConduitASGI]:
    """These counts are about the database path (what a cache miss costs): no cache here.
    The data is also written straight to the database, which a cache would not notice."""
    async with running(
        create_asgi(settings.model_copy(update={"cache_enabled": False, "threads": 8}))
    ) as asgi:
        yield asgi


async def statements_for(
    app: ConduitASGI, client: httpx.AsyncClient, url: str, user: TestUser | None = None
) -> tuple[int, httpx.Response]:
    """Statements of one request in the steady state: after a first signed-in request."""
    if user is not None:
        await client.get("/api/v1/user", headers=user.headers)
    with count_statements(app) as statements:
        response = await client.get(url, headers=user.headers if user else {})
    assert response.status_code == 200, response.text
    return len(statements), response


async def add_articles(
    app: ConduitASGI, reader: TestUser, authors: list[TestUser], count: int
) -> Article:
    """`count` articles by the `authors` in turn, each tagged, favorited and commented twice;
    `reader` follows every author. Written directly: the API is not under test here."""
    state: DatabaseState = app.flask_app.extensions["conduit.db"]
    assert state.sessionmaker is not None
    async with state.sessionmaker() as session:
        tags = [Tag(name=f"tag{next(_numbers)}") for _ in range(3)]
        session.add_all(tags)
        articles = []
        for i in range(count):
            n = next(_numbers)
            author = authors[i % len(authors)]
            article = Article(
                slug=f"a{n}", title=f"A {n}", description="d", body="b", author_id=author.id
            )
            articles.append(article)
        session.add_all(articles)
        await session.flush()
        for i, article in enumerate(articles):
            session.add_all(ArticleTag(article_id=article.id, tag_id=tag.id) for tag in tags)
            session.add(Favorite(user_id=reader.id, article_id=article.id))
            session.add(Favorite(user_id=authors[(i + 1) % len(authors)].id, article_id=article.id))
        await session.commit()
        return articles[0]


async def add_comments(
    app: ConduitASGI, article_id: int, authors: list[TestUser], count: int
) -> None:
    state: DatabaseState = app.flask_app.extensions["conduit.db"]
    assert state.sessionmaker is not None
    async with state.sessionmaker() as session:
        session.add_all(
            Comment(body=f"c{i}", article_id=article_id, author_id=authors[i % len(authors)].id)
            for i in range(count)
        )
        await session.commit()


async def follow_all(app: ConduitASGI, reader: TestUser, authors: list[TestUser]) -> None:
    state: DatabaseState = app.flask_app.extensions["conduit.db"]
    assert state.sessionmaker is not None
    async with state.sessionmaker() as session:
        session.add_all(Follow(follower_id=reader.id, followee_id=a.id) for a in authors)
        await session.commit()


async def test_article_lists_cost_the_same_for_1_and_100_articles(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    reader = await make_user()
    first_authors = [await make_user()]
    more_authors = [await make_user() for _ in range(20)]
    await follow_all(app, reader, first_authors + more_authors)
    urls = [
        ("/api/v1/articles?limit=100", None),
        ("/api/v1/articles?limit=100", reader),
        ("/api/v1/articles?limit=100&tag=tag1", reader),
        ("/api/v1/articles/feed?limit=100", reader),
    ]

    await add_articles(app, reader, first_authors, 1)
    small = {}
    for url, user in urls:
        small[url, user], response = await statements_for(app, client, url, user)
        if "tag=" not in url:
            assert len(response.json()["articles"]) == 1

    await add_articles(app, reader, more_authors, 99)
    large = {}
    for url, user in urls:
        large[url, user], response = await statements_for(app, client, url, user)
        if "tag=" not in url:
            assert len(response.json()["articles"]) == 100
            item = response.json()["articles"][-1]
            assert item["favorited"] is (user is not None)
            assert item["favoritesCount"] == 2
            assert len(item["tagList"]) == 3
            assert item["author"]["following"] is (user is not None)

    assert large == small
    # Anonymous: the page, its total in the same statement. Signed in: + the viewer, read
    # with their marks for the shared (cacheable) page; the feed, never shared, has its marks
    # in the page's statement.
    assert list(small.values()) == [1, 2, 2, 2]


async def test_comment_list_costs_the_same_for_1_and_100_comments(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    reader = await make_user()
    authors = [await make_user() for _ in range(20)]
    await follow_all(app, reader, authors[:10])
    article = await add_articles(app, reader, authors, 1)
    url = f"/api/v1/articles/{article.slug}/comments"

    await add_comments(app, article.id, authors, 1)
    small_anonymous, _ = await statements_for(app, client, url)
    small_signed_in, response = await statements_for(app, client, url, reader)
    assert len(response.json()["comments"]) == 1

    await add_comments(app, article.id, authors, 99)
    large_anonymous, _ = await statements_for(app, client, url)
    large_signed_in, response = await statements_for(app, client, url, reader)
    comments = response.json()["comments"]
    assert len(comments) == 100
    assert sum(c["author"]["following"] for c in comments) == 51  # authors 0-9 of 20

    assert (small_anonymous, small_signed_in) == (large_anonymous, large_signed_in)
    # Anonymous: article + comments. Signed in: + the viewer with their follows.
    assert (small_anonymous, small_signed_in) == (2, 3)


async def test_single_article_reads_are_constant(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    reader = await make_user()
    authors = [await make_user()]
    article = await add_articles(app, reader, authors, 1)
    anonymous, _ = await statements_for(app, client, f"/api/v1/articles/{article.slug}")
    signed_in, _ = await statements_for(app, client, f"/api/v1/articles/{article.slug}", reader)
    # The shared article with tags and counts in one statement; + the viewer with their marks.
    assert (anonymous, signed_in) == (1, 2)


async def test_writes_run_a_fixed_number_of_statements(
    app: ConduitASGI, client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    writer = await make_user()
    author = await make_user()
    article = await add_articles(app, writer, [author], 1)
    comment = {"comment": {"body": "counted"}}
    create = {"article": {"title": f"Counted {next(_numbers)}", "description": "d", "body": "b"}}
    writes = [
        ("POST", f"/api/v1/articles/{article.slug}/comments", comment),
        ("DELETE", f"/api/v1/articles/{article.slug}/favorite", None),  # `add_articles`'s
        ("POST", f"/api/v1/articles/{article.slug}/favorite", None),
        ("POST", f"/api/v1/articles/{article.slug}/favorite", None),  # again: no change
        ("POST", f"/api/v1/profiles/{author.username}/follow", None),
        ("POST", f"/api/v1/profiles/{author.username}/follow", None),
        ("POST", "/api/v1/articles", create),
    ]
    counts = []
    for method, url, body in writes:
        with count_statements(app) as statements:
            response = await client.request(method, url, json=body, headers=writer.headers)
        assert response.status_code in {200, 201}, response.text
        counts.append(len(statements))
    # Each: the viewer, then (comment) one INSERT ... SELECT from the article + the outbox
    # statement; (favorite) the INSERT, the article as the viewer sees it, + the outbox when
    # something changed (unfavorite alike); (follow) the followee, the INSERT, + the outbox;
    # (create) the slug's INSERT, the tags, the article read back, + the outbox.
    assert counts == [3, 4, 4, 3, 4, 3, 5], counts
