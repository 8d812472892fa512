"""Which proxies are believed, which origins may call, and the security headers of a response.

Shared by the two places that set those headers: the Flask hooks (`service.api.hardening`) for
the responses Flask makes, and the ASGI layers (`service.http.security`,
`service.http.response_cache`) for those it does not. Each builds its `SecurityPolicy` from the
same settings.

Headers: `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`,
`X-Frame-Options: DENY`, a Content-Security-Policy (`default-src 'none'` for the API; the
documentation pages get their own, `service.api.hardening.DOCS_CSP`),
`Cache-Control: no-store` on responses to requests with credentials or that change state (they
may carry tokens), `Vary: Authorization`, and HSTS when the request came over HTTPS (directly,
or per `X-Forwarded-Proto` from a trusted proxy). Hypercorn's `Server` header is off in
hypercorn.toml; Flask and Werkzeug add none.

CORS: `CORS_ORIGINS` is a comma-separated list of exact origins (`https://app.example.com`),
answered with that origin and `Access-Control-Allow-Credentials: true`; or `*`, answered with
`*` and never with credentials. An origin that is not listed is never reflected.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from service.infra.settings import Settings

API_CSP = "default-src 'none'; frame-ancestors 'none'"
STATIC_HEADERS: Mapping[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
HSTS = "max-age=31536000; includeSubDomains"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

CORS_ALLOW_HEADERS = (
    "Authorization, Content-Type, X-Request-ID, If-Match, If-None-Match, Idempotency-Key"
)
CORS_EXPOSE_HEADERS = (
    "RateLimit, RateLimit-Policy, Retry-After, X-Request-ID, ETag, Idempotent-Replayed"
)
CORS_MAX_AGE_SECONDS = 600
_DEFAULT_PORTS = {"http": 80, "https": 443}


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# Every request parses its peer's address (rate limits, proxies): the same few addresses
# again and again, and `ipaddress` is slow to parse (3 % of a cached read's CPU, measured).
@functools.lru_cache(maxsize=4096)
def parse_ip(text: str) -> IPAddress | None:
    """`text` as an address (IPv4-mapped IPv6 as IPv4), or None when it is not one."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ProxyTrust:
    """The reverse proxies (IPs or CIDRs) whose `X-Forwarded-*` headers are believed."""

    def __init__(self, spec: str) -> None:
        networks: list[IPNetwork] = []
        for entry in (part.strip() for part in spec.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"TRUSTED_PROXIES: {entry!r} is not an IP or CIDR") from None
        self.networks = tuple(networks)

    def trusts(self, address: IPAddress | str | None) -> bool:
        """True when `address` is one of the trusted proxies."""
        if isinstance(address, str):
            address = parse_ip(address)
        if address is None:
            return False
        return any(address in network for network in self.networks)

    def client_ip(self, peer: str | None, forwarded_for: Iterable[str]) -> IPAddress | None:
        """The client's address: the peer, or, when the peer is a trusted proxy, the right-most
        `X-Forwarded-For` entry that is not a trusted proxy (entries further left were written
        by the client and can be forged)."""
        client = parse_ip(peer) if peer else None
        if client is None or not self.networks or not self.trusts(client):
            return client
        hops = [hop for value in forwarded_for for hop in value.split(",")]
        for hop in reversed(hops):
            address = parse_ip(hop)
            if address is None:
                break  # a trusted proxy would not write this: stop at the last sane address
            client = address
            if not self.trusts(address):
                break
        return client

    def is_https(self, scheme: str, peer: str | None, forwarded_proto: str | None) -> bool:
        """True when the client's connection is HTTPS (the last proxy's word, if trusted)."""
        if scheme == "https":
            return True
        if forwarded_proto and self.trusts(peer):
            return forwarded_proto.rsplit(",", 1)[-1].strip().lower() == "https"
        return False


def normalise_origin(origin: str) -> str:
    """`scheme://host[:port]` lower-cased, default port dropped; ValueError if not an origin."""
    parts = urlsplit(origin.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme.lower() not in _DEFAULT_PORTS
        or not parts.hostname
        or parts.username is not None
        or port == -1
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ValueError(
            f"CORS_ORIGINS: {origin.strip()!r} is not an origin (scheme://host[:port])"
        )
    scheme = parts.scheme.lower()
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


class CorsPolicy:
    """Which browser origins may call the API, and the headers that say so."""

    def __init__(self, spec: str) -> None:
        entries = [entry.strip() for entry in spec.split(",") if entry.strip()]
        self.any_origin = "*" in entries
        if self.any_origin and len(entries) > 1:
            raise ValueError("CORS_ORIGINS: use either '*' or a list of origins, not both")
        self.origins = frozenset() if self.any_origin else frozenset(map(normalise_origin, entries))

    @property
    def enabled(self) -> bool:
        """True when some cross-origin access is allowed."""
        return self.any_origin or bool(self.origins)

    def allows(self, origin: str | None) -> bool:
        """True when `origin` (the request's `Origin` header) may read responses."""
        if origin is None:
            return False
        return self.any_origin or origin in self.origins

    def response_headers(self, origin: str | None) -> dict[str, str]:
        """CORS headers for an actual (non-preflight) response to `origin`."""
        if not self.allows(origin):
            return {}
        assert origin is not None
        if self.any_origin:
            # A wildcard never goes with credentials (browsers would refuse it anyway).
            return {
                "Access-Control-Allow-Origin": "*",
                "Access-Control-Expose-Headers": CORS_EXPOSE_HEADERS,
            }
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Expose-Headers": CORS_EXPOSE_HEADERS,
        }

    def preflight_headers(self, origin: str, methods: Iterable[str]) -> dict[str, str]:
        """The headers of a preflight answer for an allowed `origin`."""
        headers = self.response_headers(origin)
        headers.pop("Access-Control-Expose-Headers", None)
        headers.update(
            {
                "Access-Control-Allow-Methods": ", ".join(sorted(methods)),
                "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
                "Access-Control-Max-Age": str(CORS_MAX_AGE_SECONDS),
            }
        )
        return headers


@dataclass(frozen=True)
class SecurityPolicy:
    """The security headers, CORS and proxy configuration of one app."""

    cors: CorsPolicy
    proxies: ProxyTrust

    @classmethod
    def from_settings(cls, settings: Settings) -> SecurityPolicy:
        """Parse `cors_origins` and `trusted_proxies` (ValueError naming a bad entry)."""
        return cls(
            cors=CorsPolicy(settings.cors_origins), proxies=ProxyTrust(settings.trusted_proxies)
        )

    def base_headers(
        self,
        *,
        method: str,
        origin: str | None,
        authorized: bool,
        https: bool,
    ) -> dict[str, str]:
        """Headers every API response gets (the CSP for JSON; docs pages override it)."""
        headers = dict(STATIC_HEADERS)
        headers["Content-Security-Policy"] = API_CSP
        if authorized or method not in SAFE_METHODS:
            # Answers to credentials may be personal; those to writes may carry tokens.
            headers["Cache-Control"] = "no-store"
        if https:
            headers["Strict-Transport-Security"] = HSTS
        headers.update(self.cors.response_headers(origin))
        return headers

    def vary(self) -> list[str]:
        """What API responses vary on."""
        if self.cors.enabled and not self.cors.any_origin:
            return ["Authorization", "Origin"]
        return ["Authorization"]
