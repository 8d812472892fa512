"""One webhook delivery attempt over HTTP, with the SSRF guard on the address actually connected.

Design: an httpcore connection pool whose network backend is `_GuardedBackend`. The pool asks the
backend for a TCP connection to the URL's host name; the backend resolves the name itself,
refuses the target if any resolved address is refused (`ssrf.resolve_checked`), connects to one
checked IP literal, and compares the socket's peer address with it before handing the stream
back. TLS then runs over that stream with SNI and certificate verification for the host name, and
the Host header carries the host name, exactly as for an ordinary request.

Why not "request the IP URL with a Host header and `sni_hostname`" through plain httpx: its pool
is keyed by origin, which would then be the IP, so a kept-alive TLS connection verified for host A
could carry a request for host B on the same IP (a shared CDN address). Here the pool stays keyed
by host name, so reuse is safe: a reused connection goes to the same name, on an address that was
checked when it was opened, under the same policy (one pool per policy). No proxy is ever used,
so proxy variables in the environment cannot route around the guard.

Other rules: redirects are never followed (a 3xx is just a non-2xx result); the whole attempt
(resolve, connect, TLS, send, read) is bounded by one timeout; at most `max_response_bytes` of the
body are read and only the first `excerpt_bytes` kept; nothing here logs, and error strings never
contain header values (signatures) or the URL (its query may hold the receiver's token).
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import os
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from ipaddress import ip_address
from typing import Any, cast

import httpcore
import httpx

from service.infra.address_policy import AddressPolicy, IPAddress
from service.webhooks.ssrf import (
    ResolutionFailed,
    Resolver,
    WebhookUrlRefused,
    check_url,
    resolve_checked,
    system_resolve,
)

DEFAULT_TIMEOUT = 15.0
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024
DEFAULT_EXCERPT_BYTES = 1024
USER_AGENT = "Conduit-Webhooks/1.0"
# Shorter than common servers' idle keep-alive timeouts (Node.js: 5 s), so a pooled connection is
# dropped by us before the receiver closes it under a request we are sending.
KEEPALIVE_EXPIRY = 4.0
MAX_CONNECTIONS = 256  # per origin
# Origins (scheme, host, port) a client keeps a connection pool for; beyond it, the least
# recently used idle pools are closed.
MAX_ORIGINS = 1024

# Headers the transport owns; a caller setting them could smuggle requests or confuse framing.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade"}
)
_DELTA_SECONDS = re.compile(r"[0-9]{1,10}")


class DeliveryErrorKind(StrEnum):
    """Why an attempt got no (complete) response."""

    REFUSED = "refused"  # the SSRF policy refused the URL or an address it resolves to
    DNS = "dns"
    CONNECT = "connect"
    TLS = "tls"
    TIMEOUT = "timeout"
    PROTOCOL = "protocol"  # the connection broke or the peer spoke broken HTTP


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """Outcome of one attempt; `status_code` is None when no response status arrived."""

    status_code: int | None
    duration_ms: int
    response_excerpt: str = ""  # first bytes of the body, decoded leniently
    body_truncated: bool = False  # the excerpt is not the whole body (or reading it failed)
    error: str | None = None
    error_kind: DeliveryErrorKind | None = None
    retry_after: int | None = None
    remote_address: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the receiver answered 2xx (even if reading its body then failed)."""
        return self.status_code is not None and 200 <= self.status_code < 300


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> int | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date); None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return int(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # "-0000" parses naive; HTTP dates are always GMT
        moment = moment.replace(tzinfo=UTC)
    delta = (moment - (now or datetime.now(UTC))).total_seconds()
    return max(0, math.ceil(delta))


def _strip_scope(value: str) -> IPAddress:
    return ip_address(value.partition("%")[0])


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves and checks the host itself, then connects to one checked IP literal."""

    def __init__(self, *, policy: AddressPolicy, resolver: Resolver) -> None:
        self._policy = policy
        self._resolver = resolver
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Connect to the first reachable checked address of `host`."""
        addresses = await resolve_checked(host, port, policy=self._policy, resolver=self._resolver)
        failure: Exception | None = None
        for address in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            peer = stream.get_extra_info("server_addr")
            if not peer or _strip_scope(str(peer[0])) != _strip_scope(str(address)):
                await stream.aclose()
                raise WebhookUrlRefused("the connection ended up at an unexpected address")
            return stream
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Never used: webhooks go over TCP only."""
        raise WebhookUrlRefused("unix sockets are not webhook targets")

    async def sleep(self, seconds: float) -> None:
        """Sleep on the running event loop."""
        await self._inner.sleep(seconds)


def _request_headers(
    headers: Mapping[str, str], *, host_header: str, body_type: str
) -> list[tuple[bytes, bytes]]:
    names = {name.lower() for name in headers}
    reserved = names & _RESERVED_HEADERS
    if reserved:
        raise ValueError(f"headers set by the transport may not be given: {sorted(reserved)}")
    result = [(b"Host", host_header.encode("ascii"))]
    if "user-agent" not in names:
        result.append((b"User-Agent", USER_AGENT.encode("ascii")))
    if "content-type" not in names:
        result.append((b"Content-Type", body_type.encode("ascii")))
    result.extend(
        (name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
    )
    return result


def _excerpt(data: bytes) -> str:
    # PostgreSQL text cannot hold NUL; undecodable bytes become U+FFFD.
    return data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _describe(exc: BaseException) -> tuple[DeliveryErrorKind, str]:
    chain = _chain(exc)
    tls = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
    if tls is not None:
        detail = getattr(tls, "verify_message", None) or tls.reason or type(tls).__name__
        return DeliveryErrorKind.TLS, f"TLS error: {detail}"
    if isinstance(exc, httpcore.ConnectError | OSError):
        # The root OSError's errno says more than anyio's "All connection attempts failed".
        errnos = [e.errno for e in chain if isinstance(e, OSError) and e.errno]
        detail = os.strerror(errnos[-1]) if errnos else str(exc)
        return DeliveryErrorKind.CONNECT, f"connection failed: {detail or type(exc).__name__}"
    return DeliveryErrorKind.PROTOCOL, f"{type(exc).__name__}: {exc or 'connection broken'}"


@dataclass(eq=False, slots=True)
class _OriginPool:
    """The kept-alive connections to one origin, and how many requests use them now."""

    pool: httpcore.AsyncConnectionPool
    in_use: int = 0


class WebhookClient:
    """A pooled delivery client bound to one address policy and one event loop.

    One connection pool per origin: httpcore checks every pooled connection for expiry on
    each request (a socket poll each), so one pool for all endpoints made every delivery pay
    for every other endpoint's idle connections."""

    def __init__(
        self,
        *,
        policy: AddressPolicy,
        ssl_context: ssl.SSLContext | None = None,
        resolver: Resolver = system_resolve,
        max_connections: int = MAX_CONNECTIONS,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        max_origins: int = MAX_ORIGINS,
    ) -> None:
        self.policy = policy
        self._ssl_context = ssl_context if ssl_context is not None else httpx.create_ssl_context()
        self._backend = _GuardedBackend(policy=policy, resolver=resolver)
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._max_origins = max_origins
        self._pools: OrderedDict[tuple[str, str, int], _OriginPool] = OrderedDict()

    async def _pool_for(self, origin: tuple[str, str, int]) -> _OriginPool:
        """The origin's pool (made on first use); closes least recently used idle pools
        beyond `max_origins`."""
        entry = self._pools.get(origin)
        if entry is not None:
            self._pools.move_to_end(origin)
            return entry
        entry = _OriginPool(
            httpcore.AsyncConnectionPool(
                ssl_context=self._ssl_context,
                max_connections=self._max_connections,
                keepalive_expiry=self._keepalive_expiry,
                http1=True,
                http2=False,
                retries=0,
                network_backend=self._backend,
            )
        )
        self._pools[origin] = entry
        idle = [key for key, pool in self._pools.items() if pool.in_use == 0 and key != origin]
        for key in idle[: max(len(self._pools) - self._max_origins, 0)]:
            await self._pools.pop(key).pool.aclose()
        return entry

    @property
    def origins(self) -> int:
        """How many origins have a connection pool."""
        return len(self._pools)

    async def __aenter__(self) -> WebhookClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every pooled connection."""
        pools = list(self._pools.values())
        self._pools.clear()
        for entry in pools:
            await entry.pool.aclose()

    async def deliver(
        self,
        *,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (a timeout is a result, not an exception)
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        excerpt_bytes: int = DEFAULT_EXCERPT_BYTES,
    ) -> DeliveryResult:
        """POST `body` to `url` once; never raises for network, HTTP or policy failures."""
        started = time.monotonic()

        def result(**fields: Any) -> DeliveryResult:
            elapsed = round((time.monotonic() - started) * 1000)
            return DeliveryResult(duration_ms=elapsed, **fields)

        try:
            target = check_url(url, policy=self.policy)
        except WebhookUrlRefused as exc:
            return result(status_code=None, error=exc.reason, error_kind=DeliveryErrorKind.REFUSED)
        request_headers = _request_headers(
            headers, host_header=target.netloc, body_type="application/json"
        )
        request_url = httpcore.URL(
            scheme=target.scheme, host=target.host, port=target.port, target=target.target
        )
        extensions = {
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        }

        status: int | None = None
        retry_after: int | None = None
        remote: str | None = None
        kept = bytearray()
        received = 0
        truncated = False
        origin = await self._pool_for((target.scheme, target.host, target.port))
        origin.in_use += 1
        try:
            async with asyncio.timeout(timeout):
                async with origin.pool.stream(
                    b"POST",
                    request_url,
                    headers=request_headers,
                    content=body,
                    extensions=extensions,
                ) as response:
                    status = response.status
                    retry_after = parse_retry_after(_header(response.headers, b"retry-after"))
                    remote = _peer(response.extensions)
                    chunks = cast(AsyncGenerator[bytes, None], response.aiter_stream())
                    async with aclosing(chunks):
                        async for chunk in chunks:
                            if len(kept) < excerpt_bytes:
                                kept += chunk[: excerpt_bytes - len(kept)]
                            received += len(chunk)
                            if received > max_response_bytes:
                                # Stop reading; closing an unfinished response drops the connection.
                                truncated = True
                                break
                    truncated = truncated or received > len(kept)
        except WebhookUrlRefused as exc:
            return result(status_code=None, error=exc.reason, error_kind=DeliveryErrorKind.REFUSED)
        except ResolutionFailed as exc:
            return result(status_code=None, error=str(exc), error_kind=DeliveryErrorKind.DNS)
        except (TimeoutError, httpcore.TimeoutException):
            phase = "reading the response body" if status is not None else "waiting for a response"
            return result(
                status_code=status,
                response_excerpt=_excerpt(bytes(kept)),
                body_truncated=status is not None,
                error=f"timed out after {timeout:g} s {phase}",
                error_kind=DeliveryErrorKind.TIMEOUT,
                retry_after=retry_after,
                remote_address=remote,
            )
        except (httpcore.NetworkError, httpcore.ProtocolError, ssl.SSLError, OSError) as exc:
            kind, message = _describe(exc)
            return result(
                status_code=status,
                response_excerpt=_excerpt(bytes(kept)),
                body_truncated=status is not None,
                error=message,
                error_kind=kind,
                retry_after=retry_after,
                remote_address=remote,
            )
        finally:
            origin.in_use -= 1
        return result(
            status_code=status,
            response_excerpt=_excerpt(bytes(kept)),
            body_truncated=truncated,
            retry_after=retry_after,
            remote_address=remote,
        )


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _peer(extensions: Mapping[str, Any]) -> str | None:
    stream = extensions.get("network_stream")
    if stream is None:
        return None
    peer = stream.get_extra_info("server_addr")
    return str(peer[0]) if peer else None


# One client per policy, lazily created on the running loop: pooled sockets belong to one loop.
_clients: dict[AddressPolicy, tuple[asyncio.AbstractEventLoop, WebhookClient]] = {}


def get_client(policy: AddressPolicy) -> WebhookClient:
    """The shared client for `policy` on the running event loop (created on first use)."""
    loop = asyncio.get_running_loop()
    entry = _clients.get(policy)
    if entry is None or entry[0] is not loop:
        # A client left from another (finished) loop cannot be closed from here; drop it.
        entry = (loop, WebhookClient(policy=policy))
        _clients[policy] = entry
    return entry[1]


async def aclose_clients() -> None:
    """Close the shared clients of the running loop (at worker shutdown)."""
    loop = asyncio.get_running_loop()
    for policy, (owner, client) in list(_clients.items()):
        if owner is loop:
            await client.aclose()
        del _clients[policy]


async def deliver(
    *,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    policy: AddressPolicy,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (a timeout is a result, not an exception)
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    excerpt_bytes: int = DEFAULT_EXCERPT_BYTES,
) -> DeliveryResult:
    """POST a signed webhook once through the shared client for `policy`."""
    return await get_client(policy).deliver(
        url=url,
        headers=headers,
        body=body,
        timeout=timeout,
        max_response_bytes=max_response_bytes,
        excerpt_bytes=excerpt_bytes,
    )
