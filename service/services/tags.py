"""Tags: normalised names in their own table."""

from __future__ import annotations

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.models import ArticleTag, Tag


async def list_tags(*, session: AsyncSession) -> list[str]:
    """Names of the tags that at least one article carries, alphabetically."""
    in_use = exists().where(ArticleTag.tag_id == Tag.id)
    rows = await session.scalars(select(Tag.name).where(in_use).order_by(Tag.name))
    return list(rows)
