"""Read answers in two parts: the shared part, the same for everyone and cached
(`service.caching.store`), and the viewer's part (`favorited`, `following`), read per request in
the same statement as the viewer's user (`PendingViewer`) and merged in. Anonymous reads of a
cached answer touch no database at all; signed-in ones run one statement."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any

from service.api.auth import PendingViewer
from service.caching.generations import ARTICLES, COMMENTS, PROFILES, TAGS
from service.caching.store import cache, digest
from service.domain.articles import ArticleView
from service.domain.pages import Edges, Page, Window
from service.infra.db import db
from service.schemas.article import ArticleOut, ArticleSummary
from service.schemas.comment import CommentOut
from service.schemas.profile import ProfileOut
from service.services import articles as articles_service
from service.services import comments as comments_service
from service.services import profiles as profiles_service
from service.services import tags as tags_service

Json = dict[str, Any]


def _with_marks(
    items: Sequence[Json],
    ids: Sequence[int],
    authors: Sequence[int],
    favorited: set[int],
    following: set[int],
) -> list[Json]:
    marked = []
    for item, article_id, author_id in zip(items, ids, authors, strict=True):
        if article_id in favorited or author_id in following:
            item = {
                **item,
                "favorited": article_id in favorited,
                "author": {**item["author"], "following": author_id in following},
            }
        marked.append(item)
    return marked


async def _article_marks(
    viewer: PendingViewer, ids: Sequence[int], authors: Sequence[int]
) -> tuple[set[int], set[int]]:
    # The viewer's user and marks in one statement (the user must be loaded either way).
    if not ids:
        await viewer.load()
        return set(), set()
    marks = await viewer.load(
        [
            articles_service.favorited_column(ids),
            profiles_service.following_column(set(authors)),
        ]
    )
    if marks is None:
        return set(), set()
    return set(marks[0] or ()), set(marks[1] or ())


async def article_page(
    viewer: PendingViewer, key: Sequence[Any], load: Callable[[], Awaitable[Page[ArticleView]]]
) -> tuple[Json, Edges]:
    """`{"articles", "articlesCount"}` of the page `load` reads (anonymously) for `key`, and
    the page's edges (for its `Link` header). `key` names everything the page depends on."""

    async def shared() -> Json:
        page = await load()
        return {
            "articles": [ArticleSummary.of(view).to_json() for view in page.items],
            "articlesCount": page.total,
            "ids": [view.article.id for view in page.items],
            "authors": [view.author.id for view in page.items],
            "edges": asdict(page.edges),
        }

    page = await cache.fetch(ARTICLES, f"list:{digest(*key)}", shared)
    favorited, following = await _article_marks(viewer, page["ids"], page["authors"])
    articles = _with_marks(page["articles"], page["ids"], page["authors"], favorited, following)
    body = {"articles": articles, "articlesCount": page["articlesCount"]}
    return body, Edges(**page["edges"])


async def article(viewer: PendingViewer, slug: str) -> Json:
    """`{"article"}` with `slug` (`NotFound` when there is none)."""

    async def shared() -> Json:
        view = await articles_service.get_article(session=db.session, viewer=None, slug=slug)
        return {
            "article": ArticleOut.of(view).to_json(),
            "id": view.article.id,
            "author": view.author.id,
        }

    found = await cache.fetch(ARTICLES, f"one:{digest(slug)}", shared)
    favorited, following = await _article_marks(viewer, [found["id"]], [found["author"]])
    [marked] = _with_marks(
        [found["article"]], [found["id"]], [found["author"]], favorited, following
    )
    return {"article": marked}


async def tags() -> Json:
    """`{"tags"}`: the tags in use."""

    async def shared() -> Json:
        return {"tags": await tags_service.list_tags(session=db.session)}

    result: Json = await cache.fetch(TAGS, "all", shared)
    return result


async def _following(viewer: PendingViewer, user_ids: Sequence[int]) -> set[int]:
    if not user_ids:
        await viewer.load()
        return set()
    marks = await viewer.load([profiles_service.following_column(set(user_ids))])
    return set(marks[0] or ()) if marks is not None else set()


async def profile(viewer: PendingViewer, username: str) -> Json:
    """`{"profile"}` of `username` (any case; `NotFound` when there is none)."""

    async def shared() -> Json:
        user = await profiles_service.require_user(session=db.session, username=username)
        return {"profile": ProfileOut.of(user, following=False).to_json(), "id": user.id}

    found = await cache.fetch(PROFILES, f"user:{digest(username.lower())}", shared)
    following = await _following(viewer, [found["id"]])
    return {"profile": {**found["profile"], "following": found["id"] in following}}


async def comment_page(
    viewer: PendingViewer, slug: str, window: Window | None, key: Sequence[Any]
) -> tuple[Json, Edges]:
    """`{"comments"}` of the page `window` (all without one; `key` names it) and its edges."""

    async def shared() -> Json:
        page = await comments_service.comment_page(session=db.session, slug=slug, window=window)
        return {
            "comments": [CommentOut.of(view).to_json() for view in page.items],
            "authors": [view.author.id for view in page.items],
            "edges": asdict(page.edges),
        }

    found = await cache.fetch(COMMENTS, f"article:{digest(slug, *key)}", shared)
    following = await _following(viewer, found["authors"])
    items = [
        {**item, "author": {**item["author"], "following": True}}
        if author_id in following
        else item
        for item, author_id in zip(found["comments"], found["authors"], strict=True)
    ]
    return {"comments": items}, Edges(**found.get("edges", {}))
