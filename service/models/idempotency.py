"""Stored answers of requests sent with an `Idempotency-Key`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Index, SmallInteger, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from service.models.base import Base

PRINCIPAL_MAX = 80
KEY_MAX = 255


class IdempotencyKey(Base):
    """One key of one principal: the request it was first used with and the answer it got.

    A row is written in the transaction of the request's effect, so it exists exactly when the
    effect committed; it is replayed until `created_at` is older than the retention.
    """

    __tablename__ = "idempotency_keys"

    principal: Mapped[str] = mapped_column(String(PRINCIPAL_MAX), primary_key=True)
    key: Mapped[str] = mapped_column(String(KEY_MAX), primary_key=True)
    method: Mapped[str] = mapped_column(String(8), nullable=False)
    path: Mapped[str] = mapped_column(Text, nullable=False)
    # HMAC of method, path, query and body: no secret of the body can be recovered from it.
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    headers: Mapped[list[Any]] = mapped_column(JSONB, nullable=False)
    # Sealed with WEBHOOK_SECRET_KEYS: answers may carry tokens and client secrets.
    body: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )

    # The worker deletes expired keys oldest first.
    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)
