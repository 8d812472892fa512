"""Security and CORS headers for the responses that never reach Flask, as ASGI middleware.

The outermost layer of the pipeline (`service.http.pipeline`): the rate limiter's 429s and
the adapter's own 400/413/500/503 get the same headers as Flask's answers
(`service.infra.web_security.SecurityPolicy`, which the Flask hooks in
`service.api.hardening` use too), marked `no-store`. A response that already has them (made
by Flask, or by the response cache) passes unchanged.
"""

from __future__ import annotations

from service.http.types import ASGIApp, Message, Receive, Scope, Send
from service.infra.web_security import SecurityPolicy


class SecurityHeadersMiddleware:
    """ASGI wrapper giving the security and CORS headers to responses that bypass Flask."""

    def __init__(self, app: ASGIApp, policy: SecurityPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; complete the headers of a response Flask did not make."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[tuple[bytes, bytes]] = list(message.get("headers", ()))
                if not any(name.lower() == b"x-content-type-options" for name, _ in headers):
                    headers.extend(self._headers(scope))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_secured)

    def _headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        request_headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers", ()):
            request_headers.setdefault(name.lower(), value)
        origin = request_headers.get(b"origin")
        proto = request_headers.get(b"x-forwarded-proto")
        client = scope.get("client")
        peer = client[0] if client else None
        headers = self.policy.base_headers(
            method=scope.get("method", "GET"),
            origin=origin.decode("latin-1") if origin is not None else None,
            authorized=b"authorization" in request_headers,
            https=self.policy.proxies.is_https(
                scope.get("scheme", "http"), peer, proto.decode("latin-1") if proto else None
            ),
        )
        # Not cacheable either way: these are errors and throttling answers.
        headers["Cache-Control"] = "no-store"
        headers["Vary"] = ", ".join(self.policy.vary())
        return [(name.lower().encode(), value.encode("latin-1")) for name, value in headers.items()]
