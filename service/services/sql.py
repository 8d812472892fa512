"""Small SQL building blocks shared by the services."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, any_, bindparam, literal
from sqlalchemy.dialects.postgresql import ARRAY


def one_of_ids(column: ColumnElement[Any] | Any, ids: Collection[int]) -> ColumnElement[bool]:
    """`column = ANY($n::bigint[])`: one statement text whatever the number of ids.

    `column.in_(ids)` renders one placeholder per id, so every list length is its own
    statement to compile, prepare and cache; an array parameter is one.
    """
    return column == any_(literal(sorted(ids), ARRAY(BigInteger)))


def any_ids(name: str) -> ColumnElement[Any]:
    """`ANY($n::bigint[])` for a statement built once: the ids are bound as `name` per run."""
    return any_(bindparam(name, type_=ARRAY(BigInteger)))
