"""Users and the follow relation."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    String,
    Text,
    false,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base, TimestampMixin

USERNAME_MAX = 64
EMAIL_MAX = 254
ROLES = ("user", "moderator", "admin")


class User(TimestampMixin, Base):
    """An account; usernames are unique regardless of case, emails are stored lower-cased."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    username: Mapped[str] = mapped_column(String(USERNAME_MAX), nullable=False)
    email: Mapped[str] = mapped_column(String(EMAIL_MAX), nullable=False, unique=True)
    password_hash: Mapped[str] = mapped_column(Text, nullable=False)
    bio: Mapped[str | None] = mapped_column(Text)
    image: Mapped[str | None] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16), nullable=False, server_default="user")
    suspended: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())

    __table_args__ = (
        Index("uq_users_username_lower", func.lower(username), unique=True),
        # The admins' user list, newest first, in keyset pages.
        Index("ix_users_created_at_id", "created_at", "id"),
        CheckConstraint("email = lower(email)", name="email_lower"),
        CheckConstraint("role IN ('user', 'moderator', 'admin')", name="role_known"),
    )


class Follow(Base):
    """`follower` follows `followee`."""

    __tablename__ = "follows"

    follower_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    followee_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )

    __table_args__ = (CheckConstraint("follower_id <> followee_id", name="not_self"),)
