"""Request ids, JSON and text log lines and the access log."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import pty
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from cryptography.fernet import Fernet
from pydantic import ValidationError

from service.app import ConduitASGI, create_asgi
from service.infra.observability import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    request_id_var,
    wants_text_logs,
)
from service.infra.settings import Settings, describe_settings_error
from tests.apps import serving
from tests.logs import JsonLines, attached

HEX32 = re.compile(r"^[0-9a-f]{32}$")
ROOT = Path(__file__).resolve().parents[2]
TEXT_LINE = re.compile(
    r"^\d\d:\d\d:\d\d\.\d{3} (?P<level>[A-Z]+) +(?P<logger>[\w.]+): (?P<rest>.*)$"
)


@pytest.fixture
def access_lines() -> Iterator[JsonLines]:
    yield from attached(JsonLines(), "conduit.access")


@pytest_asyncio.fixture(scope="module")
async def logged_client(settings: Settings, app: ConduitASGI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app with the access log on (the session's app has it off)."""
    async with serving(create_asgi(settings.model_copy(update={"access_log": True}))) as http:
        yield http


async def raw_get(asgi: Any, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """GET through the ASGI interface with exact header bytes; return the response headers."""
    sent: list[dict[str, Any]] = []
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    queue.put_nowait({"type": "http.request", "body": b""})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    await asyncio.wait_for(asgi(scope, queue.get, send), 10)
    assert sent[0]["status"] == 200, sent
    return {name.decode(): value.decode() for name, value in sent[0]["headers"]}


async def test_valid_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "abc-123:def.GHI_4"})
    assert response.headers["x-request-id"] == "abc-123:def.GHI_4"


async def test_missing_request_id_is_generated(client: httpx.AsyncClient) -> None:
    first = (await client.get("/healthz")).headers["x-request-id"]
    second = (await client.get("/healthz")).headers["x-request-id"]
    assert HEX32.match(first)
    assert HEX32.match(second)
    assert first != second


@pytest.mark.parametrize(
    "bad",
    [
        "x" * 129,
        "has space",
        "semi;colon",
        'quote"d',
        "ünïcode",
    ],
)
async def test_invalid_request_id_is_replaced(client: httpx.AsyncClient, bad: str) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": bad.encode()})
    assert response.status_code == 200
    assert HEX32.match(response.headers["x-request-id"])


@pytest.mark.parametrize(
    "injected", [b"abc\n", b"abc\r\nSet-Cookie: a=b", b"abc\nX-Evil: 1", b"abc\x00"]
)
async def test_header_injection_in_request_id_is_replaced(
    app: ConduitASGI, injected: bytes
) -> None:
    headers = await raw_get(app, "/healthz", [(b"x-request-id", injected)])
    assert HEX32.match(headers["x-request-id"])
    assert "set-cookie" not in headers
    assert "x-evil" not in headers


async def test_error_responses_carry_the_request_id(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/nope", headers={"X-Request-ID": "trace-404"})
    assert response.status_code == 404
    assert response.headers["x-request-id"] == "trace-404"


def test_json_formatter_renders_one_line_with_context_and_extras() -> None:
    record = logging.LogRecord(
        "conduit.test", logging.WARNING, __file__, 1, "hello %s", ("world",), None
    )
    record.user_id = 42
    record.when = object()  # not JSON: rendered with str()
    token = request_id_var.set("rid-1")
    try:
        line = JsonFormatter().format(record)
    finally:
        request_id_var.reset(token)
    assert "\n" not in line
    entry = orjson.loads(line)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", entry["time"])
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "conduit.test"
    assert entry["message"] == "hello world"
    assert entry["request_id"] == "rid-1"
    assert entry["user_id"] == 42
    assert entry["when"].startswith("<object object")
    assert "args" not in entry
    assert "msg" not in entry


def test_json_formatter_includes_exception_and_omits_missing_request_id() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.LogRecord(
            "conduit.test", logging.ERROR, __file__, 1, "failed", (), exc_info=True
        )
        import sys

        record.exc_info = sys.exc_info()
    token = request_id_var.set(None)
    try:
        line = JsonFormatter().format(record)
    finally:
        request_id_var.reset(token)
    assert "\n" not in line
    entry = orjson.loads(line)
    assert "request_id" not in entry
    assert "ValueError: bad" in entry["exception"]


async def test_access_log_entry(logged_client: httpx.AsyncClient, access_lines: JsonLines) -> None:
    response = await logged_client.get("/api/v1/tags", headers={"X-Request-ID": "acc-1"})
    assert response.status_code == 200
    [entry] = access_lines.lines
    assert entry["message"] == "GET /api/v1/tags 200"
    assert entry["method"] == "GET"
    assert entry["path"] == "/api/v1/tags"
    assert entry["status"] == 200
    assert isinstance(entry["duration_ms"], float | int)
    assert entry["duration_ms"] >= 0
    assert entry["request_id"] == "acc-1"


async def test_access_log_records_errors_too(
    logged_client: httpx.AsyncClient, access_lines: JsonLines
) -> None:
    response = await logged_client.post("/api/v1/tags")
    assert response.status_code == 405
    [entry] = access_lines.lines
    assert entry["status"] == 405
    assert entry["method"] == "POST"


async def test_access_log_off(client: httpx.AsyncClient, access_lines: JsonLines) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert access_lines.lines == []


class TextLines(logging.Handler):
    """Formats records as text lines, at emit time (the request id is read then)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(TextFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def access_text() -> Iterator[TextLines]:
    yield from attached(TextLines(), "conduit.access")


@pytest.fixture
def terminal() -> Iterator[io.TextIOWrapper]:
    """A stream whose file is a terminal (the child side of a pseudo-terminal)."""
    parent, child = pty.openpty()
    stream = os.fdopen(child, "w")
    yield stream
    stream.close()
    os.close(parent)


@pytest.mark.parametrize(
    ("log_format", "development", "on_terminal", "text"),
    [
        ("auto", True, True, True),
        ("auto", True, False, False),
        ("auto", False, True, False),
        ("auto", False, False, False),
        ("json", True, True, False),
        ("text", False, False, True),
    ],
)
def test_text_logs_only_for_a_terminal_in_development_unless_set(
    terminal: io.TextIOWrapper, log_format: str, development: bool, on_terminal: bool, text: bool
) -> None:
    stream = terminal if on_terminal else io.StringIO()
    assert wants_text_logs(log_format, development=development, stream=stream) is text


def test_a_closed_or_odd_stream_is_no_terminal(terminal: io.TextIOWrapper) -> None:
    closed = io.StringIO()
    closed.close()
    assert wants_text_logs("auto", development=True, stream=closed) is False
    assert wants_text_logs("auto", development=True, stream=object()) is False  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown log format"):
        wants_text_logs("yaml", development=True, stream=terminal)


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """The root logger, its handlers and level restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    ("development", "formatter"), [(True, TextFormatter), (False, JsonFormatter)]
)
def test_configure_logging_picks_the_formatter_for_stdout(
    root_logging: logging.Logger,
    terminal: io.TextIOWrapper,
    monkeypatch: pytest.MonkeyPatch,
    development: bool,
    formatter: type[logging.Formatter],
) -> None:
    monkeypatch.setattr(sys, "stdout", terminal)
    configure_logging("WARNING", log_format="auto", development=development)
    [handler] = root_logging.handlers
    assert type(handler.formatter) is formatter
    assert root_logging.level == logging.WARNING


def test_log_format_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().log_format == "auto"
    monkeypatch.setenv("LOG_FORMAT", " Text ")
    assert Settings().log_format == "text"
    monkeypatch.setenv("LOG_FORMAT", "yaml")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert describe_settings_error(caught.value) == "LOG_FORMAT: must be one of auto, json, text"


def test_text_formatter_renders_context_and_extras() -> None:
    record = logging.LogRecord(
        "conduit.test", logging.WARNING, __file__, 1, "hello %s", ("world",), None
    )
    record.user_id = 42
    record.note = 'two words and "quotes"'
    record.empty = ""
    record.policies = ["auth", "default"]
    record.missing = None
    token = request_id_var.set("rid-1")
    try:
        line = TextFormatter().format(record)
    finally:
        request_id_var.reset(token)
    match = TEXT_LINE.match(line)
    assert match is not None, line
    assert (match["level"], match["logger"]) == ("WARNING", "conduit.test")
    assert match["rest"] == (
        'hello world  request_id=rid-1 user_id=42 note="two words and \\"quotes\\"" empty="" '
        'policies=["auth","default"] missing=None'
    )


def test_text_formatter_adds_the_traceback_below() -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        record = logging.LogRecord(
            "conduit.test", logging.ERROR, __file__, 1, "failed", (), exc_info=sys.exc_info()
        )
    record.stack_info = "Stack (most recent call last):\n  here"
    first, *rest = TextFormatter().format(record).splitlines()
    assert first.endswith("conduit.test: failed")
    assert "request_id" not in first
    assert rest[0] == "Traceback (most recent call last):"
    assert "ValueError: bad value" in rest
    assert rest[-1] == "  here"


async def test_access_log_in_text_keeps_the_request_id(
    logged_client: httpx.AsyncClient, access_text: TextLines
) -> None:
    response = await logged_client.get("/api/v1/tags", headers={"X-Request-ID": "acc-2"})
    assert response.status_code == 200
    [line] = access_text.lines
    match = TEXT_LINE.match(line)
    assert match is not None, line
    assert (match["level"], match["logger"]) == ("INFO", "conduit.access")
    assert re.fullmatch(
        r"GET /api/v1/tags 200  request_id=acc-2 duration_ms=[0-9.]+ remote=\S+", match["rest"]
    ), line


def _log_from_child(stdout: int, **environment: str) -> None:
    """Run the CLI's logging set-up in a child process with `stdout`, and log two lines."""
    script = (
        "import logging\n"
        "from service.cli import _settings\n"
        "from service.infra.observability import log_access, request_id_var\n"
        "_settings()\n"
        "request_id_var.set('child-1')\n"
        "logging.getLogger('conduit.test').info('ready', extra={'port': 8000})\n"
        "log_access(method='GET', path='/', status=200, duration_ms=1.5, remote='127.0.0.1')\n"
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"APP_ENV", "LOG_FORMAT", "LOG_LEVEL"}
    }
    subprocess.run(
        [sys.executable, "-c", script],
        stdout=stdout,
        env={**env, **environment},
        cwd=ROOT,
        check=True,
        timeout=60,
    )


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child side is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def _on_a_terminal(**environment: str) -> list[str]:
    """The lines the child logs with a pseudo-terminal as its stdout."""
    parent, child = pty.openpty()
    try:
        try:
            _log_from_child(child, **environment)
        finally:
            os.close(child)
        return _read_all(parent).splitlines()
    finally:
        os.close(parent)


def test_a_development_terminal_gets_text_lines() -> None:
    lines = _on_a_terminal(APP_ENV="development")
    assert [TEXT_LINE.match(line) is not None for line in lines] == [True, True], lines
    assert lines[0].endswith("conduit.test: ready  request_id=child-1 port=8000")
    assert lines[1].endswith(
        "conduit.access: GET / 200  request_id=child-1 duration_ms=1.5 remote=127.0.0.1"
    )


def test_a_pipe_gets_json_lines_in_development_too() -> None:
    read, write = os.pipe()
    try:
        _log_from_child(write, APP_ENV="development")
    finally:
        os.close(write)
    with os.fdopen(read) as output:
        entries = [orjson.loads(line) for line in output.read().splitlines()]
    assert [entry["message"] for entry in entries] == ["ready", "GET / 200"]
    assert all(entry["request_id"] == "child-1" for entry in entries)


PRODUCTION = {
    "APP_ENV": "production",
    "SECRET_KEY": "p" * 40,
    "DATABASE_URL": "postgresql://conduit@db.invalid/conduit",
    "REDIS_URL": "redis://cache.invalid:6379/0",
    "WEBHOOK_SECRET_KEYS": Fernet.generate_key().decode(),
}


@pytest.mark.parametrize(
    ("environment", "expected_json"),
    [
        (PRODUCTION, True),
        ({**PRODUCTION, "LOG_FORMAT": "text"}, False),
    ],
)
def test_a_terminal_outside_development_gets_json_unless_text_is_asked_for(
    environment: dict[str, str], expected_json: bool
) -> None:
    first = _on_a_terminal(**environment)[0]
    assert first.startswith("{") is expected_json, first
