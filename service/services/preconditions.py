"""The current version of a resource about to be changed, read under the row lock the change
takes anyway, so that comparing it with the client's `If-Match` is atomic with the change:
a concurrent writer waits for the lock and then sees the new version."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.domain.errors import PreconditionFailed
from service.domain.versions import article_version, comment_version, user_version
from service.models import Article, ArticleTag, Comment, Tag, User
from service.schemas.common import format_timestamp
from service.services import admin
from service.services.articles import storable
from service.services.comments import BIGINT_MAX

STALE = "the resource has changed since this version was read: read it again"


def check(*, current: str | None, expected: list[str]) -> None:
    """Raise `PreconditionFailed` unless `current` is one of `expected` (`*`: any version).

    `current` None means the change will be refused anyway (no such resource, or not the
    caller's to change): that refusal (404, 403) is the answer, not a 412 (RFC 9110 §13.2.1).
    """
    if current is None or "*" in expected or current in expected:
        return
    raise PreconditionFailed(STALE, field="If-Match")


async def lock_article(
    *, session: AsyncSession, viewer: User, slug: str, deleting: bool
) -> str | None:
    """Lock the article `slug` and return its version; None when `viewer` may not change it
    (a moderator may delete) or it does not exist."""
    if not storable(slug):
        return None
    tags = (
        select(func.coalesce(func.array_agg(Tag.name), []))
        .join_from(ArticleTag, Tag, ArticleTag.tag_id == Tag.id)
        .where(ArticleTag.article_id == Article.id)
        .scalar_subquery()
    )
    row = (
        await session.execute(
            select(
                Article.author_id,
                Article.title,
                Article.description,
                Article.body,
                Article.updated_at,
                tags,
            )
            .where(Article.slug == slug)
            .with_for_update(of=Article)
        )
    ).one_or_none()
    if row is None:
        return None
    author_id, title, description, body, updated_at, tag_names = row
    if author_id != viewer.id and not (deleting and admin.may_moderate(viewer)):
        return None
    return article_version(
        slug=slug,
        title=title,
        description=description,
        body=body,
        tags=tag_names,
        updated_at=format_timestamp(updated_at),
    )


async def lock_comment(
    *, session: AsyncSession, viewer: User, slug: str, comment_id: int
) -> str | None:
    """Lock the comment `comment_id` on the article `slug` and return its version; None when
    `viewer` may not delete it or it does not exist."""
    if not storable(slug) or comment_id > BIGINT_MAX:
        return None
    row = (
        await session.execute(
            select(Comment.author_id, Comment.body, Comment.updated_at)
            .join(Article, Article.id == Comment.article_id)
            .where(Comment.id == comment_id, Article.slug == slug)
            .with_for_update(of=Comment)
        )
    ).one_or_none()
    if row is None:
        return None
    author_id, body, updated_at = row
    if author_id != viewer.id and not admin.may_moderate(viewer):
        return None
    return comment_version(
        comment_id=comment_id, body=body, updated_at=format_timestamp(updated_at)
    )


async def lock_user(*, session: AsyncSession, viewer: User) -> str | None:
    """Lock the viewer's own row and return the version of their profile."""
    row = (
        await session.execute(
            select(User.email, User.username, User.bio, User.image)
            .where(User.id == viewer.id)
            .with_for_update()
        )
    ).one_or_none()
    if row is None:
        return None
    email, username, bio, image = row
    return user_version(email=email, username=username, bio=bio, image=image)
