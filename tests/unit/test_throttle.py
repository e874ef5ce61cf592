"""Failed-auth throttle, known keys, client address and method-override query checks (pure)."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.clientaddr import client_address
from gateway.query import method_override_in_query
from gateway.throttle import FailureThrottle, KnownKeys


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_blocks_at_the_limit_and_drains_over_the_window():
    clock = FakeClock()
    t = FailureThrottle(limit=5, window=60, max_clients=10, clock=clock)
    for _ in range(4):
        t.record_failure("a")
    assert t.retry_after("a") == 0
    t.record_failure("a")
    assert t.retry_after("a") == 12  # one failure drains every 60/5 = 12 s
    assert t.retry_after("b") == 0  # other addresses are unaffected
    t.record_failure("a")
    t.record_failure("a")
    assert t.retry_after("a") == 36
    clock.now += 35
    assert t.retry_after("a") == 1
    clock.now += 1
    assert t.retry_after("a") == 0
    t.record_failure("a")  # one attempt per 12 s after the burst: blocked again at once
    assert t.retry_after("a") == 12
    clock.now += 60
    assert t.retry_after("a") == 0


def test_a_flood_cannot_lock_an_address_out_for_long():
    clock = FakeClock()
    t = FailureThrottle(limit=5, window=60, max_clients=10, clock=clock)
    for _ in range(10_000):
        t.record_failure("a")
    assert t.retry_after("a") == 72  # capped at twice the limit: about one window


def test_memory_is_bounded_and_oldest_forgotten_first():
    clock = FakeClock()
    t = FailureThrottle(limit=2, window=60, max_clients=100, clock=clock)
    for i in range(1000):
        t.record_failure(f"10.0.{i // 256}.{i % 256}")
        t.record_failure(f"10.0.{i // 256}.{i % 256}")
    assert len(t) == 100 and t.evictions == 900
    assert t.retry_after("10.0.3.231") > 0  # the newest is remembered (i = 999)
    assert t.retry_after("10.0.0.0") == 0  # the oldest was forgotten


def test_disabled_throttle_never_blocks():
    t = FailureThrottle(limit=0, window=60, max_clients=10, clock=FakeClock())
    for _ in range(100):
        t.record_failure("a")
    assert t.retry_after("a") == 0 and len(t) == 0


def test_known_keys_vouch_only_for_the_same_digest_and_are_bounded():
    known = KnownKeys(max_size=3)
    known.add("key_a", b"d" * 32)
    assert known.vouches_for("key_a", b"d" * 32)
    assert not known.vouches_for("key_a", b"e" * 32)
    assert not known.vouches_for("key_b", b"d" * 32)
    for i in range(10):
        known.add(f"key_{i}", b"x" * 32)
    assert len(known) == 3 and not known.vouches_for("key_a", b"d" * 32)


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


@pytest.mark.parametrize("params, refused", [
    ([("_method", "DELETE")], True),
    ([("_METHOD", "DELETE")], True),
    ([("x", "1"), ("_httpmethod", "PUT")], True),
    ([("X-HTTP-Method-Override", "DELETE")], True),
    ([("x_http_method_override", "DELETE")], True),
    ([("x-method-override", "PATCH")], True),
    ([("x-http-method", "PATCH")], True),
    # the spellings frameworks normalise (names as query_params gives them: decoded once)
    ([("_method[]", "DELETE")], True),
    ([("_method[0]", "DELETE")], True),
    ([("_method[x]", "DELETE")], True),
    ([("x.http.method.override", "DELETE")], True),
    ([("x http method override", "DELETE")], True),
    ([(" _method ", "DELETE")], True),
    ([("_method\x00", "DELETE")], True),
    ([("_method\x00junk", "DELETE")], True),
    ([("%5Fmethod", "DELETE")], True),  # double encoded: %255Fmethod
    ([("%255Fmethod", "DELETE")], True),  # triple
    ([("_method%00", "DELETE")], True),
    ([("_method%5B%5D", "DELETE")], True),
    ([("_\uff4dethod", "DELETE")], True),  # fullwidth m, NFKC
    ([("\uff3fmethod", "DELETE")], True),  # fullwidth low line
    ([("X.HTTP.Method", "PUT")], True),
    ([("x-method.override", "PUT")], True),
    ([("_HTTPMETHOD[]", "PUT")], True),
    ([("method", "x")], False),
    ([("payment_method", "card")], False),
    ([("_methods", "x")], False),
    ([("x_method", "x")], False),
    ([("my_method[]", "x")], False),
    ([("q", "_method=DELETE")], False),
    ([("100%", "x")], False),
    ([("sort", "-created")], False),
    ([], False),
])
def test_method_override_in_query(params, refused):
    assert method_override_in_query(params) is refused
