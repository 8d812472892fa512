"""The stack's ceiling for `bench.api_bench`: a bare ASGI app under the same Hypercorn config.

Every path answers 200 with a fixed JSON body about the size of `GET /api/v1/tags`, with no
middleware, Redis or Flask: what Hypercorn itself serves on this machine, so the API's
figures can be read as a share of it (measured in the same run).
"""

from __future__ import annotations

from typing import Any

BODY = b'{"tags":[' + b",".join(b'"tag-%02d"' % i for i in range(40)) + b"]}"
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer lifespan events and every HTTP request."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})
