"""The client address the throttle counts: the TCP peer, or X-Forwarded-For read from the right behind trusted proxies."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.clientaddr import client_address, is_trusted_peer, parse_ip


TRUSTED = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.2/32")]


@pytest.mark.parametrize("peer, xff, expected", [
    ("203.0.113.9", [], "203.0.113.9"),
    ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),  # untrusted peer: its X-Forwarded-For is ignored
    ("10.1.2.3", [], "10.1.2.3"),
    ("10.1.2.3", ["198.51.100.1"], "198.51.100.1"),
    ("10.1.2.3", ["1.1.1.1, 198.51.100.1"], "198.51.100.1"),  # the client's own entries are ignored
    ("10.1.2.3", ["198.51.100.1, 10.9.9.9"], "198.51.100.1"),  # trusted hops are skipped
    ("10.1.2.3", ["1.1.1.1", "198.51.100.1, 10.9.9.9"], "198.51.100.1"),  # several header lines
    ("10.1.2.3", ["10.4.4.4, 10.5.5.5"], "10.4.4.4"),  # all trusted: the leftmost
    ("10.1.2.3", ["garbage, 198.51.100.1"], "198.51.100.1"),
    ("10.1.2.3", ["198.51.100.1, garbage"], "10.1.2.3"),  # a malformed hop stops the walk
    ("10.1.2.3", ["198.51.100.1:5555"], "198.51.100.1"),
    ("10.1.2.3", ["[2001:db8::1]:443"], "2001:db8::1"),
    ("10.1.2.3", ["2001:db8::2"], "2001:db8::2"),
    ("127.0.0.2", ["192.0.2.44"], "192.0.2.44"),
    ("not-an-ip", ["192.0.2.44"], "not-an-ip"),
])
def test_client_address(peer, xff, expected):
    assert client_address(peer, xff, TRUSTED) == expected


def test_client_address_without_trusted_proxies_is_the_peer():
    assert client_address("10.1.2.3", ["198.51.100.1"], []) == "10.1.2.3"


# IPv4-mapped IPv6 (issue #12): the peer of an IPv4 client on a dual-stack (IPv6) socket, or a
# proxy's X-Forwarded-For entry, is the IPv4 address, for trusted proxies and for the throttle.
MAPPED_TRUSTED = [ipaddress.ip_network("::ffff:10.0.0.0/104"), ipaddress.ip_network("::ffff:127.0.0.2/128")]


@pytest.mark.parametrize("trusted", [TRUSTED, MAPPED_TRUSTED], ids=["ipv4-entries", "mapped-entries"])
@pytest.mark.parametrize("peer, xff, expected", [
    ("::ffff:10.1.2.3", ["198.51.100.1"], "198.51.100.1"),  # a mapped peer is a trusted IPv4 proxy
    ("::FFFF:10.1.2.3", ["198.51.100.1"], "198.51.100.1"),
    ("[::ffff:127.0.0.2]:40000", ["198.51.100.1"], "198.51.100.1"),
    ("::ffff:7f00:2", ["198.51.100.1"], "198.51.100.1"),  # the same address in hex
    ("10.1.2.3", ["198.51.100.1"], "198.51.100.1"),  # a plain IPv4 peer against mapped entries
    ("127.0.0.2", ["198.51.100.1"], "198.51.100.1"),
    ("10.1.2.3", ["198.51.100.1, ::ffff:10.9.9.9"], "198.51.100.1"),  # a mapped trusted hop is skipped
    ("10.1.2.3", ["198.51.100.1, [::ffff:10.9.9.9]:443"], "198.51.100.1"),
    ("10.1.2.3", ["::ffff:198.51.100.1"], "198.51.100.1"),  # the client itself, as IPv4
    ("::ffff:203.0.113.9", ["198.51.100.1"], "203.0.113.9"),  # untrusted, mapped: its IPv4 address
])
def test_ipv4_mapped_addresses_are_ipv4(trusted, peer, xff, expected):
    assert client_address(peer, xff, trusted) == expected


@pytest.mark.parametrize("trusted", [TRUSTED, MAPPED_TRUSTED], ids=["ipv4-entries", "mapped-entries"])
def test_a_mapped_peer_is_the_trusted_proxy_its_ipv4_address_is(trusted):
    assert is_trusted_peer("::ffff:127.0.0.2", trusted) and is_trusted_peer("127.0.0.2", trusted)
    assert not is_trusted_peer("::ffff:127.0.0.3", trusted) and not is_trusted_peer("::1", trusted)
    assert str(parse_ip("::ffff:10.1.2.3")) == "10.1.2.3"


def test_an_ipv6_network_wider_than_the_mapped_range_trusts_no_ipv4_address():
    # ::/0 holds ::ffff:10.1.2.3, but it names IPv6 proxies: an IPv4 one needs an IPv4 (or mapped) entry.
    for peer in ("::ffff:10.1.2.3", "10.1.2.3"):
        assert client_address(peer, ["198.51.100.1"], [ipaddress.ip_network("::/0")]) == "10.1.2.3"
    assert client_address("2001:db8::5", ["198.51.100.1"], [ipaddress.ip_network("::/0")]) == "198.51.100.1"
