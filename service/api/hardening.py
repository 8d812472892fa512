"""No NUL in input, the CORS preflight, and the security headers of Flask's responses.

Sync Flask hooks (`init_app`), so none costs a thread hop: the refusal of NUL characters in
path parameters, query strings, form fields and OAuth client credentials (PostgreSQL cannot
store NUL in text; JSON bodies are checked by their schemas, `service.schemas.common.no_nul`),
the CORS preflight (a `before_request` that answers before Flask's automatic OPTIONS response)
and an `after_request` that sets the headers of every response Flask produces.

What the headers are, and which origins and proxies are believed, is
`service.infra.web_security`; the responses that never reach Flask get the same headers from
`service.http.security`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import unquote

from flask import Flask, Response, current_app, request

from service.domain.errors import InvalidInput, NotFound, OAuthError
from service.infra.extensions import Extension
from service.infra.settings import Settings
from service.infra.web_security import SecurityPolicy
from service.schemas.common import NUL_MESSAGE

# Swagger UI and ReDoc from our own assets: ReDoc injects <style> elements and runs its search
# index in a worker made from a blob: URL; Swagger UI's CSS embeds data: images.
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_ENDPOINTS = frozenset({"docs.swagger_page", "docs.redoc_page"})

# The app's policy, as the Flask hooks see it.
HARDENING: Extension[SecurityPolicy] = Extension("conduit.hardening")


def _state() -> SecurityPolicy:
    return HARDENING.get()


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
    HARDENING.bind(app, SecurityPolicy.from_settings(settings))
    app.before_request(_refuse_nul)
    app.before_request(_preflight)
    app.after_request(_secure)
