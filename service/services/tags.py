"""Tags: normalised names in their own table."""

from __future__ import annotations

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.models import ArticleTag, Tag
from service.schemas.article import sort_tags

_TAGS = Tag.__table__.c
_ARTICLE_TAGS = ArticleTag.__table__.c

# Built once, on the tables rather than the mapped classes: a Core statement skips the ORM's
# per-execution compile state, and a module-level one computes its cache key once.
_IN_USE = select(_TAGS.name).where(exists().where(_ARTICLE_TAGS.tag_id == _TAGS.id))


async def list_tags(*, session: AsyncSession) -> list[str]:
    """Names of the tags that at least one article carries, alphabetically.

    Sorted like every `tagList` (case-insensitive, then by code point), not by the
    database's collation, so the order is the same on every server.
    """
    return sort_tags(list(await session.scalars(_IN_USE)))
