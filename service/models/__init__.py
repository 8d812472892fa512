"""SQLAlchemy models; importing this package registers every table on `Base.metadata`."""

from service.models.base import Base, TimestampMixin

__all__ = ["Base", "TimestampMixin"]
