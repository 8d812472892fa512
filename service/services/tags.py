"""Tags: normalised names in their own table."""

from __future__ import annotations

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.models import ArticleTag, Tag
from service.schemas.article import sort_tags


async def list_tags(*, session: AsyncSession) -> list[str]:
    """Names of the tags that at least one article carries, alphabetically.

    Sorted like every `tagList` (case-insensitive, then by code point), not by the
    database's collation, so the order is the same on every server.
    """
    in_use = exists().where(ArticleTag.tag_id == Tag.id)
    rows = await session.scalars(select(Tag.name).where(in_use))
    return sort_tags(list(rows))
