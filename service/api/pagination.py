"""Cursors and RFC 8288 `Link` headers of every list.

A cursor is a keyset `Position` (service.domain.pages) made opaque and tamper-evident:
`base64url(JSON) "." base64url(HMAC-SHA256)`, keyed by a key derived from SECRET_KEY. The JSON
names the list and its order (`scope`), so a cursor cannot be replayed on another list or
sort. A cursor that is not one of ours, or not for this list, is a 422 on `cursor`.

Links are relative references (`</api/v1/articles?limit=20&cursor=...>; rel="next"`), resolved
against the request's URL: the same on every host, so a cached answer can replay them. The
first page of a list (no `offset`, no `cursor`) links its `next` page by cursor, so that a
client following `next` walks the list by keyset; a page asked for by `offset` links its
neighbours by offset, one asked for by `cursor` by cursor. `first` is always there.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from flask import Response, current_app, jsonify, request

from service.domain.errors import InvalidInput
from service.domain.pages import Edges, Page, Position, Window
from service.infra.extensions import Extension
from service.schemas.common import PageQuery

_KEY: Extension[bytes] = Extension("conduit.cursor_key")
_CONTEXT = b"conduit pagination cursor v1"
_MAC_BYTES = 16
_KEY_VALUES_MAX = 4
_INVALID = "is not a valid cursor"
_FOREIGN = "belongs to another list or sort order"
PAGE_PARAMETERS = frozenset({"offset", "cursor"})
# RFC 3986 `pchar` and `/`, kept as they are in a path.
_PATH_SAFE = "/:@!$&'()*+,;="


def _key() -> bytes:
    key = _KEY.find()
    if key is None:
        secret = str(current_app.config["SECRET_KEY"]).encode()
        key = _KEY.bind(current_app, hmac.new(secret, _CONTEXT, hashlib.sha256).digest())
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    # One spelling per cursor: the decoder ignores a last character's unused bits.
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data


def _mac(payload: bytes) -> bytes:
    return hmac.new(_key(), payload, hashlib.sha256).digest()[:_MAC_BYTES]


def encode(position: Position, scope: str) -> str:
    """The cursor of `position` in the list and order named `scope`."""
    payload = orjson.dumps({"s": scope, "k": position.key, "b": int(position.backward)})
    return f"{_b64(payload)}.{_b64(_mac(payload))}"


def decode(cursor: str, scope: str) -> Position:
    """The position `cursor` names; `InvalidInput` unless we made it, for `scope`."""
    data, _, mac = cursor.partition(".")
    try:
        payload = _unb64(data)
        valid = hmac.compare_digest(_unb64(mac), _mac(payload))
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise InvalidInput(_INVALID, field="cursor")
    content: Any = orjson.loads(payload)
    if not _well_formed(content):
        raise InvalidInput(_INVALID, field="cursor")
    if content["s"] != scope:
        raise InvalidInput(_FOREIGN, field="cursor")
    return Position(key=content["k"], backward=bool(content["b"]))


def _well_formed(content: Any) -> bool:
    # Signed by us, so only a bug could break these; checked anyway rather than trusted.
    return (
        isinstance(content, dict)
        and isinstance(content.get("s"), str)
        and content.get("b") in (0, 1)
        and isinstance(content.get("k"), list)
        and 0 < len(content["k"]) <= _KEY_VALUES_MAX
        and all(isinstance(value, int | float | str) for value in content["k"])
    )


def window(query: PageQuery, scope: str) -> Window:
    """The page `query` asks for; a `cursor` and an `offset` together are a 422."""
    if query.cursor is None:
        return Window(limit=query.limit, offset=query.offset)
    if query.offset:
        raise InvalidInput("give either a cursor or an offset, not both", field="cursor")
    return Window(limit=query.limit, position=decode(query.cursor, scope))


def _url(changes: dict[str, str]) -> str:
    kept = [
        (name, value)
        for name, value in request.args.items(multi=True)
        if name not in PAGE_PARAMETERS
    ]
    query = urlencode([*kept, *changes.items()])
    # The path as routed is decoded (a slug may be any text): header values must be ASCII.
    path = quote(request.script_root + request.path, safe=_PATH_SAFE)
    return f"{path}?{query}" if query else path


def link_header(*, window: Window, edges: Edges, scope: str) -> str:
    """The `Link` value of the page read for `window`, with `edges` (RFC 8288)."""
    links: list[tuple[str, str]] = []
    if window.position is not None or window.offset == 0:
        if edges.more_after and edges.last is not None:
            links.append(("next", _url({"cursor": encode(Position(edges.last), scope)})))
        if edges.more_before and edges.first is not None:
            before = Position(edges.first, backward=True)
            links.append(("prev", _url({"cursor": encode(before, scope)})))
    else:
        if edges.more_after:
            links.append(("next", _url({"offset": str(window.offset + window.limit)})))
        previous = max(window.offset - window.limit, 0)
        links.append(("prev", _url({"offset": str(previous)} if previous else {})))
    links.append(("first", _url({})))
    return ", ".join(f'<{target}>; rel="{relation}"' for relation, target in links)


def paged(response: Response, *, window: Window, edges: Edges, scope: str) -> Response:
    """`response` with the `Link` header of its page."""
    response.headers["Link"] = link_header(window=window, edges=edges, scope=scope)
    return response


def single_page(response: Response) -> Response:
    """`response`, a whole list in one answer, with the `Link` header of that one page."""
    response.headers["Link"] = f'<{_url({})}>; rel="first"'
    return response


def page_json(body: dict[str, Any], page: Page[Any], window: Window, scope: str) -> Response:
    """`body` as JSON, with the `Link` header of `page`, read for `window`."""
    return paged(jsonify(body), window=window, edges=page.edges, scope=scope)


def with_self(response: Response, path: str) -> Response:
    """`response` with `Link: <path>; rel="self"` (a path under /api/v1, already quoted)."""
    response.headers["Link"] = f'<{request.script_root}{path}>; rel="self"'
    return response


LINK_HEADER_DOC: dict[str, Any] = {
    "description": (
        'RFC 8288 links to the neighbouring pages: `rel="next"`, `rel="prev"` (when there is '
        'such a page) and `rel="first"`, as references relative to the request URL. The first '
        "page and pages asked for by `cursor` link by cursor, pages asked for by `offset` by "
        "offset."
    ),
    "schema": {"type": "string"},
    "example": (
        '</api/v1/articles?limit=20&cursor=eyJzIjoi...Ig.3q2-7w>; rel="next", '
        '</api/v1/articles?limit=20>; rel="first"'
    ),
}
SELF_LINK_DOC: dict[str, Any] = {
    "description": 'RFC 8288 link to the resource itself: `<...>; rel="self"`',
    "schema": {"type": "string"},
    "example": '</api/v1/articles/how-to-train-your-dragon>; rel="self"',
}
# `operation(headers=...)` of list and single-resource views.
LIST_HEADERS = {200: {"Link": LINK_HEADER_DOC}}


def self_headers(status: int = 200) -> dict[int, dict[str, Any]]:
    """`operation(headers=...)` of a view answering one resource with `status`."""
    return {status: {"Link": SELF_LINK_DOC}}
