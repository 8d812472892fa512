"""OpenAPI and request validation (flask-pydantic-spec), adapted to async views.

`operation(...)` is the one decorator every API view uses. It
- validates the query and JSON body with Pydantic (422 in the error envelope on failure,
  415 for a non-JSON body, 400 for malformed JSON);
- checks the caller's token first (`auth="required" | "optional"`; 401 before any 4xx about
  the body), then loads the user and passes it to the view as `viewer`;
- runs the async view through `current_app.ensure_sync` (flask-pydantic-spec calls views
  synchronously), inside the request's database unit of work;
- records what the OpenAPI document needs: models, error responses, security.

Views read the validated query and body with `query_of(Model)` and `body_of(Model)`, typed.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import orjson
from flask import Flask, Request, current_app, g, request
from flask_pydantic_spec import FlaskPydanticSpec
from flask_pydantic_spec import Request as SpecRequest
from flask_pydantic_spec import Response as SpecResponse
from flask_pydantic_spec.flask_backend import FlaskBackend
from flask_pydantic_spec.types import RequestBase
from pydantic import BaseModel
from werkzeug.exceptions import BadRequest, UnsupportedMediaType
from werkzeug.routing import BaseConverter, Rule, UnicodeConverter

from service import __version__
from service.api.auth import PendingViewer, load_viewer, verify_request
from service.api.jsonprovider import loads_body
from service.domain import scopes
from service.infra.extensions import Extension
from service.schemas.common import ErrorBody
from service.schemas.oauth import OAuthErrorOut
from service.services.security import TokenClaims

AuthMode = Literal["none", "optional", "required"]
M = TypeVar("M", bound=BaseModel)
# The generated document, per app.
DOCUMENT: Extension[dict[str, Any]] = Extension("conduit.openapi")
SECURITY_SCHEME = "Token"
OAUTH2_SCHEME = "OAuth2"
TOKEN_URL = "/api/v1/oauth/token"  # noqa: S105

ERROR_DESCRIPTIONS = {
    400: "Malformed request (for example invalid JSON)",
    401: "Missing, malformed, expired or invalid token",
    403: (
        "Authenticated, but not allowed to do this (role, ownership, or a token without the "
        "required scope)"
    ),
    404: "Not found",
    409: "Conflicts with the current state",
    412: "`If-Match` names a version the resource no longer has: read it again",
    413: "Request body larger than the server accepts",
    415: "Request body is not application/json",
    422: "Validation failed; `errors` names each invalid field",
    428: "`If-Match` is required (`PRECONDITION_REQUIRED` is on): read the resource first",
    429: "Too many requests; retry after `Retry-After` seconds",
    503: "Database or Redis unavailable; retry later",
}
OAUTH_ERROR_DESCRIPTIONS = {
    400: "RFC 6749 §5.2 error: invalid_request, invalid_grant, invalid_scope, ...",
    401: "invalid_client: client authentication failed",
}
SCHEMA_REF = "#/components/schemas/"
CHALLENGE = {
    "description": (
        'The accepted schemes: `Token realm="conduit", Bearer realm="conduit"`, each with '
        '`error="invalid_token"` when the request\'s credentials were refused'
    ),
    "schema": {"type": "string"},
}
# The order Swagger UI and ReDoc list the tags in: what a newcomer needs first (an account and
# a token), then the RealWorld resources, then the extras. Tags not named here come last.
TAG_ORDER = (
    "User and Authentication",
    "Profile",
    "Articles",
    "Comments",
    "Favorites",
    "Tags",
    "Webhooks",
    "API clients",
    "OAuth 2.0",
    "Admin",
    "Health",
    "API index",
)
# Request and response headers of the idempotent and conditional writes
# (service/api/idempotency.py, service/api/preconditions.py).
IDEMPOTENCY_KEY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Makes this write safe to retry (IETF draft-ietf-httpapi-idempotency-key-header): a "
        "retry with the same key and the same request within the retention (24 h) gets the "
        "first answer again, marked `Idempotent-Replayed: true`, with no second effect. Keys "
        "are per user (per client address when anonymous). The same key with another "
        "request: 422; while the first is still running: 409. Failed requests store nothing."
    ),
    "schema": {
        "type": "string",
        "pattern": '^([\\x21\\x23-\\x7e]{1,255}|"[\\x21\\x23-\\x7e]{1,255}")$',
    },
}
IF_MATCH_PARAMETER = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": (
        "The `ETag` of the version being changed (or `*`): the write happens only if the "
        "resource has not been written since (412 otherwise). Required (428 without it) when "
        "the server runs with `PRECONDITION_REQUIRED`."
    ),
    "schema": {"type": "string"},
}
IDEMPOTENCY_ERRORS = {
    "409": "or a request with the same `Idempotency-Key` is still being processed (retry later)",
    "422": "`Idempotency-Key`: malformed, or already used with a different request",
}
REPLAYED_HEADER = {
    "description": "`true` on an answer replayed for a repeated `Idempotency-Key`",
    "schema": {"type": "string", "enum": ["true"]},
}
ETAG_HEADER = {
    "description": (
        "Strong entity tag of this version of the resource: send it as `If-Match` to change "
        "it only if nobody else did"
    ),
    "schema": {"type": "string"},
}
RETRY_AFTER = {
    "description": "Seconds to wait before retrying",
    "schema": {"type": "integer", "minimum": 0},
}


def read_json_body() -> Any:
    """Parse the request body strictly: 415 unless JSON, 400 unless well-formed."""
    if not request.is_json:
        raise UnsupportedMediaType("send the body as application/json")
    data = request.get_data(cache=True)
    try:
        return loads_body(data)
    except orjson.JSONDecodeError:
        raise BadRequest("request body is not valid JSON") from None


@dataclass(frozen=True)
class Parsed:
    """The request's query and JSON body as `operation` validated them (None: not declared).

    Kept on `g` rather than on flask-pydantic-spec's untyped `request.context`, and read back
    through `query_of` / `body_of`, so that views get their models typed without casts.
    """

    query: BaseModel | None
    body: BaseModel | None


def _parsed() -> Parsed:
    parsed = g.get("conduit_parsed")
    if not isinstance(parsed, Parsed):
        raise TypeError("no validated request: the view is not decorated with operation(...)")
    return parsed


def _as(value: BaseModel | None, model: type[M], part: str) -> M:
    # A view asking for another model than its operation declared is a programming error,
    # not the client's: TypeError (a 500), never a 4xx.
    if not isinstance(value, model):
        raise TypeError(f"the request {part} is {type(value).__name__}, not {model.__name__}")
    return value


def query_of(model: type[M]) -> M:
    """The query string as validated by `operation(query=model)`, typed as `model`."""
    return _as(_parsed().query, model, "query")


def body_of(model: type[M]) -> M:
    """The JSON body as validated by `operation(body=model)`, typed as `model`."""
    return _as(_parsed().body, model, "body")


# `<converter(arguments):name>` or `<name>` in a werkzeug rule.
_RULE_VARIABLE = re.compile(r"<(?:[^:<>]+:)?([^:<>]+)>")


def converter_schema(converter: BaseConverter) -> dict[str, Any]:
    """The JSON schema of the path segments `converter` matches."""
    schema: dict[str, Any] | None = getattr(converter, "openapi_schema", None)
    if schema is not None:
        return dict(schema)
    if type(converter) is UnicodeConverter and converter.regex == "[^/]{1,}":
        # The default converter: one non-empty path segment.
        return {"type": "string", "pattern": "^[^/]+$"}
    return {"type": "string"}


class ConduitBackend(FlaskBackend):  # type: ignore[misc]
    """Validates query strings as plain strings and JSON bodies strictly."""

    def parse_path(self, route: Rule) -> tuple[str, list[dict[str, Any]]]:
        """The OpenAPI path of `route` and its path parameters, each described by its converter.

        flask-pydantic-spec's own version knows werkzeug's built-in converters only (and fails
        on custom ones); this one asks the converter the route really uses.
        """
        path = _RULE_VARIABLE.sub(r"{\1}", route.rule)
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": converter_schema(converter)}
            for name, converter in route._converters.items()
        ]
        return path, parameters

    def request_validation(
        self,
        request: Request,
        query: type[BaseModel] | None,
        body: RequestBase | None,
        headers: type[BaseModel] | None,
        cookies: type[BaseModel] | None,
    ) -> None:
        """Validate the query and body and keep them for `query_of` and `body_of`."""
        parsed_query = query.model_validate(request.args.to_dict()) if query else None
        model = getattr(body, "model", None)
        parsed_body = model.model_validate(read_json_body()) if model is not None else None
        g.conduit_parsed = Parsed(query=parsed_query, body=parsed_body)


def _raise_validation_error(req: Any, resp: Any, error: Exception | None, instance: Any) -> None:
    # flask-pydantic-spec builds its own error body; raise so the one error mapping answers.
    if error is not None:
        raise error


class ConduitSpec(FlaskPydanticSpec):  # type: ignore[misc]
    """Adds security, error responses and servers to the generated document."""

    _generating = threading.Lock()

    def document_for(self, app: Flask) -> dict[str, Any]:
        """The OpenAPI document of `app`, generated on first use and kept on the app.

        flask-pydantic-spec keeps one app and one cached document per spec object; keeping the
        document per app lets several apps share the module-level `spec` (tests build many).
        """
        document: dict[str, Any] | None = DOCUMENT.find(app)
        if document is None:
            with self._generating:
                self.app = self.backend.app = app
                document = self._generate_spec()
                DOCUMENT.bind(app, document)
        return document

    def _generate_spec(self) -> dict[str, Any]:
        document: dict[str, Any] = dict(super()._generate_spec())
        self._extra_models: set[type[BaseModel]] = set()
        for route in self.backend.find_routes(self.app):
            path, _ = self.backend.parse_path(route)
            func = self.app.view_functions[route.endpoint]
            meta: dict[str, Any] | None = getattr(func, "conduit_meta", None)
            if meta is None:
                continue
            for method in route.methods or ():
                operation = document["paths"].get(path, {}).get(method.lower())
                if operation is None:
                    continue
                _document_operation(operation, meta)
                if meta["form"] is not None:
                    self._extra_models.add(meta["form"])
                if meta["oauth_errors"]:
                    self._extra_models.add(OAuthErrorOut)
        components = document.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas["ErrorBody"] = ErrorBody.model_json_schema()
        for model in self._extra_models:
            schemas[model.__name__] = model.model_json_schema()
        for schema in schemas.values():
            _drop_null_defaults(schema)
        components["securitySchemes"] = {
            SECURITY_SCHEME: {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": (
                    "`Token <jwt>` (RealWorld) or `Bearer <jwt>`, from login/register; such "
                    "tokens carry every scope the user's role allows."
                ),
            },
            OAUTH2_SCHEME: {
                "type": "oauth2",
                "description": (
                    "OAuth 2.0 (RFC 6749): the password grant for people (username is the "
                    "email or username), client credentials for API clients; send the access "
                    "token as `Authorization: Bearer <token>`."
                ),
                "flows": {
                    "password": {"tokenUrl": TOKEN_URL, "scopes": dict(scopes.DESCRIPTIONS)},
                    "clientCredentials": {
                        "tokenUrl": TOKEN_URL,
                        "scopes": {
                            name: text
                            for name, text in scopes.DESCRIPTIONS.items()
                            if name not in scopes.NOT_FOR_CLIENTS
                        },
                    },
                },
            },
        }
        document["servers"] = [{"url": "/", "description": "this server"}]
        document["tags"] = order_tags(document.get("tags", []))
        return document


def order_tags(tags: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`tags` in `TAG_ORDER`, any others after them by name."""
    rank = {name: index for index, name in enumerate(TAG_ORDER)}
    return sorted(tags, key=lambda tag: (rank.get(tag["name"], len(rank)), tag["name"]))


def _drop_null_defaults(schema: Any) -> None:
    # Optional request fields (absent means "unchanged") come out of Pydantic with
    # `default: null`, which contradicts their non-null type; absence needs no default.
    if isinstance(schema, dict):
        if "default" in schema and schema["default"] is None:
            del schema["default"]
        for value in schema.values():
            _drop_null_defaults(value)
    elif isinstance(schema, list):
        for item in schema:
            _drop_null_defaults(item)


def _document_operation(operation: dict[str, Any], meta: dict[str, Any]) -> None:
    auth: AuthMode = meta["auth"]
    scope: str | None = meta["scope"]
    if auth == "none" or scope is None:
        operation["security"] = []
    else:
        operation["security"] = [{OAUTH2_SCHEME: [scope]}, {SECURITY_SCHEME: []}]
        if auth == "optional":
            operation["security"].append({})
        operation["x-required-scope"] = scope
        note = f"Requires the `{scope}` scope" + (
            " when a token is sent." if auth == "optional" else "."
        )
        description = operation.get("description")
        operation["description"] = f"{description}\n\n{note}" if description else note
    responses = operation.setdefault("responses", {})
    for code in [
        code for code in responses if code.startswith("4") and int(code) not in meta["errors"]
    ]:
        del responses[code]  # flask-pydantic-spec adds a bare 422 to every operation
    for code in sorted(meta["errors"]):
        # A fresh dict per code: examples are set per response below.
        responses[str(code)] = {
            "description": ERROR_DESCRIPTIONS[code],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }
        if code == 429:
            responses[str(code)]["headers"] = {"Retry-After": {**RETRY_AFTER, "required": True}}
        elif code == 401:
            responses[str(code)]["headers"] = {"WWW-Authenticate": {**CHALLENGE, "required": True}}
    for code in sorted(meta["oauth_errors"]):
        responses[str(code)] = {
            "description": OAUTH_ERROR_DESCRIPTIONS[code],
            "headers": {"Cache-Control": {"schema": {"type": "string", "enum": ["no-store"]}}},
            "content": {"application/json": {"schema": {"$ref": SCHEMA_REF + "OAuthErrorOut"}}},
        }
    if meta["form"] is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {"$ref": SCHEMA_REF + meta["form"].__name__}
                }
            },
        }
    for code, headers in meta["headers"].items():
        responses[str(code)].setdefault("headers", {}).update(headers)
    _document_write_protocol(operation, meta)
    for code, example in meta["examples"].items():
        content = responses.get(str(code), {}).get("content", {}).get("application/json")
        if content is not None:
            content["example"] = example
    if "requestBody" in operation:
        operation["requestBody"]["required"] = True
        if meta["body_example"] is not None:
            operation["requestBody"]["content"]["application/json"]["example"] = meta[
                "body_example"
            ]


def _document_write_protocol(operation: dict[str, Any], meta: dict[str, Any]) -> None:
    """The `Idempotency-Key` / `If-Match` request headers and the `ETag` /
    `Idempotent-Replayed` answer headers of the operations that take them."""
    parameters = operation.setdefault("parameters", [])
    successes = [
        answer for code, answer in operation["responses"].items() if code in {"200", "201"}
    ]
    if meta["idempotent"]:
        parameters.append(dict(IDEMPOTENCY_KEY_PARAMETER))
        for code, note in IDEMPOTENCY_ERRORS.items():
            answer = operation["responses"][code]
            answer["description"] = f"{answer['description']}; {note}"
        for code, answer in operation["responses"].items():
            if code.startswith("2"):
                answer.setdefault("headers", {})["Idempotent-Replayed"] = dict(REPLAYED_HEADER)
    if meta["conditional"] == "write":
        parameters.append(dict(IF_MATCH_PARAMETER))
    if meta["conditional"] is not None:
        for answer in successes:
            answer.setdefault("headers", {})["ETag"] = dict(ETAG_HEADER)


spec = ConduitSpec(
    "flask",
    backend=ConduitBackend,
    before=_raise_validation_error,
    title="Conduit API",
    version=__version__,
    path="apidoc",
    info={
        "description": (
            "The RealWorld Conduit API (https://realworld-docs.netlify.app/), served at "
            "`/api/v1`. Errors use one envelope: "
            '`{"errors": {"<field or body>": ["message"]}}`. `PUT` on `/user` and '
            "`/articles/{slug}` is a partial update, like `PATCH`."
        )
    },
)

View = Callable[..., Coroutine[Any, Any, Any]]


def operation(
    *,
    responses: dict[int, type[BaseModel] | None],
    tags: Iterable[str],
    auth: AuthMode = "none",
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    errors: Iterable[int] = (),
    examples: dict[int, Any] | None = None,
    body_example: Any = None,
    scope: str | None = None,
    form: type[BaseModel] | None = None,
    oauth_errors: Iterable[int] = (),
    headers: dict[int, dict[str, Any]] | None = None,
    defer_viewer: bool = False,
) -> Callable[[View], Callable[..., Any]]:
    """Validate, authenticate and document an async view (see the module docstring).

    Every view that takes a token names the `scope` the token must carry (deny by default:
    leaving it out is an error at import time); a token without it gets 403. `form` documents
    a form-encoded body that the view parses itself; `oauth_errors` are answered in the RFC
    6749 error format instead of the envelope. `headers` documents response headers (OpenAPI
    Header Objects by name) per status code. `defer_viewer` (reads only) passes the view a
    `PendingViewer` to load with its own viewer-specific columns.
    """
    if auth != "none" and scope is None:
        raise ValueError("an authenticated operation must name the scope it requires")
    if scope is not None and scope not in scopes.ALL:
        raise ValueError(f"unknown scope {scope!r}")
    # Any request may be rate limited (429) or meet an unavailable database (503).
    codes = set(errors) | {429, 503}
    if auth != "none":
        codes |= {401, 403}
    if body is not None:
        codes |= {400, 413, 415, 422}
    if query is not None:
        codes.add(422)

    def decorate(view: View) -> Callable[..., Any]:
        # Set by `@idempotent` and `@conditional` / `@tagged` under this decorator.
        idempotent = bool(getattr(view, "conduit_idempotent", False))
        conditional: str | None = getattr(view, "conduit_conditional", None)
        error_codes = set(codes)
        if idempotent:
            error_codes |= {409, 422}
        if conditional == "write":
            error_codes |= {412, 428}

        @functools.wraps(view)
        async def with_viewer(claims: TokenClaims | None, *args: Any, **kwargs: Any) -> Any:
            if auth == "none":
                return await view(*args, **kwargs)
            if not defer_viewer:
                kwargs["viewer"] = (await load_viewer(claims))[0]
                return await view(*args, **kwargs)
            if request.method not in ("GET", "HEAD"):
                raise RuntimeError("defer_viewer is for reads: the token comes before effects")
            pending = kwargs["viewer"] = PendingViewer(claims)
            try:
                result = await view(*args, **kwargs)
            finally:
                # A bad token is refused, whatever the view answered (a 404 included).
                if not pending.loaded:
                    await pending.load()
            return result

        @functools.wraps(view)
        def run_sync(*args: Any, **kwargs: Any) -> Any:
            claims = g.pop("token_claims", None)
            return current_app.ensure_sync(with_viewer)(claims, *args, **kwargs)

        resp = SpecResponse(
            validate=False, **{f"HTTP_{code}": model for code, model in responses.items()}
        )
        validated: Callable[..., Any] = spec.validate(
            query=query,
            body=SpecRequest(body) if body is not None else None,
            resp=resp,
            tags=list(tags),
        )(run_sync)
        validated.conduit_meta = {  # type: ignore[attr-defined]
            "auth": auth,
            "scope": scope,
            "errors": error_codes - set(oauth_errors),
            "oauth_errors": set(oauth_errors),
            "form": form,
            "examples": examples or {},
            "body_example": body_example,
            "headers": headers or {},
            "idempotent": idempotent,
            "conditional": conditional,
        }
        if auth == "none":
            return validated

        @functools.wraps(validated)
        def authenticated(*args: Any, **kwargs: Any) -> Any:
            g.token_claims = verify_request(required=auth == "required", scope=scope)
            return validated(*args, **kwargs)

        return authenticated

    return decorate
