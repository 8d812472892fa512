"""Webhook payload builders (the catalogue's shapes) and the documented URL pattern."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from service.domain import events
from service.infra.address_policy import AddressPolicy
from service.models import Article, Comment, User
from service.schemas.webhook import (
    EVENT_FILTERS,
    URL_PATTERN,
    WebhookCreate,
    WebhookRecoverRequest,
    WebhookUpdate,
)
from service.services.webhooks import check_endpoint_url
from service.webhooks import catalogue
from service.webhooks.ssrf import WebhookUrlRefused

CREATED = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
UPDATED = datetime(2026, 1, 3, 3, 4, 5, tzinfo=UTC)
DEVELOPMENT = AddressPolicy.build(allow_http=True)


def jake(**fields: Any) -> User:
    values = {"username": "jake", "email": "jake@jake.jake", "bio": None, "image": None}
    return User(**(values | fields))


def conforms(event_type: str, data: dict[str, Any]) -> bool:
    schema = catalogue.BY_NAME[event_type].data_schema()
    return bool(jsonschema_rs.validator_for(schema).is_valid(data))


def test_the_catalogue_covers_every_event_type() -> None:
    assert [entry.name for entry in catalogue.EVENT_TYPES] == list(events.EVENT_TYPES)
    for entry in catalogue.EVENT_TYPES:
        # The examples are what the builders would produce.
        assert entry.model.model_validate(entry.example).to_data() == entry.example


def test_article_data() -> None:
    article = Article(
        slug="how-to-train-your-dragon",
        title="How to train your dragon",
        description="Ever wonder how?",
        body="You have to believe",
        created_at=CREATED,
        updated_at=UPDATED,
    )
    data = catalogue.article_data(
        article, author=jake(bio="hi"), tags=["b", "B", "a"], favorites_count=2
    )
    assert data == {
        "article": {
            "slug": "how-to-train-your-dragon",
            "title": "How to train your dragon",
            "description": "Ever wonder how?",
            "body": "You have to believe",
            "tagList": ["a", "B", "b"],
            "createdAt": "2026-01-02T03:04:05.678Z",
            "updatedAt": "2026-01-03T03:04:05.000Z",
            "favoritesCount": 2,
            "author": {"username": "jake", "bio": "hi", "image": ""},
        }
    }
    for event_type in (events.ARTICLE_CREATED, events.ARTICLE_UPDATED, events.ARTICLE_DELETED):
        assert conforms(event_type, data)
    view = SimpleNamespace(article=article, author=jake(), tags=["x"], favorites_count=0)
    from_view = catalogue.article_view_data(view)
    assert from_view["article"]["tagList"] == ["x"]
    assert from_view["article"]["author"]["bio"] == ""


def test_comment_data() -> None:
    comment = Comment(id=7, body="It takes a Jacobian", created_at=CREATED, updated_at=CREATED)
    data = catalogue.comment_data(
        comment, author=jake(image="https://i.example/j.png"), article_slug="dragons"
    )
    assert data == {
        "comment": {
            "id": 7,
            "body": "It takes a Jacobian",
            "createdAt": "2026-01-02T03:04:05.678Z",
            "updatedAt": "2026-01-02T03:04:05.678Z",
            "author": {"username": "jake", "bio": "", "image": "https://i.example/j.png"},
        },
        "article": {"slug": "dragons"},
    }
    assert conforms(events.COMMENT_CREATED, data)
    assert conforms(events.COMMENT_DELETED, data)


def test_favorite_follow_user_and_ping_data() -> None:
    favorite = catalogue.favorite_data(article_slug="dragons", favorites_count=1, user=jake())
    assert favorite == {
        "article": {"slug": "dragons", "favoritesCount": 1},
        "profile": {"username": "jake"},
    }
    assert conforms(events.ARTICLE_FAVORITED, favorite)
    follow = catalogue.follow_data(followee=jake())
    assert follow == {"profile": {"username": "jake"}}
    assert conforms(events.PROFILE_FOLLOWED, follow)
    user = catalogue.user_data(jake(bio="b"))
    assert user == {
        "user": {"username": "jake", "email": "jake@jake.jake", "bio": "b", "image": ""}
    }
    assert conforms(events.USER_UPDATED, user)
    webhook_id = uuid.uuid4()
    ping = catalogue.ping_data(webhook_id=webhook_id)
    assert ping == {"webhookId": str(webhook_id), "message": "ping"}
    assert conforms(events.WEBHOOK_PING, ping)


def test_builders_refuse_impossible_values() -> None:
    with pytest.raises(ValueError, match="favorites_count"):
        catalogue.favorite_data(article_slug="x", favorites_count=-1, user=jake())


# --- the documented URL pattern agrees with what the API accepts ---------------------------


def _url_property() -> dict[str, Any]:
    schema = WebhookCreate.model_json_schema(by_alias=True)
    prop: dict[str, Any] = schema["properties"]["url"]
    return prop


URL_VALIDATOR = jsonschema_rs.validator_for(_url_property())
TRICKY = "._-@/:?#[]%+!$&'()*,;=~`{|}^\\\"<> \tAZaz09é\u0661"
_LOCALHOST = re.compile(r"(?:.*\.)?localhost\.?", re.IGNORECASE)


def _documented_exception(url: str) -> bool:
    """The pattern's known gaps: names meaning loopback (RFC 6761) and over-long host names,
    refused although they match (the pattern cannot say either without lookarounds)."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return bool(_LOCALHOST.fullmatch(host)) or len(host.rstrip(".")) > 253


def _accepted(url: str) -> bool:
    try:
        check_endpoint_url(url, policy=DEVELOPMENT)
    except WebhookUrlRefused:
        return False
    return True


near_urls = st.from_regex(re.compile(URL_PATTERN), fullmatch=True)
tricky = st.text(st.sampled_from(TRICKY), max_size=8)
urls = (
    near_urls
    | st.tuples(near_urls, tricky).map("".join)
    | st.tuples(
        st.sampled_from(["https://", "http://", "HTTPS://h.", "https://[::1]"]), tricky
    ).map("".join)
    | st.text(max_size=30)
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(urls)
@example("https://hooks.example.com:8443/x?y=1")
@example("https://93.184.216.34/")
@example("https://bücher.example/")
@example("https://a.b:/")
@example("https://a.b:080/")
@example("https://a.1/")
@example("https://a_b.c-d/")
@example("https://a.b./")
def test_url_pattern_matches_what_is_accepted(url: str) -> None:
    if "\x00" in url or _documented_exception(url):
        return
    assert URL_VALIDATOR.is_valid(url) == _accepted(url), url


# --- the other request fields: documented schema and validators agree -----------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
FIELD_VALUES = {
    "events": st.lists(st.sampled_from([*EVENT_FILTERS, "nope", "Article.created"]), max_size=14)
    | json_values,
    "rateLimit": st.integers(-2, 1002)
    | st.floats(-2, 1002).map(lambda f: round(f, 1))
    | json_values,
    "description": st.text(max_size=502).filter(lambda s: "\x00" not in s)
    | st.integers(490, 510).map(lambda n: "é" * n)
    | json_values,
}
VALID_BODY = {"url": "https://a.example/", "events": ["*"]}


def _agree(model: type[BaseModel], body: dict[str, Any]) -> None:
    if "\\x00" in repr(body):
        return  # NUL: refused by every text field, although no schema says so
    schema = model.model_json_schema(by_alias=True)
    valid = jsonschema_rs.validator_for(schema).is_valid(body)
    try:
        model.model_validate(body)
    except ValidationError:
        accepted = False
    else:
        accepted = True
    assert valid == accepted, body


@pytest.mark.parametrize("field", sorted(FIELD_VALUES))
@pytest.mark.parametrize("model", [WebhookCreate, WebhookUpdate])
def test_body_fields_match_their_schema(model: type[BaseModel], field: str) -> None:
    @settings(
        max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(FIELD_VALUES[field])
    def agree(value: Any) -> None:
        _agree(model, {**(VALID_BODY if model is WebhookCreate else {}), field: value})

    agree()


@given(st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()) | json_values)
@example("2026-03-01T12:00:00Z")
@example("2026-03-01t12:00:00.5z")
@example("2026-03-01T12:00:00")
@example("2016-12-31T23:59:60Z")
@example("2017-01-01T00:59:60+01:00")
@example("2016-12-31T12:59:60Z")
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_since_matches_its_schema(value: Any) -> None:
    schema = WebhookRecoverRequest.model_json_schema(by_alias=True)
    valid = jsonschema_rs.validator_for(schema, validate_formats=True).is_valid({"since": value})
    try:
        WebhookRecoverRequest.model_validate({"since": value})
    except ValidationError:
        accepted = False
    else:
        accepted = True
    assert valid == accepted, value
