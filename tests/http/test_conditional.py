"""Conditional requests (ETag, If-None-Match, 304) and compression of API answers."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import brotli
import httpx
import pytest
from openapi_ui_bundles import swagger_ui

from service.app import create_asgi
from service.http import conditional
from service.infra.settings import Settings
from tests.factories import TestUser, make_article

MakeUser = Callable[..., Awaitable[TestUser]]
IDENTITY = {"Accept-Encoding": "identity"}
# Long enough that a page of three articles is well over the compression threshold.
DESCRIPTION = "How dragons learn to fly, told at length. " * 12


async def get_raw(
    client: httpx.AsyncClient, path: str, method: str = "GET", **headers: Any
) -> tuple[httpx.Response, bytes]:
    """The response and its body exactly as sent (not decoded by httpx)."""
    async with client.stream(method, path, headers=headers) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    return response, raw


def vary_of(response: httpx.Response) -> set[str]:
    return {field.strip().lower() for field in response.headers.get("vary", "").split(",")}


def assert_hardened(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert response.headers["x-request-id"]


@pytest.fixture
async def three_articles(client: httpx.AsyncClient, make_user: MakeUser) -> TestUser:
    author = await make_user(username="jake")
    for n in range(3):
        await make_article(
            client,
            author,
            title=f"Dragon number {n}",
            description=DESCRIPTION,
            body="You have to believe",
            tags=["dragons", "training"],
        )
    return author


# --- conditional requests -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/articles", "/api/v1/tags"])
async def test_anonymous_reads_revalidate_to_a_304(
    client: httpx.AsyncClient, three_articles: TestUser, path: str
) -> None:
    first = await client.get(path, headers=IDENTITY)
    assert first.status_code == 200
    etag = first.headers["etag"]
    assert re.fullmatch(r'W/"[0-9a-f]{32}"', etag)
    assert first.headers["cache-control"] == "no-cache"
    assert {"authorization", "accept-encoding"} <= vary_of(first)

    again = await client.get(path, headers={"If-None-Match": etag, "X-Request-ID": "rev-1"})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert again.headers["cache-control"] == "no-cache"
    assert vary_of(again) == vary_of(first)
    assert again.headers["x-request-id"] == "rev-1"
    assert_hardened(again)
    for name in ("content-type", "content-encoding", "content-length"):
        assert name not in again.headers
    # The same validator whatever the encoding: it is weak, computed before compression.
    compressed = await client.get(path, headers={"Accept-Encoding": "gzip"})
    assert compressed.headers["etag"] == etag


async def test_a_write_changes_the_list_etag(
    client: httpx.AsyncClient, three_articles: TestUser
) -> None:
    before = await client.get("/api/v1/articles")
    etag = before.headers["etag"]
    await make_article(
        client,
        three_articles,
        title="One more dragon",
        description=DESCRIPTION,
        body="You have to believe",
        tags=["dragons", "training"],
    )
    after = await client.get("/api/v1/articles", headers={"If-None-Match": etag})
    assert after.status_code == 200
    assert after.headers["etag"] != etag
    assert after.json()["articlesCount"] == 4


async def test_if_none_match_lists_and_weak_comparison(
    client: httpx.AsyncClient, three_articles: TestUser
) -> None:
    etag = (await client.get("/api/v1/tags")).headers["etag"]
    strong = etag.removeprefix("W/")
    for value in (
        f'"nope", {etag}',
        f'W/"nope",{strong}',  # weak comparison: W/ does not matter
        "*",
        f" {etag} ",
    ):
        response = await client.get("/api/v1/tags", headers={"If-None-Match": value})
        assert response.status_code == 304, value
    # Several header lines count as one list.
    response = await client.get(
        "/api/v1/tags", headers=[("If-None-Match", '"nope"'), ("If-None-Match", etag)]
    )
    assert response.status_code == 304


@pytest.mark.parametrize(
    "value",
    [
        b'"',
        b"W/",
        b'W/"',
        b",,, ,",
        b"W/W/W/",
        b'"' + b"a" * 8000 + b'"',
        b"x" * 8000,
        b'W/"' * 2000,
        b'"\xff\xfe\x80"',
        "\u00e9t\u00e9".encode(),
        b'"a" "b" W/"c',
    ],
)
async def test_garbage_if_none_match_is_just_no_match(
    client: httpx.AsyncClient, value: bytes
) -> None:
    response = await client.get("/api/v1/tags", headers={"If-None-Match": value})
    assert response.status_code == 200
    assert response.json() == {"tags": []}
    assert response.headers["etag"].startswith('W/"')


async def test_authenticated_answers_stay_no_store_and_revalidate(
    client: httpx.AsyncClient, three_articles: TestUser
) -> None:
    headers = three_articles.headers
    first = await client.get("/api/v1/articles", headers=headers)
    assert first.status_code == 200
    assert first.headers["cache-control"] == "no-store"
    assert {"authorization", "accept-encoding"} <= vary_of(first)
    etag = first.headers["etag"]
    again = await client.get("/api/v1/articles", headers={**headers, "If-None-Match": etag})
    assert again.status_code == 304
    assert again.headers["cache-control"] == "no-store"
    assert again.headers["etag"] == etag
    # The viewer's fields make it another representation than the anonymous one.
    favorite = await client.post("/api/v1/articles/dragon-number-0/favorite", headers=headers)
    assert favorite.status_code == 200
    changed = await client.get("/api/v1/articles", headers={**headers, "If-None-Match": etag})
    assert changed.status_code == 200


async def test_head_gets_the_headers_of_get_without_a_body(
    client: httpx.AsyncClient, three_articles: TestUser
) -> None:
    get, get_body = await get_raw(client, "/api/v1/articles", **{"Accept-Encoding": "gzip"})
    head, head_body = await get_raw(
        client, "/api/v1/articles", "HEAD", **{"Accept-Encoding": "gzip"}
    )
    assert head.status_code == 200
    assert head_body == b""
    for name in ("etag", "content-encoding", "content-length", "content-type", "vary"):
        assert head.headers[name] == get.headers[name], name
    assert int(head.headers["content-length"]) == len(get_body)
    revalidated = await client.head(
        "/api/v1/articles", headers={"If-None-Match": get.headers["etag"]}
    )
    assert revalidated.status_code == 304


async def test_other_answers_are_left_alone(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    assert "etag" not in health.headers
    missing = await client.get("/api/v1/articles/nope", headers={"If-None-Match": "*"})
    assert missing.status_code == 404
    assert "etag" not in missing.headers


async def test_304_carries_the_rate_limit_headers(settings: Settings) -> None:
    asgi = create_asgi(settings.model_copy(update={"rate_limit_enabled": True, "threads": 4}))
    await asgi.startup()
    try:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            etag = (await client.get("/api/v1/tags")).headers["etag"]
            response = await client.get("/api/v1/tags", headers={"If-None-Match": etag})
            assert response.status_code == 304
            assert response.headers["ratelimit"].startswith('"default";r=')
            assert "ratelimit-policy" in response.headers
            assert_hardened(response)
    finally:
        await asgi.shutdown()


# --- compression ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        ("gzip", "gzip"),
        ("br", "br"),
        ("gzip, deflate, br, zstd", "br"),  # httpx's default: equal weights, brotli first
        ("gzip;q=1.0, br;q=0.5", "gzip"),
        ("br;q=0, gzip", "gzip"),
        ("*", "br"),
        ("*;q=0.5, gzip", "gzip"),
        ("x-gzip", "gzip"),
        ("GZIP ; Q=0.9", "gzip"),
        ("identity", None),
        ("", None),
        ("gzip;q=0, br;q=0", None),
        ("deflate", None),
        ("gzip;q=2, br;q=abc", None),  # invalid weights: ignored entries
    ],
)
async def test_list_is_compressed_as_the_client_asks(
    client: httpx.AsyncClient, three_articles: TestUser, accept: str, coding: str | None
) -> None:
    plain, plain_body = await get_raw(client, "/api/v1/articles", **IDENTITY)
    assert len(plain_body) > conditional.MIN_COMPRESS_BYTES
    assert "content-encoding" not in plain.headers
    response, raw = await get_raw(client, "/api/v1/articles", **{"Accept-Encoding": accept})
    assert response.status_code == 200
    assert response.headers.get("content-encoding") == coding
    assert int(response.headers["content-length"]) == len(raw)
    assert "accept-encoding" in vary_of(response)
    if coding == "gzip":
        raw = gzip.decompress(raw)
    elif coding == "br":
        raw = brotli.decompress(raw)
    if coding is not None:
        assert len(raw) > int(response.headers["content-length"])
    assert json.loads(raw) == json.loads(plain_body)
    assert response.headers["etag"] == plain.headers["etag"]


async def test_small_bodies_are_not_compressed_unless_identity_is_refused(
    client: httpx.AsyncClient, three_articles: TestUser
) -> None:
    response, raw = await get_raw(client, "/api/v1/tags", **{"Accept-Encoding": "gzip, br"})
    assert len(raw) < conditional.MIN_COMPRESS_BYTES
    assert "content-encoding" not in response.headers
    assert "accept-encoding" in vary_of(response)  # a bigger answer would be compressed
    assert json.loads(raw) == {"tags": ["dragons", "training"]}

    refused, raw = await get_raw(
        client, "/api/v1/tags", **{"Accept-Encoding": "identity;q=0, gzip"}
    )
    assert refused.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(raw)) == {"tags": ["dragons", "training"]}
    # Nothing acceptable: identity anyway, never a 406.
    nothing, raw = await get_raw(client, "/api/v1/tags", **{"Accept-Encoding": "*;q=0"})
    assert nothing.status_code == 200
    assert "content-encoding" not in nothing.headers


async def test_gzip_only_without_brotli(
    client: httpx.AsyncClient, three_articles: TestUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A new dict: deleting and restoring the key would reorder the preferences for later tests.
    without_brotli = {name: encode for name, encode in conditional.ENCODERS.items() if name != "br"}
    monkeypatch.setattr(conditional, "ENCODERS", without_brotli)
    both = await client.get("/api/v1/articles", headers={"Accept-Encoding": "br, gzip"})
    assert both.headers["content-encoding"] == "gzip"
    only_br = await client.get("/api/v1/articles", headers={"Accept-Encoding": "br"})
    assert "content-encoding" not in only_br.headers
    assert only_br.json()["articlesCount"] == 3


async def test_docs_bundle_is_compressed_in_a_thread_with_a_weakened_etag(
    client: httpx.AsyncClient,
) -> None:
    path = "/api/v1/docs/assets/swagger-ui-bundle.js"
    plain = await client.get(path, headers=IDENTITY)
    assert plain.headers["etag"].startswith('"')  # Flask's strong validator
    original = (Path(swagger_ui.static_path) / "swagger-ui-bundle.js").read_bytes()
    assert len(original) > conditional.OFFLOAD_MIN_BYTES

    response, raw = await get_raw(client, path, **{"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert gzip.decompress(raw) == original
    assert response.headers["etag"] == "W/" + plain.headers["etag"]
    assert "accept-ranges" not in response.headers
    assert response.headers["cache-control"] == plain.headers["cache-control"]  # Flask's own
    revalidated = await client.get(path, headers={"If-None-Match": response.headers["etag"]})
    assert revalidated.status_code == 304


# --- parsing --------------------------------------------------------------------------------


def test_parse_accept_encoding() -> None:
    parse = conditional.parse_accept_encoding
    assert parse([b"gzip, br;q=0.8", b"identity;q=0"]) == {
        b"gzip": 1.0,
        b"br": 0.8,
        b"identity": 0.0,
    }
    assert parse([b"gzip;q=1.001, br;q=-1, zstd;q=, deflate;level=1"]) == {b"deflate": 1.0}
    assert parse([b"", b" , ;q=1"]) == {}
    assert parse([b"\xff\xfe;q=0.5"]) == {b"\xff\xfe": 0.5}


def test_choose_coding_and_identity() -> None:
    choose = conditional.choose_coding
    codings = ("br", "gzip")
    assert choose({b"gzip": 0.5, b"br": 0.5}, codings) == "br"
    assert choose({b"gzip": 0.6, b"br": 0.5}, codings) == "gzip"
    assert choose({b"*": 0.1, b"br": 0.0}, codings) == "gzip"
    assert choose({b"identity": 1.0}, codings) is None
    refused = conditional.identity_refused
    assert refused({b"identity": 0.0})
    assert refused({b"*": 0.0})
    assert not refused({b"*": 0.0, b"identity": 0.5})
    assert not refused({})


def test_none_match_compares_weakly() -> None:
    etag = b'W/"abc"'
    match = conditional.none_match
    assert match([b'"abc"'], etag)
    assert match([b'W/"x", W/"abc"'], etag)
    assert match([b" * "], etag)
    assert not match([b'"ab"', b"abc", b'"abc', b"W/abc", b"**"], etag)
    assert not match([b'"abc"'], b"not-an-etag")


def test_vary_is_merged() -> None:
    merged = conditional.merge_vary(
        [(b"vary", b"Authorization, Origin"), (b"content-type", b"application/json")],
        conditional.VARY_ON,
    )
    assert merged == [
        (b"content-type", b"application/json"),
        (b"vary", b"Authorization, Origin, Accept-Encoding"),
    ]
    assert conditional.merge_vary([(b"vary", b"*")], conditional.VARY_ON) == [(b"vary", b"*")]
    assert conditional.merge_vary([], (b"Accept-Encoding",)) == [(b"vary", b"Accept-Encoding")]


@pytest.mark.parametrize(
    ("content_type", "compressible"),
    [
        (b"application/json", True),
        (b"Application/JSON; charset=utf-8", True),
        (b"application/problem+json", True),
        (b"text/html; charset=utf-8", True),
        (b"text/javascript", True),
        (b"image/svg+xml", True),
        (b"image/png", False),
        (b"text/event-stream", False),
        (None, False),
    ],
)
def test_compressible_types(content_type: bytes | None, compressible: bool) -> None:
    assert conditional.is_compressible(content_type) is compressible
