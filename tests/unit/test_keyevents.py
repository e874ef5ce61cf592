"""The key-event finder's pure logic (gateway.keyevents): which expiry line is due, unused plans,
event ids and the windows a tick reads; the clock is a number passed in."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from gateway.keyevents import (DAY_MS, EXPIRED, EXPIRING_1D, EXPIRING_7D, days_left, expiry_event_id, index_due,
                               passed_line, unused_event_id, unused_plan, window)

E = 1_800_000_000_000  # an expiry


@pytest.mark.parametrize("now, line, left", [
    (E - 8 * DAY_MS, None, 8),
    (E - 7 * DAY_MS - 1, None, 8),
    (E - 7 * DAY_MS, EXPIRING_7D, 7),
    (E - 3 * DAY_MS + 5, EXPIRING_7D, 3),
    (E - DAY_MS - 1, EXPIRING_7D, 2),
    (E - DAY_MS, EXPIRING_1D, 1),
    (E - 1, EXPIRING_1D, 1),
    (E, EXPIRED, 0),
    (E + 400 * DAY_MS, EXPIRED, 0),
])
def test_only_the_latest_line_passed_is_due(now, line, left):
    assert passed_line(E, now) == line
    assert days_left(E, now) == left


def test_event_ids_are_stable_per_finding_and_differ_between_findings():
    assert expiry_event_id("key_a", EXPIRING_7D, E) == expiry_event_id("key_a", EXPIRING_7D, E) == \
        f"evt_key_a_expiring_7d_{E}"
    ids = {expiry_event_id("key_a", line, at) for line in (EXPIRING_7D, EXPIRING_1D, EXPIRED) for at in (E, E + 1)}
    ids |= {unused_event_id("key_a", E), unused_event_id("key_a", E + 1), unused_event_id("key_b", E)}
    assert len(ids) == 9


@pytest.mark.parametrize("idle_days, unused_days, expire_days, event, expire, next_in_days", [
    (0, 30, None, False, False, 30),
    (29.9, 30, None, False, False, 30),
    (30, 30, None, True, False, None),
    (100, 30, None, True, False, None),
    (30, 30, 90, True, False, 90),
    (89, 30, 90, True, False, 90),
    (90, 30, 90, True, True, None),
    (10, 30, 7, False, True, 30),  # expires before it would count as unused
    (7, 7, 7, True, True, None),
])
def test_unused_plans(idle_days, unused_days, expire_days, event, expire, next_in_days):
    last = 1_700_000_000_000
    plan = unused_plan(last, last + int(idle_days * DAY_MS), unused_days, expire_days)
    assert (plan.event, plan.expire) == (event, expire)
    assert plan.next_due == (None if next_in_days is None else last + next_in_days * DAY_MS)


@given(st.integers(0, 10**13), st.integers(0, 10**10), st.integers(1, 3650), st.none() | st.integers(1, 3650))
def test_a_plan_is_due_again_only_later_and_never_forgets_a_threshold(last, idle, unused_days, expire_days):
    now = last + idle
    plan = unused_plan(last, now, unused_days, expire_days)
    assert plan.next_due is None or plan.next_due > now
    later = unused_plan(last, plan.next_due, unused_days, expire_days) if plan.next_due else plan
    assert later.event >= plan.event and later.expire >= plan.expire  # once due, always due
    if plan.next_due is None:
        assert plan.event and (expire_days is None or plan.expire)


def test_windows_start_above_the_last_head_less_the_slack():
    assert window(None, 1000, 60, None) == (None, 1000)  # the first tick: from the lowest
    assert window(None, 1000, 60, 940) == (940, 1000)
    assert window(1000, 1600, 60, None) == (940, 1600)
    assert window(2000, 1600, 60, None) == (1600, 1600)  # a clock set back: an empty window


def test_a_flush_raises_the_index_by_last_use_at_most_once_a_step_per_key():
    values = {"key_a": (10_000, 3), "key_b": (10_000, 1), "key_c": (4_000, 9)}
    assert index_due(values, {}, 5_000) == {"key_a": 10_000, "key_b": 10_000, "key_c": 4_000}
    indexed = {"key_a": 5_000, "key_b": 5_001, "key_c": 4_000}
    assert index_due(values, indexed, 5_000) == {"key_a": 10_000}


def test_a_rescan_is_needed_when_a_setting_is_lowered_or_auto_expiry_turned_on():
    from gateway.keyevents import rescan_needed
    assert rescan_needed((30, None), (7, None))
    assert rescan_needed((30, None), (30, 60))
    assert rescan_needed((30, 90), (30, 60))
    assert rescan_needed(None, (30, None))
    assert not rescan_needed((30, None), (60, None))
    assert not rescan_needed((30, 60), (30, 90))
    assert not rescan_needed((30, 60), (30, None))
    assert not rescan_needed((30, 60), (30, 60))


def test_remember_is_a_bounded_lru_of_what_was_raised():
    # (review of issue 17, 8) more keys in use within the hour than the memory holds
    import time
    from collections import OrderedDict

    from gateway.keyevents import remember
    indexed: OrderedDict[str, int] = OrderedDict()
    remember(indexed, {"a": 1, "b": 1, "c": 1}, 3)
    remember(indexed, {"a": 2}, 3)  # raised again: the most recent
    remember(indexed, {"d": 2}, 3)
    assert list(indexed.items()) == [("c", 1), ("a", 2), ("d", 2)]
    for i in range(300):  # 300 flushes of 2,048 keys, all at once: each costs its own size
        flush = {f"k{i}_{j}": 10 for j in range(2048)}
        t = time.perf_counter()
        remember(indexed, flush, 200_000)
        assert time.perf_counter() - t < 0.05
    assert len(indexed) == 200_000 and "k299_2047" in indexed and "k0_0" not in indexed
