"""JSON logs with the request id, and the request-id / access-log hooks."""

from __future__ import annotations

import logging
import random
import re
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import Flask, Response, g, request

request_id_var: ContextVar[str | None] = ContextVar("conduit_request_id", default=None)

# Used with fullmatch: `re.match` with `$` accepts a trailing newline (header injection).
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

access_logger = logging.getLogger("conduit.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as a JSON line."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str) -> None:
    """Send every log record to stdout as JSON at `level`."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("hypercorn.error", "hypercorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # flask-pydantic-spec logs every config attribute at INFO on import: noise, not events.
    logging.getLogger("flask_pydantic_spec").setLevel(max(logging.WARNING, root.level))


def request_id_from(incoming: str | None) -> str:
    """The client's request id when it is sane (no log or header injection), else a new one."""
    if incoming and _VALID_REQUEST_ID.fullmatch(incoming):
        return incoming
    # Random, not secret: 128 bits from `random` (reseeded in each forked child) cost no system
    # call, where uuid4 reads the OS's randomness for every request.
    return f"{random.getrandbits(128):032x}"


def _begin_request() -> None:
    request_id = request_id_from(request.headers.get("X-Request-ID"))
    g.request_id = request_id
    g.started = time.perf_counter()
    request_id_var.set(request_id)


def _finish_request(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id is not None:
        response.headers["X-Request-ID"] = request_id
    return response


def log_access(
    *,
    method: str,
    path: str,
    status: int,
    duration_ms: float | None,
    remote: str | None,
    request_id: str | None = None,
) -> None:
    """Write one access-log line (also for answers made outside Flask)."""
    extra: dict[str, Any] = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round(duration_ms, 2) if duration_ms is not None else None,
        "remote": remote,
    }
    if request_id is not None and request_id_var.get() is None:
        extra["request_id"] = request_id
    access_logger.info("%s %s %d", method, path, status, extra=extra)


def _log_access(response: Response) -> Response:
    started = g.get("started")
    log_access(
        method=request.method,
        path=request.path,
        status=response.status_code,
        duration_ms=(time.perf_counter() - started) * 1000 if started else None,
        remote=request.remote_addr,
    )
    return response


def init_app(app: Flask, *, access_log: bool) -> None:
    """Give every request an id (taken from `X-Request-ID` when sane) and log it."""
    app.before_request(_begin_request)
    app.after_request(_finish_request)
    if access_log:
        app.after_request(_log_access)
