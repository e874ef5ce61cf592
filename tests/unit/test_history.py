"""Usage history, the pure parts: query windows, their checks and defaults, contiguous buckets."""

from __future__ import annotations

import pytest

from gateway.history import DAY, DAY_MS, HOUR, Window, buckets, day_slot, hour_slot, parse_time, window
from gateway.usage import HOUR_MS
from gateway.validation import InvalidField

NOW = parse_time("2026-12-01T10:30:00Z", "to")


def test_times_are_rfc3339_with_a_zone():
    assert parse_time("2026-12-01T10:30:00+01:00", "to") == NOW - HOUR_MS
    for bad in ("2026-12-01", "2026-12-01T10:30:00", "yesterday", ""):
        with pytest.raises(InvalidField) as exc:
            parse_time(bad, "from")
        assert exc.value.field == "from" and "RFC 3339" in str(exc.value)


def test_defaults():
    assert window(NOW, None, None, None, 90) == Window(HOUR, NOW - DAY_MS, NOW)
    assert window(NOW, None, None, DAY, 90) == Window(DAY, NOW - 30 * DAY_MS, NOW)
    week = window(NOW, "2026-11-24T10:30:00Z", None, None, 90)
    assert week.granularity == HOUR
    assert window(NOW, "2026-11-24T10:29:59Z", None, None, 90).granularity == DAY  # over 7 days


def test_buckets_are_aligned_and_contiguous():
    win = window(NOW, None, None, None, 90)
    assert len(win) == 25  # 10:30 yesterday to 10:30 today: 25 hours touched
    out, totals = buckets(win, {win.first + 1: [1, 2, 3, 4, 5]})
    assert out[0] == (NOW - DAY_MS - 30 * 60_000, [0] * 5) and out[1][1] == [1, 2, 3, 4, 5]
    assert [start for start, _ in out] == [out[0][0] + i * HOUR_MS for i in range(25)]
    assert totals == [1, 2, 3, 4, 5]
    aligned = Window(DAY, 0, 2 * DAY_MS)
    assert aligned.first == 0 and aligned.last == 1 and len(aligned) == 2  # to is excluded


@pytest.mark.parametrize("args, field", [
    ((None, None, "week"), "granularity"),
    (("2026-12-01T10:30:00Z", "2026-12-01T10:30:00Z", None), "from"),
    (("2026-12-01T11:00:00Z", None, None), "from"),
    (("2026-10-01T00:00:00Z", None, HOUR), "to"),  # 61 days of hours
    (("2022-01-01T00:00:00Z", None, DAY), "to"),
    (("2026-08-01T00:00:00Z", "2026-08-02T00:00:00Z", HOUR), "from"),  # beyond the hourly retention
])
def test_refusals_name_the_parameter(args, field):
    with pytest.raises(InvalidField) as exc:
        window(NOW, *args, 90)
    assert exc.value.field == field


def test_store_slots():
    assert hour_slot(24 * 5 + 7) == (5, 7)
    assert day_slot(32 * 3 + 31) == (3, 31)
