"""Articles, their tags, favorites and comments."""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Identity, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, TimestampMixin

SLUG_MAX = 255
TITLE_MAX = 200
DESCRIPTION_MAX = 1000
TAG_MAX = 64


class Article(TimestampMixin, Base):
    """An article; `slug` is unique and chosen by the database constraint on insert."""

    __tablename__ = "articles"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    slug: Mapped[str] = mapped_column(String(SLUG_MAX), nullable=False, unique=True)
    title: Mapped[str] = mapped_column(String(TITLE_MAX), nullable=False)
    description: Mapped[str] = mapped_column(String(DESCRIPTION_MAX), nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    author_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    # Kept by triggers on `favorites` (migration 0007), for `sort=favoritesCount`.
    favorites_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")

    __table_args__ = (
        # Newest-first listing, globally and per author (feed and ?author=).
        Index("ix_articles_created_at_id", "created_at", "id"),
        Index("ix_articles_author_id_created_at", "author_id", "created_at"),
        # The other sort orders of `GET /articles` (service.services.ordering).
        Index("ix_articles_updated_at_id", "updated_at", "id"),
        Index("ix_articles_favorites_count_id", "favorites_count", "id"),
        # Full-text search; the expression is the one service.services.search queries.
        Index(
            "ix_articles_search",
            # Written as alembic reads it back from PostgreSQL, so that it sees no change.
            text(
                "to_tsvector('english'::regconfig, "
                "(((title::text || ' '::text) || description::text) || ' '::text) || body)"
            ),
            postgresql_using="gin",
        ),
    )


class Tag(Base):
    """A tag name, shared by every article that uses it."""

    __tablename__ = "tags"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(TAG_MAX), nullable=False, unique=True)


class ArticleTag(Base):
    """Which tags an article carries."""

    __tablename__ = "article_tags"

    article_id: Mapped[int] = mapped_column(
        ForeignKey("articles.id", ondelete="CASCADE"), primary_key=True
    )
    tag_id: Mapped[int] = mapped_column(
        ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Favorite(Base):
    """`user` favorited `article`."""

    __tablename__ = "favorites"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    article_id: Mapped[int] = mapped_column(
        ForeignKey("articles.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Comment(TimestampMixin, Base):
    """A comment on an article."""

    __tablename__ = "comments"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    article_id: Mapped[int] = mapped_column(
        ForeignKey("articles.id", ondelete="CASCADE"), nullable=False
    )
    author_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )

    __table_args__ = (Index("ix_comments_article_id_created_at", "article_id", "created_at"),)
