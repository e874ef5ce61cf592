"""Verdict cache: TTL, size bound, generation fence, trust (the last-used buffer: test_usage.py)."""

from __future__ import annotations

from gateway.cache import MISS, VerdictCache
from gateway.model import KeyRecord


def record(key_id: str = "key_a") -> KeyRecord:
    return KeyRecord(id=key_id, org_id="o", name="n", prefix="sop_x", scopes=("a:b",), digest="d",
                     created_at=0, created_by="t")


class Tick:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def make(**kw) -> tuple[VerdictCache, Tick]:
    tick = Tick()
    cache = VerdictCache(**{"max_size": 3, "ttl": 10, "negative_ttl": 2, "clock": tick, **kw})
    cache.clear(trusted_until=float("inf"))
    return cache, tick


def test_untrusted_cache_is_never_used():
    cache, _ = make()
    cache.clear()
    cache.put("key_a", record(), cache.generation)
    assert cache.get("key_a") is MISS and len(cache) == 0


def test_trust_lapses_by_itself_at_its_deadline():
    cache, tick = make()
    cache.clear(trusted_until=1.0)
    cache.put("key_a", record(), cache.generation)
    assert cache.get("key_a") == record()
    cache.trust_until(0.5)  # never shortened by a late, older extension
    tick.t = 0.99
    assert cache.get("key_a") == record()
    tick.t = 1.0  # the listener went silent: no entry is served, without anyone noticing
    assert cache.get("key_a") is MISS
    cache.put("key_b", record("key_b"), cache.generation)
    assert len(cache) == 0 or cache.get("key_b") is MISS
    cache.trust_until(5.0)
    assert cache.trusted


def test_positive_and_negative_ttl():
    cache, tick = make()
    cache.put("key_a", record(), cache.generation)
    cache.put("key_b", None, cache.generation)
    assert cache.get("key_a") == record() and cache.get("key_b") is None
    tick.t = 3
    assert cache.get("key_b") is MISS and cache.get("key_a") == record()
    tick.t = 11
    assert cache.get("key_a") is MISS


def test_fill_that_raced_an_invalidation_is_not_stored():
    cache, _ = make()
    generation = cache.generation  # a fill starts reading Redis...
    cache.invalidate("key_a")  # ...a revoke message arrives...
    cache.put("key_a", record(), generation)  # ...the stale "active" read must not be cached
    assert cache.get("key_a") is MISS


def test_size_bound_evicts_oldest():
    cache, _ = make()
    for i in range(5):
        cache.put(f"key_{i}", record(f"key_{i}"), cache.generation)
    assert len(cache) == 3 and cache.evictions == 2
    assert cache.get("key_0") is MISS and cache.get("key_4") is not MISS


def test_a_hit_makes_an_entry_the_last_evicted():
    cache, _ = make()
    for name in ("key_a", "key_b", "key_c"):
        cache.put(name, record(name), cache.generation)
    assert cache.get("key_a") == record("key_a")  # key_a is now the most recently used
    cache.put("key_d", record("key_d"), cache.generation)
    assert cache.get("key_b") is MISS  # the least recently used went, not the first filled
    assert cache.get("key_a") == record("key_a") and cache.evictions == 1
    cache.put("key_e", None, cache.generation)  # unknown ids take their turn like the rest
    assert cache.get("key_c") is MISS
    assert cache.get("key_a") == record("key_a") and cache.get("key_d") == record("key_d")
    assert cache.get("key_e") is None and len(cache) == 3


def test_stale_verdicts_last_max_stale_from_the_loss_of_trust_not_from_the_ttl():
    cache, tick = make(ttl=3600)
    cache.put("key_a", record(), cache.generation)
    tick.t = 100.0
    cache.distrust()  # the channel broke at t=100
    assert cache.get("key_a") is MISS
    tick.t = 159.0
    assert cache.get_stale("key_a", 60) == record()  # within 60 s of the loss of trust
    tick.t = 160.0
    assert cache.get_stale("key_a", 60) is None  # not for the rest of the hour-long TTL


def test_a_silent_lapse_counts_from_the_trust_deadline():
    cache, tick = make(ttl=3600)
    cache.clear(trusted_until=10.0)
    cache.put("key_a", record(), cache.generation)
    tick.t = 50.0  # trust lapsed at t=10 without anyone calling distrust()
    assert cache.get("key_a") is MISS
    assert cache.get_stale("key_a", 60) == record()
    tick.t = 70.0
    assert cache.get_stale("key_a", 60) is None


def test_an_entry_expired_before_trust_was_lost_is_never_served_stale():
    cache, tick = make(ttl=10)
    cache.put("key_a", record(), cache.generation)
    tick.t = 20.0  # expired at t=10
    cache.distrust()
    assert cache.get_stale("key_a", 60) is None


def test_repeated_distrust_keeps_the_first_loss_of_trust():
    cache, tick = make(ttl=3600)
    cache.put("key_a", record(), cache.generation)
    tick.t = 100.0
    cache.distrust()
    tick.t = 130.0
    cache.distrust()  # the listener's retries fail again and again
    assert cache.get_stale("key_a", 60) == record()
    tick.t = 160.0
    assert cache.get_stale("key_a", 60) is None
