"""Which addresses the webhook SSRF guard exempts, and whether plain http is allowed.

The policy is built from settings (WEBHOOK_ALLOW_HTTP, WEBHOOK_ALLOWLIST), so it lives in infra:
settings validate the allowlist with it at start and hand it out, and `service.webhooks.ssrf`
applies it (the address rules and the refusals the API reports stay there). The allowlist holds
IP addresses and networks only, never host names: an allowlisted name would let whoever
controls its DNS point deliveries anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_NAT64 = ip_network("64:ff9b::/96")


def unscoped(address: IPAddress) -> IPAddress:
    """`address` without its IPv6 zone id (fe80::1%eth0), which makes equality and membership
    tests surprising: the rules and the allowlist ignore it."""
    if isinstance(address, IPv6Address) and address.scope_id is not None:
        return IPv6Address(int(address))
    return address


def embedded_ipv4(address: IPv6Address) -> tuple[str, IPv4Address] | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4), with the form's name."""
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    if address in _NAT64:
        return "NAT64", IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    return None


def parse_network(value: str | IPAddress | IPNetwork) -> IPNetwork:
    """Parse one allowlist entry: an IP address or a network in CIDR form (host bits clear)."""
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    if isinstance(value, IPv4Address | IPv6Address):
        return ip_network(unscoped(value))
    try:
        return ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(
            f"allowlist entry {value!r} is not an IP address or network: {exc}"
        ) from None


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Settings of the guard: whether plain http is allowed and which addresses are exempt."""

    allow_http: bool = False
    allowlist: tuple[IPNetwork, ...] = ()

    @classmethod
    def build(
        cls, *, allow_http: bool = False, allowlist: Iterable[str | IPAddress | IPNetwork] = ()
    ) -> AddressPolicy:
        """Build a policy from settings values; raise ValueError on a malformed allowlist entry."""
        return cls(allow_http=allow_http, allowlist=tuple(parse_network(v) for v in allowlist))

    def allows(self, address: IPAddress) -> bool:
        """Whether the allowlist names `address` (or the IPv4 address it embeds)."""
        address = unscoped(address)
        candidates: list[IPAddress] = [address]
        if isinstance(address, IPv6Address) and (embedded := embedded_ipv4(address)):
            candidates.append(embedded[1])
        return any(
            candidate.version == network.version and candidate in network
            for candidate in candidates
            for network in self.allowlist
        )
