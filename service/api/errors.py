"""The one place that turns exceptions into HTTP answers in the RealWorld error envelope."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Mapping, Sequence

from flask import Flask, Response, jsonify, request
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

from service.api.auth import challenge
from service.domain import errors as domain
from service.infra.db import DatabaseUnavailable, describe_error

logger = logging.getLogger("conduit.errors")

STATUS_BY_ERROR: dict[type[domain.DomainError], int] = {
    domain.InvalidInput: 422,
    domain.NotAuthenticated: 401,
    domain.PermissionDenied: 403,
    domain.NotFound: 404,
    domain.Conflict: 409,
    domain.PreconditionFailed: 412,
    domain.PreconditionRequired: 428,
    domain.TooManyRequests: 429,
    domain.ServiceUnavailable: 503,
}

HTTP_MESSAGES = {
    400: "malformed request",
    401: "authentication required",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    413: "request body too large",
    415: "unsupported media type: send application/json",
    429: "too many requests",
    500: "internal server error",
    503: "service unavailable",
}


def error_response(
    status: int,
    errors: Mapping[str, Sequence[str]],
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Build `{"errors": {field: [messages]}}` with `status`."""
    response = jsonify({"errors": {key: list(value) for key, value in errors.items()}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


# The envelopes of request bodies (`{"user": {...}}`); errors name the field inside.
WRAPPERS = frozenset({"user", "article", "comment", "client", "webhook"})


def validation_errors(exc: ValidationError) -> dict[str, list[str]]:
    """Group Pydantic errors by the dotted field path, without the wrapper key."""
    grouped: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(part) for part in error["loc"]]
        # Drop the RealWorld wrapper ("user", "article", "comment") so the field is named.
        if len(loc) > 1 and loc[0] in WRAPPERS:
            loc = loc[1:]
        grouped.setdefault(".".join(loc) or "body", []).append(error["msg"])
    return grouped


NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


# RFC 6749 §5.2: error_description is limited to %x20-21 / %x23-5B / %x5D-7E.
_OUTSIDE_OAUTH_CHARSET = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")


def oauth_error_response(exc: domain.OAuthError) -> Response:
    """RFC 6749 §5.2: `{"error", "error_description"}`, never cached; the OAuth endpoints'
    one exception to the envelope."""
    description = _OUTSIDE_OAUTH_CHARSET.sub("?", exc.message)
    response = jsonify({"error": exc.error, "error_description": description})
    response.status_code = exc.status
    response.headers.update(NO_STORE)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="conduit", charset="UTF-8"'
    return response


def _domain_error(exc: domain.DomainError) -> Response:
    if isinstance(exc, domain.OAuthError):
        return oauth_error_response(exc)
    status = next((code for kind, code in STATUS_BY_ERROR.items() if isinstance(exc, kind)), 400)
    headers = None
    if isinstance(exc, domain.TooManyRequests):
        headers = {"Retry-After": str(exc.retry_after)}
    elif status == 401:
        headers = _challenge_headers()
    return error_response(status, {exc.field: [exc.message]}, headers)


def _challenge_headers() -> dict[str, str]:
    # Any credentials in the Authorization header were refused: a token scheme's or not.
    return {"WWW-Authenticate": challenge(token_refused="Authorization" in request.headers)}


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    message = HTTP_MESSAGES.get(status) or (exc.description or "error").rstrip(".")
    headers = {
        name: value for name, value in exc.get_headers() if name.lower() in {"allow", "retry-after"}
    }
    if status == 401:
        headers.update(_challenge_headers())
    return error_response(status, {"body": [message]}, headers)


def _pydantic_error(exc: ValidationError) -> Response:
    return error_response(422, validation_errors(exc))


def _database_error(exc: DBAPIError | PoolTimeoutError | DatabaseUnavailable) -> Response:
    if isinstance(exc, DBAPIError) and not exc.connection_invalidated and not _is_connection(exc):
        return _unexpected(exc)
    logger.warning("database unavailable: %s", describe_error(exc))
    return error_response(
        503, {"database": ["database unavailable, try again later"]}, {"Retry-After": "1"}
    )


# SQLSTATE classes that mean "try again later", not a bug: connection exception (08),
# insufficient resources such as too many connections (53), operator intervention such as
# the statement timeout or a server starting up or shutting down (57).
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "53", "57"})


def _is_connection(exc: DBAPIError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return (
        isinstance(exc.orig, OSError | ConnectionError)
        or "connection" in type(exc.orig).__name__.lower()
        or (isinstance(sqlstate, str) and sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES)
    )


def _redis_error(exc: Exception) -> Response:
    logger.warning("redis unavailable: %s", type(exc).__name__)
    return error_response(
        503, {"redis": ["cache unavailable, try again later"]}, {"Retry-After": "1"}
    )


def _connection_error(exc: OSError) -> Response:
    logger.warning("dependency unreachable: %s", type(exc).__name__)
    return error_response(
        503, {"body": ["a dependency is unavailable, try again later"]}, {"Retry-After": "1"}
    )


def _unexpected(exc: BaseException) -> Response:
    logger.error("unhandled error", exc_info=exc)
    return error_response(500, {"body": [HTTP_MESSAGES[500]]})


def init_app(app: Flask) -> None:
    """Register the handlers; every error the service produces leaves through here."""
    app.register_error_handler(domain.DomainError, _domain_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ValidationError, _pydantic_error)
    app.register_error_handler(DBAPIError, _database_error)
    app.register_error_handler(PoolTimeoutError, _database_error)
    app.register_error_handler(DatabaseUnavailable, _database_error)
    app.register_error_handler(RedisConnectionError, _redis_error)
    app.register_error_handler(RedisTimeoutError, _redis_error)
    app.register_error_handler(ConnectionError, _connection_error)
    app.register_error_handler(TimeoutError, _connection_error)
    app.register_error_handler(socket.gaierror, _connection_error)
    app.register_error_handler(Exception, _unexpected)
