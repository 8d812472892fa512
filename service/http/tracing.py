"""The server span of every HTTP request (`service.infra.tracing`), recorded by the outermost
layer of the pipeline when tracing is on, so that the answers given before Flask (the rate
limiter's 429, response-cache hits, the adapter's 413) have one too.

Flask names the span after the route template (`service.infra.tracing.note_route`, a
`before_request` hook); an answer Flask did not route keeps the method alone as its name.
"""

from __future__ import annotations

from service.http.metrics import METHODS
from service.http.types import ASGIApp, Message, Receive, Scope, Send
from service.infra import tracing


class TracingMiddleware:
    """ASGI wrapper running each HTTP request under a server span."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request under its span."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        # The conventions' name for a method outside the known set: clients cannot mint names.
        span, token = tracing.start_server_span(scope, method if method in METHODS else "_OTHER")

        async def send_noting_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                tracing.note_response(span, message)
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive, send_noting_status)
        except BaseException as exc:
            error = exc
            raise
        finally:
            tracing.end_server_span(span, token, error)
