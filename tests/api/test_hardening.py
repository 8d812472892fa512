"""Security headers on every response, CORS from the allowlist, no server banner, body limit."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest
from hypercorn.config import Config

from service.api.hardening import DOCS_CSP
from service.app import ConduitASGI, create_asgi
from service.cli import HYPERCORN_TOML
from service.infra.settings import Settings
from service.infra.web_security import (
    API_CSP,
    CORS_EXPOSE_HEADERS,
    HSTS,
    CorsPolicy,
    normalise_origin,
)
from tests.apps import over_tcp
from tests.factories import TestUser

ORIGIN = "https://app.example.com"
Serve = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]
MakeUser = Callable[..., Any]


@pytest.fixture
def serve(settings: Settings, app: ConduitASGI) -> Serve:
    """`async with serve(**overrides) as client:` a client of an app with these settings."""

    @contextlib.asynccontextmanager
    async def start(
        peer: tuple[str, int] = ("127.0.0.1", 50000),
        base_url: str = "http://testserver",
        **overrides: Any,
    ) -> AsyncIterator[httpx.AsyncClient]:
        asgi = create_asgi(
            settings.model_copy(update={"rate_limit_enabled": False, "threads": 4, **overrides})
        )
        await asgi.startup()
        try:
            transport = httpx.ASGITransport(app=asgi, client=peer)
            async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
                yield client
        finally:
            await asgi.shutdown()

    return start


def assert_hardened(response: httpx.Response, csp: str = API_CSP) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["content-security-policy"] == csp
    assert "server" not in response.headers
    assert "strict-transport-security" not in response.headers  # plain HTTP


async def test_json_responses_are_hardened(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/tags")
    assert response.status_code == 200
    assert_hardened(response)
    assert "Authorization" in response.headers["vary"]
    # Anonymous reads may be stored by the client, revalidated with the ETag
    # (service/http/conditional.py).
    assert response.headers["cache-control"] == "no-cache"
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/v1/nowhere", 404),
        ("DELETE", "/api/v1/tags", 405),
        ("GET", "/api/v1/user", 401),
        ("POST", "/api/v1/users/login", 415),
        ("GET", "/healthz", 200),
        ("GET", "/readyz", 200),
        ("GET", "/api/v1/openapi.json", 200),
    ],
)
async def test_every_answer_is_hardened(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    response = await client.request(method, path)
    assert response.status_code == status
    assert_hardened(response)


async def test_authenticated_answers_are_not_stored(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user: TestUser = await make_user(username="jake")
    response = await client.get("/api/v1/user", headers=user.headers)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert "Authorization" in response.headers["vary"]
    # A bad token too: the answer is still about the credentials presented.
    bad = await client.get("/api/v1/user", headers={"Authorization": "Token nope"})
    assert bad.status_code == 401
    assert bad.headers["cache-control"] == "no-store"


async def test_answers_carrying_tokens_are_not_stored(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    user: TestUser = await make_user(username="jake")
    body = {"user": {"email": user.email, "password": user.password}}
    response = await client.post("/api/v1/users/login", json=body)
    assert response.status_code == 200
    assert "token" in response.json()["user"]
    assert response.headers["cache-control"] == "no-store"


async def test_docs_pages_get_a_strict_self_only_policy(client: httpx.AsyncClient) -> None:
    for page in ("/api/v1/docs", "/api/v1/redoc"):
        response = await client.get(page)
        assert response.status_code == 200
        assert_hardened(response, DOCS_CSP)
    # Nothing but our own origin, and no inline scripts or eval.
    directives = dict(d.strip().split(" ", 1) for d in DOCS_CSP.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-eval" not in DOCS_CSP
    assert "http" not in DOCS_CSP
    asset = await client.get("/api/v1/docs/assets/swagger-ui-bundle.js")
    assert asset.status_code == 200
    assert_hardened(asset)
    # Static assets keep their own caching.
    assert "no-store" not in asset.headers.get("cache-control", "")


async def test_hsts_only_over_https(serve: Serve) -> None:
    async with serve(base_url="https://testserver") as client:
        response = await client.get("/api/v1/tags")
        assert response.headers["strict-transport-security"] == HSTS
    # X-Forwarded-Proto is believed from a trusted proxy only.
    forwarded = {"X-Forwarded-Proto": "https"}
    async with serve(peer=("192.0.2.1", 1), trusted_proxies="127.0.0.1") as direct:
        response = await direct.get("/api/v1/tags", headers=forwarded)
        assert "strict-transport-security" not in response.headers
    async with serve(trusted_proxies="127.0.0.0/8") as via_proxy:
        response = await via_proxy.get("/api/v1/tags", headers=forwarded)
        assert response.headers["strict-transport-security"] == HSTS
        response = await via_proxy.get("/api/v1/tags", headers={"X-Forwarded-Proto": "http"})
        assert "strict-transport-security" not in response.headers


async def test_answers_that_bypass_flask_are_hardened_too(serve: Serve) -> None:
    async with serve(max_body_bytes=1024, cors_origins=ORIGIN) as client:
        response = await client.post(
            "/api/v1/users/login",
            content=b"x" * 2048,
            headers={"Content-Type": "application/json", "Origin": ORIGIN},
        )
        assert response.status_code == 413
        assert response.json() == {"errors": {"body": ["request body too large"]}}
        assert_hardened(response)
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert response.headers["access-control-expose-headers"] == CORS_EXPOSE_HEADERS


async def test_cors_preflight_from_an_allowed_origin(serve: Serve) -> None:
    origins = f"{ORIGIN}, http://localhost:3000"
    async with serve(cors_origins=origins) as client:
        response = await client.options(
            "/api/v1/users/login",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, authorization",
                "X-Request-ID": "preflight-1",
            },
        )
        assert response.status_code == 204
        assert response.content == b""
        headers = response.headers
        assert headers["access-control-allow-origin"] == ORIGIN
        assert headers["access-control-allow-credentials"] == "true"
        assert headers["access-control-allow-methods"] == "POST"
        assert headers["access-control-allow-headers"] == (
            "Authorization, Content-Type, X-Request-ID, If-Match, If-None-Match, Idempotency-Key"
        )
        assert headers["access-control-max-age"] == "600"
        assert "Origin" in headers["vary"]
        assert headers["x-request-id"] == "preflight-1"
        assert_hardened(response)

        # The methods of the path, not of the first rule that matched it.
        user = await client.options(
            "/api/v1/user",
            headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "PUT"},
        )
        assert user.status_code == 204
        assert user.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert user.headers["access-control-allow-methods"] == "GET, PATCH, PUT"


@pytest.mark.parametrize(
    ("path", "origin", "method", "status"),
    [
        ("/api/v1/tags", "https://evil.example.com", "GET", 200),  # not listed
        ("/api/v1/tags", "https://app.example.com.evil.com", "GET", 200),  # not a prefix match
        ("/api/v1/tags", "http://app.example.com", "GET", 200),  # other scheme
        ("/api/v1/tags", "null", "GET", 200),
        ("/api/v1/tags", ORIGIN, "DELETE", 200),  # not a method of the path
        ("/api/v1/nowhere", ORIGIN, "GET", 404),
    ],
)
async def test_cors_preflight_refused(
    serve: Serve, path: str, origin: str, method: str, status: int
) -> None:
    async with serve(cors_origins=ORIGIN) as client:
        response = await client.options(
            path, headers={"Origin": origin, "Access-Control-Request-Method": method}
        )
        assert response.status_code == status
        cors = {name for name in response.headers if name.startswith("access-control-")}
        # No preflight grant; an allowed origin may still read the (error) answer itself.
        assert "access-control-allow-methods" not in cors
        if origin == ORIGIN:
            assert response.headers["access-control-allow-origin"] == ORIGIN
        else:
            assert not cors
        assert_hardened(response)


async def test_cors_on_actual_responses(serve: Serve, make_user: MakeUser) -> None:
    async with serve(cors_origins=ORIGIN) as client:
        allowed = await client.get("/api/v1/tags", headers={"Origin": ORIGIN})
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        assert allowed.headers["access-control-allow-credentials"] == "true"
        assert allowed.headers["access-control-expose-headers"] == (
            "RateLimit, RateLimit-Policy, Retry-After, X-Request-ID, ETag, Idempotent-Replayed"
        )
        assert {v.strip() for v in allowed.headers["vary"].split(",")} >= {
            "Origin",
            "Authorization",
        }
        # Errors are readable by the allowed origin too.
        error = await client.get("/api/v1/user", headers={"Origin": ORIGIN})
        assert error.status_code == 401
        assert error.headers["access-control-allow-origin"] == ORIGIN

        other = await client.get("/api/v1/tags", headers={"Origin": "https://evil.example.com"})
        assert other.status_code == 200
        assert "access-control-allow-origin" not in other.headers
        assert "Origin" in other.headers["vary"]


async def test_cors_wildcard_never_with_credentials(serve: Serve) -> None:
    async with serve(cors_origins="*") as client:
        response = await client.get("/api/v1/tags", headers={"Origin": "https://any.example"})
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers
        preflight = await client.options(
            "/api/v1/tags",
            headers={"Origin": "https://any.example", "Access-Control-Request-Method": "GET"},
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in preflight.headers


async def test_no_cors_by_default(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/tags", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in response.headers
    preflight = await client.options(
        "/api/v1/tags", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
    )
    # Flask's own OPTIONS answer, without CORS: the browser refuses the cross-origin call.
    assert preflight.status_code == 200
    assert not [name for name in preflight.headers if name.startswith("access-control-")]


def test_cors_setting_is_validated() -> None:
    assert normalise_origin("HTTPS://App.Example.com:443/") == "https://app.example.com"
    assert normalise_origin("http://localhost:3000") == "http://localhost:3000"
    assert normalise_origin("http://[::1]:8080") == "http://[::1]:8080"
    assert CorsPolicy(" https://a.example , http://b.example:8080 ").origins == {
        "https://a.example",
        "http://b.example:8080",
    }
    assert not CorsPolicy("").enabled
    for bad in ("*, https://a.example", "https://a.example/path", "ftp://a.example", "null"):
        with pytest.raises(ValueError, match="CORS_ORIGINS"):
            CorsPolicy(bad)
    for bad in ("https://user@a.example", "https://a.example:99999", "https://a.example?x"):
        with pytest.raises(ValueError, match="CORS_ORIGINS"):
            normalise_origin(bad)


def test_bad_cors_or_proxy_setting_stops_the_app(settings: Settings) -> None:
    with pytest.raises(ValueError, match="CORS_ORIGINS"):
        create_asgi(settings.model_copy(update={"cors_origins": "*.example.com"}))
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        create_asgi(settings.model_copy(update={"trusted_proxies": "proxy.internal"}))


def test_hypercorn_sends_no_server_header() -> None:
    """`conduit serve` and `hypercorn --config hypercorn.toml` both load this file; the live
    check (no `server` header from `conduit serve`) is in tests/test_cli.py."""
    config = Config.from_toml(str(HYPERCORN_TOML))
    assert config.include_server_header is False
    assert not [name for name, _ in config.response_headers("h11") if name == b"server"]


# --- NUL characters: refused in one place, before any view ---------------------------------

NUL = "must not contain NUL characters"


async def test_nul_in_any_query_parameter_is_422_naming_it(client: httpx.AsyncClient) -> None:
    """Also parameters no schema declares: no view can pass a NUL on to PostgreSQL."""
    cases = {
        "/api/v1/tags?x=a%00b": "x",
        "/api/v1/articles?a%00=1": "query",
        "/api/v1/articles?tag=ok&tag=a%00b": "tag",
    }
    for url, field in cases.items():
        response = await client.get(url)

        assert response.status_code == 422, url
        assert response.json() == {"errors": {field: [NUL]}}


async def test_nul_in_a_form_field_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/users/login", data={"email": "a\x00@b.co"})
    assert response.status_code == 422
    assert response.json() == {"errors": {"email": [NUL]}}
    unnamed = await client.post(
        "/api/v1/users/login",
        content=b"%00=1",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert unnamed.json() == {"errors": {"form": [NUL]}}


@pytest.mark.parametrize(
    ("method", "url", "errors"),
    [
        ("PATCH", "/api/v1/admin/users/a%00b", {"user": ["user not found"]}),
        ("DELETE", "/api/v1/profiles/a%00b/follow", {"profile": ["not found"]}),
        ("DELETE", "/api/v1/articles/a%00b/comments/1", {"article": ["article not found"]}),
        ("DELETE", "/api/v1/clients/cl_%00", {"client": ["client not found"]}),
    ],
)
async def test_nul_in_a_path_parameter_is_that_collections_404(
    client: httpx.AsyncClient,
    make_user: MakeUser,
    method: str,
    url: str,
    errors: dict[str, list[str]],
) -> None:
    admin = await make_user(role="admin")
    response = await client.request(method, url, headers=admin.headers, json={"user": {}})
    assert response.status_code == 404
    assert response.json() == {"errors": errors}


# --- slow clients ----------------------------------------------------------------------------


async def test_stalled_body_is_dropped_while_other_requests_are_served(app: ConduitASGI) -> None:
    """hypercorn.toml bounds how long a silent client holds its connection (`conduit serve`
    loads the same file); the test shortens the timeout to a second."""
    config = Config.from_toml(str(HYPERCORN_TOML))
    assert config.read_timeout is not None
    # Above keep_alive_timeout: Hypercorn's read timeout also ends idle keep-alive connections.
    assert config.keep_alive_timeout < config.read_timeout <= 120
    assert config.h11_max_incomplete_size <= 16384

    async with over_tcp(app, read_timeout=1) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /api/v1/users/login HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            served = [(await http.get("/api/v1/tags")).status_code for _ in range(3)]
        async with asyncio.timeout(10):
            dropped = await reader.read()  # until the server closes the connection
        waited = time.monotonic() - started
        writer.close()
    assert served == [200, 200, 200]
    assert dropped == b""  # closed without an answer: nobody is waiting for one
    assert 0.5 < waited < 5
