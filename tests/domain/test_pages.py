"""Positions of keyset pages: sort keys as JSON scalars and back, and what does not fit."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from service.domain.errors import InvalidInput
from service.domain.pages import json_key, typed_key


def test_keys_round_trip_exactly() -> None:
    moment = datetime(2026, 12, 3, 15, 4, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    ident = uuid.uuid4()
    key = (moment, ident, 42, "msg_x", 0.125)
    values = json_key(key)
    assert values == [values[0], str(ident), 42, "msg_x", 0.125]
    assert isinstance(values[0], int)
    back = typed_key(values, (datetime, uuid.UUID, int, str, float))
    assert back == key
    assert back[0].tzinfo == UTC


@pytest.mark.parametrize(
    ("values", "types"),
    [
        ([1], (datetime, int)),  # too few
        ([1, 2, 3], (datetime, int)),  # too many
        (["2026-01-01", 1], (datetime, int)),  # a time must be microseconds
        ([1, "1"], (datetime, int)),  # an id must be a number
        ([1, True], (datetime, int)),  # not a boolean
        ([1.5, 1], (datetime, int)),
        (["not-a-uuid", 1], (uuid.UUID, int)),
        ([10**30, 1], (datetime, int)),  # out of range
        ([1, 2], (str, int)),
    ],
)
def test_values_that_do_not_fit_the_order_are_invalid_input(
    values: list[Any], types: tuple[type, ...]
) -> None:
    with pytest.raises(InvalidInput) as raised:
        typed_key(values, types)
    assert raised.value.field == "cursor"
