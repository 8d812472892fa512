"""Comments on articles."""

from __future__ import annotations

from sqlalchemy import BigInteger, bindparam, delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.caching import generations
from service.domain import events
from service.domain.comments import CommentView
from service.domain.errors import NotFound, PermissionDenied
from service.domain.pages import Edges, Page, Window
from service.models import Article, Comment, User
from service.schemas.comment import CommentCreate
from service.services import admin, audit, keyset
from service.services.articles import find_article_id, storable
from service.webhooks import catalogue, outbox

# Ids are BIGINT: a larger number in the URL names no comment (and must not reach asyncpg).
BIGINT_MAX = 2**63 - 1


OLDEST = keyset.Ordering(keys=(Comment.created_at, Comment.id), descending=False)

# Built once (its cache key too), every value bound. The article is found and the comment
# inserted in one statement; its foreign key check key-share locks the article row, so a
# concurrent delete either waits or has already won (then: not found).
_BODY = Comment.__table__.c.body.type
_ADD = (
    insert(Comment)
    .from_select(
        ["body", "article_id", "author_id"],
        select(
            bindparam("body", type_=_BODY), Article.id, bindparam("author_id", type_=BigInteger)
        ).where(Article.slug == bindparam("slug")),
    )
    .returning(Comment)
)
# With parameters the ORM would take the statement for a bulk INSERT of rows; "orm" keeps it
# one INSERT ... SELECT whose RETURNING loads a `Comment`.
_ADD_OPTIONS = {"dml_strategy": "orm"}


async def comment_page(
    *, session: AsyncSession, slug: str, window: Window | None
) -> Page[CommentView]:
    """A page of the comments on the article with `slug`, oldest first (all of them without
    a `window`), as anyone sees it (`following` false: the caller adds a viewer's marks);
    `NotFound` for no such article. Its `total` counts the page only: comment lists have no
    count."""
    article_id = await find_article_id(session=session, slug=slug)
    statement = (
        select(Comment, User)
        .join(User, User.id == Comment.author_id)
        .where(Comment.article_id == article_id)
    )
    edges = Edges()
    if window is None:
        rows = list((await session.execute(statement.order_by(*OLDEST.keys))).all())
    else:
        rows, edges = await keyset.read(session, statement, OLDEST, window)
    items = [CommentView(comment=row[0], author=row[1], following=False) for row in rows]
    return Page(items=items, total=len(items), edges=edges)


async def add_comment(
    *, session: AsyncSession, author: User, slug: str, data: CommentCreate
) -> CommentView:
    """Add `author`'s comment to the article with `slug`."""
    comment = None
    if storable(slug):
        try:
            comment = await session.scalar(
                _ADD,
                {"body": data.body, "author_id": author.id, "slug": slug},
                execution_options=_ADD_OPTIONS,
            )
        except IntegrityError as exc:  # the article was deleted meanwhile
            raise NotFound("article not found", field="article") from exc
    if comment is None:
        raise NotFound("article not found", field="article")
    await _changed(session, events.COMMENT_CREATED, comment, author, slug)
    return CommentView(comment=comment, author=author, following=False)


async def _changed(
    session: AsyncSession, event_type: str, comment: Comment, author: User, slug: str
) -> None:
    """The comments changed: the cached answers are stale and the webhooks are told."""
    generations.note_changed(session, generations.COMMENTS)
    await outbox.emit(
        session=session,
        event_type=event_type,
        data=catalogue.comment_data(comment, author=author, article_slug=slug),
        audience=None,
    )


async def delete_comment(
    *, session: AsyncSession, viewer: User, slug: str, comment_id: int
) -> None:
    """Delete comment `comment_id` on the article with `slug`: the viewer's own, or anyone's
    when the viewer is a moderator or admin (then audited).

    `NotFound` when there is no such article, or no such comment on it; `PermissionDenied`
    when the comment is someone else's and the viewer may not moderate.
    """
    article_id = await find_article_id(session=session, slug=slug)
    if comment_id <= BIGINT_MAX and admin.may_moderate(viewer):
        removed = await session.scalar(
            delete(Comment)
            .where(Comment.id == comment_id, Comment.article_id == article_id)
            .returning(Comment)
        )
        if removed is None:
            raise NotFound("comment not found", field="comment")
        author = viewer
        if removed.author_id != viewer.id:
            author = await session.get_one(User, removed.author_id)
            await audit.record(
                session=session,
                actor=viewer,
                action="comment.delete",
                target_type="comment",
                target_id=comment_id,
                details={"article": slug, "author": author.username},
            )
        await _changed(session, events.COMMENT_DELETED, removed, author, slug)
        return
    if comment_id <= BIGINT_MAX:
        deleted = await session.scalar(
            delete(Comment)
            .where(
                Comment.id == comment_id,
                Comment.article_id == article_id,
                Comment.author_id == viewer.id,
            )
            .returning(Comment)
        )
        if deleted is not None:
            await _changed(session, events.COMMENT_DELETED, deleted, viewer, slug)
            return
        # Nothing deleted: tell "not yours" apart from "not there".
        other_author = await session.scalar(
            select(Comment.author_id).where(
                Comment.id == comment_id, Comment.article_id == article_id
            )
        )
        if other_author is not None:
            raise PermissionDenied("only the author may delete this comment", field="comment")
    raise NotFound("comment not found", field="comment")
