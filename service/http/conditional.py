"""Conditional requests (`ETag` / `If-None-Match`) and compression, as ASGI middleware.

It wraps the adapter directly, inside the rate limiter and the security-header wrapper
(`service.http.pipeline`): a 304 it makes gets the RateLimit headers like any answer, keeps
the security, CORS and `X-Request-ID` headers Flask set on the full response, and a
revalidation counts against the rate limit (it still runs the view: the ETag is a hash of the
body, so a 304 saves the transfer and the client's parsing, not the query).

The rules in detail: docs/http.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import zlib
from collections.abc import Callable, Iterable, Sequence

from service.http.types import ASGIApp, Message, Receive, Scope, Send

try:
    import brotli  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - a runtime dependency; without it, gzip only
    brotli = None

API_PREFIX = "/api/v1/"
INDEX_PATHS = frozenset({"/", "/api/v1"})
METHODS = frozenset({"GET", "HEAD"})
MIN_COMPRESS_BYTES = 1024
OFFLOAD_MIN_BYTES = 256 * 1024
GZIP_LEVEL = 5
BROTLI_QUALITY = 5
ANONYMOUS_CACHE_CONTROL = b"no-cache"
VARY_ON = (b"Authorization", b"Accept-Encoding")

Headers = list[tuple[bytes, bytes]]

COMPRESSIBLE_TYPES = frozenset(
    {
        b"application/json",
        b"application/javascript",
        b"application/x-javascript",
        b"application/ecmascript",
        b"application/xml",
    }
)
# Headers that describe the body itself: not sent on a 304 (RFC 9110 §15.4.5).
REPRESENTATION_HEADERS = frozenset(
    {
        b"content-type",
        b"content-length",
        b"content-encoding",
        b"transfer-encoding",
        b"accept-ranges",
    }
)

# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; etagc = %x21 / %x23-7E / obs-text
_ENTITY_TAG = re.compile(rb'(?:W/)?"([\x21\x23-\x7e\x80-\xff]*)"')
_STAR = re.compile(rb"[ \t]*\*[ \t]*")
# qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_QVALUE = re.compile(rb"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")


def _gzip(body: bytes) -> bytes:
    # wbits=31: a gzip container; mtime stays 0, so equal bodies compress to equal bytes.
    return zlib.compress(body, GZIP_LEVEL, wbits=31)


def _brotli(body: bytes) -> bytes:
    compressed: bytes = brotli.compress(body, quality=BROTLI_QUALITY)
    return compressed


# The content codings served, in order of preference when the client weighs them equally.
ENCODERS: dict[str, Callable[[bytes], bytes]] = {"gzip": _gzip}
if brotli is not None:
    ENCODERS = {"br": _brotli, **ENCODERS}


def make_etag(body: bytes) -> bytes:
    """The weak entity tag of `body`."""
    return b'W/"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'


def coded_etag(etag: bytes, coding: str, content_type: bytes | None) -> bytes:
    """The tag of `etag`'s representation compressed with `coding`.

    A strong tag on a JSON answer is a view's write validator (`If-Match` compares it,
    strongly): it stays strong, with the coding appended, since the bytes differ. Any other
    is weakened: one validator for every coding, compared weakly by revalidations.
    """
    etag = etag.strip()
    if etag.startswith(b"W/"):
        return etag
    json = (content_type or b"").partition(b";")[0].strip().lower() == b"application/json"
    if json and len(etag) >= 2 and etag.startswith(b'"') and etag.endswith(b'"'):
        return etag[:-1] + b"-" + coding.encode() + b'"'
    return b"W/" + etag


def _uncoded(tag: bytes) -> bytes:
    # A coded strong tag revalidates the representation of every coding (weak comparison).
    for coding in ENCODERS:
        suffix = b"-" + coding.encode()
        if tag.endswith(suffix):
            return tag[: -len(suffix)]
    return tag


def opaque_tag(etag: bytes) -> bytes | None:
    """The quoted part of an entity tag (what weak comparison compares), or None if malformed."""
    match = _ENTITY_TAG.fullmatch(etag.strip())
    return match.group(1) if match else None


def none_match(values: Iterable[bytes], etag: bytes) -> bool:
    """True when an `If-None-Match` field value matches `etag` by weak comparison."""
    current = opaque_tag(etag)
    if current is None:
        return False
    current = _uncoded(current)
    return any(
        _STAR.fullmatch(value) or current in {_uncoded(tag) for tag in _ENTITY_TAG.findall(value)}
        for value in values
    )


def parse_accept_encoding(values: Iterable[bytes]) -> dict[bytes, float]:
    """Coding (lower-cased) to q-value of `Accept-Encoding` field values; malformed entries
    are left out."""
    weights: dict[bytes, float] = {}
    for value in values:
        for item in value.split(b","):
            coding, _, params = item.partition(b";")
            name = coding.strip().lower()
            if not name:
                continue
            quality: float | None = 1.0
            for param in params.split(b";"):
                key, _, raw = param.partition(b"=")
                if key.strip().lower() == b"q":
                    raw = raw.strip()
                    quality = float(raw) if _QVALUE.fullmatch(raw) else None
            if quality is not None:
                weights[name] = quality
    return weights


def choose_coding(accepted: dict[bytes, float], codings: Iterable[str]) -> str | None:
    """The acceptable coding of `codings` with the highest q-value (the first on a tie)."""
    star = accepted.get(b"*", 0.0)
    best, best_quality = None, 0.0
    for coding in codings:
        name = coding.encode()
        quality = accepted.get(name)
        if quality is None and name == b"gzip":
            quality = accepted.get(b"x-gzip")
        if quality is None:
            quality = star
        if quality > best_quality:
            best, best_quality = coding, quality
    return best


def identity_refused(accepted: dict[bytes, float]) -> bool:
    """True when the client said it does not accept an uncompressed body."""
    quality = accepted.get(b"identity", accepted.get(b"*"))
    return quality == 0.0


def is_compressible(content_type: bytes | None) -> bool:
    """True for textual media types, which compress well."""
    if not content_type:
        return False
    mime = content_type.partition(b";")[0].strip().lower()
    return (
        (mime.startswith(b"text/") and mime != b"text/event-stream")
        or mime in COMPRESSIBLE_TYPES
        or mime.endswith((b"+json", b"+xml"))
    )


def merge_vary(headers: Headers, names: Sequence[bytes]) -> Headers:
    """`headers` with one `Vary` listing its current fields and `names` (each once)."""
    fields: list[bytes] = []
    seen: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"vary":
            for field in value.split(b","):
                field = field.strip()
                if field and field.lower() not in seen:
                    seen.add(field.lower())
                    fields.append(field)
    if b"*" in seen:
        return headers
    fields.extend(name for name in names if name.lower() not in seen)
    merged = [(name, value) for name, value in headers if name.lower() != b"vary"]
    merged.append((b"vary", b", ".join(fields)))
    return merged


def _first(headers: Headers, wanted: bytes) -> bytes | None:
    return next((value for name, value in headers if name.lower() == wanted), None)


def _without(headers: Headers, names: Iterable[bytes]) -> Headers:
    drop = frozenset(names)
    return [(name, value) for name, value in headers if name.lower() not in drop]


def _directives(cache_control: bytes | None) -> set[bytes]:
    if not cache_control:
        return set()
    return {part.partition(b"=")[0].strip().lower() for part in cache_control.split(b",")}


class RequestHeaders:
    """The request headers the caching layers read (this one and `service.http.response_cache`),
    found in one pass."""

    __slots__ = (
        "accept_encoding",
        "authorized",
        "forwarded_proto",
        "if_none_match",
        "origin",
        "request_id",
    )

    def __init__(self, scope: Scope) -> None:
        self.authorized = False
        self.if_none_match: list[bytes] = []
        self.accept_encoding: list[bytes] | None = None
        self.origin: str | None = None
        self.forwarded_proto: str | None = None
        self.request_id: str | None = None
        for name, value in scope.get("headers", ()):
            name = name.lower()
            if name == b"authorization":
                self.authorized = True
            elif name == b"if-none-match":
                self.if_none_match.append(value)
            elif name == b"accept-encoding":
                if self.accept_encoding is None:
                    self.accept_encoding = []
                self.accept_encoding.append(value)
            elif name == b"origin" and self.origin is None:
                self.origin = value.decode("latin-1")
            elif name == b"x-forwarded-proto" and self.forwarded_proto is None:
                self.forwarded_proto = value.decode("latin-1")
            elif name == b"x-request-id" and self.request_id is None:
                self.request_id = value.decode("latin-1")


class ConditionalMiddleware:
    """ASGI middleware adding ETags, 304s and compression (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        min_compress_bytes: int = MIN_COMPRESS_BYTES,
        offload_min_bytes: int = OFFLOAD_MIN_BYTES,
    ) -> None:
        self.app = app
        self.min_compress_bytes = min_compress_bytes
        self.offload_min_bytes = offload_min_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; rework a `200` answer to a `GET` or `HEAD` of the API."""
        if (
            scope["type"] != "http"
            or scope.get("method") not in METHODS
            or not (
                scope.get("path", "").startswith(API_PREFIX) or scope.get("path") in INDEX_PATHS
            )
        ):
            await self.app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            kind = message["type"]
            if kind == "http.response.start":
                if message["status"] == 200 and not is_streamable(message):
                    start = message
                    return
            elif kind == "http.response.body":
                if start is not None:
                    chunks.append(message.get("body", b""))
                    if not message.get("more_body", False):
                        await self._answer(scope, start, b"".join(chunks), send, head=head)
                    return
                if head:
                    message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"} if head else scope, receive, capture)

    async def _answer(
        self, scope: Scope, start: Message, body: bytes, send: Send, *, head: bool
    ) -> None:
        request = RequestHeaders(scope)
        headers: Headers = list(start.get("headers", ()))
        etag = _first(headers, b"etag")
        if etag is None:
            etag = make_etag(body)
            headers.append((b"etag", etag))
        cache_control = _first(headers, b"cache-control")
        if cache_control is None and not request.authorized:
            headers.append((b"cache-control", ANONYMOUS_CACHE_CONTROL))
        content_type = _first(headers, b"content-type")
        compressible = is_compressible(content_type)
        headers = merge_vary(headers, VARY_ON if compressible else VARY_ON[:1])

        if request.if_none_match and none_match(request.if_none_match, etag):
            headers = _without(headers, REPRESENTATION_HEADERS)
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return

        if (
            compressible
            and request.accept_encoding is not None
            and _first(headers, b"content-encoding") is None
            and b"no-transform" not in _directives(cache_control)
        ):
            body, headers = await self._compress(body, headers, request.accept_encoding, etag)
        headers = _without(headers, (b"content-length",))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else body})

    async def _compress(
        self, body: bytes, headers: Headers, accept_encoding: list[bytes], etag: bytes
    ) -> tuple[bytes, Headers]:
        accepted = parse_accept_encoding(accept_encoding)
        coding = choose_coding(accepted, ENCODERS)
        if coding is None:
            return body, headers
        required = identity_refused(accepted)
        if len(body) < self.min_compress_bytes and not required:
            return body, headers
        encode = ENCODERS[coding]
        if len(body) >= self.offload_min_bytes:
            compressed = await asyncio.to_thread(encode, body)
        else:
            compressed = encode(body)
        if len(compressed) >= len(body) and not required:
            return body, headers
        headers = _without(headers, (b"accept-ranges", b"etag"))
        tag = coded_etag(etag, coding, _first(headers, b"content-type"))
        headers += [(b"etag", tag), (b"content-encoding", coding.encode())]
        return compressed, headers


def is_streamable(start: Message) -> bool:
    """True for a response that must not be buffered (an event stream)."""
    content_type = _first(list(start.get("headers", ())), b"content-type") or b""
    return content_type.partition(b";")[0].strip().lower() == b"text/event-stream"
