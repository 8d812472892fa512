"""SQLAlchemy models; importing this package registers every table on `Base.metadata`."""

from service.models.article import Article, ArticleTag, Comment, Favorite, Tag
from service.models.base import Base, TimestampMixin
from service.models.user import Follow, User

__all__ = [
    "Article",
    "ArticleTag",
    "Base",
    "Comment",
    "Favorite",
    "Follow",
    "Tag",
    "TimestampMixin",
    "User",
]
