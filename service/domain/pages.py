"""Pages of a listing: what every list service is asked for and returns, offset or keyset.

A keyset page starts after (or ends before) a `Position`: the sort key of the row at the
boundary. Its cost does not grow with depth, and rows inserted meanwhile neither shift nor
repeat the rows after it. Positions travel to clients as signed cursors (service.api.pagination);
their values are JSON scalars here (`json_key` / `typed_key`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from service.domain.errors import InvalidInput

T = TypeVar("T")
Key = tuple[Any, ...]
JsonKey = list[Any]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class Position:
    """Rows strictly after (`backward` False) or before `key`, in the list's order."""

    key: JsonKey
    backward: bool = False


@dataclass(frozen=True)
class Window:
    """Which page to read: `limit` rows from `offset`, or from `position` when given."""

    limit: int
    offset: int = 0
    position: Position | None = None


@dataclass(frozen=True)
class Edges:
    """The sort keys of a keyset page's first and last rows, and whether rows lie beyond."""

    first: JsonKey | None = None
    last: JsonKey | None = None
    more_before: bool = False
    more_after: bool = False


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of `items`, the number of items on all pages, and the page's `edges`."""

    items: list[T]
    total: int
    edges: Edges = field(default_factory=Edges)


def json_key(key: Sequence[Any]) -> JsonKey:
    """`key` as JSON scalars: exact microseconds for times, text for UUIDs."""
    values: JsonKey = []
    for value in key:
        if isinstance(value, datetime):
            values.append((value - _EPOCH) // _MICROSECOND)
        elif isinstance(value, uuid.UUID):
            values.append(str(value))
        else:
            values.append(value)
    return values


def typed_key(values: Sequence[Any], types: Sequence[type]) -> Key:
    """`values` read back as `types` (what `json_key` wrote); `InvalidInput` if they do not fit."""
    if len(values) != len(types):
        raise InvalidInput("cursor does not belong to this list", field="cursor")
    key: list[Any] = []
    try:
        for value, kind in zip(values, types, strict=True):
            if kind is datetime and type(value) is int:
                key.append(_EPOCH + value * _MICROSECOND)
            elif kind is uuid.UUID and isinstance(value, str):
                key.append(uuid.UUID(value))
            elif kind is float and type(value) in (int, float):
                key.append(float(value))
            elif kind in (int, str) and type(value) is kind:
                key.append(value)
            else:
                raise ValueError(value)
    except (ValueError, OverflowError):
        raise InvalidInput("cursor does not belong to this list", field="cursor") from None
    return tuple(key)
