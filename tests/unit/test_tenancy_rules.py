"""The pure rules of tenancy: a key's expiry capped at its creator's, the cascade's tree walk,
and the quota script's answers and INFO memory as the admin API reads them."""

from __future__ import annotations

import pytest

from gateway import errors
from gateway.model import DAY_MS, KeyRecord, created_by_any
from gateway.store.quota import OrgQuota, check_reserve, memory_fraction
from gateway.validation import InvalidField, expiry_within

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


def _rec(key_id: str, by: str) -> KeyRecord:
    return KeyRecord(key_id, "o", "n", "sop_x", ("tasks:read",), "00" * 32, NOW, by)


def test_created_by_any_finds_one_level_and_skips_the_creators():
    records = [_rec("key_a", "operator"), _rec("key_b", "key:key_a"), _rec("key_c", "key:key_b"),
               _rec("key_d", "key:key_a"), _rec("key_e", "key:key_x")]
    assert created_by_any(records, {"key_a"}) == ["key_b", "key_d"]
    assert created_by_any(records, {"key_a", "key_b", "key_d"}) == ["key_c"]
    assert created_by_any(records, {"key_c"}) == []


def test_reserve_answers_become_errors():
    quota = OrgQuota(10, 5)
    check_reserve([1], quota)
    check_reserve(-1, quota)  # the deadline is the caller's
    with pytest.raises(errors.KeyLimitReached) as limit:
        check_reserve([-2, 10], quota)
    assert limit.value.status == 409 and limit.value.extra == {"limit": 10}
    with pytest.raises(errors.TooManyCreates) as rate:
        check_reserve([-3, 1500], quota)
    assert rate.value.status == 429 and rate.value.headers() == {"Retry-After": "2"}


@pytest.mark.parametrize("info, fraction", [
    ({"used_memory": 900, "maxmemory": 1000}, 0.9),
    ({"used_memory": 900, "maxmemory": 0}, 0.0),  # no maxmemory: no mark
    ({"a:1": {"used_memory": 1, "maxmemory": 10}, "b:2": {"used_memory": 5, "maxmemory": 10}}, 0.5),
])
def test_memory_fraction_reads_the_fullest_node(info, fraction):
    assert memory_fraction(info) == fraction
