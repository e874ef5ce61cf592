"""What the admin API and `gateway keys` accept: here, a key's expiry capped at its creator's."""

from __future__ import annotations

import pytest

from gateway.model import DAY_MS
from gateway.validation import InvalidField, expiry_within, key_limits, limit_flag

NOW = 1_764_000_000_000


@pytest.mark.parametrize("choice, cap, expected", [
    ("never", None, None), ("1y", None, NOW + 365 * DAY_MS),
    ("30d", NOW + 30 * DAY_MS, NOW + 30 * DAY_MS), ("30d", NOW + 90 * DAY_MS, NOW + 30 * DAY_MS),
])
def test_an_expiry_within_the_cap_is_kept(choice, cap, expected):
    assert expiry_within(choice, NOW, cap) == expected


@pytest.mark.parametrize("choice, cap, fits", [
    ("never", NOW + 400 * DAY_MS, ["30d", "90d", "1y"]), ("1y", NOW + 364 * DAY_MS, ["30d", "90d"]),
    ("30d", NOW + 30 * DAY_MS - 1, []), ("90d", NOW, []),
])
def test_an_expiry_past_the_cap_names_the_cap_and_what_fits(choice, cap, fits):
    with pytest.raises(InvalidField) as info:
        expiry_within(choice, NOW, cap)
    assert info.value.field == "expires_in" and info.value.extra["allowed_expires_in"] == fits
    assert info.value.extra["max_expires_at"] in str(info.value)


# -- limits (issue 16) ----------------------------------------------------------------------------

def _ceiling(limits):
    for limit in limits:
        if limit.window == "second" and limit.limit > 100:
            raise ValueError(f"per-second limit {limit.limit} is above this gateway's maximum of 100")


def test_limits_come_back_shortest_window_first():
    from gateway.ratelimit import Limit
    assert key_limits([("month", 9), ("second", 3)], _ceiling) == (Limit("second", 3), Limit("month", 9))


@pytest.mark.parametrize("pairs, text", [
    ([("week", 1)], "limits[0].window must be one of: second, minute, hour, day, month"),
    ([("minute", 1), ("hour", 0)], "limits[1].limit must be an integer from 1 to"),
    ([("minute", True)], "limits[0].limit must be an integer"),
    ([("minute", "5")], "limits[0].limit must be an integer"),
    ([("minute", 10**15)], "limits[0].limit must be an integer from 1 to 999999999999999"),
    ([("minute", 1), ("minute", 2)], "minute is given more than once"),
    ([], "at least one limit; null clears"),
    ([("second", 101)], "limits: per-second limit 101 is above this gateway's maximum of 100."),
])
def test_bad_limits_name_the_field_and_what_is_wrong(pairs, text):
    with pytest.raises(InvalidField) as caught:
        key_limits(pairs, _ceiling)
    assert caught.value.field == "limits" and text in str(caught.value)


@pytest.mark.parametrize("text, pair", [("minute=600", ("minute", 600)), (" day = 5 ", ("day", 5)),
                                        ("hour=1e3", ("hour", "1e3")), ("week=1", ("week", 1))])
def test_limit_flags_parse_for_key_limits_to_check(text, pair):
    assert limit_flag(text) == pair


def test_a_limit_flag_without_equals_says_how():
    with pytest.raises(InvalidField, match="WINDOW=N"):
        limit_flag("minute")


def test_looser_than_names_each_window_of_the_cap_left_out_or_set_higher():
    from gateway.ratelimit import Limit
    from gateway.validation import looser_than
    cap = (Limit("minute", 100), Limit("month", 10))
    assert looser_than((Limit("second", 1), Limit("minute", 100), Limit("month", 9)), cap) == []
    assert looser_than((Limit("minute", 101),), cap) == [(Limit("minute", 100), 101), (Limit("month", 10), None)]
    assert looser_than((), ()) == [] and looser_than((Limit("day", 5),), ()) == []
