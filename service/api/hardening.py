"""Security headers, CORS from an allowlist, which proxies are believed, no NUL in input.

Two layers, neither costs a thread hop:

- sync Flask hooks (`init_app`): the refusal of NUL characters in path parameters, query
  strings, form fields and OAuth client credentials (PostgreSQL cannot store NUL in text; JSON
  bodies are checked by their schemas, `service.schemas.common.no_nul`), the CORS preflight (a
  `before_request` that answers before Flask's automatic OPTIONS response) and an
  `after_request` that sets the headers of every response Flask produces;
- an ASGI wrapper (`SecurityHeadersMiddleware`) that gives the same headers to the responses
  that never reach Flask: the rate limiter's 429s and the adapter's own 400/413/500/503.

Headers: `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`,
`X-Frame-Options: DENY`, a Content-Security-Policy (`default-src 'none'` for the API, a
self-only policy for the two documentation pages, whose assets are served locally),
`Cache-Control: no-store` on responses to requests with credentials or that change state (they
may carry tokens), `Vary: Authorization`, and HSTS when the request came over HTTPS (directly,
or per `X-Forwarded-Proto` from a trusted proxy). Hypercorn's `Server` header is off in
hypercorn.toml; Flask and Werkzeug add none.

CORS: `CORS_ORIGINS` is a comma-separated list of exact origins (`https://app.example.com`),
answered with that origin and `Access-Control-Allow-Credentials: true`; or `*`, answered with
`*` and never with credentials. An origin that is not listed is never reflected.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from flask import Flask, Response, current_app, request

from service.domain.errors import InvalidInput, NotFound, OAuthError
from service.infra.settings import Settings
from service.schemas.common import NUL_MESSAGE

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

EXTENSION_KEY = "conduit.hardening"

API_CSP = "default-src 'none'; frame-ancestors 'none'"
# Swagger UI and ReDoc from our own assets: ReDoc injects <style> elements and runs its search
# index in a worker made from a blob: URL; Swagger UI's CSS embeds data: images.
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_ENDPOINTS = frozenset({"docs.swagger_page", "docs.redoc_page"})
STATIC_HEADERS: Mapping[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
HSTS = "max-age=31536000; includeSubDomains"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-Request-ID, If-Match, If-None-Match"
CORS_EXPOSE_HEADERS = "RateLimit, RateLimit-Policy, Retry-After, X-Request-ID, ETag"
CORS_MAX_AGE_SECONDS = 600
_DEFAULT_PORTS = {"http": 80, "https": 443}


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# Every request parses its peer's address (rate limits, proxies): the same few addresses
# again and again, and `ipaddress` is slow to parse (3 % of a cached read's CPU, measured).
@functools.lru_cache(maxsize=4096)
def parse_ip(text: str) -> IPAddress | None:
    """`text` as an address (IPv4-mapped IPv6 as IPv4), or None when it is not one."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ProxyTrust:
    """The reverse proxies (IPs or CIDRs) whose `X-Forwarded-*` headers are believed."""

    def __init__(self, spec: str) -> None:
        networks: list[IPNetwork] = []
        for entry in (part.strip() for part in spec.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"TRUSTED_PROXIES: {entry!r} is not an IP or CIDR") from None
        self.networks = tuple(networks)

    def trusts(self, address: IPAddress | str | None) -> bool:
        """True when `address` is one of the trusted proxies."""
        if isinstance(address, str):
            address = parse_ip(address)
        if address is None:
            return False
        return any(address in network for network in self.networks)

    def client_ip(self, peer: str | None, forwarded_for: Iterable[str]) -> IPAddress | None:
        """The client's address: the peer, or, when the peer is a trusted proxy, the right-most
        `X-Forwarded-For` entry that is not a trusted proxy (entries further left were written
        by the client and can be forged)."""
        client = parse_ip(peer) if peer else None
        if client is None or not self.networks or not self.trusts(client):
            return client
        hops = [hop for value in forwarded_for for hop in value.split(",")]
        for hop in reversed(hops):
            address = parse_ip(hop)
            if address is None:
                break  # a trusted proxy would not write this: stop at the last sane address
            client = address
            if not self.trusts(address):
                break
        return client

    def is_https(self, scheme: str, peer: str | None, forwarded_proto: str | None) -> bool:
        """True when the client's connection is HTTPS (the last proxy's word, if trusted)."""
        if scheme == "https":
            return True
        if forwarded_proto and self.trusts(peer):
            return forwarded_proto.rsplit(",", 1)[-1].strip().lower() == "https"
        return False


def normalise_origin(origin: str) -> str:
    """`scheme://host[:port]` lower-cased, default port dropped; ValueError if not an origin."""
    parts = urlsplit(origin.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme.lower() not in _DEFAULT_PORTS
        or not parts.hostname
        or parts.username is not None
        or port == -1
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ValueError(
            f"CORS_ORIGINS: {origin.strip()!r} is not an origin (scheme://host[:port])"
        )
    scheme = parts.scheme.lower()
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


class CorsPolicy:
    """Which browser origins may call the API, and the headers that say so."""

    def __init__(self, spec: str) -> None:
        entries = [entry.strip() for entry in spec.split(",") if entry.strip()]
        self.any_origin = "*" in entries
        if self.any_origin and len(entries) > 1:
            raise ValueError("CORS_ORIGINS: use either '*' or a list of origins, not both")
        self.origins = frozenset() if self.any_origin else frozenset(map(normalise_origin, entries))

    @property
    def enabled(self) -> bool:
        """True when some cross-origin access is allowed."""
        return self.any_origin or bool(self.origins)

    def allows(self, origin: str | None) -> bool:
        """True when `origin` (the request's `Origin` header) may read responses."""
        if origin is None:
            return False
        return self.any_origin or origin in self.origins

    def response_headers(self, origin: str | None) -> dict[str, str]:
        """CORS headers for an actual (non-preflight) response to `origin`."""
        if not self.allows(origin):
            return {}
        assert origin is not None
        if self.any_origin:
            # A wildcard never goes with credentials (browsers would refuse it anyway).
            return {
                "Access-Control-Allow-Origin": "*",
                "Access-Control-Expose-Headers": CORS_EXPOSE_HEADERS,
            }
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Expose-Headers": CORS_EXPOSE_HEADERS,
        }

    def preflight_headers(self, origin: str, methods: Iterable[str]) -> dict[str, str]:
        """The headers of a preflight answer for an allowed `origin`."""
        headers = self.response_headers(origin)
        headers.pop("Access-Control-Expose-Headers", None)
        headers.update(
            {
                "Access-Control-Allow-Methods": ", ".join(sorted(methods)),
                "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
                "Access-Control-Max-Age": str(CORS_MAX_AGE_SECONDS),
            }
        )
        return headers


@dataclass(frozen=True)
class Hardening:
    """The CORS and proxy configuration of one app."""

    cors: CorsPolicy
    proxies: ProxyTrust

    @classmethod
    def from_settings(cls, settings: Settings) -> Hardening:
        """Parse `cors_origins` and `trusted_proxies` (ValueError naming a bad entry)."""
        return cls(
            cors=CorsPolicy(settings.cors_origins), proxies=ProxyTrust(settings.trusted_proxies)
        )

    def base_headers(
        self,
        *,
        method: str,
        origin: str | None,
        authorized: bool,
        https: bool,
    ) -> dict[str, str]:
        """Headers every API response gets (the CSP for JSON; docs pages override it)."""
        headers = dict(STATIC_HEADERS)
        headers["Content-Security-Policy"] = API_CSP
        if authorized or method not in SAFE_METHODS:
            # Answers to credentials may be personal; those to writes may carry tokens.
            headers["Cache-Control"] = "no-store"
        if https:
            headers["Strict-Transport-Security"] = HSTS
        headers.update(self.cors.response_headers(origin))
        return headers

    def vary(self) -> list[str]:
        """What API responses vary on."""
        if self.cors.enabled and not self.cors.any_origin:
            return ["Authorization", "Origin"]
        return ["Authorization"]


def _state() -> Hardening:
    state: Hardening = current_app.extensions[EXTENSION_KEY]
    return state


# What a path parameter names, by the collection segment before it: a value no resource can
# have (NUL) gets the same 404 as any other unknown name of that collection.
NOT_FOUND_IN: Mapping[str, tuple[str, str]] = {
    "articles": ("article", "article not found"),
    "comments": ("comment", "comment not found"),
    "profiles": ("profile", "not found"),
    "users": ("user", "user not found"),
    "clients": ("client", "client not found"),
    "webhooks": ("webhook", "webhook not found"),
    "messages": ("message", "message not found"),
}
FORM_MIMETYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


def _not_found(name: str) -> NotFound:
    assert request.url_rule is not None
    segments = request.url_rule.rule.split("/")
    at = next(i for i, part in enumerate(segments) if part.endswith((f"<{name}>", f":{name}>")))
    field, message = NOT_FOUND_IN.get(segments[at - 1], ("body", "not found"))
    return NotFound(message, field=field)


def _nul_in(items: Iterable[tuple[str, str | None]], *, unnamed: str) -> str | None:
    """The name of the first pair with a NUL in it (`unnamed` when the NUL is in the name)."""
    for name, value in items:
        if "\x00" in name:
            return unnamed
        if value is not None and "\x00" in value:
            return name
    return None


def _refuse_nul() -> None:
    """Refuse NUL in the text of a request before any view can send it to PostgreSQL: 404 for
    a path parameter, 422 for a query or form field, 400 `invalid_request` on OAuth endpoints
    (which also read client credentials from HTTP Basic, percent-encoded)."""
    for name, value in (request.view_args or {}).items():
        if isinstance(value, str) and "\x00" in value:
            raise _not_found(name)
    view = current_app.view_functions.get(request.endpoint or "")
    oauth = bool(getattr(view, "conduit_meta", {}).get("oauth_errors"))
    field = _nul_in(request.args.items(multi=True), unnamed="query")
    if field is None and request.mimetype in FORM_MIMETYPES:
        field = _nul_in(request.form.items(multi=True), unnamed="form")
    if field is None and oauth and (basic := request.authorization) is not None:
        credentials = {"client_id": basic.username, "client_secret": basic.password}
        field = _nul_in(
            ((name, unquote(value or "")) for name, value in credentials.items()),
            unnamed="authorization",
        )
    if field is None:
        return
    if oauth:
        raise OAuthError("invalid_request", f"{field}: {NUL_MESSAGE}")
    raise InvalidInput(NUL_MESSAGE, field=field)


def _preflight() -> Response | None:
    """Answer a CORS preflight from an allowed origin (before Flask's automatic OPTIONS)."""
    if request.method != "OPTIONS":
        return None
    origin = request.headers.get("Origin")
    wanted = request.headers.get("Access-Control-Request-Method")
    if origin is None or wanted is None or request.routing_exception is not None:
        return None
    state = _state()
    if not state.cors.allows(origin):
        return None  # Flask answers the OPTIONS without any CORS header
    adapter = current_app.create_url_adapter(request)
    assert adapter is not None
    methods = {method for method in adapter.allowed_methods() if method not in {"HEAD", "OPTIONS"}}
    if wanted.upper() not in methods:
        return None
    response = Response(status=204)
    response.headers.update(state.cors.preflight_headers(origin, methods))
    response.vary.update(
        ["Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers"]
    )
    return response


def _secure(response: Response) -> Response:
    """Set the security and CORS headers of every response Flask produces."""
    state = _state()
    headers = state.base_headers(
        method=request.method,
        origin=request.headers.get("Origin"),
        authorized="Authorization" in request.headers,
        https=state.proxies.is_https(
            request.scheme, request.remote_addr, request.headers.get("X-Forwarded-Proto")
        ),
    )
    if request.endpoint in DOCS_ENDPOINTS:
        headers["Content-Security-Policy"] = DOCS_CSP
    if "Cache-Control" in headers:
        response.headers.pop("Expires", None)
    response.headers.update(headers)
    response.vary.update(state.vary())
    return response


def init_app(app: Flask, settings: Settings) -> None:
    """Register the CORS preflight and the response headers (sync hooks: no thread hop).

    Register after `observability.init_app`, so a preflight answer still carries its request id.
    """
    app.extensions[EXTENSION_KEY] = Hardening.from_settings(settings)
    app.before_request(_refuse_nul)
    app.before_request(_preflight)
    app.after_request(_secure)


class SecurityHeadersMiddleware:
    """ASGI wrapper giving the security and CORS headers to responses that bypass Flask."""

    def __init__(self, app: ASGIApp, hardening: Hardening) -> None:
        self.app = app
        self.hardening = hardening

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; complete the headers of a response Flask did not make."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[tuple[bytes, bytes]] = list(message.get("headers", ()))
                if not any(name.lower() == b"x-content-type-options" for name, _ in headers):
                    headers.extend(self._headers(scope))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_secured)

    def _headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        request_headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers", ()):
            request_headers.setdefault(name.lower(), value)
        origin = request_headers.get(b"origin")
        proto = request_headers.get(b"x-forwarded-proto")
        client = scope.get("client")
        peer = client[0] if client else None
        headers = self.hardening.base_headers(
            method=scope.get("method", "GET"),
            origin=origin.decode("latin-1") if origin is not None else None,
            authorized=b"authorization" in request_headers,
            https=self.hardening.proxies.is_https(
                scope.get("scheme", "http"), peer, proto.decode("latin-1") if proto else None
            ),
        )
        # Not cacheable either way: these are errors and throttling answers.
        headers["Cache-Control"] = "no-store"
        headers["Vary"] = ", ".join(self.hardening.vary())
        return [(name.lower().encode(), value.encode("latin-1")) for name, value in headers.items()]


def protect(app: ASGIApp, flask_app: Flask) -> ASGIApp:
    """Wrap `app` so that responses Flask did not make get `flask_app`'s security headers."""
    hardening: Hardening = flask_app.extensions[EXTENSION_KEY]
    return SecurityHeadersMiddleware(app, hardening)
