"""Failed-auth throttle and known keys (pure), IPv6 prefixes and IPv4-mapped addresses included."""

from __future__ import annotations

import msgspec
import pytest

from gateway import keys
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


def blocked(t: FailureThrottle, client: str) -> bool:
    return t.retry_after(client) > 0


def block(t: FailureThrottle, client: str) -> None:
    for _ in range(t.limit):
        t.record_failure(client)
    assert blocked(t, client)


def test_memory_is_bounded_and_the_lowest_buckets_are_forgotten_first():
    clock = FakeClock()
    t = FailureThrottle(limit=2, window=60, max_clients=100, clock=clock)
    for i in range(1000):
        t.record_failure(f"10.0.{i // 256}.{i % 256}")  # one failure each: none blocked
    assert len(t) == 100 and t.evictions + t.untracked == 900
    assert t._heap and len(t._heap) <= 2 * len(t) + 64  # stale heap entries stay bounded too
    # What was forgotten is not reset: 900 more addresses than the table holds ratcheted the
    # newcomers' floor up to blocked.
    assert blocked(t, "10.200.0.1")


@pytest.mark.parametrize("extra", [1, 5, 100])
def test_cycling_through_more_addresses_than_the_table_gains_no_tries(extra):
    """Round-robin over N + extra addresses: each would be forgotten before its next try; the
    floor keeps the total to about what those addresses are allowed anyway."""
    clock = FakeClock()
    n, limit = 50, 5
    t = FailureThrottle(limit=limit, window=600, max_clients=n, clock=clock)
    addresses = [f"10.0.{i // 256}.{i % 256}" for i in range(n + extra)]
    tries = 0
    for _ in range(50):
        for a in addresses:
            if not blocked(t, a):
                tries += 1
                t.record_failure(a)
        clock.now += 0.1
    assert tries <= (n + extra) * limit + n  # unbounded without the floor (2,550+ here)
    assert all(blocked(t, a) for a in addresses)


def test_the_floor_drains_like_a_bucket():
    clock = FakeClock()
    t = FailureThrottle(limit=2, window=60, max_clients=2, clock=clock)
    for i in range(20):
        t.record_failure(f"10.0.0.{i}")
    assert blocked(t, "192.0.2.1")
    clock.now += 61  # a window at most after the flood (the cap is two limits: 60 s)
    assert not blocked(t, "192.0.2.1")
    t.record_failure("192.0.2.1")
    assert not blocked(t, "192.0.2.1")


# ---- eviction cannot reset an attacker (N = max_clients) ----

@pytest.mark.parametrize("flood", [1, 2, 10])  # N + 1 addresses, 2N, 10N
def test_an_eviction_flood_after_the_attack_does_not_forget_the_attacker(flood):
    clock = FakeClock()
    n = 50
    t = FailureThrottle(limit=5, window=60, max_clients=n, clock=clock)
    block(t, "198.51.100.7")
    for i in range(n * flood + 1):
        t.record_failure(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert blocked(t, "198.51.100.7") and len(t) == n


def test_an_eviction_flood_interleaved_with_the_attack_does_not_forget_the_attacker():
    clock = FakeClock()
    n = 20
    t = FailureThrottle(limit=5, window=60, max_clients=n, clock=clock)
    for round_ in range(5):
        t.record_failure("198.51.100.7")
        for i in range(3 * n):
            t.record_failure(f"10.0.{round_}.{i}")
        clock.now += 0.5
    assert blocked(t, "198.51.100.7")
    for i in range(10 * n):  # and once blocked, it stays blocked through any flood
        t.record_failure(f"10.1.{i // 256}.{i % 256}")
        assert blocked(t, "198.51.100.7")


def test_an_attacker_arriving_last_in_a_full_table_is_still_tracked():
    clock = FakeClock()
    n = 30
    t = FailureThrottle(limit=5, window=60, max_clients=n, clock=clock)
    for i in range(n):
        t.record_failure(f"10.0.0.{i}")
    block(t, "198.51.100.7")
    assert t.evictions == 1 and len(t) == n


def test_the_buckets_nearest_to_empty_go_first():
    clock = FakeClock()
    t = FailureThrottle(limit=10, window=100, max_clients=3, clock=clock)
    for _ in range(4):
        t.record_failure("a")  # level 4
    t.record_failure("b")  # level 1, the newest of the two singles
    clock.now += 5  # b drains to 0.5; a to 3.5
    t.record_failure("c")  # level 1
    t.record_failure("d")  # full: b (lowest) goes, not a (oldest)
    assert set(t._empty_at) == {"a", "c", "d"} and t.evictions == 1


def test_drained_buckets_are_forgotten_without_counting_as_evictions():
    clock = FakeClock()
    t = FailureThrottle(limit=5, window=60, max_clients=10, clock=clock)
    for i in range(10):
        t.record_failure(f"10.0.0.{i}")
    clock.now += 13  # one failure drains in 12 s
    t.record_failure("10.0.1.1")
    assert len(t) == 1 and t.evictions == 0


def test_a_table_full_of_blocked_buckets_keeps_them_and_refuses_newcomers():
    clock = FakeClock()
    n = 10
    t = FailureThrottle(limit=5, window=60, max_clients=n, clock=clock)
    for i in range(n):
        block(t, f"10.0.0.{i}")
    # A newcomer cannot be tracked: it is refused (fail closed) until the least blocked drains.
    assert t.retry_after("192.0.2.1") == 12
    t.record_failure("192.0.2.1")  # (a failure it still makes, e.g. on the admin API, is counted)
    assert t.untracked == 1 and len(t) == n and t.evictions == 0
    wait = t.retry_after("192.0.2.1")
    assert wait == 12
    for i in range(n):
        assert blocked(t, f"10.0.0.{i}")
    clock.now += wait
    assert not blocked(t, "192.0.2.1")
    t.record_failure("192.0.2.1")  # now room is made: the least blocked is evicted, not a blocked one
    assert t.evictions == 1 and "192.0.2.1" in t._empty_at and t.untracked == 1


def test_a_full_table_that_is_not_all_blocked_refuses_no_newcomer():
    clock = FakeClock()
    t = FailureThrottle(limit=5, window=60, max_clients=3, clock=clock)
    block(t, "a")
    block(t, "b")
    t.record_failure("c")
    assert not blocked(t, "newcomer")


def test_the_attacker_cannot_outlast_the_table_by_refilling_it():
    """Many addresses each blocked: the attacker's blocked bucket is still never evicted."""
    clock = FakeClock()
    n = 20
    t = FailureThrottle(limit=3, window=30, max_clients=n, clock=clock)
    block(t, "198.51.100.7")
    for i in range(5 * n):
        block(t, f"10.0.{i // 256}.{i % 256}") if i < n - 1 else t.record_failure(f"10.0.{i // 256}.{i % 256}")
    assert blocked(t, "198.51.100.7") and t.evictions == 0 and t.untracked == 5 * n - (n - 1)


# ---- IPv6 by prefix ----

@pytest.mark.parametrize("variant", [
    "2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff:ffff:ffff:ffff",  # other interface ids
    "2001:DB8:1:2::ABCD", "2001:0db8:0001:0002:0000:0000:0000:0001",  # case, expanded form
    "[2001:db8:1:2::9]:443", "fe80::1%eth0",
])
def test_ipv6_addresses_of_one_prefix_share_a_bucket(variant):
    t = FailureThrottle(limit=5, window=60, max_clients=100, clock=FakeClock())
    home = "fe80::1:2:3:4" if variant.startswith("fe80") else "2001:db8:1:2::77"
    block(t, home)
    assert blocked(t, variant)
    assert not blocked(t, "2001:db8:1:3::1")  # the next /64 is someone else
    assert len(t) == 1


def test_rotating_interface_ids_does_not_escape_the_throttle():
    t = FailureThrottle(limit=5, window=60, max_clients=100, clock=FakeClock())
    for i in range(1000):
        t.record_failure(f"2001:db8:aa:bb:{i:x}::{i % 7:x}")
    assert len(t) == 1 and blocked(t, "2001:db8:aa:bb::1")
    assert not blocked(t, "2001:db8:aa:bc::1") and not blocked(t, "192.0.2.1")


def test_zone_ids_do_not_make_new_buckets():
    t = FailureThrottle(limit=5, window=60, max_clients=100, clock=FakeClock())
    for i in range(20):
        t.record_failure(f"fe80::1%eth{i}")
    assert len(t) == 1 and blocked(t, "fe80::1") and blocked(t, "FE80::2%lo")


@pytest.mark.parametrize("mapped", ["::ffff:192.0.2.1", "::FFFF:c000:201", "0:0:0:0:0:ffff:192.0.2.1",
                                    "[::ffff:192.0.2.1]:80"])
def test_ipv4_mapped_ipv6_counts_as_the_ipv4_address(mapped):
    t = FailureThrottle(limit=5, window=60, max_clients=100, clock=FakeClock())
    block(t, "192.0.2.1")
    assert blocked(t, mapped)
    assert not blocked(t, "::ffff:192.0.2.2")  # IPv4 stays per address
    assert not blocked(t, "192.0.2.2")


@pytest.mark.parametrize("prefix, same, other", [
    (48, "2001:db8:1:ffff::1", "2001:db8:2::1"),
    (56, "2001:db8:1:ff::1", "2001:db8:1:100::1"),
    (128, "2001:0DB8:1:0:0:0:0:1", "2001:db8:1::2"),
    (32, "2001:db8:ffff::1", "2001:db9::1"),
])
def test_the_ipv6_prefix_is_a_setting(prefix, same, other):
    t = FailureThrottle(limit=5, window=60, max_clients=100, clock=FakeClock(), ipv6_prefix=prefix)
    block(t, "2001:db8:1::1")
    assert blocked(t, same) and not blocked(t, other)


@pytest.mark.parametrize("value", [31, 129, 0, -1])
def test_the_ipv6_prefix_is_checked(value):
    from gateway.config import AdminSettings, ServeSettings
    for cls, extra in ((ServeSettings, {"upstream": "http://127.0.0.1:1"}), (AdminSettings, {})):
        with pytest.raises(Exception, match="throttle_ipv6_prefix"):
            msgspec.convert({"throttle_ipv6_prefix": value, **extra}, cls)


def test_the_ipv6_prefix_defaults_to_64_in_both_commands():
    from gateway.config import AdminSettings, ServeSettings
    assert ServeSettings(upstream="http://127.0.0.1:1").throttle_ipv6_prefix == 64
    assert AdminSettings().throttle_ipv6_prefix == 64


def test_disabled_throttle_never_blocks():
    t = FailureThrottle(limit=0, window=60, max_clients=10, clock=FakeClock())
    for _ in range(100):
        t.record_failure("a")
    assert t.retry_after("a") == 0 and len(t) == 0


def test_known_keys_vouch_only_for_the_same_digest_and_are_bounded():
    known = KnownKeys(max_size=3)
    known.add("key_a", "d" * 64)
    assert known.vouches_for("key_a", "d" * 64)
    assert not known.vouches_for("key_a", "e" * 64)
    assert not known.vouches_for("key_b", "d" * 64)
    for i in range(10):
        known.add(f"key_{i}", "f" * 64)
    assert len(known) == 3 and not known.vouches_for("key_a", "d" * 64)


def test_known_keys_take_the_digests_callers_pass():
    # gateway.decision adds KeyRecord.digest and asks with ParsedKey.digest: both SHA-256 hex str.
    key = keys.generate_key()
    parsed = keys.parse_key(key)
    known = KnownKeys(max_size=3)
    known.add(parsed.key_id, parsed.digest)
    assert isinstance(parsed.digest, str) and known.vouches_for(parsed.key_id, keys.parse_key(key).digest)
    assert not known.vouches_for(parsed.key_id, keys.parse_key(keys.generate_key()).digest)


def test_known_keys_forget_the_least_recently_verified_first():
    known = KnownKeys(max_size=3)
    for name in ("key_a", "key_b", "key_c"):
        known.add(name, name * 8)
    known.add("key_a", "key_a" * 8)  # key_a verified again: now the most recent
    known.add("key_d", "key_d" * 8)
    assert known.vouches_for("key_a", "key_a" * 8)  # a first-in-first-out table would forget key_a
    assert not known.vouches_for("key_b", "key_b" * 8)
    assert known.vouches_for("key_c", "key_c" * 8) and known.vouches_for("key_d", "key_d" * 8)
    known.add("key_c", "key_c" * 8)
    known.add("key_e", "key_e" * 8)
    assert not known.vouches_for("key_a", "key_a" * 8) and len(known) == 3
