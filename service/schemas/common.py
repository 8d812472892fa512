"""Shared schema pieces: timestamps, the error envelope, list queries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
)


def format_timestamp(value: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a `Z`, as RealWorld clients expect."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Timestamp = Annotated[
    datetime,
    PlainSerializer(format_timestamp, return_type=str),
    WithJsonSchema(
        {"type": "string", "format": "date-time", "example": "2026-01-02T03:04:05.678Z"}
    ),
]

# Text that must carry something: surrounding whitespace is trimmed before the length check.
NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class InModel(BaseModel):
    """Base of request bodies: unknown fields are ignored, as RealWorld clients send extras."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)


class OutModel(BaseModel):
    """Base of response bodies."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with the documented field names."""
        return self.model_dump(mode="json", by_alias=True)


class ErrorBody(BaseModel):
    """`{"errors": {"<field or body>": ["message", ...]}}`, the one error format."""

    errors: dict[str, list[str]] = Field(
        json_schema_extra={"example": {"body": ["can't be empty"]}}
    )


class PageQuery(BaseModel):
    """`limit` (1-100, default 20) and `offset` (>= 0) of a list."""

    model_config = ConfigDict(extra="ignore")

    limit: int = Field(default=20, ge=1, le=100, description="How many items to return")
    offset: int = Field(default=0, ge=0, le=10_000_000, description="How many items to skip")
