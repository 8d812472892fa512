"""SQLAlchemy models; importing this package registers every table on `Base.metadata`."""

from service.models.article import Article, ArticleTag, Comment, Favorite, Tag
from service.models.auth import (
    ApiClient,
    AuditEntry,
    AuthSession,
    PasswordResetToken,
    RefreshToken,
)
from service.models.base import Base, TimestampMixin
from service.models.idempotency import IdempotencyKey
from service.models.job import Job
from service.models.user import ROLES, Follow, User
from service.models.webhook import (
    WebhookAttempt,
    WebhookEndpoint,
    WebhookEvent,
    WebhookMessage,
)

__all__ = [
    "ROLES",
    "ApiClient",
    "Article",
    "ArticleTag",
    "AuditEntry",
    "AuthSession",
    "Base",
    "Comment",
    "Favorite",
    "Follow",
    "IdempotencyKey",
    "Job",
    "PasswordResetToken",
    "RefreshToken",
    "Tag",
    "TimestampMixin",
    "User",
    "WebhookAttempt",
    "WebhookEndpoint",
    "WebhookEvent",
    "WebhookMessage",
]
