"""One page of a listing: what every list service returns and every list view renders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of `items` and the number of items on all pages."""

    items: list[T]
    total: int
