"""Shared schema pieces: timestamps, the error envelope, list queries."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PlainSerializer,
    WithJsonSchema,
)
from pydantic.config import JsonDict
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

# Exactly the characters `str.isspace()` accepts (what `str.strip()` removes), written so that
# Python's `re` and ECMAScript regexes (JSON Schema `pattern`) read the class the same way;
# `\s` differs between the two.
WHITESPACE = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# A JSON Schema `pattern` (unanchored: it matches anywhere): some character is not whitespace.
NOT_BLANK_PATTERN = f"[^{WHITESPACE}]"
_NOT_BLANK = re.compile(NOT_BLANK_PATTERN)


def is_blank(value: str) -> bool:
    """True when `value` has no character but whitespace (it may be empty)."""
    return _NOT_BLANK.search(value) is None


NUL_MESSAGE = "must not contain NUL characters"


def no_nul(value: str) -> str:
    """Reject NUL characters: valid JSON, but PostgreSQL cannot store them in text."""
    if "\x00" in value:
        raise PydanticCustomError("nul_character", NUL_MESSAGE)
    return value


def not_blank(value: str) -> str:
    """Reject text that is only whitespace (the text itself is kept verbatim)."""
    if is_blank(value):
        raise PydanticCustomError("blank", "can't be blank")
    return value


def trimmed(value: str) -> str:
    """`value` without surrounding whitespace (checked before: lengths count what was sent)."""
    return value.strip()


class SchemaExtra:
    """Annotation metadata adding keywords to a type's JSON schema.

    For rules that validators written in Python enforce, so that the document states them.
    """

    def __init__(self, **keywords: Any) -> None:
        self.keywords = keywords

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """The JSON schema of the annotated type, plus `keywords`."""
        schema = handler(core_schema)
        schema.update(self.keywords)
        return schema


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


# A query-string integer: an optional sign and ASCII digits, nothing else.
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
_INT64_MAX = 2**63 - 1


def integer_text(value: Any) -> Any:
    """Read a query-string integer strictly.

    Pydantic alone also takes "5.0", " 5", "5_0" and other scripts' digits; a schema's
    `integer` does not, so neither does the API.
    """
    if isinstance(value, str):
        if not _INTEGER_TEXT.fullmatch(value):
            raise PydanticCustomError("int_parsing", "must be a whole number")
        # Clamped into 64 bits: still out of range when it was, the error can be serialised,
        # and a huge number of digits is never converted.
        sign = -1 if value.startswith("-") else 1
        digits = value.lstrip("+-").lstrip("0") or "0"
        if len(digits) > len(str(_INT64_MAX)):
            return sign * _INT64_MAX
        return max(min(sign * int(digits), _INT64_MAX), -_INT64_MAX)
    return value


QueryInt = Annotated[int, BeforeValidator(integer_text)]


def absent_not_null(schema: JsonDict) -> None:
    # Document an optional field by its type alone: it may be left out, but `null` is rejected.
    schema.pop("default", None)
    variants = schema.pop("anyOf", None)
    if isinstance(variants, list):
        kept = [variant for variant in variants if variant != {"type": "null"}]
        if len(kept) == 1 and isinstance(kept[0], dict):
            schema.update(kept[0])
        else:
            schema["anyOf"] = kept


def optional(**kwargs: Any) -> Any:
    """A field that may be absent (then None), documented without `null`."""
    return Field(default=None, json_schema_extra=absent_not_null, **kwargs)


CURSOR_PATTERN = r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$"
CURSOR_MAX = 1024
DEFAULT_LIMIT = 20


def offset_field() -> Any:
    """The `offset` of a list query."""
    return Field(default=0, ge=0, le=10_000_000, description="How many items to skip")


def cursor_field() -> Any:
    """The `cursor` of a list query (service.api.pagination)."""
    return optional(
        min_length=3,
        max_length=CURSOR_MAX,
        pattern=CURSOR_PATTERN,
        description=(
            "Opaque position from a `next` or `prev` link of a previous page (RFC 8288 "
            "`Link` header): the page after (or before) it, stable under inserts and as fast "
            "at any depth. Not combinable with `offset`; a cursor of another list or sort "
            "order, or a changed one, is a 422."
        ),
    )


class PageQuery(BaseModel):
    """`limit` (1-100, default 20), and `offset` (0-10000000, default 0) or a `cursor`."""

    model_config = ConfigDict(extra="ignore")

    limit: QueryInt = Field(
        default=DEFAULT_LIMIT, ge=1, le=100, description="How many items to return"
    )
    offset: QueryInt = offset_field()
    cursor: str | None = cursor_field()
