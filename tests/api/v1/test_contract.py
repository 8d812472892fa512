"""The OpenAPI document describes exactly what the API accepts.

For each request field and parameter, values are drawn at random (and from the documented
pattern, and near it) and the document's schema, judged by jsonschema-rs as Schemathesis judges
it, must agree with the API's validators: schema-valid values are accepted, all others rejected.
NUL characters are the one documented exception: PostgreSQL text cannot hold them, so text
fields reject them although their schemas do not say so.
"""

from __future__ import annotations

import re
import string
import sys
from collections.abc import Callable
from typing import Any

import httpx
import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from service.app import ConduitASGI
from service.schemas.article import ArticleCreate, ArticleListQuery, ArticleUpdate
from service.schemas.comment import CommentCreate
from service.schemas.common import NOT_BLANK_PATTERN, WHITESPACE
from service.schemas.user import UserCreate, UserLogin, UserUpdate

EXAMPLES = settings(
    max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None
)

VALID: dict[type[BaseModel], dict[str, Any]] = {
    UserCreate: {"username": "jake", "email": "jake@jake.jake", "password": "jakejake"},
    UserLogin: {"email": "jake@jake.jake", "password": "jakejake"},
    UserUpdate: {},
    ArticleCreate: {"title": "t", "description": "d", "body": "b"},
    ArticleUpdate: {},
    CommentCreate: {"body": "b"},
}

# Characters where validators and regex dialects tend to differ: whitespace of both Python's
# and ECMAScript's definitions, URL and email punctuation, non-ASCII letters and digits.
TRICKY = (
    " \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2000\u2028\u2029\u202f\u205f\u3000\ufeff\u200b"
    "._-@/:?#[]%+!$&'()*,;=~`{|}^\\\"<>"
    "aZ09éß日\u0661"
)
SEGMENT_CHARS = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])


def texts(pattern: str | None = None, max_length: int | None = None) -> st.SearchStrategy[str]:
    """Strings of any kind, biased towards the ones near `pattern` and near `max_length`."""
    anything = st.text(SEGMENT_CHARS, max_size=40)
    tricky = st.text(st.sampled_from(TRICKY), max_size=12)
    strategy = anything | tricky
    if pattern is not None:
        near = st.from_regex(re.compile(pattern), fullmatch=True).filter(lambda s: "\x00" not in s)
        strategy |= near | near | st.tuples(tricky, near, tricky).map("".join)
    if max_length is not None:
        # Around the limit, with and without surrounding whitespace: is it counted as sent?
        padding = st.text(st.sampled_from(" \t\n\xa0\u3000x"), max_size=3)
        sized = st.tuples(padding, st.integers(max(1, max_length - 3), max_length + 1), padding)
        around = sized.map(lambda parts: parts[0] + "x" * parts[1] + parts[2])
        strategy |= around | around
    return strategy


async def get_document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def schema_validator(document: dict[str, Any], schema: dict[str, Any]) -> Callable[[Any], bool]:
    """`is_valid` of `schema` (which may use the document's `$ref`s), for OpenAPI 3.1."""
    bundled = {**schema, "components": document["components"]}
    validator = jsonschema_rs.Draft202012Validator(bundled, validate_formats=True)
    return validator.is_valid


def accepts(model: type[BaseModel], data: dict[str, Any]) -> bool:
    try:
        model.model_validate(data)
    except ValidationError:
        return False
    return True


# (model, field as sent, extra wrapping: None for the field itself, "item" for list items)
BODY_FIELDS = [
    (UserCreate, "username", None),
    (UserCreate, "email", None),
    (UserCreate, "password", None),
    (UserLogin, "email", None),
    (UserLogin, "password", None),
    (UserUpdate, "email", None),
    (UserUpdate, "username", None),
    (UserUpdate, "password", None),
    (UserUpdate, "bio", None),
    (UserUpdate, "image", None),
    (ArticleCreate, "title", None),
    (ArticleCreate, "description", None),
    (ArticleCreate, "body", None),
    (ArticleCreate, "tagList", "item"),
    (ArticleUpdate, "title", None),
    (ArticleUpdate, "description", None),
    (ArticleUpdate, "body", None),
    (ArticleUpdate, "tagList", "item"),
    (CommentCreate, "body", None),
]


@pytest.mark.parametrize(
    ("model", "field", "wrap"), BODY_FIELDS, ids=[f"{m.__name__}.{f}" for m, f, _ in BODY_FIELDS]
)
async def test_body_field_schema_matches_its_validator(
    client: httpx.AsyncClient, model: type[BaseModel], field: str, wrap: str | None
) -> None:
    document = await get_document(client)
    schema = document["components"]["schemas"][model.__name__]
    is_valid = schema_validator(document, schema)
    property_schema = schema["properties"][field]
    if wrap == "item":
        property_schema = property_schema["items"]
    variants = [property_schema, *property_schema.get("anyOf", [])]
    pattern = next((v["pattern"] for v in variants if "pattern" in v), None)
    max_length = next((v["maxLength"] for v in variants if "maxLength" in v), None)
    # Other fields are valid, so the whole body is valid exactly when this field is.
    base = VALID[model]

    @EXAMPLES
    @given(texts(pattern, max_length))
    def agree(text: str) -> None:
        if "\x00" in text:
            return
        value: Any = [text] if wrap == "item" else text
        data = {**base, field: value}
        assert is_valid(data) == accepts(model, data), data

    agree()


@pytest.mark.parametrize("field", ["limit", "offset"])
async def test_paging_parameters_read_integers_as_documented(
    client: httpx.AsyncClient, field: str
) -> None:
    document = await get_document(client)
    parameter = next(
        p for p in document["paths"]["/api/v1/articles"]["get"]["parameters"] if p["name"] == field
    )
    is_valid = schema_validator(document, parameter["schema"])

    def documented(text: str) -> bool:
        # What a text parameter means to a client reading the schema: the integer it spells
        # (ASCII digits, an optional sign, nothing around), within the bounds.
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            return False
        return is_valid(int(text))

    numbers = st.integers(-(10**20), 10**20).map(str)
    digits = st.from_regex(r"[+-]?[0-9]{1,25}", fullmatch=True)
    near = st.tuples(st.text(st.sampled_from(TRICKY + "05.e"), max_size=3), digits).map(
        lambda parts: parts[0] + parts[1]
    )

    @EXAMPLES
    @given(numbers | digits | near | st.text(SEGMENT_CHARS, max_size=8))
    def agree(text: str) -> None:
        assert documented(text) == accepts(ArticleListQuery, {field: text}), text

    agree()
    for text, expected in [("+5", True), ("05", True), ("-0", field == "offset"), ("5.0", False)]:
        assert documented(text) is expected
        assert accepts(ArticleListQuery, {field: text}) is expected


@pytest.mark.parametrize("field", ["tag", "author", "favorited"])
async def test_filter_parameters_are_any_text(client: httpx.AsyncClient, field: str) -> None:
    document = await get_document(client)
    parameter = next(
        p for p in document["paths"]["/api/v1/articles"]["get"]["parameters"] if p["name"] == field
    )
    assert parameter["schema"]["type"] == "string"
    assert not {"pattern", "minLength", "maxLength", "format"} & set(parameter["schema"])

    @EXAMPLES
    @given(texts())
    def agree(text: str) -> None:
        assert accepts(ArticleListQuery, {field: text}) is ("\x00" not in text)

    agree()


PATH_PARAMETERS = [
    ("/api/v1/articles/{slug}", "get", "slug"),
    ("/api/v1/articles/{slug}/comments", "post", "slug"),
    ("/api/v1/articles/{slug}/comments/{comment_id}", "delete", "slug"),
    ("/api/v1/articles/{slug}/comments/{comment_id}", "delete", "comment_id"),
    ("/api/v1/articles/{slug}/favorite", "post", "slug"),
    ("/api/v1/profiles/{username}", "get", "username"),
    ("/api/v1/profiles/{username}/follow", "post", "username"),
]


@pytest.mark.parametrize(("path", "method", "name"), PATH_PARAMETERS)
async def test_path_parameter_schema_matches_the_route(
    client: httpx.AsyncClient, app: ConduitASGI, path: str, method: str, name: str
) -> None:
    document = await get_document(client)
    parameters = document["paths"][path][method]["parameters"]
    schema = next(p["schema"] for p in parameters if p["name"] == name)
    is_valid = schema_validator(document, schema)
    adapter = app.flask_app.url_map.bind("testserver")
    others = {"slug": "a-slug", "username": "jake", "comment_id": "1"}

    def routed(segment: str) -> bool:
        url = path.format(**{**others, name: segment})
        try:
            endpoint, _ = adapter.match(url, method=method.upper())
        except HTTPException:  # no route, another route's method, or a redirect ("a/" -> "a")
            return False
        return endpoint == adapter.match(path.format(**others), method=method.upper())[0]

    def documented(segment: str) -> bool:
        if schema.get("type") == "integer":
            # An id as a URL spells it: decimal digits (no sign: the schema's minimum is 0).
            return bool(re.fullmatch(r"[0-9]+", segment)) and is_valid(int(segment))
        return is_valid(segment)

    @EXAMPLES
    @given(
        texts(schema.get("pattern"))
        | st.sampled_from(["feed", "feed\n", "feed-2", "Feed", "0", "-1", "007", "\u0661"])
        | st.integers(-5, 10**20).map(str)
        | st.text(string.digits, min_size=1)
    )
    def agree(segment: str) -> None:
        if not segment or "\x00" in segment:
            return  # an empty segment is another URL; NUL is not a path character here
        assert documented(segment) == routed(segment), segment

    agree()


def test_the_whitespace_class_is_what_str_strip_removes() -> None:
    # Blank checks and trimming use str.isspace(); the documented pattern spells the same set.
    whitespace = re.compile(f"[{WHITESPACE}]")
    differ = [
        hex(code)
        for code in range(sys.maxunicode + 1)
        if (whitespace.fullmatch(chr(code)) is not None) != chr(code).isspace()
    ]
    assert differ == []
    assert re.search(NOT_BLANK_PATTERN, " \u3000\ufeff") is not None  # U+FEFF is not space
    assert re.search(NOT_BLANK_PATTERN, " \u3000\u2028\x1c\x85") is None
