"""Articles and favorites endpoints."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, jsonify

from service.api import pagination
from service.api.auth import PendingViewer
from service.api.idempotency import idempotent
from service.api.preconditions import conditional, tagged
from service.api.spec import body_of, operation, query_of
from service.api.v1 import cached
from service.domain import scopes
from service.domain.articles import ArticleView
from service.domain.pages import Page
from service.domain.versions import ARTICLE
from service.infra.db import db
from service.infra.extensions import SETTINGS
from service.models import User
from service.schemas.article import (
    ARTICLE_CREATE_EXAMPLE,
    ARTICLE_RESPONSE_EXAMPLE,
    ARTICLE_UPDATE_EXAMPLE,
    ARTICLES_RESPONSE_EXAMPLE,
    FAVORITED_RESPONSE_EXAMPLE,
    ArticleCreateRequest,
    ArticleListQuery,
    ArticleOut,
    ArticleResponse,
    ArticleSummary,
    ArticleUpdateRequest,
    MultipleArticlesResponse,
)
from service.schemas.common import PageQuery
from service.services import article_order
from service.services import articles as articles_service

bp = Blueprint("articles", __name__)


def _article_json(view: ArticleView) -> Response:
    return pagination.with_self(
        jsonify(ArticleResponse(article=ArticleOut.of(view)).to_json()), _self(view.article.slug)
    )


def _self(slug: str) -> str:
    return f"/api/v1/articles/{quote(slug, safe='')}"


@bp.get("/articles")
@operation(
    responses={200: MultipleArticlesResponse},
    tags=["Articles"],
    auth="optional",
    defer_viewer=True,
    scope=scopes.ARTICLES_READ,
    query=ArticleListQuery,
    examples={200: ARTICLES_RESPONSE_EXAMPLE},
    headers=pagination.LIST_HEADERS,
)
async def list_articles(viewer: PendingViewer) -> Response:
    """List articles, newest first, optionally filtered, searched (`q`) and sorted (`sort`).

    Pages by `offset` or by `cursor` (from the `Link` header's `next`/`prev`).
    """
    query = query_of(ArticleListQuery)
    scope = f"articles:{article_order.sort_name(query.sort)}"
    window = pagination.window(query, scope)

    async def load() -> Page[ArticleView]:
        return await articles_service.list_articles(
            session=db.session,
            viewer=None,
            limit=query.limit,
            offset=query.offset,
            tag=query.tag,
            author=query.author,
            favorited=query.favorited,
            q=query.q,
            sort=query.sort,
            position=window.position,
            language=SETTINGS.get().search_language,
        )

    # Everything the page depends on (the cursor, not only its position: its scope too).
    key = (
        *(query.tag, query.author, query.favorited, query.limit, query.offset),
        *(query.q, query.sort, query.cursor),
    )
    body, edges = await cached.article_page(viewer, key, load)
    return pagination.paged(jsonify(body), window=window, edges=edges, scope=scope)


@bp.get("/articles/feed")
@operation(
    responses={200: MultipleArticlesResponse},
    tags=["Articles"],
    auth="required",
    scope=scopes.ARTICLES_READ,
    query=PageQuery,
    examples={200: ARTICLES_RESPONSE_EXAMPLE},
    headers=pagination.LIST_HEADERS,
)
async def get_feed(viewer: User) -> Response:
    """List articles by the authors the caller follows, newest first."""
    query = query_of(PageQuery)
    window = pagination.window(query, "feed")
    page = await articles_service.feed(
        session=db.session,
        viewer=viewer,
        limit=query.limit,
        offset=query.offset,
        position=window.position,
    )
    out = MultipleArticlesResponse(
        articles=[ArticleSummary.of(view) for view in page.items], articles_count=page.total
    )
    return pagination.page_json(out.to_json(), page, window, "feed")


@bp.get("/articles/<slug:slug>")
@operation(
    responses={200: ArticleResponse},
    tags=["Articles"],
    auth="optional",
    defer_viewer=True,
    scope=scopes.ARTICLES_READ,
    errors=[404],
    examples={200: ARTICLE_RESPONSE_EXAMPLE},
    headers=pagination.self_headers(),
)
@tagged(ARTICLE)
async def get_article(slug: str, viewer: PendingViewer) -> Response:
    """Get one article."""
    found = await cached.article(viewer, slug)
    return pagination.with_self(jsonify(found), _self(found["article"]["slug"]))


@bp.post("/articles")
@operation(
    responses={201: ArticleResponse},
    tags=["Articles"],
    auth="required",
    scope=scopes.ARTICLES_WRITE,
    body=ArticleCreateRequest,
    errors=[409],
    examples={201: ARTICLE_RESPONSE_EXAMPLE},
    body_example=ARTICLE_CREATE_EXAMPLE,
    headers=pagination.self_headers(201),
)
@idempotent
@tagged(ARTICLE)
async def create_article(viewer: User) -> tuple[Response, int]:
    """Create an article; its slug is derived from the title and never changes."""
    body = body_of(ArticleCreateRequest)
    view = await articles_service.create_article(
        session=db.session, author=viewer, data=body.article
    )
    return _article_json(view), 201


async def _update(slug: str, viewer: User) -> Response:
    body = body_of(ArticleUpdateRequest)
    view = await articles_service.update_article(
        session=db.session, viewer=viewer, slug=slug, data=body.article
    )
    return _article_json(view)


# PUT and PATCH are one partial update; two views only because operationIds must differ.
_UPDATE_ARTICLE: dict[str, Any] = {
    "responses": {200: ArticleResponse},
    "tags": ["Articles"],
    "auth": "required",
    "scope": scopes.ARTICLES_WRITE,
    "body": ArticleUpdateRequest,
    "errors": [403, 404],
    "examples": {200: ARTICLE_RESPONSE_EXAMPLE},
    "body_example": ARTICLE_UPDATE_EXAMPLE,
    "headers": pagination.self_headers(),
}


@bp.put("/articles/<slug:slug>")
@operation(**_UPDATE_ARTICLE)
@conditional(ARTICLE)
async def update_article(slug: str, viewer: User) -> Response:
    """Update the caller's article: only the given fields change (the slug never does)."""
    return await _update(slug, viewer)


@bp.patch("/articles/<slug:slug>")
@operation(**_UPDATE_ARTICLE)
@conditional(ARTICLE)
async def patch_article(slug: str, viewer: User) -> Response:
    """Update the caller's article, like PUT: only the given fields change."""
    return await _update(slug, viewer)


@bp.delete("/articles/<slug:slug>")
@operation(
    responses={204: None},
    tags=["Articles"],
    auth="required",
    scope=scopes.ARTICLES_WRITE,
    errors=[403, 404],
)
@conditional(ARTICLE)
async def delete_article(slug: str, viewer: User) -> tuple[str, int]:
    """Delete an article with its comments and favorites (its author, or a moderator/admin)."""
    await articles_service.delete_article(session=db.session, viewer=viewer, slug=slug)
    return "", 204


@bp.post("/articles/<slug:slug>/favorite")
@operation(
    responses={200: ArticleResponse},
    tags=["Favorites"],
    auth="required",
    scope=scopes.ARTICLES_WRITE,
    errors=[404],
    examples={200: FAVORITED_RESPONSE_EXAMPLE},
    headers=pagination.self_headers(),
)
@idempotent
@tagged(ARTICLE)
async def favorite_article(slug: str, viewer: User) -> Response:
    """Favorite an article (doing it again changes nothing)."""
    view = await articles_service.favorite(session=db.session, viewer=viewer, slug=slug)
    return _article_json(view)


@bp.delete("/articles/<slug:slug>/favorite")
@operation(
    responses={200: ArticleResponse},
    tags=["Favorites"],
    auth="required",
    scope=scopes.ARTICLES_WRITE,
    errors=[404],
    examples={200: ARTICLE_RESPONSE_EXAMPLE},
    headers=pagination.self_headers(),
)
@tagged(ARTICLE)
async def unfavorite_article(slug: str, viewer: User) -> Response:
    """Remove the caller's favorite of an article (doing it again changes nothing)."""
    view = await articles_service.unfavorite(session=db.session, viewer=viewer, slug=slug)
    return _article_json(view)
