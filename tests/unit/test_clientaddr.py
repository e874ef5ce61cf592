"""The client address the throttle counts: the TCP peer, or X-Forwarded-For read from the right behind trusted proxies."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.clientaddr import client_address


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
