"""What the admin API and `gateway keys` accept: here, a key's expiry capped at its creator's."""

from __future__ import annotations

import pytest

from gateway.model import DAY_MS
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
