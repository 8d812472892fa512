"""ASGI adapter that runs the Flask (WSGI) app concurrently, in a greenlet per request.

asgiref's stock `WsgiToAsgi` runs every request of the process through one thread
(`sync_to_async` with `thread_sensitive=True`), so a request awaiting the database blocks
all others. This variant keeps asgiref's environ building but:

- runs the WSGI app in a greenlet of its own on the event loop's thread (SQLAlchemy's
  `greenlet_spawn` technique, the greenlets reused: `service.infra.greenlets`), at most
  `concurrency` at once; when Flask calls an async view, the greenlet hands the coroutine to
  the loop and resumes with its result (`run_on_serving_loop`). No thread hops and no GIL contention
  between request threads and the loop (docs/performance.md has the measurements that chose
  this over a thread pool); the request's context (Flask's, the unit of work, the request
  id) is the request task's own;
- buffers the (JSON-sized) response and sends it in one body message;
- enforces the request body limit while reading, answering 413 before the app runs;
- closes the connection after any answer given before the request body was read (413, the
  rate limiter's 429, 503 while shutting down), discarding the rest of the body meanwhile;
- answers the ASGI lifespan protocol: startup opens the pools, shutdown drains in-flight
  requests and closes them.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Callable, Coroutine, Iterable
from contextlib import suppress
from tempfile import SpooledTemporaryFile
from typing import IO, Any, Protocol

import orjson
from asgiref.sync import async_to_sync
from asgiref.wsgi import WsgiToAsgiInstance
from sqlalchemy.util import await_

from service.http.types import Message, Receive, Scope, Send
from service.infra.greenlets import spawn
from service.infra.observability import request_id_from

logger = logging.getLogger("conduit.adapter")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# Set while the adapter runs a request's WSGI app in its greenlet: async views are then
# awaited on the loop from that greenlet.
_in_request_greenlet: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "conduit_in_request_greenlet", default=False
)


def run_on_serving_loop(
    func: Callable[..., Coroutine[Any, Any, Any]],
) -> Callable[..., Any]:
    """Wrap a coroutine function so the WSGI app can call it and wait for its result.

    In a request served by the adapter the coroutine runs on the serving loop, in the
    request's context, while the request's greenlet waits. Elsewhere (a CLI, Flask's test
    client) it falls back to asgiref's `async_to_sync`.
    """

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        if _in_request_greenlet.get():
            return await_(func(*args, **kwargs))
        return async_to_sync(func)(*args, **kwargs)

    return call


class Lifespan(Protocol):
    """What the adapter calls on ASGI lifespan events."""

    async def startup(self) -> None:
        """Open resources on the server's event loop."""

    async def shutdown(self) -> None:
        """Close what `startup` opened."""


def error_response(
    status: int, message: str, request_id: str | None = None
) -> tuple[Message, Message]:
    """Build the ASGI messages of an error in the service's JSON envelope."""
    body = orjson.dumps({"errors": {"body": [message]}})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if request_id is not None:
        headers.append((b"x-request-id", request_id.encode("latin-1")))
    start = {"type": "http.response.start", "status": status, "headers": headers}
    return start, {"type": "http.response.body", "body": body}


class _BodyTooLarge(Exception):
    pass


def _declares_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        # Chunked, or a Content-Length other than 0 (digits other than 0 remain).
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip(b" 0")):
            return True
    return False


async def _discard_body(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


class _Disconnected(Exception):
    pass


class _BufferedInstance(WsgiToAsgiInstance):
    """One request: asgiref's environ and `start_response`, response collected in the thread."""

    def run(self, body: IO[bytes]) -> tuple[Message, list[bytes]]:
        try:
            environ = self.build_environ(self.scope, body)  # type: ignore[no-untyped-call]
        except ValueError:
            start, end = error_response(400, "too many duplicate headers")
            return start, [end["body"]]
        # The body is fully buffered; without this Werkzeug reads a chunked upload (no
        # Content-Length) as empty.
        environ["wsgi.input_terminated"] = True
        chunks: list[bytes] = []
        result = self.wsgi_application(environ, self.start_response)
        try:
            sent = 0
            for chunk in result:
                if self.response_content_length is not None:
                    chunk = chunk[: self.response_content_length - sent]
                chunks.append(chunk)
                sent += len(chunk)
                if sent == self.response_content_length:
                    break
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return self.response_start, chunks


class ConcurrentWsgiToAsgi:
    """Serve a WSGI app over ASGI with real concurrency and lifespan support."""

    def __init__(
        self,
        wsgi_application: WSGIApp,
        *,
        concurrency: int,
        max_body_bytes: int,
        lifespan: Lifespan | None = None,
        shutdown_grace_seconds: float = 10.0,
        drain_seconds: float = 10.0,
    ) -> None:
        self.wsgi_application = wsgi_application
        self.drain_seconds = drain_seconds
        self.max_body_bytes = max_body_bytes
        self.lifespan = lifespan
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.concurrency = concurrency
        # Requests beyond `concurrency` wait here, before the app, rather than for a database
        # connection; created on the serving loop by `startup` (or the first request).
        self._slots: asyncio.Semaphore | None = None
        self._in_flight = 0
        self._drained: asyncio.Event | None = None
        self._closing = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if _declares_body(scope):
                await self._http_with_body(scope, receive, send)
            else:
                await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self.run_lifespan(receive, send)
        else:  # websocket: not served
            await send({"type": "websocket.close", "code": 1000})

    def waiting(self) -> int:
        """How many requests wait for a concurrency slot now (read by the metrics sampler)."""
        # asyncio keeps no public count of a semaphore's waiters.
        waiters = getattr(self._slots, "_waiters", None)
        return len(waiters) if waiters else 0

    async def startup(self) -> None:
        """Run the lifespan startup (also called directly by tests, which get no lifespan)."""
        self._closing = False
        self._slots = asyncio.Semaphore(self.concurrency)
        self._drained = asyncio.Event()
        self._drained.set()
        if self.lifespan is not None:
            await self.lifespan.startup()

    async def shutdown(self) -> None:
        """Stop taking requests, wait for in-flight ones (bounded), then close resources."""
        self._closing = True
        if self._drained is not None and self._in_flight:
            logger.info("draining %d in-flight requests", self._in_flight)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), self.shutdown_grace_seconds)
        if self.lifespan is not None:
            await self.lifespan.shutdown()

    async def run_lifespan(self, receive: Receive, send: Send) -> None:
        """Answer the ASGI lifespan protocol."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.error("startup failed: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                except Exception as exc:
                    logger.exception("shutdown failed")
                    await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request through the WSGI app in a greenlet of its own."""
        if self._closing:
            await self._send_error(scope, send, 503, "server is shutting down")
            return
        # Counted from the first byte read, so a shutdown waits for uploads in progress too.
        self._enter()
        try:
            with SpooledTemporaryFile(max_size=65536) as body:
                try:
                    await self._read_body(scope, receive, body)
                except _BodyTooLarge:
                    await self._send_error(scope, send, 413, "request body too large")
                    return
                except _Disconnected:
                    return  # nobody to answer: do not run the app on a truncated body
                body.seek(0)
                instance = _BufferedInstance(self.wsgi_application)  # type: ignore[no-untyped-call]
                instance.scope = scope
                token = _in_request_greenlet.set(True)
                try:
                    if self._slots is None:
                        self._slots = asyncio.Semaphore(self.concurrency)
                    async with self._slots:
                        start, chunks = await spawn(instance.run, body)
                except Exception:
                    # Flask handles its own errors; this is e.g. a streamed body that raised.
                    logger.exception("unhandled error in the WSGI app")
                    await self._send_error(scope, send, 500, "internal server error")
                    return
                finally:
                    _in_request_greenlet.reset(token)
            await send(start)
            await send({"type": "http.response.body", "body": b"".join(chunks)})
        finally:
            self._leave()

    async def _http_with_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a request that has a body; if the answer starts before the body was read, it
        closes the connection and the rest of the body is discarded while it goes out.

        Hypercorn queues at most `max_app_queue_size` body chunks for the app. Once an app
        that answered early stops reading, the queue fills up, Hypercorn cannot queue its
        own `http.disconnect` when the response ends, and the response's last `send` never
        returns: the connection hangs and a client reusing it waits forever.
        """
        read = False
        drain: asyncio.Task[None] | None = None

        async def tracked_receive() -> Message:
            nonlocal read
            message = await receive()
            read = message["type"] == "http.disconnect" or not message.get("more_body", False)
            return message

        async def closing_send(message: Message) -> None:
            nonlocal drain
            if message["type"] == "http.response.start" and not read:
                if scope.get("http_version", "1.1") in {"1.0", "1.1"}:
                    headers = [
                        (name, value)
                        for name, value in message.get("headers", ())
                        if name.lower() != b"connection"
                    ]
                    headers.append((b"connection", b"close"))
                    message = {**message, "headers": headers}
                drain = asyncio.create_task(_discard_body(tracked_receive))
            await send(message)

        try:
            await self.http(scope, tracked_receive, closing_send)
        finally:
            if drain is not None:
                # Bounded: a client still sending after the response ends has its connection
                # closed by the server anyway.
                with suppress(TimeoutError):
                    await asyncio.wait_for(drain, self.drain_seconds)

    async def _read_body(self, scope: Scope, receive: Receive, body: IO[bytes]) -> None:
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                raise _BodyTooLarge
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _BodyTooLarge
            body.write(chunk)
            if not message.get("more_body"):
                return

    async def _send_error(self, scope: Scope, send: Send, status: int, message: str) -> None:
        incoming = next(
            (value for name, value in scope.get("headers", ()) if name == b"x-request-id"), b""
        )
        request_id = request_id_from(incoming.decode("latin-1"))
        start, end = error_response(status, message, request_id)
        await send(start)
        await send(end)

    def _enter(self) -> None:
        self._in_flight += 1
        if self._drained is not None:
            self._drained.clear()

    def _leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0 and self._drained is not None:
            self._drained.set()
