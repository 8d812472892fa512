"""The API index at `/` and `/api/v1`: links to the documentation, the OpenAPI document, the
collections and the auth endpoints, so that the address the server prints leads somewhere.

The answer is the same for every caller and changes only with a deployment: it may be kept
for `MAX_AGE_SECONDS` (and revalidated with its `ETag` after that, `service.http.conditional`). Its
`Link` header names the OpenAPI document (`rel="service-desc"`) and the documentation pages
(`rel="service-doc"`), RFC 8631, for clients that read headers rather than bodies.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from flask import Blueprint, Response, jsonify, request

from service import __version__
from service.api.spec import operation
from service.schemas.index import IndexLink, IndexLinks, IndexResponse

bp = Blueprint("index", __name__)

API_PREFIX = "/api/v1"
NAME = "Conduit API"
TAGS = ["API index"]
MAX_AGE_SECONDS = 300


class Target(NamedTuple):
    """Where a link points (a path under the server's root) and what it offers."""

    path: str
    title: str
    methods: tuple[str, ...]


# Paths are written out, not built with url_for: the OpenAPI example needs them without an
# app, and tests/api/test_index.py checks each against the app's routes and their methods.
TARGETS: dict[str, Target] = {
    "docs": Target(f"{API_PREFIX}/docs", "Swagger UI: the API reference, with a console", ("GET",)),
    "redoc": Target(f"{API_PREFIX}/redoc", "ReDoc: the API reference on one page", ("GET",)),
    "openapi": Target(f"{API_PREFIX}/openapi.json", "The OpenAPI 3.1 document", ("GET",)),
    "register": Target(
        f"{API_PREFIX}/users", "Register: answers the new user with a token", ("POST",)
    ),
    "login": Target(
        f"{API_PREFIX}/users/login", "Log in with email and password: answers a token", ("POST",)
    ),
    "token": Target(
        f"{API_PREFIX}/oauth/token",
        "OAuth 2.0 token endpoint: password, refresh_token and client_credentials grants",
        ("POST",),
    ),
    "user": Target(
        f"{API_PREFIX}/user", "The signed-in user (token required)", ("GET", "PUT", "PATCH")
    ),
    "profile": Target(f"{API_PREFIX}/profiles/{{username}}", "A user's profile", ("GET",)),
    "articles": Target(
        f"{API_PREFIX}/articles",
        "Articles, newest first (filter by tag, author or favorited)",
        ("GET", "POST"),
    ),
    "feed": Target(
        f"{API_PREFIX}/articles/feed",
        "Articles by the users you follow, newest first (token required)",
        ("GET",),
    ),
    "tags": Target(f"{API_PREFIX}/tags", "Tags in use", ("GET",)),
}


@functools.lru_cache(maxsize=16)
def index_document(script_root: str) -> IndexResponse:
    """The index for an app mounted at `script_root` (empty at the server's root)."""
    links = {
        name: IndexLink(
            href=script_root + target.path,
            title=target.title,
            methods=list(target.methods),
            templated="{" in target.path,
        )
        for name, target in TARGETS.items()
    }
    return IndexResponse(name=NAME, version=__version__, links=IndexLinks(**links))


@functools.lru_cache(maxsize=16)
def link_header(script_root: str) -> str:
    """The RFC 8288 `Link` value: the OpenAPI document and the documentation pages."""
    links = index_document(script_root).links
    return ", ".join(
        (
            f'<{links.openapi.href}>; rel="service-desc"; type="application/json"',
            f'<{links.docs.href}>; rel="service-doc"; type="text/html"',
            f'<{links.redoc.href}>; rel="service-doc"; type="text/html"',
        )
    )


LINK_HEADER_DOC = {
    "description": (
        "RFC 8288 links: the OpenAPI document (`service-desc`) and the documentation pages "
        "(`service-doc`, RFC 8631)"
    ),
    "schema": {"type": "string"},
    "example": link_header(""),
}


CACHE_CONTROL_DOC = {
    "description": (
        f"`max-age={MAX_AGE_SECONDS}` (then revalidate with the `ETag`); `no-store` for "
        "requests with credentials"
    ),
    "schema": {"type": "string"},
}

# One decorator for both paths; each path has its own view so that its operation id is unique.
_documented = operation(
    responses={200: IndexResponse},
    tags=TAGS,
    examples={200: index_document("").to_json()},
    headers={200: {"Link": LINK_HEADER_DOC, "Cache-Control": CACHE_CONTROL_DOC}},
)


def _index_response() -> Response:
    response = jsonify(index_document(request.script_root).to_json())
    response.headers["Link"] = link_header(request.script_root)
    # Requests with credentials still get `no-store` (service.api.hardening).
    response.cache_control.max_age = MAX_AGE_SECONDS
    return response


@bp.get("/")
@_documented
async def root_index() -> Response:
    """The API index: links to the docs, the OpenAPI document, the collections and auth.

    The same for every caller, cacheable for a few minutes; the `Link` header names the
    OpenAPI document and the documentation pages. `/api/v1` answers the same.
    """
    return _index_response()


@bp.get(API_PREFIX, strict_slashes=False)
@_documented
async def api_index() -> Response:
    """The API index, as at `/` (also at `/api/v1/`, without a redirect)."""
    return _index_response()
