"""The limiter's pure core: UTC windows (month ends, year change), lease accounting, sizing,
returns, the fault policy and the RateLimit headers, with an injected clock (ms)."""

from __future__ import annotations

import datetime as dt
import re

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.leases import (ADMIT, ADMITTED, NEEDS_LEASE, REFUSED, KeyLimiter, Lease, RateHeaders, RateMeter, Sizing,
                            Want, most_restrictive)
from gateway.ratelimit import (MAX_LIMIT, WINDOWS, FaultPolicy, Limit, narrower, policy_header, seconds_until,
                               window_bounds)

UTC = dt.timezone.utc


def ms(*args) -> int:
    return int(dt.datetime(*args, tzinfo=UTC).timestamp() * 1000)


# --- windows ---

@pytest.mark.parametrize("window, now, start, end", [
    ("second", ms(2026, 3, 1, 12, 0, 5) + 999, ms(2026, 3, 1, 12, 0, 5), ms(2026, 3, 1, 12, 0, 6)),
    ("minute", ms(2026, 3, 1, 12, 0, 59), ms(2026, 3, 1, 12, 0), ms(2026, 3, 1, 12, 1)),
    ("hour", ms(2026, 12, 31, 23, 59, 59), ms(2026, 12, 31, 23), ms(2027, 1, 1)),
    ("day", ms(2024, 2, 29, 23, 59, 59), ms(2024, 2, 29), ms(2024, 3, 1)),
    ("month", ms(2024, 2, 29, 23, 59, 59) + 999, ms(2024, 2, 1), ms(2024, 3, 1)),  # leap February: 29 days
    ("month", ms(2024, 3, 1), ms(2024, 3, 1), ms(2024, 4, 1)),  # the first ms of a month starts it
    ("month", ms(2025, 2, 14), ms(2025, 2, 1), ms(2025, 3, 1)),  # 28 days
    ("month", ms(2026, 4, 30, 23), ms(2026, 4, 1), ms(2026, 5, 1)),  # 30 days
    ("month", ms(2026, 12, 31, 23, 59, 59) + 999, ms(2026, 12, 1), ms(2027, 1, 1)),  # year change
    ("month", ms(2027, 1, 1), ms(2027, 1, 1), ms(2027, 2, 1)),
    ("month", ms(2100, 2, 10), ms(2100, 2, 1), ms(2100, 3, 1)),  # 2100 is not a leap year
    ("month", ms(1969, 12, 31, 23), ms(1969, 12, 1), ms(1970, 1, 1)),  # before the epoch
])
def test_window_bounds(window, now, start, end):
    assert window_bounds(window, now) == (start, end)


@settings(max_examples=300)
@given(st.integers(min_value=ms(1900, 1, 1), max_value=ms(2399, 12, 31)))
def test_month_bounds_are_the_utc_calendar_month(now):
    day = dt.datetime.fromtimestamp(now / 1000, UTC)
    first = dt.datetime(day.year, day.month, 1, tzinfo=UTC)
    following = dt.datetime(day.year + (day.month == 12), day.month % 12 + 1, 1, tzinfo=UTC)
    start, end = window_bounds("month", now)
    assert (start, end) == (int(first.timestamp()) * 1000, int(following.timestamp()) * 1000)
    assert start <= now < end and (end - start) // 86_400_000 in (28, 29, 30, 31)


@given(st.sampled_from(WINDOWS), st.integers(min_value=0, max_value=ms(2300, 1, 1)))
def test_a_window_holds_now_and_the_next_starts_at_its_end(window, now):
    start, end = window_bounds(window, now)
    assert start <= now < end
    assert window_bounds(window, end)[0] == end and window_bounds(window, end - 1) == (start, end)


def test_unknown_window_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="second, minute, hour, day, month"):
        window_bounds("week", 0)


@pytest.mark.parametrize("end, now, seconds", [(1000, 0, 1), (1000, 1, 1), (1000, 999, 1), (1000, 1000, 0),
                                               (2001, 0, 3), (5, 10, 0)])
def test_seconds_until_rounds_up(end, now, seconds):
    assert seconds_until(end, now) == seconds


# --- limit specs ---

def test_limits_name_their_code_and_policy():
    assert Limit("minute", 100).code == "rate_limited" and not Limit("minute", 100).is_quota
    assert Limit("month", 5).code == "quota_exceeded" and Limit("day", 5).is_quota
    assert Limit("hour", 1).policy_name == "per-hour"


@pytest.mark.parametrize("raw, message", [
    (b'{"window": "week", "limit": 5}', "window must be one of"),
    (b'{"window": "minute", "limit": 0}', "limit must be an integer from 1"),
    (b'{"window": "minute", "limit": 1000000000000000}', "limit must be an integer from 1"),
    (b'{"window": "minute", "limit": true}', "Expected `int`"),
    (b'{"window": "minute", "limit": 5, "burst": 1}', "unknown field `burst`"),
])
def test_bad_limits_are_refused_with_a_message(raw, message):
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.json.decode(raw, type=Limit)


def test_a_key_has_one_limit_per_window():
    with pytest.raises(ValueError, match="one limit per window"):
        KeyLimiter([Limit("minute", 5), Limit("minute", 6)], 0)


@pytest.mark.parametrize("kwargs", [{"share": 0}, {"headroom": 0.5}, {"recheck_ms": 0}, {"idle_ms": -1}, {"contended_ms": 0}])
def test_bad_sizing_is_refused(kwargs):
    with pytest.raises(ValueError):
        Sizing(**kwargs)


# --- one lease ---

def test_admits_from_the_lease_only_and_asks_for_more():
    lease = Lease(Limit("minute", 100), 0)
    decision = lease.admit(1, 10)
    assert decision.outcome == NEEDS_LEASE and [w[:3] for w in decision.wants] == [("minute", 0, 1)]
    assert lease.grant(0, 3, 97, 10)
    assert [lease.admit(1, 11) for _ in range(3)] == [ADMIT] * 3
    assert lease.admitted == 3 and lease.held == 0
    assert lease.admit(1, 12).outcome == NEEDS_LEASE  # the store has 97 left


def test_refused_when_the_store_had_too_little_until_the_window_resets():
    lease = Lease(Limit("minute", 10), 0)
    assert lease.grant(0, 10, 0, 100, Sizing(recheck_ms=60_000))
    for _ in range(10):
        assert lease.admit(1, 200) == ADMIT
    before = (lease.granted, lease.held, lease.admitted, lease.store_remaining)
    refused = lease.admit(1, 30_500)
    assert refused.outcome == REFUSED and refused.code == "rate_limited" and refused.window == "minute"
    assert refused.retry_after == 30  # 29.5 s to the reset, rounded up
    assert (lease.granted, lease.held, lease.admitted, lease.store_remaining) == before  # Tyk #1876
    assert lease.admit(1, 60_000).outcome == NEEDS_LEASE  # the next minute is a fresh budget
    assert lease.admitted == 0 and lease.held == 0 and lease.start == 60_000


def test_after_the_recheck_time_the_store_is_asked_again():
    lease = Lease(Limit("day", 10), 0)
    lease.grant(0, 0, 0, 1_000)
    assert lease.admit(1, 1_050).outcome == REFUSED
    assert lease.admit(1, 1_100).outcome == NEEDS_LEASE  # another node may have returned budget (100 ms)
    lease.grant(0, 0, 0, 2_000)
    assert lease.admit(1, 2_001).outcome == REFUSED
    lease.allow_recheck()  # a reclaim was answered
    assert lease.admit(1, 2_002).outcome == NEEDS_LEASE


def test_a_node_that_returned_budget_asks_the_store_again_at_once():
    lease = Lease(Limit("minute", 10), 0)
    lease.grant(0, 10, 0, 0, Sizing(recheck_ms=60_000))
    assert lease.release(10, everything=True) == Want("minute", 0, 10)  # a reclaim took it all back
    assert lease.admit(1, 20).outcome == NEEDS_LEASE  # not refused on the store's stale 0


def test_a_contended_lease_covers_a_short_horizon_only():
    lease = Lease(Limit("second", 1_000), 0)
    lease.grant(0, 0, 300, 0)
    assert lease.want(1, 0, 400.0).amount == 60  # 400/s expects 400 > 300 left: 150 ms of it
    assert lease.want(1, 0, 400.0, Sizing(contended_ms=50)).amount == 20
    lease.grant(0, 0, 3, 0)
    assert lease.want(5, 0, 10.0).amount == 5  # at least the cost


def test_a_request_costing_more_than_the_limit_is_refused_without_a_lease():
    lease = Lease(Limit("second", 5), 0)
    assert lease.admit(6, 0).outcome == REFUSED and lease.granted == 0


def test_a_grant_for_a_past_window_is_ignored():
    lease = Lease(Limit("second", 5), 0)
    assert not lease.grant(0, 5, 0, 1_000)
    assert lease.held == 0 and lease.start == 1_000


def test_a_big_request_asks_for_what_it_lacks():
    lease = Lease(Limit("minute", 100), 0)
    lease.grant(0, 3, 97, 0)
    assert [w[:3] for w in lease.admit(10, 1).wants] == [("minute", 0, 7)]


# --- sizing ---

@pytest.mark.parametrize("rate, store_remaining, now, amount", [
    (0.0, None, 0, 1),  # nothing known: the cost
    (100.0, None, 0, 6_000),  # 100/s for the 60 s left; the headroom (7,500) only out of half the limit
    (100.0, 20_000, 0, 7_500),  # half what is left covers the headroom: 1.25 * 100/s * 60 s
    (100.0, 7_000, 0, 6_000),  # it does not: the bare expected use
    (100.0, 1_000, 0, 15),  # less left than it expects to use: 150 ms of its traffic (the rest stays in the store)
    (100.0, 10, 0, 5),  # ... at most half (other nodes may need the rest)
    (100.0, 100_000, 59_000, 125),  # 1 s left in the window
    (100.0, 0, 0, 1),  # at least the cost
])
def test_lease_size(rate, store_remaining, now, amount):
    lease = Lease(Limit("minute", 10_000), 0)
    if store_remaining is not None:
        lease.grant(0, 0, store_remaining, 0)
    assert lease.want(1, now, rate).amount == amount


def test_a_long_window_leases_at_most_the_horizon_of_traffic():
    lease = Lease(Limit("month", 10_000_000), 0)
    assert lease.want(1, 0, 10.0, Sizing(horizon_ms=300_000)).amount == 3_750  # 10/s * 1.25 * 300 s
    assert lease.want(1, 0, 10.0).amount == 7_500  # the default horizon: 600 s


def test_the_rate_meter_follows_the_recent_rate():
    meter = RateMeter()
    for t in range(0, 20_000, 10):  # 100/s for 20 s
        meter.add(1, t)
    assert 95 <= meter.rate(20_000) <= 100
    assert meter.rate(50_000) < 1  # decays over idle seconds
    meter.add(5, 50_001)
    assert meter.rate(50_002) >= 5  # the current second counts at once
    meter.add(45, 50_150)
    assert meter.rate(50_200) == 250  # 50 in the first 200 ms of a second: its pace
    assert meter.rate(51_050) == 50  # the last full second


def test_the_rate_meter_sees_a_sparse_key():
    meter = RateMeter()
    for t in range(0, 600_000, 5_000):  # one request every 5 s
        meter.add(1, t)
    assert 0.19 <= meter.rate(596_500) <= 0.35  # one every 5 s (the last bucket alone would say 0)
    assert meter.rate(700_000) <= 0.01  # slowing while nothing comes
    assert meter.idle_after(Sizing()) == pytest.approx(20_000, rel=0.05)  # four usual gaps
    assert RateMeter().idle_after(Sizing()) == 5_000
    for t in range(0, 10_000_000, 1_000_000):
        meter.add(1, t)
    assert meter.idle_after(Sizing()) == 120_000  # capped


# --- returns ---

def test_an_idle_lease_returns_everything_once():
    lease = Lease(Limit("day", 1_000), 0)
    lease.grant(0, 100, 900, 0)
    lease.admit(1, 0)
    assert lease.release(4_999, rate=1.0) is None  # not idle yet, and not oversized
    assert lease.release(5_000) == Want("day", 0, 99)
    assert lease.held == 0 and lease.returned == 99 and lease.release(6_000) is None
    assert lease.admitted + lease.held + lease.returned == lease.granted


def test_an_oversized_lease_returns_the_excess():
    lease = Lease(Limit("day", 100_000), 0)
    lease.grant(0, 10_000, 0, 0)
    lease.admit(1, 0)
    returned = lease.release(1, rate=1.0)  # keeps twice the expected use: 2 * 1/s * 1.25 * 600 s
    assert returned is not None and lease.held == 1_500 and returned.amount == 9_999 - 1_500
    assert lease.release(2, rate=1.0) is None  # no churn once it fits


def test_no_excess_goes_back_in_a_window_ending_within_the_horizon():
    lease = Lease(Limit("minute", 1_000), 0)
    lease.grant(0, 300, 0, 0)
    lease.admit(1, 50_000)
    assert lease.release(50_001, rate=1.0) is None  # 299 held, 10 s left: it shrinks by itself
    assert lease.release(55_001, rate=1.0) == Want("minute", 0, 299)  # but idle, it goes back


def test_budget_of_a_window_about_to_end_goes_back_only_to_a_reclaim():
    lease = Lease(Limit("second", 100), 0)
    lease.grant(0, 50, 50, 0)
    assert lease.release(1) is None  # its window ends within min_return_ms
    assert lease.release(999, rate=0.0) is None
    assert lease.release(1, everything=True) == Want("second", 0, 50)  # another node is short now
    minute = Lease(Limit("minute", 100), 0)
    minute.grant(0, 50, 50, 0)
    assert minute.release(10_000) == Want("minute", 0, 50)  # idle, the window has 50 s left


# --- one key, several limits ---

def limiter(*limits, now=0):
    return KeyLimiter([Limit(w, n) for w, n in limits], now)


def serve(key: KeyLimiter, cost: int, now: int, store: dict) -> str:
    """The hot path's loop against a model store: lease what is asked for, try once more."""
    decision = key.admit(cost, now)
    if decision.outcome == NEEDS_LEASE:
        for want in decision.wants:
            left = store.setdefault((want.window, want.start), key.lease(want.window).limit.limit)
            grant = min(want.amount, left)
            store[(want.window, want.start)] = left - grant
            key.grant(want.window, want.start, grant, left - grant, now)
        decision = key.admit(cost, now)
    return decision.outcome


def test_a_request_passes_every_limit_or_changes_nothing():
    key = limiter(("second", 10), ("day", 3))
    store: dict = {}
    assert [serve(key, 1, 0, store) for _ in range(4)] == [ADMITTED] * 3 + [REFUSED]
    second, day = key.lease("second"), key.lease("day")
    assert second.admitted == 3 and day.admitted == 3  # the refused 4th spent neither
    refused = key.admit(1, 50)  # (within the recheck time: refused without asking)
    assert refused.code == "quota_exceeded" and refused.window == "day" and refused.retry_after == 86_400


def test_the_longest_wait_names_the_refusal():
    key = limiter(("minute", 2), ("day", 2))
    store: dict = {}
    assert [serve(key, 1, 0, store) for _ in range(3)] == [ADMITTED, ADMITTED, REFUSED]
    assert key.admit(1, 50).window == "day"


def test_a_refused_request_asks_the_store_for_nothing():
    key = KeyLimiter([Limit("second", 100), Limit("minute", 1)], 0, Sizing(recheck_ms=5_000))
    store: dict = {}
    serve(key, 1, 0, store)
    assert serve(key, 1, 100, store) == REFUSED
    decision = key.admit(1, 1_100)  # a new second, the minute still spent
    assert decision.outcome == REFUSED and decision.wants == ()


@pytest.mark.parametrize("cost", [0, -1, True, 1.5])
def test_cost_must_be_a_positive_integer(cost):
    with pytest.raises(ValueError, match="cost must be a positive integer"):
        limiter(("second", 5)).admit(cost, 0)


# --- store faults ---

def test_fault_policy_defaults_rates_open_quotas_closed():
    key = limiter(("second", 10), ("month", 100))
    need = key.admit(1, 0)
    assert not key.admit_on_fault(need, 1, 0, FaultPolicy())  # the quota needs a lease: closed
    assert FaultPolicy.code(Limit("month", 1)) == "quota_unavailable"
    assert FaultPolicy.code(Limit("second", 1)) == "rate_limit_unavailable"
    assert key.lease("month").admitted == 0
    assert key.admit_on_fault(need, 1, 0, FaultPolicy(quota="open"))
    assert key.lease("month").overdraft == 1 and key.lease("month").held == 0


def test_a_rate_window_fails_open_while_the_quota_lease_lasts():
    key = limiter(("second", 10), ("day", 100))
    key.grant("day", 0, 5, 95, 0)  # leased before Redis went away
    need = key.admit(1, 0)
    assert [w.window for w in need.wants] == ["second"]
    assert key.admit_on_fault(need, 1, 0, FaultPolicy())
    day = key.lease("day")
    assert day.admitted == 1 and day.held == 4 and day.overdraft == 0
    assert not key.admit_on_fault(need, 1, 0, FaultPolicy(rate="closed"))


def test_bad_fault_policy_is_refused():
    with pytest.raises(msgspec.ValidationError, match="quota must be 'open' or 'closed'"):
        msgspec.json.decode(b'{"quota": "maybe"}', type=FaultPolicy)


# --- headers ---

ITEM = re.compile(r'"(?:[\x20-\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"(?:;[a-z*][a-z0-9_.*-]*=-?\d{1,15})+')


def well_formed_list(value: str, params: tuple[str, ...]) -> list[dict[str, int]]:
    """Parse a structured-field List of String items with Integer parameters (RFC 8941)."""
    items = []
    for part in value.split(", "):
        assert ITEM.fullmatch(part), value
        fields = dict(p.split("=") for p in part.split(";")[1:])
        assert tuple(fields) == params, value
        items.append({k: int(v) for k, v in fields.items()})
    return items


def test_headers_of_a_limited_key():
    key = limiter(("minute", 100), ("month", 10_000), now=ms(2026, 2, 10))
    now = ms(2026, 2, 10, 0, 0, 43)
    key.grant("minute", ms(2026, 2, 10), 10, 50, now)
    key.grant("month", ms(2026, 2, 1), 10, 9_000, now)
    headers = key.headers(now)
    assert headers == {"RateLimit-Policy": '"per-minute";q=100;w=60, "per-month";q=10000;w=2419200',
                       "RateLimit": '"per-minute";r=60;t=17'}
    refused = key.headers(now, key.lease("minute").refusal(now))
    assert refused["Retry-After"] == "17" and refused["RateLimit"] == '"per-minute";r=60;t=17'


def test_a_refusal_shows_the_refusing_limit_so_retry_after_ends_its_window():
    # The draft: Retry-After SHOULD NOT be earlier than the end of RateLimit's effective window.
    key = limiter(("minute", 100), ("day", 1_000))
    key.grant("minute", 0, 5, 0, 0)  # 5 units left this minute, all held here
    key.grant("day", 0, 1, 2, 0)  # 3 left today: the day is the tighter limit
    assert key.headers(50)["RateLimit"] == '"per-day";r=3;t=86400'
    refused = key.admit(6, 50)  # both lack: the day waits longest
    assert refused.window == "day" and key.headers(50, refused)["Retry-After"] == "86400"
    key.grant("day", 0, 2, 998, 0)  # another node returned budget: now only the minute refuses
    refused = key.admit(6, 50)
    assert refused.window == "minute" and refused.retry_after == 60
    headers = key.headers(50, refused)
    assert headers["RateLimit"] == '"per-minute";r=5;t=60' and headers["Retry-After"] == "60"


def as_lines(headers: dict[str, str]) -> bytes:
    return b"".join(f"{name}: {value}\r\n".encode() for name, value in headers.items())


def test_the_proxys_header_bytes_are_the_headers_and_follow_each_admit_second_and_month():
    key = limiter(("minute", 100), ("month", 10_000), now=ms(2026, 2, 28, 23, 59))
    lines = RateHeaders([lease.limit for lease in key.leases])
    now = ms(2026, 2, 28, 23, 59, 1)
    key.grant("minute", ms(2026, 2, 28, 23, 59), 10, 50, now)
    key.grant("month", ms(2026, 2, 1), 10, 9_000, now)
    assert lines.render(key.leases, now) == as_lines(key.headers(now)) == (
        b'RateLimit-Policy: "per-minute";q=100;w=60, "per-month";q=10000;w=2419200\r\n'
        b'RateLimit: "per-minute";r=60;t=59\r\n')
    assert key.admit(1, now) is ADMIT  # r follows every admit (the memoized parts do not hide it)
    assert lines.render(key.leases, now) == as_lines(key.headers(now)) and b"r=59;t=59" in lines.render(key.leases, now)
    now += 1_000  # t follows the clock
    assert lines.render(key.leases, now) == as_lines(key.headers(now)) and b"r=59;t=58" in lines.render(key.leases, now)
    now = ms(2026, 3, 1, 0, 0, 30)  # a new month: its w is March's 31 days, and a new minute's whole limit
    assert lines.render(key.leases, now) == as_lines(key.headers(now))
    assert b"w=2678400" in lines.render(key.leases, now) and b'"per-minute";r=100;t=30' in lines.render(key.leases, now)


@pytest.mark.parametrize("limits", [
    (("minute", 100),),
    (("minute", 100), ("month", 10_000)),
    (("second", 3), ("minute", 5)),  # the tightest changes hands within a second
    (("second", 4), ("minute", 9), ("hour", 20)),
])
def test_the_header_bytes_equal_the_headers_for_every_remaining_and_reset(limits):
    """RateHeaders memoizes ``;t=N`` per second and tightest lease: every ms of two seconds
    around a window's end, every remaining value of the limits (admits of 1 and 2, leases and
    refusals in between), the bytes are the dict's."""
    start = ms(2026, 1, 31, 23, 59, 58) + 500  # the second, minute, hour, day and month end at 2026-02-01
    key = KeyLimiter([Limit(w, n) for w, n in limits], start)
    lines = RateHeaders([Limit(w, n) for w, n in limits])
    store: dict = {}
    seen = set()
    for now in range(start, start + 3_000, 7):
        serve(key, 1 + now % 2, now, store)
        assert lines.render(key.leases, now) == as_lines(key.headers(now)), now
        seen.add(re.search(rb"RateLimit: (.*)\r\n", lines.render(key.leases, now)).group(1))
    assert len(seen) >= 4  # (remaining and reset both moved)


def test_the_header_bytes_follow_the_tightest_limit_within_a_second():
    key = limiter(("minute", 100), ("hour", 50))
    lines = RateHeaders([lease.limit for lease in key.leases])
    assert lines.render(key.leases, 1_500) == as_lines(key.headers(1_500))  # the hour: 50 left
    key.grant("minute", 0, 5, 10, 1_501)  # other nodes took most of the minute: 15 left
    assert b'"per-minute";r=15;t=59' in lines.render(key.leases, 1_502) == as_lines(key.headers(1_502))
    key.grant("hour", 0, 1, 0, 1_503)  # ...and of the hour: 1 left
    assert b'"per-hour";r=1;t=3599' in lines.render(key.leases, 1_504) == as_lines(key.headers(1_504))


def test_the_fast_admit_spends_all_leases_or_none():
    for limits in ([("minute", 10)], [("minute", 10), ("month", 100)], [("second", 10), ("minute", 10), ("day", 10)]):
        key = limiter(*limits, now=500)
        for lease in key.leases:
            lease.grant(0, 3, 0, 500)  # the store has none left (asked again from 600 on)
        assert key.admit(2, 520) is ADMIT
        assert [(lease.held, lease.admitted, lease.last_admit) for lease in key.leases] == [(1, 2, 520)] * len(limits)
        before = snapshot(key)
        assert key.admit(2, 540).outcome == REFUSED and snapshot(key) == before  # nothing spent
        if len(limits) > 1:
            key.leases[-1].grant(0, 1, 0, 560)  # only the last lease could pay
            assert key.admit(2, 580).outcome == REFUSED
            after = snapshot(key)
            assert after[0][:-1] == before[0][:-1] and after[0][-1][2] == 2 and after[1] == before[1]
        if limits[0][0] == "second":  # the second rolls (its budget is dropped): a lease first
            assert key.admit(1, 1_500).outcome == NEEDS_LEASE and key.leases[1].admitted == 2
        else:
            assert key.admit(1, 1_500) is ADMIT and (key.meter.count, key.meter.last) == (1, 1_500)


def test_the_most_restrictive_lease_is_the_least_remaining_then_the_last_to_reset_then_the_first():
    key = limiter(("second", 5), ("minute", 5), ("hour", 5))
    assert most_restrictive(key.leases, 100).limit.window == "hour"  # equal r: the one resetting last
    key.grant("minute", 0, 1, 1, 100)  # the minute: 2 left
    assert most_restrictive(key.leases, 100).limit.window == "minute"
    twins = KeyLimiter([Limit("day", 3), Limit("month", 3)], ms(2026, 1, 31))  # the day ends with the month
    assert most_restrictive(twins.leases, ms(2026, 1, 31)).limit.window == "day"


def test_an_untouched_key_shows_its_whole_limit():
    key = limiter(("second", 10))
    assert key.headers(250) == {"RateLimit-Policy": '"per-second";q=10;w=1', "RateLimit": '"per-second";r=10;t=1'}


def test_the_month_policy_window_is_this_months_length():
    assert policy_header([Limit("month", 1)], ms(2024, 2, 3)) == '"per-month";q=1;w=2505600'  # 29 days
    assert policy_header([Limit("month", 1)], ms(2024, 12, 31)) == '"per-month";q=1;w=2678400'


# --- properties ---

limits_st = st.lists(st.tuples(st.sampled_from(WINDOWS), st.integers(1, 50)), min_size=1, max_size=5,
                     unique_by=lambda t: t[0])
steps_st = st.lists(st.tuples(st.sampled_from(["admit", "release", "reclaim", "fault", "grant"]),
                              st.integers(1, 12), st.integers(0, 3_000)), max_size=80)


def snapshot(key: KeyLimiter):
    leases = tuple((l.start, l.granted, l.held, l.admitted, l.returned, l.overdraft, l.store_remaining)
                   for l in key.leases)
    return leases, (key.meter.second, key.meter.count, key.meter.ewma)


@settings(max_examples=300, deadline=None)
@given(limits_st, steps_st, st.integers(0, ms(2030, 1, 1)))
def test_admitted_never_exceeds_granted_and_refusals_change_nothing(limits, steps, start):
    key = KeyLimiter([Limit(w, n) for w, n in limits], start)
    lines = RateHeaders([Limit(w, n) for w, n in limits])
    store: dict = {}
    now = start
    for action, cost, dt_ms in steps:
        now += dt_ms
        for lease in key.leases:
            lease.roll(now)
        if action == "admit":
            before = snapshot(key)
            decision = key.admit(cost, now)
            if decision.outcome == REFUSED:
                assert snapshot(key) == before and decision.retry_after >= 1 and decision.code
            elif decision.outcome == NEEDS_LEASE:
                assert decision.wants and all(w.amount >= 1 for w in decision.wants)
                for want in decision.wants:  # grant part of it, as a contended store would
                    left = store.setdefault((want.window, want.start), key.lease(want.window).limit.limit)
                    grant = min(want.amount, left, cost)
                    store[(want.window, want.start)] = left - grant
                    key.grant(want.window, want.start, grant, left - grant, now)
        elif action == "grant":
            serve(key, cost, now, store)
        elif action in ("release", "reclaim"):
            for want in key.release(now, everything=action == "reclaim"):
                store[(want.window, want.start)] += want.amount
        elif action == "fault":
            decision = key.admit(cost, now)
            if decision.outcome == NEEDS_LEASE:
                key.admit_on_fault(decision, cost, now, FaultPolicy())
        for lease in key.leases:
            assert lease.held >= 0 and lease.admitted + lease.held + lease.returned == lease.granted
            granted_total = lease.limit.limit - store.get((lease.limit.window, lease.start), lease.limit.limit)
            assert lease.granted - lease.returned == granted_total  # this node is the store's only client
            assert lease.admitted <= lease.limit.limit  # never over the limit without a fault
            assert lease.limit.is_quota is False or lease.overdraft == 0  # quotas fail closed
        assert lines.render(key.leases, now) == as_lines(key.headers(now))  # the proxy's bytes: the same headers
        well_formed_list(key.headers(now)["RateLimit-Policy"], ("q", "w"))
        [item] = well_formed_list(key.headers(now)["RateLimit"], ("r", "t"))
        assert 0 <= item["r"] <= max(l.limit.limit for l in key.leases) and item["t"] >= 0


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(WINDOWS), st.integers(1, MAX_LIMIT)), min_size=1, max_size=5,
                unique_by=lambda t: t[0]), st.integers(0, ms(2300, 1, 1)))
def test_headers_are_always_well_formed(limits, now):
    key = KeyLimiter([Limit(w, n) for w, n in limits], now)
    policies = well_formed_list(key.headers(now)["RateLimit-Policy"], ("q", "w"))
    assert [p["q"] for p in policies] == [n for _, n in limits] and all(p["w"] >= 1 for p in policies)
    [current] = well_formed_list(key.headers(now)["RateLimit"], ("r", "t"))
    assert current["r"] == min(n for _, n in limits) and current["t"] >= 1
    refusal = key.leases[-1].refusal(now)
    headers = key.headers(now, refusal)
    [refusing] = well_formed_list(headers["RateLimit"], ("r", "t"))
    assert headers["RateLimit"].startswith(f'"per-{limits[-1][0]}";') and refusing["t"] == refusal.retry_after
    assert re.fullmatch(r"[1-9]\d*", headers["Retry-After"])


@settings(max_examples=200, deadline=None)
@given(limits_st, st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["admit", "admit", "release", "reclaim"]),
                                     st.integers(1, 5), st.integers(0, 700)), max_size=120))
def test_three_nodes_never_admit_more_than_the_limit_in_any_window(limits, steps):
    nodes = [KeyLimiter([Limit(w, n) for w, n in limits], 0) for _ in range(3)]
    store: dict = {}
    admitted: dict = {}  # (window, start) -> units admitted by all nodes
    now = 0
    for node, action, cost, dt_ms in steps:
        now += dt_ms
        key = nodes[node]
        if action == "admit":
            if serve(key, cost, now, store) == ADMITTED:
                for lease in key.leases:
                    slot = (lease.limit.window, lease.start)
                    admitted[slot] = admitted.get(slot, 0) + cost
        else:
            for want in key.release(now, everything=action == "reclaim"):
                store[(want.window, want.start)] += want.amount
        for lease in key.leases:
            assert admitted.get((lease.limit.window, lease.start), 0) <= lease.limit.limit


def simulate(limit: Limit, per_second: float, seconds: int, nodes: int) -> tuple[int, int, int]:
    """Round-robin traffic at a steady rate over ``nodes`` against a model store, as the hot path
    will run it: lease what admit asks for (once more if still short), and when refused after
    that, reclaim (every other node returns what it holds) and try once more. Returns (admitted,
    refused, store commands); asserts no window ever admits more than the limit."""
    keys = [KeyLimiter([limit], 0) for _ in range(nodes)]
    store: dict = {}
    rates: dict = {}  # node -> (rate, at): the store's rates hash
    admitted: dict = {}
    commands = refused = 0

    def give_back(key, everything=False):
        nonlocal commands
        for want in key.release(now, everything=everything):
            commands += 1
            store[(want.window, want.start)] += want.amount

    def ask(key):
        nonlocal commands
        decision = key.admit(1, now)
        for _ in range(2):
            if decision.outcome != NEEDS_LEASE:
                break
            commands += 1  # one script call for every window
            serve_wants(key, decision.wants)
            decision = key.admit(1, now)
        return decision

    def serve_wants(key, wants):
        for want in wants:
            if want.rate > 0:
                rates[id(key)] = (want.rate, now)
            total = sum(rate for rate, at in rates.values() if now - at <= want.stale_ms)
            left = store.setdefault((want.window, want.start), limit.limit)
            grant = min(want.amount, left)
            store[(want.window, want.start)] = left - grant
            key.grant(want.window, want.start, grant, left - grant, now, total, want.rate)

    for i in range(int(per_second * seconds)):
        now = int(i * 1000 / per_second)
        key = keys[i % nodes]
        for other in keys:
            give_back(other)
        decision = ask(key)
        if decision.outcome == REFUSED:
            commands += 1  # publish "reclaim"
            for other in keys:
                if other is not key:
                    give_back(other, everything=True)
            key.leases[0].allow_recheck()
            decision = ask(key)
        if decision.outcome == ADMITTED:
            slot = window_bounds(limit.window, now)[0]
            admitted[slot] = admitted.get(slot, 0) + 1
            assert admitted[slot] <= limit.limit
        else:
            refused += 1
    return sum(admitted.values()), refused, commands


@pytest.mark.parametrize("limit, seconds", [(Limit("second", 1_000), 10), (Limit("minute", 1_000), 600),
                                            (Limit("day", 100_000), 20_000), (Limit("second", 10), 60)])
@pytest.mark.parametrize("nodes", [1, 3])
@pytest.mark.parametrize("load", [0.5, 0.8, 0.95])
def test_traffic_under_95_percent_of_the_limit_is_never_refused(limit, seconds, nodes, load):
    per_second = load * limit.limit * 1000 / window_bounds(limit.window, 0)[1]
    admitted, refused, commands = simulate(limit, per_second, seconds, nodes)
    assert refused == 0 and admitted == int(per_second * seconds)
    if limit.limit >= 1_000 and load <= 0.8:
        assert commands / admitted <= 0.01  # the cost bar (10/s cannot meet it with 1 s windows)


@pytest.mark.parametrize("nodes", [1, 3])
def test_traffic_over_the_limit_gets_exactly_the_limit(nodes):
    admitted, refused, _ = simulate(Limit("second", 100), 150, 10, nodes)
    assert admitted >= 0.95 * 100 * 10 and refused == 1_500 - admitted  # at most the limit: asserted inside


# --- narrower (what an edit writes to a rolled key's aliases before its record) ---

def lim(text: str) -> tuple[Limit, ...]:
    return tuple(Limit(w, int(n)) for w, n in (item.split("=") for item in text.split()))


@pytest.mark.parametrize("old, new, narrowed", [
    ("minute=100", "minute=10", "minute=10"),                       # lowered: the new one
    ("minute=10", "minute=100", "minute=10"),                       # raised: the old one until the record says so
    ("minute=100", "hour=1000", "minute=100 hour=1000"),            # a window each: both
    ("month=5 second=3", "second=7 day=9", "second=3 day=9 month=5"),  # shortest window first
    ("", "day=4", "day=4"),
    ("day=4", "", "day=4"),
    ("", "", ""),
])
def test_narrower_is_the_per_window_minimum_of_the_union(old, new, narrowed):
    assert narrower(lim(old) if old else None, lim(new) if new else None) == (lim(narrowed) if narrowed else ())


_limits = st.dictionaries(st.sampled_from(WINDOWS), st.integers(1, MAX_LIMIT), max_size=5).map(
    lambda d: tuple(Limit(w, n) for w, n in d.items()))


def _allows(limits, window: str, amount: int) -> bool:
    return all(limit.limit >= amount for limit in limits if limit.window == window)


@given(_limits, _limits, st.sampled_from(WINDOWS), st.integers(1, MAX_LIMIT))
@settings(max_examples=200)
def test_narrower_never_allows_what_either_side_refuses(old, new, window, amount):
    narrowed = narrower(old, new)
    if _allows(narrowed, window, amount):
        assert _allows(old, window, amount) and _allows(new, window, amount)
    assert len({limit.window for limit in narrowed}) == len(narrowed)


# --- restore: budget released but never sent goes back -----------------------------------------

def _held_lease(now: int) -> Lease:
    lease = Lease(Limit("hour", 100), now)
    assert lease.grant(lease.start, 40, 60, now)
    return lease


def test_a_release_that_was_not_sent_is_restored_into_the_lease():
    now = 1_796_100_000_000
    lease = _held_lease(now)
    want = lease.release(now, everything=True)
    assert want == Want("hour", lease.start, 40) and lease.held == 0
    assert lease.restore(want.start, want.amount, now + 1000)
    assert (lease.held, lease.returned, lease.granted) == (40, 0, 40)


@pytest.mark.parametrize("case", ["next window", "other start", "more than returned", "nothing"])
def test_restore_refuses_what_the_lease_cannot_hold(case):
    now = 1_796_100_000_000
    lease = _held_lease(now)
    want = lease.release(now, everything=True)
    start, amount, at = want.start, want.amount, now
    if case == "next window":
        at = lease.end  # the window is over: its budget buys nothing now
    elif case == "other start":
        start -= 3_600_000
    elif case == "more than returned":
        amount += 1
    else:
        amount = 0
    assert not lease.restore(start, amount, at)
    assert lease.held == 0


def test_key_limiter_restore_answers_what_it_could_not_take_back():
    now = 1_796_100_000_000
    limiter = KeyLimiter([Limit("minute", 10), Limit("hour", 100)], now)
    for window, amount in (("minute", 5), ("hour", 30)):
        assert limiter.grant(window, limiter.lease(window).start, amount, 0, now)
    wants = limiter.release(now, everything=True)
    later = limiter.lease("minute").end  # the minute is over, the hour is not
    assert limiter.restore(wants, later) == [w for w in wants if w.window == "minute"]
    assert limiter.lease("hour").held == 30 and limiter.lease("minute").held == 0


@pytest.mark.parametrize("limit, seconds, cost", [(Limit("second", 1_000), 30, 0.01), (Limit("minute", 10_000), 900, 0.01),
                                                  (Limit("second", 10), 120, 0.5)])
@pytest.mark.parametrize("load", [0.8, 0.92, 0.95])
def test_near_the_limit_three_nodes_lease_about_once_a_window_each(limit, seconds, cost, load):
    # Each node's lease is its share of the key's traffic on every node, as the store sums it: the
    # first leases of a window add up to at most the limit and none runs short (no reclaims).
    per_second = load * limit.limit * 1000 / window_bounds(limit.window, 0)[1]
    admitted, refused, commands = simulate(limit, per_second, seconds, 3)
    assert refused == 0 and commands / admitted <= cost


def test_a_lease_is_the_nodes_share_once_the_store_told_every_nodes_traffic():
    lease = Lease(Limit("second", 1_000), 0)
    assert lease.want(1, 0, 300.0).amount == 375  # alone (no rates known): its rate, 25 % headroom
    lease.grant(0, 10, 990, 0, rates=900_000, sent=300_000)  # three nodes at 300/s
    want = lease.want(1, 0, 300.0)
    assert want.amount == 333 - 10 and want.rate == 300_000  # its third of the limit, less what it took
    assert want.stale_ms == 1_000 + Sizing().idle_ms
    assert lease.want(1, 0, 600.0).amount == 1_000 * 600 // 1_200 - 10  # its own rate doubled: half of the key's
    lease.grant(0, 323, 667, 0, rates=900_000, sent=300_000)
    assert lease.want(1, 0, 300.0).amount == 45  # its share taken: 150 ms of its traffic, not a unit at a time
    lease.roll(1_000)
    assert lease.want(1, 1_000, 300.0).amount == 333  # the next window: the share again (rates outlive a window)


def test_a_lease_far_below_the_share_is_not_raised_to_it():
    lease = Lease(Limit("second", 1_000), 0)
    lease.grant(0, 0, 1_000, 0, rates=300_000, sent=100_000)  # the key at 30 % of its limit
    assert lease.want(1, 0, 100.0).amount == 125  # its rate with headroom, not its share (333)


@pytest.mark.parametrize("gap_ms, most", [(200, 3), (1_000, 4), (3_000, 6)])
def test_a_sparse_key_leases_on_few_of_its_requests(gap_ms, most):
    # A key used every gap_ms on one node (a minute and a month limit): once its rate is known its
    # leases cover many requests, and it keeps them between requests (4 usual gaps at least).
    key = KeyLimiter([Limit("minute", 10**6), Limit("month", 10**9)], 0)
    store: dict = {}
    leases = 0
    for i in range(60):
        now = 1_000 + i * gap_ms
        decision = key.admit(1, now)
        while decision.outcome == NEEDS_LEASE:
            leases += 1
            for want in decision.wants:
                left = store.setdefault((want.window, want.start), 10**9)
                store[(want.window, want.start)] = left - want.amount
                key.grant(want.window, want.start, want.amount, left - want.amount, now, want.rate, want.rate)
            decision = key.admit(1, now)
        assert decision.outcome == ADMITTED
        for tick in range(now + 1, now + gap_ms, 1_000):  # the node's return ticks until the next request
            for want in key.release(tick):
                store[(want.window, want.start)] += want.amount
    assert leases <= most


# --- the limiter's fast path (gateway.limiter.Entry): a flat budget, settled into the leases ---

def test_the_fast_budget_is_the_least_held_until_a_window_or_the_second_ends():
    key = limiter(("second", 10), ("minute", 100), now=1_200)
    key.grant("second", 1_000, 4, 0, 1_200)
    key.grant("minute", 0, 9, 50, 1_200)
    assert key.fast_budget(1_200) == (4, 2_000)  # the second's window ends with the second
    key = limiter(("minute", 100), ("month", 10_000), now=59_500)
    key.grant("minute", 0, 30, 0, 59_500)
    key.grant("month", key.leases[1].start, 7, 0, 59_500)
    assert key.fast_budget(59_500) == (7, 60_000)
    assert key.fast_budget(60_000) == (0, 0)  # the minute is over: through the leases first
    assert limiter(("hour", 5), now=100).fast_budget(100) == (0, 1_000)  # nothing held


def test_spending_the_fast_budget_is_admitting_one_by_one():
    one, many = limiter(("minute", 100), ("day", 500)), limiter(("minute", 100), ("day", 500))
    for key in (one, many):
        key.grant("minute", 0, 40, 0, 1_000)
        key.grant("day", 0, 40, 0, 1_000)
    for t in (1_100, 1_300, 1_500, 1_900):
        assert one.admit(2, t) is ADMIT
    many.spend(8, 4, 1_900)
    assert snapshot(many) == snapshot(one)
    assert [l.last_admit for l in many.leases] == [l.last_admit for l in one.leases] == [1_900, 1_900]


def test_the_meters_batch_counts_exactly_and_one_admit_is_add():
    single, batch = RateMeter(), RateMeter()
    for meter in (single, batch):
        meter.add(1, 500)
    single.add(3, 2_700)
    batch.add_many(3, 1, 2_700)
    assert (batch.second, batch.count, batch.previous, batch.ewma, batch.gap, batch.last) == \
           (single.second, single.count, single.previous, single.ewma, single.gap, single.last)
    evenly = RateMeter()
    evenly.add(1, 0)
    for t in (100, 200, 300, 400):
        evenly.add(2, t)
    batched = RateMeter()
    batched.add(1, 0)
    batched.add_many(8, 4, 400)  # evenly spaced admits: the same gap EWMA
    assert batched.count == evenly.count == 9 and batched.gap == pytest.approx(evenly.gap)


def test_the_header_parts_are_the_header_bytes():
    key = limiter(("minute", 100), ("month", 10_000), now=ms(2026, 2, 28, 23, 59))
    lines = RateHeaders([lease.limit for lease in key.leases])
    now = ms(2026, 2, 28, 23, 59, 1)
    key.grant("minute", ms(2026, 2, 28, 23, 59), 10, 50, now)
    head, left, suffix = lines.parts(key.leases, now)
    assert (left, head + b"%d" % left + suffix) == (60, lines.render(key.leases, now))
    assert head.endswith(b'RateLimit: "per-minute";r=') and suffix == b";t=59\r\n"
