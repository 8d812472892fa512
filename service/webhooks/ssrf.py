"""Which webhook URLs and addresses may be contacted (server-side request forgery guard).

Two stages:
- `check_url` is static and cheap, for endpoint creation (422 early) and again before each
  delivery: https only (http when `allow_http`), no credentials or fragment, a valid port, a
  syntactically valid host, and literal IP addresses checked against the address rules. Numeric
  hosts that resolvers read as IPv4 in odd forms (`127.1`, `0x7f.0.0.1`, `2130706433`, leading
  zeros) are refused outright, as are IPv6 zone ids.
- `resolve_checked` runs at delivery time: it resolves the host and refuses the whole target if
  ANY resolved address is refused (a name that also points inward is suspect, and a resolver may
  rotate records between our look-up and the connect). The HTTP layer then connects to exactly
  one of the checked addresses, so the rule applies to the address actually connected.

Refused, unless the allowlist names the address or network: unspecified, "this network",
private (RFC 1918, IPv6 unique local), shared/CGNAT 100.64/10, loopback, link-local, multicast,
broadcast, documentation, benchmarking, IETF protocol assignments (incl. Teredo), reserved and
every IPv6 address outside 2000::/3, cloud metadata addresses, and the IPv4-mapped, NAT64
(64:ff9b::/96) and 6to4 (2002::/16) forms of refused IPv4 addresses. Anything else that Python's
`ipaddress` does not consider global is refused too, as a safety net.

Ports: any port 1-65535 is accepted. The address rules already confine deliveries to public
hosts (or allowlisted ones); receivers commonly listen on 8080, 8443 and the like, and a port
list would break them while protecting nothing the address rules do not.

The allowlist holds IP addresses and networks only, never host names: an allowlisted name would
let whoever controls its DNS point deliveries anywhere.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv6Address,
    ip_address,
    ip_network,
)
from urllib.parse import quote, urlsplit

from service.domain.errors import InvalidInput
from service.domain.webhooks import MAX_URL_LENGTH
from service.infra.address_policy import (
    AddressPolicy,
    IPAddress,
    IPNetwork,
    embedded_ipv4,
    unscoped,
)

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

DEFAULT_PORTS = {"https": 443, "http": 80}


class WebhookUrlRefused(InvalidInput):
    """A webhook URL or the address it leads to may not be contacted; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, field="url")
        self.reason = reason


class ResolutionFailed(Exception):
    """The host name could not be resolved: a (possibly transient) delivery error, not a refusal."""


def _nets(*pairs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ip_network(net), reason) for net, reason in pairs)


_METADATA: frozenset[IPAddress] = frozenset(
    ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack instance metadata
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
        "fd00:ec2::254",  # AWS IMDS over IPv6
    )
)

# Order matters only where ranges nest: the more specific entry comes first.
_IPV4_RULES = _nets(
    ("0.0.0.0/32", "the unspecified address"),
    ("0.0.0.0/8", "a 'this network' address"),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "an IETF protocol assignment"),
    ("192.0.2.0/24", "a documentation address"),
    ("192.88.99.0/24", "a 6to4 relay anycast address"),
    ("192.168.0.0/16", "a private address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("255.255.255.255/32", "the broadcast address"),
    ("240.0.0.0/4", "a reserved address"),
)

_IPV6_RULES = _nets(
    ("::/128", "the unspecified address"),
    ("::1/128", "a loopback address"),
    ("::ffff:0:0:0/96", "an IPv4-translated address"),
    ("::/96", "a deprecated IPv4-compatible address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
    ("100::/64", "a discard-only address"),
    ("2001:db8::/32", "a documentation address"),
    ("2001::/23", "an IETF protocol assignment (e.g. Teredo)"),
    ("3fff::/20", "a documentation address"),
    ("fc00::/7", "a private (unique local) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
)
_IPV6_GLOBAL_UNICAST = ip_network("2000::/3")


def _ipv4_refusal(address: IPv4Address) -> str | None:
    for network, reason in _IPV4_RULES:
        if address in network:
            return reason
    return None if address.is_global else "not a globally routable address"


def _ipv6_refusal(address: IPv6Address) -> str | None:
    for network, reason in _IPV6_RULES:
        if address in network:
            return reason
    if address not in _IPV6_GLOBAL_UNICAST:
        return "a reserved address"
    return None if address.is_global else "not a globally routable address"


def address_refusal(address: IPAddress) -> str | None:
    """Why `address` may not be contacted (ignoring any allowlist), or None if it may."""
    address = unscoped(address)
    if address in _METADATA:
        return "a cloud metadata address"
    if isinstance(address, IPv4Address):
        return _ipv4_refusal(address)
    embedded = embedded_ipv4(address)
    if embedded is not None:
        form, ipv4 = embedded
        inner = "a cloud metadata address" if ipv4 in _METADATA else _ipv4_refusal(ipv4)
        return None if inner is None else f"the {form} form of {ipv4}, {inner}"
    return _ipv6_refusal(address)


def check_address(address: IPAddress, *, policy: AddressPolicy, host: str | None = None) -> None:
    """Raise WebhookUrlRefused unless `address` may be contacted under `policy`."""
    if policy.allows(address):
        return
    reason = address_refusal(address)
    if reason is not None:
        shown = str(unscoped(address))
        where = f"{host} resolves to {shown}" if host and host != shown else shown
        raise WebhookUrlRefused(f"{where}, {reason}, may not receive webhooks")


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """A statically checked webhook URL, split for the HTTP layer."""

    scheme: str
    host: str  # ASCII, lowercase, no trailing dot; IPv6 literals without brackets
    port: int
    target: str  # path and query, as sent on the request line
    address: IPAddress | None  # set when the host is a literal IP address

    @property
    def netloc(self) -> str:
        """`host[:port]` as in a URL and the Host header (port only when not the default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS[self.scheme] == self.port else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The canonical URL (lowercase scheme and host, IDNA host, percent-encoded path)."""
        return f"{self.scheme}://{self.netloc}{self.target}"


_FORBIDDEN_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_QUAD = re.compile(rf"{_OCTET}(\.{_OCTET}){{3}}")
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"


def _host_name(raw: str) -> str:
    """Validate a DNS host name (IDNA-encoding non-ASCII labels) and return it in ASCII."""
    name = raw[:-1] if raw.endswith(".") else raw
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise WebhookUrlRefused("the URL's host is not a valid domain name") from None
    name = name.lower()
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise WebhookUrlRefused("the URL's host is not a valid domain name")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # Resolvers read these as IPv4 (127.1, 0x7f.1, 2130706433, 0177.0.0.1): refuse all
        # but the canonical dotted quad, which the caller has already taken as an address.
        raise WebhookUrlRefused("the URL's host is a numeric address in an ambiguous form")
    return name


def _special_name_addresses(name: str) -> tuple[IPAddress, ...]:
    # RFC 6761: localhost and *.localhost always mean the loopback interface. `localhost`
    # passes statically if either loopback address is allowlisted (delivery checks what it
    # resolves to); names under it are refused by `check_url` in any case.
    if name == "localhost" or name.endswith(".localhost"):
        return (IPv4Address("127.0.0.1"), IPv6Address("::1"))
    return ()


def check_url(url: str, *, policy: AddressPolicy) -> WebhookTarget:
    """Check a webhook URL without any network access; raise WebhookUrlRefused if refused."""
    if len(url) > MAX_URL_LENGTH:
        raise WebhookUrlRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if _FORBIDDEN_CHARS.search(url):
        raise WebhookUrlRefused("the URL contains spaces, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise WebhookUrlRefused("the URL is malformed or its port is invalid") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and policy.allow_http):
        allowed = "http or https" if policy.allow_http else "https"
        raise WebhookUrlRefused(f"the URL must use {allowed}")
    if "@" in parts.netloc:
        raise WebhookUrlRefused("the URL must not contain credentials")
    if parts.fragment or url.endswith("#"):
        raise WebhookUrlRefused("the URL must not contain a fragment")
    if port == 0:
        raise WebhookUrlRefused("the URL's port must be 1-65535")
    raw_host = parts.hostname or ""
    if not raw_host:
        raise WebhookUrlRefused("the URL has no host")
    if "%" in raw_host:
        raise WebhookUrlRefused("the URL's host must not contain a zone id or escapes")

    address: IPAddress | None = None
    if parts.netloc.startswith("["):
        try:
            address = IPv6Address(raw_host)
        except ValueError:
            raise WebhookUrlRefused("the URL's host is not a valid IPv6 address") from None
        host = str(address)
    elif _DOTTED_QUAD.fullmatch(raw_host):
        address = IPv4Address(raw_host)
        host = str(address)
    else:
        host = _host_name(raw_host)

    if address is not None:
        check_address(address, policy=policy, host=host)
    elif (special := _special_name_addresses(host)) and not any(map(policy.allows, special)):
        check_address(special[0], policy=policy, host=host)
    if host.endswith(".localhost"):
        # Even with loopback allowlisted: the system resolver need not answer for these names
        # (glibc does not), so they would be accepted here and then fail at every delivery.
        raise WebhookUrlRefused(
            f"{host} is a loopback name under .localhost, which deliveries cannot resolve; "
            "such names may not receive webhooks (use localhost where loopback is allowlisted)"
        )

    path = quote(parts.path, safe=_PATH_SAFE) or "/"
    query = quote(parts.query, safe=_QUERY_SAFE)
    target = f"{path}?{query}" if query else path
    return WebhookTarget(
        scheme=scheme,
        host=host,
        port=DEFAULT_PORTS[scheme] if port is None else port,
        target=target,
        address=address,
    )


def _literal(host: str) -> IPAddress | None:
    try:
        return ip_address(host)
    except ValueError:
        return None


async def system_resolve(host: str, port: int) -> list[IPAddress]:
    """Resolve `host` with the system resolver (getaddrinfo in the loop's executor)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise ResolutionFailed(f"cannot resolve {host}: {exc}") from None
    addresses: dict[IPAddress, None] = {}
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            addresses[ip_address(sockaddr[0])] = None
    if not addresses:
        raise ResolutionFailed(f"cannot resolve {host}: no IPv4 or IPv6 address")
    return list(addresses)


async def resolve_checked(
    host: str, port: int, *, policy: AddressPolicy, resolver: Resolver = system_resolve
) -> list[IPAddress]:
    """Resolve `host` and return its addresses, refusing all if any one is refused."""
    literal = _literal(host)
    addresses = [literal] if literal is not None else await resolver(host, port)
    if not addresses:
        raise ResolutionFailed(f"cannot resolve {host}: no address")
    for address in addresses:
        check_address(address, policy=policy, host=host)
    return addresses
