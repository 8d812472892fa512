"""The API index at `/` and `/api/v1`: links, Link header, caching and the other layers."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

import service
from service.api.index import MAX_AGE_SECONDS, TARGETS
from service.app import ConduitASGI, create_asgi
from service.infra.settings import Settings
from service.schemas.index import IndexResponse
from tests.apps import serving
from tests.factories import TestUser

PATHS = ("/", "/api/v1", "/api/v1/")
LINK = re.compile(r'<([^>]*)>\s*;\s*rel="([^"]+)"')
IGNORED_METHODS = {"HEAD", "OPTIONS"}


def link_relations(value: str) -> list[tuple[str, str]]:
    """`(relation, target)` of each link in an RFC 8288 `Link` value."""
    return [(rel, target) for target, rel in LINK.findall(value)]


@pytest.mark.parametrize("path", PATHS)
async def test_index_answers_at_each_path_without_a_redirect(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    # A stable shape: exactly the documented fields, nothing more.
    assert IndexResponse.model_validate(body).to_json() == body
    assert body["name"] == "Conduit API"
    assert body["version"] == service.__version__
    assert set(body["links"]) == set(TARGETS)
    assert body["links"]["docs"]["href"] == "/api/v1/docs"
    assert body["links"]["openapi"]["href"] == "/api/v1/openapi.json"
    assert body["links"]["profile"] == {
        "href": "/api/v1/profiles/{username}",
        "title": "A user's profile",
        "methods": ["GET"],
        "templated": True,
    }
    assert link_relations(response.headers["link"]) == [
        ("service-desc", "/api/v1/openapi.json"),
        ("service-doc", "/api/v1/docs"),
        ("service-doc", "/api/v1/redoc"),
    ]


async def test_every_path_gives_the_same_index(client: httpx.AsyncClient) -> None:
    bodies = [(await client.get(path)).content for path in PATHS]
    assert bodies[0] == bodies[1] == bodies[2]


async def test_links_name_real_routes_and_their_methods(app: ConduitASGI) -> None:
    urls = app.flask_app.url_map.bind("testserver")
    for name, target in TARGETS.items():
        path = target.path.replace("{username}", "jake")
        methods = urls.allowed_methods(path)
        assert set(methods) - IGNORED_METHODS == set(target.methods), name


async def test_get_links_answer(
    client: httpx.AsyncClient, make_user: Callable[..., Awaitable[TestUser]]
) -> None:
    user = await make_user(username="jake")
    links = (await client.get("/")).json()["links"]
    for name, link in links.items():
        if "GET" not in link["methods"]:
            continue
        href = link["href"].replace("{username}", "jake")
        anonymous = await client.get(href)
        signed_in = await client.get(href, headers=user.headers)
        # Anonymous callers may be told to sign in (user, feed), never that nothing is there.
        assert anonymous.status_code in {200, 401}, (name, anonymous.status_code)
        assert signed_in.status_code == 200, (name, signed_in.text)


async def test_index_root_follows_the_mount_point(app: ConduitASGI) -> None:
    transport = httpx.ASGITransport(app=app, root_path="/conduit")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.get("/conduit/api/v1")
    assert response.status_code == 200
    links = response.json()["links"]
    assert all(link["href"].startswith("/conduit/api/v1/") for link in links.values())
    assert ("service-desc", "/conduit/api/v1/openapi.json") in link_relations(
        response.headers["link"]
    )


@pytest.mark.parametrize("path", PATHS)
async def test_index_is_cacheable_and_revalidates(client: httpx.AsyncClient, path: str) -> None:
    first = await client.get(path)
    assert first.headers["cache-control"] == f"max-age={MAX_AGE_SECONDS}"
    etag = first.headers["etag"]
    assert "Authorization" in first.headers["vary"]
    again = await client.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert again.headers["link"] == first.headers["link"]


async def test_index_with_credentials_is_not_stored(
    client: httpx.AsyncClient, make_user: Callable[..., Awaitable[TestUser]]
) -> None:
    user = await make_user()
    response = await client.get("/", headers=user.headers)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("path", PATHS)
async def test_index_has_the_security_headers(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path, headers={"X-Request-ID": "index-1"})
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-request-id"] == "index-1"


async def test_head_and_other_methods(client: httpx.AsyncClient) -> None:
    head = await client.head("/api/v1")
    assert head.status_code == 200
    assert head.content == b""
    assert "link" in head.headers
    refused = await client.post("/", json={})
    assert refused.status_code == 405
    assert "errors" in refused.json()


async def test_index_counts_against_the_rate_limit(settings: Settings) -> None:
    limited = settings.model_copy(
        update={"rate_limit_enabled": True, "rate_limit_anonymous_per_minute": 2}
    )
    async with serving(create_asgi(limited)) as http:
        answers = [await http.get(path) for path in ("/", "/api/v1", "/api/v1/")]
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    assert all('"default"' in answer.headers["ratelimit-policy"] for answer in answers)
    assert answers[2].json()["errors"]


async def test_openapi_documents_the_index(client: httpx.AsyncClient) -> None:
    document: dict[str, Any] = (await client.get("/api/v1/openapi.json")).json()
    for path in ("/", "/api/v1"):
        operation = document["paths"][path]["get"]
        assert operation["tags"] == ["API index"]
        assert operation["security"] == []
        ok = operation["responses"]["200"]
        assert ok["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/IndexResponse"
        }
        example = ok["content"]["application/json"]["example"]
        assert IndexResponse.model_validate(example).to_json() == example
        assert set(ok["headers"]) == {"Link", "Cache-Control"}
    links = document["components"]["schemas"]["IndexLinks"]
    assert set(links["required"]) == set(TARGETS)
