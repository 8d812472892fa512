"""Logs with the request id (JSON, or text lines on a development terminal), and the
request-id / access-log hooks."""

from __future__ import annotations

import logging
import random
import re
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from flask import Flask, Response, g, request

request_id_var: ContextVar[str | None] = ContextVar("conduit_request_id", default=None)

# Used with fullmatch: `re.match` with `$` accepts a trailing newline (header injection).
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

access_logger = logging.getLogger("conduit.access")
# What an access line's message already says; the text form does not repeat it.
_ACCESS_MESSAGE_FIELDS = frozenset({"method", "path", "status"})
# A text value is quoted when it holds any of these (or is empty), so lines split cleanly.
_NEEDS_QUOTES = re.compile(r'[\s"=]|^$')


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The request id (when there is one) and the record's `extra` fields."""
    fields: dict[str, Any] = {}
    request_id = request_id_var.get()
    if request_id is not None:
        fields["request_id"] = request_id
    for key, value in record.__dict__.items():
        if key not in _RESERVED and not key.startswith("_"):
            fields[key] = value
    return fields


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
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def _text_value(value: Any) -> str:
    if isinstance(value, str):
        return orjson.dumps(value).decode() if _NEEDS_QUOTES.search(value) else value
    if value is None or isinstance(value, bool | int | float):
        return str(value)
    return orjson.dumps(value, default=str).decode()


class TextFormatter(logging.Formatter):
    """Lines for a person at a terminal: local time, level, logger, message, then the request
    id and the extras as `key=value`, and any traceback below."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as one line (plus its traceback, if any)."""
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{clock}.{int(record.msecs):03d} {record.levelname:<8} {record.name}: "
        line += record.getMessage()
        fields = _fields(record)
        if record.name == access_logger.name:
            for key in _ACCESS_MESSAGE_FIELDS:
                fields.pop(key, None)
        if fields:
            line += "  " + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


LOG_FORMATS = frozenset({"auto", "json", "text"})


def wants_text_logs(log_format: str, *, development: bool, stream: TextIO) -> bool:
    """Whether to log text lines rather than JSON.

    `auto` means text only for a person watching: in development, with `stream` a terminal.
    Anything collected (production, a pipe, a file) stays JSON, one object per line.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}")
    if log_format != "auto":
        return log_format == "text"
    if not development:
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def configure_logging(level: str, *, log_format: str = "json", development: bool = False) -> None:
    """Send every log record to stdout at `level`, as JSON or text (`wants_text_logs`)."""
    handler = logging.StreamHandler(sys.stdout)
    text = wants_text_logs(log_format, development=development, stream=sys.stdout)
    handler.setFormatter(TextFormatter() if text else JsonFormatter())
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
