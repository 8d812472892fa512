"""The SSRF address policy: static URL checks, address classes, allowlist, resolution."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from service.domain.errors import InvalidInput
from service.infra.address_policy import AddressPolicy, IPAddress
from service.webhooks.ssrf import (
    ResolutionFailed,
    WebhookUrlRefused,
    address_refusal,
    check_address,
    check_url,
    resolve_checked,
    system_resolve,
)

STRICT = AddressPolicy()
DEV = AddressPolicy.build(allow_http=True)
LOOPBACK = AddressPolicy.build(allow_http=True, allowlist=["127.0.0.0/8", "::1"])


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("0.0.0.0", "unspecified"),  # noqa: S104
        ("0.1.2.3", "this network"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "shared"),
        ("100.127.255.254", "shared"),
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("169.254.1.1", "link-local"),
        ("169.254.169.254", "metadata"),
        ("169.254.170.2", "metadata"),
        ("100.100.100.200", "metadata"),
        ("192.0.0.192", "metadata"),
        ("192.0.0.8", "IETF"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.1", "documentation"),
        ("203.0.113.1", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("192.88.99.1", "6to4 relay"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fd00:ec2::254", "metadata"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("ff0e::1", "multicast"),
        ("2001:db8::1", "documentation"),
        ("3fff::1", "documentation"),
        ("2001::1", "Teredo"),
        ("100::1", "discard"),
        ("64:ff9b:1::1", "local-use NAT64"),
        ("::127.0.0.1", "IPv4-compatible"),
        ("::ffff:0:a00:1", "IPv4-translated"),
        ("4000::1", "reserved"),
        ("::ffff:127.0.0.1", "IPv4-mapped form of 127.0.0.1, a loopback"),
        ("::ffff:10.0.0.1", "IPv4-mapped form of 10.0.0.1, a private"),
        ("::ffff:169.254.169.254", "IPv4-mapped form of 169.254.169.254, a cloud metadata"),
        ("::ffff:0.0.0.0", "IPv4-mapped form of 0.0.0.0, the unspecified"),
        ("64:ff9b::7f00:1", "NAT64 form of 127.0.0.1, a loopback"),
        ("64:ff9b::a9fe:a9fe", "NAT64 form of 169.254.169.254, a cloud metadata"),
        ("64:ff9b::c0a8:101", "NAT64 form of 192.168.1.1, a private"),
        ("2002:7f00:1::1", "6to4 form of 127.0.0.1, a loopback"),
        ("2002:a00:1::1", "6to4 form of 10.0.0.1, a private"),
        ("2002:a9fe:a9fe::", "6to4 form of 169.254.169.254, a cloud metadata"),
    ],
)
def test_refused_address_classes(address: str, reason: str) -> None:
    refusal = address_refusal(ip_address(address))
    assert refusal is not None
    assert reason in refusal
    with pytest.raises(WebhookUrlRefused, match="may not receive webhooks"):
        check_address(ip_address(address), policy=STRICT)


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.215.14",
        "100.63.255.255",  # just below the shared range
        "100.128.0.0",  # just above it
        "172.32.0.1",
        "2606:4700:4700::1111",
        "2a00:1450:4001:80b::200e",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ip_address(address)) is None
    check_address(ip_address(address), policy=STRICT)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://127.0.0.1:8443/hook",
        "https://10.1.2.3/",
        "https://172.20.0.5/",
        "https://192.168.0.10/",
        "https://100.64.1.1/",
        "https://169.254.169.254/latest/meta-data/",
        "https://0.0.0.0/",
        "https://224.0.0.1/",
        "https://255.255.255.255/",
        "https://[::1]/",
        "https://[::]/",
        "https://[fe80::1]/",
        "https://[fd00:ec2::254]/latest/meta-data/",
        "https://[ff02::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://[::ffff:7f00:1]/",
        "https://[::FFFF:A9FE:A9FE]/",
        "https://[64:ff9b::a9fe:a9fe]/",
        "https://[2002:7f00:1::1]/",
        "https://localhost/",
        "https://LOCALHOST./",
        "https://hooks.localhost/",
    ],
)
def test_literal_and_special_hosts_are_refused_statically(url: str) -> None:
    with pytest.raises(WebhookUrlRefused, match="may not receive webhooks"):
        check_url(url, policy=STRICT)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.1/",
        "https://2130706433/",
        "https://0x7f000001/",
        "https://0x7f.0.0.1/",
        "https://0177.0.0.1/",
        "https://127.000.000.001/",
        "https://010.0.0.1/",
        "https://1.2.3.4.5/",
        "https://example.0x10/",
    ],
)
def test_ambiguous_numeric_hosts_are_refused(url: str) -> None:
    with pytest.raises(WebhookUrlRefused, match="ambiguous"):
        check_url(url, policy=STRICT)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com/hook", "must use https"),
        ("ftp://example.com/hook", "must use https"),
        ("javascript:alert(1)", "must use https"),
        ("example.com/hook", "must use https"),
        ("https://user:pass@example.com/", "credentials"),
        ("https://user@example.com/", "credentials"),
        ("https://:@example.com/", "credentials"),
        ("https://example.com/hook#frag", "fragment"),
        ("https://example.com/hook#", "fragment"),
        ("https://example.com:0/", "port"),
        ("https://example.com:65536/", "port"),
        ("https://example.com:http/", "port"),
        ("https://example.com/a b", "spaces"),
        ("https://example.com/\n", "control"),
        ("https://example.com\\@127.0.0.1/", "backslashes"),
        ("https:///path", "no host"),
        ("https://:443/", "no host"),
        ("https://[fe80::1%25eth0]/", "zone id"),
        ("https://exa_mple-.com/", "not a valid domain name"),
        ("https://a..b/", "not a valid domain name"),
        ("https://" + "a" * 64 + ".com/", "not a valid domain name"),
        ("https://example.com/" + "p" * 2100, "longer than 2048"),
        ("https://[not:an:ip]/", "malformed"),
    ],
)
def test_malformed_or_disallowed_urls(url: str, message: str) -> None:
    with pytest.raises(WebhookUrlRefused, match=message):
        check_url(url, policy=STRICT)


def test_http_only_when_allowed() -> None:
    with pytest.raises(WebhookUrlRefused, match="must use https"):
        check_url("http://example.com/", policy=STRICT)
    target = check_url("http://example.com/", policy=DEV)
    assert (target.scheme, target.port, target.url) == ("http", 80, "http://example.com/")
    with pytest.raises(WebhookUrlRefused, match="must use http or https"):
        check_url("ws://example.com/", policy=DEV)


def test_accepted_urls_are_canonicalised() -> None:
    target = check_url("HTTPS://Hooks.Example.COM.:8443/in/bøx?a=1&b=ü", policy=STRICT)
    assert target.scheme == "https"
    assert target.host == "hooks.example.com"
    assert target.port == 8443
    assert target.target == "/in/b%C3%B8x?a=1&b=%C3%BC"
    assert target.address is None
    assert target.netloc == "hooks.example.com:8443"
    assert target.url == "https://hooks.example.com:8443/in/b%C3%B8x?a=1&b=%C3%BC"

    assert check_url("https://example.com", policy=STRICT).url == "https://example.com/"
    assert (
        check_url("https://example.com:443/x%20y", policy=STRICT).url == "https://example.com/x%20y"
    )
    assert check_url("https://bücher.example/", policy=STRICT).host == "xn--bcher-kva.example"
    assert check_url("https://my_hooks.example.com/", policy=STRICT).host == "my_hooks.example.com"


def test_public_literal_addresses_are_accepted() -> None:
    v4 = check_url("https://93.184.215.14:8443/x", policy=STRICT)
    assert v4.address == ip_address("93.184.215.14")
    v6 = check_url("https://[2606:4700:4700:0::1111]/x", policy=STRICT)
    assert v6.host == "2606:4700:4700::1111"
    assert v6.netloc == "[2606:4700:4700::1111]"
    assert v6.address == ip_address("2606:4700:4700::1111")


def test_allowlist_exempts_named_addresses_only() -> None:
    policy = AddressPolicy.build(allowlist=["10.0.0.0/8", "fd00::/8", "127.0.0.1"])
    assert check_url("https://10.20.30.40/x", policy=policy).address == ip_address("10.20.30.40")
    check_url("https://[fd00::5]/x", policy=policy)
    check_url("https://127.0.0.1/x", policy=policy)
    check_url("https://[::ffff:10.1.1.1]/x", policy=policy)  # embedded IPv4 is allowlisted
    check_url("https://[64:ff9b::a01:101]/x", policy=policy)
    check_url("https://localhost/x", policy=policy)  # 127.0.0.1 is allowlisted
    check_url("https://localhost/x", policy=AddressPolicy.build(allowlist=["::1"]))
    with pytest.raises(WebhookUrlRefused, match="loopback"):
        check_url("https://localhost/x", policy=AddressPolicy.build(allowlist=["10.0.0.0/8"]))
    for url in (
        "https://192.168.1.1/",
        "https://127.0.0.2/",
        "https://[::1]/",
        "https://169.254.169.254/",
    ):
        with pytest.raises(WebhookUrlRefused):
            check_url(url, policy=policy)


@pytest.mark.parametrize(
    "url", ["https://foo.localhost/hook", "https://A.B.LOCALHOST./", "http://x.localhost:8080/"]
)
def test_names_under_localhost_are_refused_even_with_loopback_allowlisted(url: str) -> None:
    # The system resolver need not answer for them: accepted, they would fail every delivery.
    loopback = AddressPolicy.build(allow_http=True, allowlist=["127.0.0.0/8", "::1"])
    check_url("https://localhost/hook", policy=loopback)
    with pytest.raises(WebhookUrlRefused, match=r"under \.localhost, which deliveries cannot"):
        check_url(url, policy=loopback)


def test_refusal_is_a_domain_error_on_the_url_field() -> None:
    with pytest.raises(InvalidInput) as caught:
        check_url("https://10.0.0.1/", policy=STRICT)
    assert isinstance(caught.value, WebhookUrlRefused)
    assert caught.value.field == "url"
    assert caught.value.reason == "10.0.0.1, a private address, may not receive webhooks"
    assert caught.value.message == caught.value.reason


async def test_resolution_refuses_a_name_that_points_at_loopback() -> None:
    with pytest.raises(WebhookUrlRefused, match=r"localhost resolves to 127\.0\.0\.1, a loopback"):
        await resolve_checked("localhost", 443, policy=STRICT)
    addresses = await resolve_checked("localhost", 443, policy=LOOPBACK)
    assert ip_address("127.0.0.1") in addresses


async def test_literal_hosts_are_not_resolved() -> None:
    async def no_dns(host: str, port: int) -> list[IPAddress]:
        raise AssertionError("resolver called for a literal")

    assert await resolve_checked("127.0.0.1", 80, policy=LOOPBACK, resolver=no_dns) == [
        ip_address("127.0.0.1")
    ]
    with pytest.raises(WebhookUrlRefused, match="IPv4-mapped"):
        await resolve_checked("::ffff:127.0.0.1", 80, policy=STRICT, resolver=no_dns)


async def test_one_refused_address_refuses_the_whole_name() -> None:
    async def mixed(host: str, port: int) -> list[IPAddress]:
        return [ip_address("127.0.0.1"), ip_address("10.0.0.7")]

    with pytest.raises(WebhookUrlRefused, match=r"hooks\.test resolves to 10\.0\.0\.7, a private"):
        await resolve_checked("hooks.test", 443, policy=LOOPBACK, resolver=mixed)


async def test_resolution_failures_are_not_refusals() -> None:
    async def nothing(host: str, port: int) -> list[IPAddress]:
        return []

    with pytest.raises(ResolutionFailed):
        await resolve_checked("hooks.test", 443, policy=STRICT, resolver=nothing)
    with pytest.raises(ResolutionFailed, match="cannot resolve"):
        await system_resolve("bad..name", 443)  # refused by the IDNA codec, no DNS query sent
