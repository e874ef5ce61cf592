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
