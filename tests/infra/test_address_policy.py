"""The SSRF guard's policy as settings build it: the allowlist takes addresses and networks."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from service.infra.address_policy import AddressPolicy, parse_network


def test_allowlist_entries_are_addresses_or_networks() -> None:
    assert parse_network("127.0.0.1") == parse_network("127.0.0.1/32")
    assert str(parse_network(" ::1 ")) == "::1/128"
    assert parse_network(ip_address("10.0.0.1")) == parse_network("10.0.0.1/32")
    for bad in ("10.0.0.1/8", "hooks.example.com", "localhost", "", "300.1.1.1"):
        with pytest.raises(ValueError, match="allowlist entry"):
            AddressPolicy.build(allowlist=[bad])
