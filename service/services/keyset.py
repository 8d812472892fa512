"""Offset and keyset pages of any list statement (service.domain.pages).

A keyset page compares the sort key as one row value, `(created_at, id) < ($1, $2)`, which
PostgreSQL answers from a btree index on the same columns by starting the scan at the
position: the cost of a page is the page, at any depth. Every key ends in a unique column,
so that the order is total and no row is skipped or repeated between pages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Integer, Row, Select, bindparam, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import QueryableAttribute

from service.domain.pages import Edges, Window, json_key, typed_key

# A SELECT of any columns.
AnySelect = Select[*tuple[Any, ...]]


@dataclass(frozen=True)
class Ordering:
    """A list's order: sort key expressions, the last one unique, all in one direction."""

    keys: tuple[ColumnElement[Any] | QueryableAttribute[Any], ...]
    descending: bool = True
    # Keys computed per row rather than read from an index: every row's key must be computed
    # to find any page, so the caller bounds the list's length first (count, then refuse).
    per_row: bool = False

    @property
    def types(self) -> tuple[type, ...]:
        """The Python types of the key's values."""
        return tuple(key.type.python_type for key in self.keys)


def windowed(statement: AnySelect, ordering: Ordering, *, backward: bool | None) -> AnySelect:
    """`statement` ordered and cut to a window, one row more than asked (is there more?),
    with bound parameters (`parameters`): build it once per list and kind of window, and
    SQLAlchemy computes its cache key once too.

    `backward` is the kind of window: None from an offset, else before (True) or after
    (False) a position (`window_kind`). The key's values are added as the rows' last
    columns: `cut` reads them from there.
    """
    descending = ordering.descending != bool(backward)
    statement = statement.add_columns(
        *(key.label(f"page_key_{index}") for index, key in enumerate(ordering.keys))
    )
    if backward is None:
        statement = statement.offset(bindparam("page_offset", type_=Integer))
    else:
        row = tuple_(*ordering.keys)
        bound = tuple_(
            *(
                bindparam(f"page_key_{index}", type_=key.type)
                for index, key in enumerate(ordering.keys)
            )
        )
        statement = statement.where(row < bound if descending else row > bound)
    order = [key.desc() if descending else key.asc() for key in ordering.keys]
    return statement.order_by(*order).limit(bindparam("page_limit", type_=Integer))


def window_kind(window: Window) -> bool | None:
    """The kind of `window` for `windowed`: None from an offset, else its position's
    direction."""
    return None if window.position is None else window.position.backward


def parameters(ordering: Ordering, window: Window) -> dict[str, Any]:
    """The values of `windowed`'s parameters for `window` (`InvalidInput` for a position
    that does not fit the order)."""
    values: dict[str, Any] = {"page_limit": window.limit + 1}
    if window.position is None:
        values["page_offset"] = window.offset
    else:
        key = typed_key(window.position.key, ordering.types)
        values |= {f"page_key_{index}": value for index, value in enumerate(key)}
    return values


def cut(rows: Sequence[Row[Any]], ordering: Ordering, window: Window) -> tuple[list[Any], Edges]:
    """The page's rows in the list's order and its edges, from what `windowed` read."""
    more = len(rows) > window.limit
    page = list(rows[: window.limit])
    position = window.position
    width = len(ordering.keys)
    if position is not None and position.backward:
        page.reverse()
        more_before, more_after = more, True
    elif position is not None:
        more_before, more_after = True, more
    else:
        more_before, more_after = window.offset > 0, more
    return page, Edges(
        first=json_key(page[0][-width:]) if page else None,
        last=json_key(page[-1][-width:]) if page else None,
        more_before=more_before,
        more_after=more_after,
    )


async def read(
    session: AsyncSession, statement: AnySelect, ordering: Ordering, window: Window
) -> tuple[list[Any], Edges]:
    """The rows of the page `window` of `statement` in `ordering`, and the page's edges."""
    page = windowed(statement, ordering, backward=window_kind(window))
    rows = (await session.execute(page, parameters(ordering, window))).all()
    return cut(rows, ordering, window)
