"""Comments endpoints."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service.api import pagination
from service.api.auth import PendingViewer
from service.api.idempotency import idempotent
from service.api.preconditions import conditional, tagged
from service.api.spec import body_of, operation, query_of
from service.api.v1 import cached
from service.domain import scopes
from service.domain.versions import COMMENT
from service.infra.db import db
from service.models import User
from service.schemas.comment import (
    COMMENT_CREATE_EXAMPLE,
    COMMENT_RESPONSE_EXAMPLE,
    COMMENTS_RESPONSE_EXAMPLE,
    CommentCreateRequest,
    CommentListQuery,
    CommentOut,
    CommentResponse,
    MultipleCommentsResponse,
)
from service.services import comments as comments_service

bp = Blueprint("comments", __name__)


@bp.get("/articles/<slug:slug>/comments")
@operation(
    responses={200: MultipleCommentsResponse},
    tags=["Comments"],
    auth="optional",
    defer_viewer=True,
    scope=scopes.ARTICLES_READ,
    errors=[404],
    query=CommentListQuery,
    examples={200: COMMENTS_RESPONSE_EXAMPLE},
    headers=pagination.LIST_HEADERS,
)
async def list_comments(slug: str, viewer: PendingViewer) -> Response:
    """List the comments on an article, oldest first: all of them, or pages of `limit`."""
    page_query = query_of(CommentListQuery).page_query()
    if page_query is None:
        body, _ = await cached.comment_page(viewer, slug, None, ())
        return pagination.single_page(jsonify(body))
    # Per article: a cursor of one article's comments is refused on another's.
    scope = f"comments:{slug}"
    window = pagination.window(page_query, scope)
    key = (page_query.limit, page_query.offset, page_query.cursor)
    body, edges = await cached.comment_page(viewer, slug, window, key)
    return pagination.paged(jsonify(body), window=window, edges=edges, scope=scope)


@bp.post("/articles/<slug:slug>/comments")
@operation(
    responses={200: CommentResponse},
    tags=["Comments"],
    auth="required",
    scope=scopes.COMMENTS_WRITE,
    body=CommentCreateRequest,
    errors=[404],
    examples={200: COMMENT_RESPONSE_EXAMPLE},
    body_example=COMMENT_CREATE_EXAMPLE,
)
@idempotent
@tagged(COMMENT)
async def create_comment(slug: str, viewer: User) -> Response:
    """Comment on an article (the spec answers 200, not 201)."""
    body = body_of(CommentCreateRequest)
    view = await comments_service.add_comment(
        session=db.session, author=viewer, slug=slug, data=body.comment
    )
    return jsonify(CommentResponse(comment=CommentOut.of(view)).to_json())


@bp.delete("/articles/<slug:slug>/comments/<id:comment_id>")
@operation(
    responses={204: None},
    tags=["Comments"],
    auth="required",
    scope=scopes.COMMENTS_WRITE,
    errors=[403, 404],
)
@conditional(COMMENT)
async def delete_comment(slug: str, comment_id: int, viewer: User) -> tuple[str, int]:
    """Delete a comment (its author, or a moderator/admin)."""
    await comments_service.delete_comment(
        session=db.session, viewer=viewer, slug=slug, comment_id=comment_id
    )
    return "", 204
