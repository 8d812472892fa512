"""The ASGI app Hypercorn serves: `conduit serve` (or `hypercorn ... service.asgi:app`)."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from service.app import ConduitASGI, create_asgi
from service.http.adapter import error_response
from service.http.types import Message, Receive, Scope, Send
from service.infra.lifecycle import DRAIN
from service.infra.observability import configure_logging
from service.infra.serving import end_connections_when_clients_close
from service.infra.settings import Environment, describe_settings_error, load_settings

CLOSE = (b"connection", b"close")


class DrainingASGI:
    """The app, counting requests in flight and, once the process drains (SIGTERM), closing
    each connection after its response: a kept-alive connection that the server closes while
    idle could meet the client's next request on the way (a reset); one that the response
    itself closes cannot."""

    def __init__(self, app: ConduitASGI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        DRAIN.in_flight += 1
        try:
            if DRAIN.draining and scope["path"] == "/readyz":
                # On the loop, before the thread pool: the probe is answered however busy the
                # process is with the requests it drains.
                await _shutting_down(send)
            elif scope.get("http_version", "1.1") in {"1.0", "1.1"}:
                # Decided when the response starts: a request already running at SIGTERM
                # closes its connection too. (HTTP/2: Hypercorn sends GOAWAY itself.)
                await self.app(scope, receive, _CloseWhenDraining(send))
            else:
                await self.app(scope, receive, send)
        finally:
            DRAIN.in_flight -= 1


class _CloseWhenDraining:
    """`send` adding `Connection: close` to a response that starts while draining."""

    __slots__ = ("send",)

    def __init__(self, send: Send) -> None:
        self.send = send

    async def __call__(self, message: Message) -> None:
        if DRAIN.draining and message["type"] == "http.response.start":
            headers = [h for h in message.get("headers", ()) if h[0].lower() != b"connection"]
            message = {**message, "headers": [*headers, CLOSE]}
        await self.send(message)


async def _shutting_down(send: Send) -> None:
    start, body = error_response(503, "shutting down")
    start["headers"] = [*start["headers"], (b"retry-after", b"1"), CLOSE]
    await send(start)
    await send(body)


def _from_environment() -> DrainingASGI:
    end_connections_when_clients_close()
    try:
        settings = load_settings()
        configure_logging(
            settings.log_level,
            log_format=settings.log_format,
            development=settings.app_env is Environment.DEVELOPMENT,
        )
        return DrainingASGI(create_asgi(settings))
    except ValidationError as exc:
        print(f"conduit: invalid configuration: {describe_settings_error(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as exc:
        print(f"conduit: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


app = _from_environment()
