"""Request ids, JSON log lines and the access log."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio

from service.app import ConduitASGI, create_asgi
from service.observability import JsonFormatter, request_id_var
from service.settings import Settings
from tests.apps import serving
from tests.logs import JsonLines

HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def access_lines() -> Iterator[JsonLines]:
    handler = JsonLines()
    logger = logging.getLogger("conduit.access")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.setLevel(previous)
    logger.removeHandler(handler)


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
