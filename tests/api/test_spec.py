"""`query_of` / `body_of`: the validated request, typed; asking for the wrong model is a bug."""

from __future__ import annotations

import pytest
from flask import Flask, g
from pydantic import BaseModel

from service.api.spec import Parsed, body_of, query_of


class Thing(BaseModel):
    name: str


class Other(BaseModel):
    size: int


def test_the_validated_models_come_back_typed() -> None:
    with Flask(__name__).test_request_context():
        g.conduit_parsed = Parsed(query=Other(size=1), body=Thing(name="a"))
        assert body_of(Thing) == Thing(name="a")
        assert query_of(Other) == Other(size=1)


def test_a_wrong_or_missing_model_is_a_programming_error() -> None:
    with Flask(__name__).test_request_context():
        with pytest.raises(TypeError, match="not decorated with operation"):
            body_of(Thing)
        g.conduit_parsed = Parsed(query=None, body=Thing(name="a"))
        with pytest.raises(TypeError, match="body is Thing, not Other"):
            body_of(Other)
        with pytest.raises(TypeError, match="query is NoneType, not Other"):
            query_of(Other)
