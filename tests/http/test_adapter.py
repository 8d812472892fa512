"""The concurrent WSGI-to-ASGI adapter: concurrency, lifespan, body limit, drain, passthrough.

Concurrency is proven without timing: a view waits at a barrier that only opens when N
requests are inside the view at the same time.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from asgiref.wsgi import WsgiToAsgi
from flask import Response, request

from service.app import ConduitASGI, ConduitFlask
from service.http.adapter import ConcurrentWsgiToAsgi
from service.http.types import Receive, Scope, Send
from service.infra.settings import Settings
from tests.apps import over_tcp

N = 10
MAX_BODY = 1024

Message = dict[str, Any]


@dataclass
class Barrier:
    """Opens when `n` callers have arrived; records the loop each caller ran on."""

    n: int
    arrived: int = 0
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    loops: list[asyncio.AbstractEventLoop] = field(default_factory=list)

    async def wait(self) -> None:
        self.loops.append(asyncio.get_running_loop())
        self.arrived += 1
        if self.arrived >= self.n:
            self.opened.set()
        await self.opened.wait()


@dataclass
class Probe:
    """What the test app's views saw."""

    barrier: Barrier = field(default_factory=lambda: Barrier(N))
    calls: int = 0
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    events: list[str] = field(default_factory=list)


def build_app(probe: Probe) -> ConduitFlask:
    """A bare app (no database) with views that report to `probe`."""
    app = ConduitFlask("adapter_test")

    @app.get("/barrier")
    async def barrier() -> str:
        await probe.barrier.wait()
        return "through"

    @app.post("/echo")
    async def echo() -> Response:
        probe.calls += 1
        return Response(request.get_data(), mimetype="application/octet-stream")

    @app.get("/blocking")
    async def blocking() -> str:
        probe.entered.set()
        await probe.release.wait()
        probe.events.append("request finished")
        return "done"

    @app.post("/created")
    def created() -> tuple[str, int, dict[str, str]]:
        return "made", 201, {"X-Custom": "yes", "Location": "/things/1"}

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[bytes]:
            yield b"one,"
            yield b"two,"
            yield b"three"

        return Response(chunks(), mimetype="text/plain")

    @app.get("/stream-fails")
    def stream_fails() -> Response:
        def chunks() -> Iterator[bytes]:
            yield b"partial"
            raise RuntimeError("generator broke")

        return Response(chunks(), mimetype="text/plain")

    return app


class RecordingLifespan:
    """A lifespan that records its calls and can fail on startup."""

    def __init__(self, probe: Probe, fail_with: str | None = None) -> None:
        self.probe = probe
        self.fail_with = fail_with

    async def startup(self) -> None:
        if self.fail_with is not None:
            raise RuntimeError(self.fail_with)
        self.probe.events.append("lifespan startup")

    async def shutdown(self) -> None:
        self.probe.events.append("lifespan shutdown")


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
async def adapter(probe: Probe) -> AsyncIterator[ConcurrentWsgiToAsgi]:
    asgi = ConcurrentWsgiToAsgi(
        build_app(probe),
        concurrency=16,
        max_body_bytes=MAX_BODY,
        lifespan=RecordingLifespan(probe),
        shutdown_grace_seconds=5,
    )
    await asgi.startup()
    yield asgi
    await asgi.shutdown()


def http_client(asgi: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://t")


def http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> Message:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers or [],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }


async def call_asgi(asgi: Any, scope: Message, incoming: list[Message]) -> list[Message]:
    """Drive one ASGI call with scripted `receive` messages; return what it sent."""
    queue: asyncio.Queue[Message] = asyncio.Queue()
    for message in incoming:
        queue.put_nowait(message)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(asgi(scope, queue.get, send), 5)
    return sent


async def test_requests_run_concurrently_on_the_serving_loop(
    adapter: ConcurrentWsgiToAsgi, probe: Probe
) -> None:
    async with http_client(adapter) as http:
        responses = await asyncio.wait_for(
            asyncio.gather(*(http.get("/barrier") for _ in range(N))), 10
        )
    assert [r.status_code for r in responses] == [200] * N
    assert {r.text for r in responses} == {"through"}
    assert probe.barrier.arrived == N
    # Every coroutine ran on this test's loop, where the app's pools would live.
    assert set(probe.barrier.loops) == {asyncio.get_running_loop()}


async def test_stock_asgiref_adapter_serialises_requests(probe: Probe) -> None:
    """The control: asgiref's `WsgiToAsgi` never has the N requests in the view at once."""
    stock = WsgiToAsgi(build_app(probe))
    async with http_client(stock) as http:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(http.get("/barrier") for _ in range(N))), 1)
    # One request holds asgiref's single thread (asgiref may nest one more into it while it
    # waits); the barrier never sees N at once.
    assert probe.barrier.arrived < N
    assert not probe.barrier.opened.is_set()
    # Cleanup: the cancelled requests are gone; make sure asgiref's one thread is idle again.
    probe.barrier.opened.set()
    await asyncio.wait_for(sync_to_async(lambda: None)(), 5)


async def test_lifespan_startup_then_shutdown(probe: Probe) -> None:
    asgi = ConcurrentWsgiToAsgi(
        build_app(probe), concurrency=2, max_body_bytes=MAX_BODY, lifespan=RecordingLifespan(probe)
    )
    receive: asyncio.Queue[Message] = asyncio.Queue()
    sent: asyncio.Queue[Message] = asyncio.Queue()
    task = asyncio.create_task(asgi({"type": "lifespan"}, receive.get, sent.put))

    await receive.put({"type": "lifespan.startup"})
    assert await asyncio.wait_for(sent.get(), 5) == {"type": "lifespan.startup.complete"}
    assert probe.events == ["lifespan startup"]

    await receive.put({"type": "lifespan.shutdown"})
    assert await asyncio.wait_for(sent.get(), 5) == {"type": "lifespan.shutdown.complete"}
    await asyncio.wait_for(task, 5)
    assert probe.events == ["lifespan startup", "lifespan shutdown"]


async def test_lifespan_startup_failure_is_reported(probe: Probe) -> None:
    asgi = ConcurrentWsgiToAsgi(
        build_app(probe),
        concurrency=2,
        max_body_bytes=MAX_BODY,
        lifespan=RecordingLifespan(probe, fail_with="database unreachable at postgresql://x"),
    )
    receive: asyncio.Queue[Message] = asyncio.Queue()
    sent: asyncio.Queue[Message] = asyncio.Queue()
    receive.put_nowait({"type": "lifespan.startup"})
    await asyncio.wait_for(asgi({"type": "lifespan"}, receive.get, sent.put), 5)
    assert sent.get_nowait() == {
        "type": "lifespan.startup.failed",
        "message": "database unreachable at postgresql://x",
    }
    assert sent.empty()


async def test_body_over_content_length_limit_is_refused_before_the_app(
    adapter: ConcurrentWsgiToAsgi, probe: Probe
) -> None:
    async with http_client(adapter) as http:
        response = await http.post("/echo", content=b"x" * (MAX_BODY + 1))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"errors": {"body": ["request body too large"]}}
    assert probe.calls == 0


async def test_adapter_errors_carry_the_request_id(
    adapter: ConcurrentWsgiToAsgi, probe: Probe
) -> None:
    async with http_client(adapter) as http:
        given = await http.post(
            "/echo", content=b"x" * (MAX_BODY + 1), headers={"X-Request-ID": "trace-42"}
        )
        forged = await http.post(
            "/echo", content=b"x" * (MAX_BODY + 1), headers={"X-Request-ID": "bad id\r\nx: y"}
        )
    assert given.status_code == 413
    assert given.headers["x-request-id"] == "trace-42"
    assert forged.status_code == 413
    assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["x-request-id"])
    assert probe.calls == 0


async def test_streamed_body_over_limit_is_refused(
    adapter: ConcurrentWsgiToAsgi, probe: Probe
) -> None:
    chunk = b"y" * 400
    sent = await call_asgi(
        adapter,
        http_scope("POST", "/echo", [(b"content-type", b"application/octet-stream")]),
        [{"type": "http.request", "body": chunk, "more_body": True} for _ in range(3)],
    )
    assert sent[0]["status"] == 413
    assert sent[1]["body"] == b'{"errors":{"body":["request body too large"]}}'
    assert probe.calls == 0


async def test_streamed_body_within_limit_reaches_the_app_intact(
    adapter: ConcurrentWsgiToAsgi, probe: Probe
) -> None:
    parts = [b"a" * 300, b"b" * 300, b"c" * 300]
    sent = await call_asgi(
        adapter,
        http_scope("POST", "/echo"),
        [
            {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
            for i, part in enumerate(parts)
        ],
    )
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b"".join(parts)
    assert probe.calls == 1


async def test_client_gone_mid_upload_does_not_run_the_app(
    adapter: ConcurrentWsgiToAsgi, probe: Probe
) -> None:
    sent = await call_asgi(
        adapter,
        http_scope("POST", "/echo", [(b"content-length", b"900")]),
        [
            {"type": "http.request", "body": b"123", "more_body": True},
            {"type": "http.disconnect"},
        ],
    )
    assert sent == []
    assert probe.calls == 0


async def test_shutdown_drains_in_flight_requests_and_refuses_new_ones(probe: Probe) -> None:
    asgi = ConcurrentWsgiToAsgi(
        build_app(probe),
        concurrency=4,
        max_body_bytes=MAX_BODY,
        lifespan=RecordingLifespan(probe),
        shutdown_grace_seconds=30,
    )
    receive: asyncio.Queue[Message] = asyncio.Queue()
    sent: asyncio.Queue[Message] = asyncio.Queue()
    lifespan = asyncio.create_task(asgi({"type": "lifespan"}, receive.get, sent.put))
    await receive.put({"type": "lifespan.startup"})
    assert await asyncio.wait_for(sent.get(), 5) == {"type": "lifespan.startup.complete"}

    async with http_client(asgi) as http:
        in_flight = asyncio.create_task(http.get("/blocking"))
        await asyncio.wait_for(probe.entered.wait(), 5)

        await receive.put({"type": "lifespan.shutdown"})
        # The shutdown cannot finish while the request is inside the view.
        for _ in range(20):
            await asyncio.sleep(0)
        assert sent.empty()
        assert not lifespan.done()

        refused = await asyncio.wait_for(http.get("/blocking"), 5)
        assert refused.status_code == 503
        assert refused.json() == {"errors": {"body": ["server is shutting down"]}}

        probe.release.set()
        response = await asyncio.wait_for(in_flight, 5)
        assert response.status_code == 200
        assert response.text == "done"

    assert await asyncio.wait_for(sent.get(), 5) == {"type": "lifespan.shutdown.complete"}
    await asyncio.wait_for(lifespan, 5)
    assert probe.events == ["lifespan startup", "request finished", "lifespan shutdown"]


async def test_shutdown_grace_is_bounded(probe: Probe) -> None:
    asgi = ConcurrentWsgiToAsgi(
        build_app(probe),
        concurrency=2,
        max_body_bytes=MAX_BODY,
        lifespan=RecordingLifespan(probe),
        shutdown_grace_seconds=0.1,
    )
    await asgi.startup()
    async with http_client(asgi) as http:
        stuck = asyncio.create_task(http.get("/blocking"))
        await asyncio.wait_for(probe.entered.wait(), 5)
        await asyncio.wait_for(asgi.shutdown(), 5)
        assert probe.events == ["lifespan startup", "lifespan shutdown"]
        probe.release.set()
        await asyncio.wait_for(stuck, 5)


async def test_websocket_scope_is_closed(adapter: ConcurrentWsgiToAsgi) -> None:
    sent = await call_asgi(
        adapter,
        {"type": "websocket", "path": "/ws", "headers": []},
        [{"type": "websocket.connect"}],
    )
    assert sent == [{"type": "websocket.close", "code": 1000}]


async def test_status_headers_and_body_pass_through(adapter: ConcurrentWsgiToAsgi) -> None:
    async with http_client(adapter) as http:
        created = await http.post("/created")
        streamed = await http.get("/stream")
    assert created.status_code == 201
    assert created.text == "made"
    assert created.headers["x-custom"] == "yes"
    assert created.headers["location"] == "/things/1"
    assert streamed.status_code == 200
    assert streamed.headers["content-type"] == "text/plain; charset=utf-8"
    assert streamed.text == "one,two,three"


async def test_response_body_that_raises_gives_a_500_envelope(
    adapter: ConcurrentWsgiToAsgi, caplog: pytest.LogCaptureFixture
) -> None:
    async with http_client(adapter) as http:
        response = await http.get("/stream-fails")
    assert response.status_code == 500
    assert response.json() == {"errors": {"body": ["internal server error"]}}
    assert "generator broke" not in response.text
    assert any(record.exc_info for record in caplog.records if record.name == "conduit.adapter")


# --- over a real Hypercorn server: an early answer must not hang the connection -------------


async def read_until_closed(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sends until it closes the connection (TimeoutError if it never
    does)."""
    received = b""
    async with asyncio.timeout(seconds):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk


async def post_then_get(port: int, path: str, size: int, then: str) -> bytes:
    """On one connection: POST `size` bytes to `path` (no `Expect`), then GET `then`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    writer.write(f"{head}Content-Length: {size}\r\n\r\n".encode())
    writer.write(b"x" * size)
    writer.write(f"GET {then} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    try:
        return await read_until_closed(reader, 10)
    finally:
        writer.close()


class SlowToRead(ConcurrentWsgiToAsgi):
    """Reads nothing for a while, as a request waiting for the rate limiter's Redis may."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(0.5)
        await super().http(scope, receive, send)


async def test_answer_before_the_body_is_read_closes_the_connection(probe: Probe) -> None:
    """Hypercorn queues 10 body chunks for the app: once they wait unread, the end of an early
    answer used to block forever, and so did the connection."""
    asgi = SlowToRead(build_app(probe), concurrency=2, max_body_bytes=MAX_BODY)
    await asgi.startup()
    try:
        async with over_tcp(asgi) as port:
            received = await post_then_get(port, "/echo", 2_000_000, then="/nothing")
    finally:
        await asgi.shutdown()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"\r\nconnection: close" in head
    assert body == b'{"errors":{"body":["request body too large"]}}'
    assert probe.calls == 0
    assert asgi._in_flight == 0


async def test_413_over_hypercorn_says_close_and_keep_alive_clients_carry_on(
    app: ConduitASGI, settings: Settings
) -> None:
    too_large = settings.max_body_bytes + 100_000
    async with over_tcp(app) as port:
        received = await post_then_get(port, "/api/v1/users/login", too_large, then="/api/v1/tags")
        # A pooling client (as python-requests sessions and curl --next are) reuses the
        # connection unless told to close it.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            refused = await http.post(
                "/api/v1/users/login",
                content=b"x" * too_large,
                headers={"Content-Type": "application/json"},
            )
            tags = await http.get("/api/v1/tags")
    head = received.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"\r\nconnection: close" in head
    assert received.count(b"HTTP/1.1 ") == 1  # the GET was not read from a closing connection
    assert refused.status_code == 413
    assert refused.headers["connection"] == "close"
    assert tags.status_code == 200


async def test_a_read_body_keeps_the_connection_open(adapter: ConcurrentWsgiToAsgi) -> None:
    async with http_client(adapter) as http:
        echoed = await http.post("/echo", content=b"z" * 100)
    assert echoed.status_code == 200
    assert "connection" not in echoed.headers


async def test_http2_early_answer_drains_without_a_connection_header(
    adapter: ConcurrentWsgiToAsgi, probe: Probe
) -> None:
    """`Connection` is not an HTTP/2 header (RFC 9113 §8.2.2); the body is still discarded."""
    scope = {**http_scope("POST", "/echo", [(b"content-length", b"5000")]), "http_version": "2"}
    incoming = [{"type": "http.request", "body": b"x" * 100, "more_body": True}] * 3
    sent = await call_asgi(adapter, scope, [*incoming, {"type": "http.disconnect"}])
    assert sent[0]["status"] == 413
    assert all(name != b"connection" for name, _ in sent[0]["headers"])
    assert probe.calls == 0
