"""The limiter's fast path (gateway.limiter.Entry: one flat budget per key, settled into the
leases lazily) decides, counts and answers exactly as the leases alone (gateway.leases), at every
step of random traffic with leases, returns, reclaims and window ends in between. No store:
these steps never reach it (``Limiter.admit`` is synchronous)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.leases import ADMIT, NEEDS_LEASE, KeyLimiter, RateHeaders
from gateway.limiter import Limiter
from gateway.model import KeyRecord
from gateway.plans import LimitsConfig
from gateway.ratelimit import WINDOWS, Limit


def record(limits) -> KeyRecord:
    return KeyRecord(id="k1", org_id="o1", name="k", prefix="gw_test", scopes=("tasks:read",), digest="d" * 64,
                     created_at=0, created_by="test", limits=tuple(limits))


def state(key: KeyLimiter):
    leases = tuple((l.start, l.granted, l.held, l.admitted, l.returned, l.overdraft, l.store_remaining, l.last_admit)
                   for l in key.leases)
    return leases, (key.meter.second, key.meter.count, key.meter.previous, key.meter.last)


limits_st = st.lists(st.tuples(st.sampled_from(WINDOWS), st.integers(1, 400)), min_size=1, max_size=3,
                     unique_by=lambda t: t[0])
steps_st = st.lists(st.tuples(st.sampled_from(["admit"] * 6 + ["headers", "release", "reclaim", "scrape"]),
                              st.integers(1, 3), st.one_of(st.integers(0, 30), st.integers(0, 700))), max_size=120)


@settings(max_examples=200, deadline=None)
@given(limits_st, steps_st, st.integers(0, 4_000_000_000_000))
def test_the_fast_path_is_the_leases(limits, steps, start):
    limits = [Limit(w, n) for w, n in limits]
    now = start
    clock = [now / 1000]
    fast = Limiter(None, LimitsConfig(), lambda: clock[0], redis_clock=False)  # (no step reaches the store)
    entry = fast.entry(record(limits), now)
    bare = KeyLimiter(entry.limits, now)  # (the limits in the entry's order)
    lines = RateHeaders(entry.limits)
    store: dict = {}
    admitted = 0
    for op, cost, dt in steps:
        now += dt
        clock[0] = now / 1000
        if op == "admit":
            decision = fast.admit(entry, cost, now)
            expected = bare.admit(cost, now)
            assert decision == expected  # (a lease asked for: the same wants, sized by the same rate)
            if decision.outcome == NEEDS_LEASE:  # both lease the same (the bare key's wants) and try again
                for want in expected.wants:
                    left = store.setdefault((want.window, want.start), bare.lease(want.window).limit.limit)
                    grant = min(want.amount * 8, left)  # (more than the one request: a budget to run on)
                    store[(want.window, want.start)] = left - grant
                    bare.grant(want.window, want.start, grant, left - grant, now)
                    entry.limiter.grant(want.window, want.start, grant, left - grant, now)
                decision, expected = fast.admit(entry, cost, now), bare.admit(cost, now)
                assert decision.outcome == expected.outcome
            admitted += decision is ADMIT
        elif op == "headers":  # the proxy's lines, after any admit
            assert entry.header_bytes(now) == lines.render(bare.leases, now)
        elif op == "release":  # the return tick
            assert dict(fast.due_returns(now)).get("k1", []) == bare.release(now)
        elif op == "reclaim":  # everything goes back
            assert entry.limiter.release(now, everything=True) == bare.release(now, everything=True)
        else:  # a scrape settles every entry: the counters are exact
            fast.settle_all()
            assert sum(fast.stats.fast_admits) == admitted
            assert state(entry._limiter)[0] == state(bare)[0]
    assert entry.header_bytes(now) == lines.render(bare.leases, now)
    assert state(entry.limiter) == state(bare)
    assert sum(fast.stats.fast_admits) == admitted


def test_an_armed_key_admits_from_its_flat_budget_until_the_second_ends():
    limits = [Limit("minute", 1_000), Limit("month", 10_000)]
    fast = Limiter(None, LimitsConfig(), lambda: 0.0, redis_clock=False)
    entry = fast.entry(record(limits), 60_000)
    entry.limiter.grant("minute", 60_000, 50, 900, 60_000)
    entry.limiter.grant("month", entry.limiter.leases[1].start, 20, 5_000, 60_000)
    assert fast.admit(entry, 1, 60_100) is ADMIT  # through the leases: arms the budget
    assert (entry.budget, entry.until) == (19, 61_000)
    for t in range(60_200, 60_900, 100):
        assert fast.admit(entry, 2, t) is ADMIT
    assert entry._limiter.leases[0].held == 49 and entry.admits == 7  # not yet in the leases
    assert b"r=935;t=60" in entry.header_bytes(60_950)  # 900 + 49 - 14 (the minute is the tightest)
    assert entry.limiter.leases[0].held == 35 and entry.budget == 0  # settled; disarmed
    assert entry._limiter.meter.count == 15
