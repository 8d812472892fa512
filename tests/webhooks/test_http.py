"""Delivery attempts against real HTTP(S) receivers on loopback."""

from __future__ import annotations

import asyncio
import ssl
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from ipaddress import ip_address

import pytest
from standardwebhooks.webhooks import Webhook

from service.infra.address_policy import AddressPolicy, IPAddress
from service.webhooks import http as webhook_http
from service.webhooks.http import (
    DeliveryErrorKind,
    WebhookClient,
    aclose_clients,
    deliver,
    get_client,
    parse_retry_after,
)
from service.webhooks.signing import build_headers, build_payload, generate_secret, new_message_id
from service.webhooks.ssrf import ResolutionFailed, Resolver
from tests.net import free_port
from tests.webhooks.conftest import LOOPBACK
from tests.webhooks.receivers import HUGE_BYTES, CertificateFiles, Receiver

BODY = b'{"type":"webhook.ping","timestamp":"2024-01-01T00:00:00.000000Z","data":{}}'


def _fake_dns(table: dict[str, list[str]]) -> Resolver:
    async def resolve(host: str, port: int) -> list[IPAddress]:
        if host not in table:
            raise ResolutionFailed(f"cannot resolve {host}: not in the test table")
        return [ip_address(a) for a in table[host]]

    return resolve


async def test_signed_delivery_succeeds_and_verifies(
    client: WebhookClient, receiver: Receiver
) -> None:
    secret = generate_secret()
    body = build_payload(event_type="webhook.ping", timestamp=datetime.now(UTC), data={"n": 1})
    headers = build_headers(secrets=[secret], msg_id=new_message_id(), body=body)

    result = await client.deliver(url=receiver.url("/ok?token=abc"), headers=headers, body=body)

    assert result.ok
    assert result.status_code == 200
    assert result.response_excerpt == "ok"
    assert not result.body_truncated
    assert result.error is None
    assert result.error_kind is None
    assert result.remote_address == "127.0.0.1"
    assert 0 <= result.duration_ms < 5000
    [seen] = receiver.hits("/ok")
    assert seen.method == "POST"
    assert seen.body == body
    assert seen.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["user-agent"].startswith("Conduit-Webhooks/")
    assert Webhook(secret).verify(seen.body, seen.headers)["data"] == {"n": 1}


@pytest.mark.parametrize("status", [500, 410, 404, 400, 201, 204])
async def test_status_codes_are_reported(
    client: WebhookClient, receiver: Receiver, status: int
) -> None:
    result = await client.deliver(url=receiver.url(f"/status/{status}"), headers={}, body=BODY)
    assert result.status_code == status
    assert result.ok == (200 <= status < 300)
    assert result.error is None
    assert result.response_excerpt == ("" if status == 204 else "status body")


async def test_retry_after_in_seconds_and_as_a_date(
    client: WebhookClient, receiver: Receiver
) -> None:
    result = await client.deliver(
        url=receiver.url("/status/429?retry_after=120"), headers={}, body=BODY
    )
    assert (result.status_code, result.retry_after) == (429, 120)

    when = format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    result = await client.deliver(
        url=receiver.url(f"/status/503?retry_after={when.replace(' ', '%20')}"),
        headers={},
        body=BODY,
    )
    assert result.status_code == 503
    assert result.retry_after is not None
    assert 85 <= result.retry_after <= 91

    result = await client.deliver(url=receiver.url("/status/500"), headers={}, body=BODY)
    assert result.retry_after is None


def test_parse_retry_after() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120", now=now) == 120
    assert parse_retry_after(" 0 ", now=now) == 0
    assert parse_retry_after("Wed, 01 May 2024 12:01:30 GMT", now=now) == 90
    assert parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", now=now) == 0
    assert parse_retry_after("Wed, 01 May 2024 12:00:01 -0000", now=now) == 1
    for bad in (None, "", "-5", "1.5", "soon", "١٢", "9" * 11):
        assert parse_retry_after(bad, now=now) is None


async def test_redirects_are_not_followed(client: WebhookClient, receiver: Receiver) -> None:
    result = await client.deliver(url=receiver.url("/redirect"), headers={}, body=BODY)
    assert result.status_code == 301
    assert not result.ok
    assert receiver.hits("/ok") == []


async def test_slow_receiver_times_out(client: WebhookClient, receiver: Receiver) -> None:
    started = time.monotonic()
    result = await client.deliver(url=receiver.url("/slow"), headers={}, body=BODY, timeout=0.5)
    elapsed = time.monotonic() - started
    assert result.status_code is None
    assert result.error_kind is DeliveryErrorKind.TIMEOUT
    assert result.error == "timed out after 0.5 s waiting for a response"
    assert 0.45 <= elapsed < 2.0
    assert 450 <= result.duration_ms < 2000
    # The pool is still healthy after the cancelled attempt.
    assert (await client.deliver(url=receiver.url("/ok"), headers={}, body=BODY)).ok


async def test_dripping_body_is_bounded_by_the_same_timeout(
    client: WebhookClient, receiver: Receiver
) -> None:
    started = time.monotonic()
    result = await client.deliver(url=receiver.url("/drip"), headers={}, body=BODY, timeout=1.0)
    assert time.monotonic() - started < 2.5
    assert result.status_code == 200
    assert result.error_kind is DeliveryErrorKind.TIMEOUT
    assert result.error is not None
    assert "reading the response body" in result.error
    assert result.body_truncated
    assert 1 <= len(result.response_excerpt) < 100


async def test_huge_response_is_read_only_up_to_the_cap(
    client: WebhookClient, receiver: Receiver
) -> None:
    started = time.monotonic()
    result = await client.deliver(
        url=receiver.url("/huge"), headers={}, body=BODY, max_response_bytes=256 * 1024
    )
    assert time.monotonic() - started < 5
    assert result.ok
    assert result.body_truncated
    assert result.response_excerpt == "y" * 1024
    # The server could only push what fits in the socket buffers before we hung up.
    assert receiver.state.huge_bytes_sent < HUGE_BYTES

    small = await client.deliver(url=receiver.url("/huge"), headers={}, body=BODY, excerpt_bytes=10)
    assert small.response_excerpt == "y" * 10


async def test_undecodable_response_bytes_are_replaced(
    client: WebhookClient, receiver: Receiver
) -> None:
    result = await client.deliver(url=receiver.url("/binary"), headers={}, body=BODY)
    assert result.response_excerpt == "a\ufffdb\ufffd\ufffdc"


async def test_connections_are_reused_for_the_same_host(
    client: WebhookClient, receiver: Receiver
) -> None:
    for _ in range(3):
        assert (await client.deliver(url=receiver.url("/ok"), headers={}, body=BODY)).ok
    ports = {hit.client_port for hit in receiver.hits("/ok")}
    assert len(ports) == 1


async def test_connection_refused_is_a_connect_error(client: WebhookClient) -> None:
    port = free_port()
    secret = generate_secret()
    headers = build_headers(secrets=[secret], msg_id="msg_1", body=BODY)
    result = await client.deliver(
        url=f"http://127.0.0.1:{port}/in?token=receiver-token", headers=headers, body=BODY
    )
    assert result.error == "connection failed: Connection refused"
    for private in (secret, headers["webhook-signature"], "receiver-token"):
        assert private not in repr(result)
    assert result.status_code is None
    assert result.error_kind is DeliveryErrorKind.CONNECT


async def test_hang_up_without_response_is_a_protocol_error(
    client: WebhookClient, receiver: Receiver
) -> None:
    result = await client.deliver(url=receiver.url("/hangup"), headers={}, body=BODY)
    assert result.status_code is None
    assert result.error_kind is DeliveryErrorKind.PROTOCOL
    assert result.error is not None
    assert "disconnected" in result.error


async def test_http_is_refused_unless_allowed(receiver: Receiver) -> None:
    strict = AddressPolicy.build(allowlist=["127.0.0.0/8"])
    async with WebhookClient(policy=strict) as client:
        result = await client.deliver(url=receiver.url("/ok"), headers={}, body=BODY)
    assert result.error_kind is DeliveryErrorKind.REFUSED
    assert result.error == "the URL must use https"
    assert receiver.state.requests == []


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "localhost", "127.1", "[::1]"],
)
async def test_loopback_is_refused_when_not_allowlisted(receiver: Receiver, host: str) -> None:
    async with WebhookClient(policy=AddressPolicy.build(allow_http=True)) as client:
        result = await client.deliver(url=receiver.url("/ok", host=host), headers={}, body=BODY)
    assert result.status_code is None
    assert result.error_kind is DeliveryErrorKind.REFUSED
    assert result.error is not None
    assert receiver.state.requests == []


async def test_names_are_checked_after_resolution(receiver: Receiver) -> None:
    dns = _fake_dns(
        {
            "rebind.test": ["127.0.0.1"],
            "private.test": ["192.168.7.7"],
            "mixed.test": ["127.0.0.1", "10.0.0.1"],
            "metadata.test": ["169.254.169.254"],
            "mapped.test": ["::ffff:127.0.0.1"],
        }
    )
    policy = AddressPolicy.build(allow_http=True)
    async with WebhookClient(policy=policy, resolver=dns) as client:
        for name, reason in [
            ("rebind.test", "resolves to 127.0.0.1, a loopback address"),
            ("private.test", "resolves to 192.168.7.7, a private address"),
            ("metadata.test", "resolves to 169.254.169.254, a cloud metadata address"),
            ("mapped.test", "the IPv4-mapped form of 127.0.0.1"),
        ]:
            result = await client.deliver(url=receiver.url("/ok", host=name), headers={}, body=BODY)
            assert result.error_kind is DeliveryErrorKind.REFUSED, name
            assert result.error is not None
            assert reason in result.error
        missing = await client.deliver(url="http://missing.test/", headers={}, body=BODY)
        assert missing.error_kind is DeliveryErrorKind.DNS
    # Allowlisting loopback does not make the private address of a mixed answer acceptable.
    loopback = AddressPolicy.build(allow_http=True, allowlist=["127.0.0.0/8"])
    async with WebhookClient(policy=loopback, resolver=dns) as client:
        mixed = await client.deliver(
            url=receiver.url("/ok", host="mixed.test"), headers={}, body=BODY
        )
        assert mixed.error_kind is DeliveryErrorKind.REFUSED
        assert mixed.error is not None
        assert "10.0.0.1, a private address" in mixed.error
    assert receiver.state.requests == []


async def test_connects_to_the_checked_address_keeping_the_host_name(receiver: Receiver) -> None:
    dns = _fake_dns({"hooks.example.test": ["127.0.0.2", "127.0.0.1"]})
    async with WebhookClient(policy=LOOPBACK, resolver=dns) as client:
        result = await client.deliver(
            url=receiver.url("/ok", host="hooks.example.test"), headers={}, body=BODY
        )
    assert result.ok, result.error
    # 127.0.0.2 refuses (the receiver listens on 127.0.0.1 only): the next checked address is used.
    assert result.remote_address == "127.0.0.1"
    [seen] = receiver.hits("/ok")
    assert seen.headers["host"] == f"hooks.example.test:{receiver.port}"


async def test_ipv6_receiver(client: WebhookClient, receiver6: Receiver) -> None:
    result = await client.deliver(url=receiver6.url("/ok"), headers={}, body=BODY)
    assert result.ok, result.error
    assert result.remote_address == "::1"
    assert receiver6.hits("/ok")[0].headers["host"] == f"[::1]:{receiver6.port}"


async def test_https_verifies_the_host_name_and_sends_sni(
    tls_receiver: Receiver, certificates: CertificateFiles
) -> None:
    trust = ssl.create_default_context(cafile=str(certificates.ca))
    async with WebhookClient(policy=LOOPBACK, ssl_context=trust) as client:
        result = await client.deliver(
            url=tls_receiver.url("/ok", host="localhost"), headers={}, body=BODY
        )
        assert result.ok, result.error
        assert result.remote_address == "127.0.0.1"
        assert tls_receiver.state.sni[-1] == "localhost"
        assert tls_receiver.hits("/ok")[0].headers["host"] == f"localhost:{tls_receiver.port}"

        # Same server by IP: the certificate names only `localhost`, so verification fails.
        by_ip = await client.deliver(url=tls_receiver.url("/ok"), headers={}, body=BODY)
        assert by_ip.status_code is None
        assert by_ip.error_kind is DeliveryErrorKind.TLS
        assert by_ip.error is not None
        assert "TLS error" in by_ip.error

        redirect = await client.deliver(
            url=tls_receiver.url("/redirect", host="localhost"), headers={}, body=BODY
        )
        assert redirect.status_code == 301
    # The default trust store does not know the test CA.
    async with WebhookClient(policy=LOOPBACK) as client:
        untrusted = await client.deliver(
            url=tls_receiver.url("/ok", host="localhost"), headers={}, body=BODY
        )
    assert untrusted.error_kind is DeliveryErrorKind.TLS
    assert len(tls_receiver.hits("/ok")) == 1


async def test_transport_headers_cannot_be_overridden(client: WebhookClient) -> None:
    for name in ("Host", "content-length", "Transfer-Encoding", "Connection"):
        with pytest.raises(ValueError, match="set by the transport"):
            await client.deliver(url="http://127.0.0.1:9/", headers={name: "x"}, body=BODY)


async def test_caller_may_set_content_type_and_user_agent(
    client: WebhookClient, receiver: Receiver
) -> None:
    headers = {"Content-Type": "application/cloudevents+json", "User-Agent": "custom/1"}
    assert (await client.deliver(url=receiver.url("/ok"), headers=headers, body=BODY)).ok
    seen = receiver.hits("/ok")[0].headers
    assert (seen["content-type"], seen["user-agent"]) == (
        "application/cloudevents+json",
        "custom/1",
    )


async def test_module_level_deliver_shares_one_client_per_policy(receiver: Receiver) -> None:
    try:
        first = await deliver(url=receiver.url("/ok"), headers={}, body=BODY, policy=LOOPBACK)
        second = await deliver(url=receiver.url("/ok"), headers={}, body=BODY, policy=LOOPBACK)
        assert first.ok
        assert second.ok
        assert get_client(LOOPBACK) is get_client(LOOPBACK)
        assert get_client(AddressPolicy.build(allow_http=True)) is not get_client(LOOPBACK)
        assert len({hit.client_port for hit in receiver.hits("/ok")}) == 1
    finally:
        await aclose_clients()
    assert webhook_http._clients == {}


async def test_concurrent_deliveries_reuse_fewer_connections_than_requests(
    client: WebhookClient, receiver: Receiver
) -> None:
    for _ in range(5):
        results = await asyncio.gather(
            *(client.deliver(url=receiver.url("/ok"), headers={}, body=BODY) for _ in range(4))
        )
        assert all(result.ok for result in results)
    ports = {hit.client_port for hit in receiver.hits("/ok")}
    assert len(receiver.hits("/ok")) == 20
    assert len(ports) <= 4  # kept alive across rounds: at most one connection per parallel one


async def test_each_origin_has_its_own_pool_and_idle_ones_are_closed_beyond_the_bound(
    receiver: Receiver,
) -> None:
    async with WebhookClient(policy=LOOPBACK, max_origins=1) as client:
        assert (await client.deliver(url=receiver.url("/ok"), headers={}, body=BODY)).ok
        assert (
            await client.deliver(url=receiver.url("/ok", host="localhost"), headers={}, body=BODY)
        ).ok
        # The first origin's pool was idle: closed when the second one came.
        assert client.origins == 1
        assert (await client.deliver(url=receiver.url("/ok"), headers={}, body=BODY)).ok
    assert len({hit.client_port for hit in receiver.hits("/ok")}) == 3


class RawReceiver:
    """A loopback server answering each request with the next of `answers` (raw bytes), then
    doing what the answer's `after` says: keep the connection, close it, or send stray bytes."""

    def __init__(self, answers: list[tuple[bytes, str]]) -> None:
        self.answers = answers
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                answer, after = self.answers.pop(0)
                writer.write(answer)
                await writer.drain()
                if after == "close":
                    break
                if after == "stray":
                    await asyncio.sleep(0.05)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook"

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_a_connection_closed_or_talking_while_idle_is_not_reused(
    client: WebhookClient,
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    receiver = RawReceiver([(OK, "close"), (OK, "stray"), (chunked, "keep"), (OK, "keep")])
    async with receiver as url:
        first = await client.deliver(url=url, headers={}, body=BODY)
        await asyncio.sleep(0.1)  # the receiver hangs up meanwhile
        second = await client.deliver(url=url, headers={}, body=BODY)
        await asyncio.sleep(0.1)  # the receiver sends an answer nobody asked for
        third = await client.deliver(url=url, headers={}, body=BODY)
        fourth = await client.deliver(url=url, headers={}, body=BODY)
    assert [r.status_code for r in (first, second, third, fourth)] == [200] * 4
    assert (third.response_excerpt, third.body_truncated) == ("abcde", False)
    # A new connection after the hang-up and after the stray answer; then kept alive.
    assert receiver.connections == 3
    # One write per request: the head and the body arrive together, framed by Content-Length.
    assert all(request.endswith(BODY) for request in receiver.requests)
    assert all(b"content-length: %d" % len(BODY) in r.lower() for r in receiver.requests)


async def test_an_interim_answer_is_skipped(client: WebhookClient) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + OK
    async with RawReceiver([(interim, "keep")]) as url:
        result = await client.deliver(url=url, headers={}, body=BODY)
    assert (result.status_code, result.response_excerpt) == (200, "ok")
