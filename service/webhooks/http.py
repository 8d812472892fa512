"""One webhook delivery attempt over HTTP, with the SSRF guard on the address actually connected.

Design: a small HTTP/1.1 client of our own, h11 for the protocol and an asyncio `Protocol` per
connection, pooled per origin (scheme, host name, port). A new connection resolves the host name
itself, refuses the target if any resolved address is refused (`ssrf.resolve_checked`), connects
to one checked IP literal (TLS with SNI and certificate verification for the host name), and
compares the socket's peer address with it before use. The Host header carries the host name,
exactly as for an ordinary request.

Why not httpx/httpcore, which this module used before: per request they cost more CPU than the
rest of a delivery (anyio's cancel scopes and events, header re-validation, a socket poll per
pooled connection to check it is still open, headers and body written separately). Here a
request is built once by h11 and written with one call; a pooled connection is known to be
closed (or to have sent bytes nobody asked for) from the callbacks asyncio already makes, and
is then dropped, not reused. Why not "request the IP URL with a Host header": the pool would be
keyed by the IP, so a kept-alive TLS connection verified for host A could carry a request for
host B on the same IP (a shared CDN address). Keyed by host name, a reused connection goes to the
same name, on an address that was checked when it was opened, under the same policy (one client
per policy). No proxy is ever used, so proxy variables in the environment cannot route around
the guard.

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from ipaddress import ip_address
from typing import Any, cast

import h11
import httpx

from service.infra.address_policy import AddressPolicy, IPAddress
from service.webhooks.ssrf import (
    ResolutionFailed,
    Resolver,
    WebhookTarget,
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


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to a checked address, kept alive between requests: the
    received bytes go straight to its h11 state machine (no stream layer between)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.h11 = h11.Connection(h11.CLIENT)
        self.remote: str | None = None
        self.idle_since = 0.0
        self.unusable = False  # closed, or sent bytes nobody asked for
        self._eof = False
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (asyncio's TCP transports already set TCP_NODELAY)."""
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Hand the bytes to h11; bytes arriving while idle make the connection unusable."""
        if self._waiter is None:
            self.unusable = True
        self.h11.receive_data(data)
        self._wake()

    def eof_received(self) -> bool:
        """The peer closed its side: h11 is told, and the connection is not reused."""
        self._close_input()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Gone: nothing more will arrive."""
        self._close_input()

    def _close_input(self) -> None:
        self.unusable = True
        if not self._eof:
            self._eof = True
            self.h11.receive_data(b"")
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def send(self, data: bytes) -> None:
        """Write a whole request at once (one system call for headers and body)."""
        assert self.transport is not None
        self.transport.write(data)

    async def next_event(self) -> Any:
        """The next thing h11 makes of the answer, waiting for bytes as needed."""
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError:
                if not self._eof:
                    raise
                event = h11.ConnectionClosed()
            if isinstance(event, h11.ConnectionClosed) or (event is h11.NEED_DATA and self._eof):
                raise h11.RemoteProtocolError(
                    "Server disconnected before the response was complete."
                )
            if event is not h11.NEED_DATA:
                return event
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def reusable(self, now: float, expiry: float) -> bool:
        """Whether it can carry another request (open, silent, not idle too long)."""
        transport = self.transport
        if self.unusable or transport is None or transport.is_closing():
            return False
        return now - self.idle_since < expiry

    def close(self) -> None:
        """Drop the connection at once (an unfinished exchange cannot be resumed)."""
        self.unusable = True
        if self.transport is not None:
            self.transport.abort()


async def _open(
    target: WebhookTarget,
    *,
    policy: AddressPolicy,
    resolver: Resolver,
    ssl_context: ssl.SSLContext,
) -> _Connection:
    """Resolve and check the host, connect to the first reachable checked address (TLS with
    SNI and verification for the host name), and make sure the socket's peer is that one."""
    addresses = await resolve_checked(target.host, target.port, policy=policy, resolver=resolver)
    loop = asyncio.get_running_loop()
    tls = target.scheme == "https"
    failure: Exception | None = None
    for address in addresses:
        try:
            transport, connection = await loop.create_connection(
                _Connection,
                host=str(address),
                port=target.port,
                ssl=ssl_context if tls else None,
                server_hostname=target.host if tls else None,
            )
        except ssl.SSLError:
            raise  # the host is there but fails verification: no other address will do
        except OSError as exc:
            failure = exc
            continue
        peer = transport.get_extra_info("peername")
        if not peer or _strip_scope(str(peer[0])) != _strip_scope(str(address)):
            transport.abort()
            raise WebhookUrlRefused("the connection ended up at an unexpected address")
        connection.remote = str(peer[0])
        return connection
    assert failure is not None
    raise failure


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
    if isinstance(exc, OSError):
        # The root OSError's errno says more than anyio's "All connection attempts failed".
        errnos = [e.errno for e in chain if isinstance(e, OSError) and e.errno]
        detail = os.strerror(errnos[-1]) if errnos else str(exc)
        return DeliveryErrorKind.CONNECT, f"connection failed: {detail or type(exc).__name__}"
    return DeliveryErrorKind.PROTOCOL, f"{type(exc).__name__}: {exc or 'connection broken'}"


class _OriginPool:
    """The kept-alive connections to one origin, and how many requests use it now."""

    def __init__(self, max_connections: int) -> None:
        self.idle: list[_Connection] = []
        self.in_use = 0
        self.slots = asyncio.Semaphore(max_connections)

    def take(self, now: float, expiry: float) -> _Connection | None:
        """The most recently used idle connection still fit for a request (others closed)."""
        while self.idle:
            connection = self.idle.pop()
            if connection.reusable(now, expiry):
                return connection
            connection.close()
        return None

    def close(self) -> None:
        """Close the idle connections."""
        for connection in self.idle:
            connection.close()
        self.idle.clear()


class WebhookClient:
    """A pooled delivery client bound to one address policy and one event loop: one pool of
    kept-alive connections per origin (see the module docstring)."""

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
        self._resolver = resolver
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._max_origins = max_origins
        self._pools: OrderedDict[tuple[str, str, int], _OriginPool] = OrderedDict()

    def _pool_for(self, origin: tuple[str, str, int]) -> _OriginPool:
        """The origin's pool (made on first use); closes least recently used idle pools
        beyond `max_origins`."""
        entry = self._pools.get(origin)
        if entry is not None:
            self._pools.move_to_end(origin)
            return entry
        entry = self._pools[origin] = _OriginPool(self._max_connections)
        idle = [key for key, pool in self._pools.items() if pool.in_use == 0 and key != origin]
        for key in idle[: max(len(self._pools) - self._max_origins, 0)]:
            self._pools.pop(key).close()
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
            entry.close()

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
        request_headers.append((b"Content-Length", str(len(body)).encode("ascii")))
        request = h11.Request(
            method=b"POST", target=target.target.encode("ascii"), headers=request_headers
        )

        status: int | None = None
        retry_after: int | None = None
        remote: str | None = None
        kept = bytearray()
        received = 0
        truncated = False
        origin = self._pool_for((target.scheme, target.host, target.port))
        origin.in_use += 1
        connection: _Connection | None = None
        reuse = False
        try:
            async with asyncio.timeout(timeout), origin.slots:
                connection = origin.take(time.monotonic(), self._keepalive_expiry)
                if connection is None:
                    connection = await _open(
                        target,
                        policy=self.policy,
                        resolver=self._resolver,
                        ssl_context=self._ssl_context,
                    )
                remote = connection.remote
                protocol = connection.h11
                connection.send(
                    b"".join(
                        (
                            protocol.send(request) or b"",
                            protocol.send(h11.Data(data=body)) or b"",
                            protocol.send(h11.EndOfMessage()) or b"",
                        )
                    )
                )
                event = await connection.next_event()
                while isinstance(event, h11.InformationalResponse):
                    event = await connection.next_event()
                if not isinstance(event, h11.Response):
                    raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")
                status = event.status_code
                retry_after = parse_retry_after(_header(event.headers, b"retry-after"))
                while True:
                    event = await connection.next_event()
                    if isinstance(event, h11.EndOfMessage):
                        break
                    if not isinstance(event, h11.Data):
                        raise h11.RemoteProtocolError("the response ended early")
                    chunk = event.data
                    if len(kept) < excerpt_bytes:
                        kept += chunk[: excerpt_bytes - len(kept)]
                    received += len(chunk)
                    if received > max_response_bytes:
                        # Stop reading; an unfinished response cannot leave the connection
                        # reusable, so it is dropped.
                        truncated = True
                        break
                truncated = truncated or received > len(kept)
                if protocol.our_state is h11.DONE and protocol.their_state is h11.DONE:
                    # Both sides DONE: the whole response was read (a truncated one broke
                    # out above), so the connection can carry the next request.
                    protocol.start_next_cycle()
                    reuse = True
        except WebhookUrlRefused as exc:
            return result(status_code=None, error=exc.reason, error_kind=DeliveryErrorKind.REFUSED)
        except ResolutionFailed as exc:
            return result(status_code=None, error=str(exc), error_kind=DeliveryErrorKind.DNS)
        except TimeoutError:
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
        except (h11.ProtocolError, ssl.SSLError, OSError) as exc:
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
            if connection is not None:
                if reuse:
                    connection.idle_since = time.monotonic()
                    origin.idle.append(connection)
                else:
                    connection.close()
        return result(
            status_code=status,
            response_excerpt=_excerpt(bytes(kept)),
            body_truncated=truncated,
            retry_after=retry_after,
            remote_address=remote,
        )


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


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
