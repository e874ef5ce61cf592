"""Usage history, the pure parts: where a bucket lives, which buckets a query asks for, the answer.

Buckets are UTC hours and UTC days (epoch-aligned: an hour index is ms // HOUR_MS, a day index
ms // DAY_MS). The store keeps an hour in the hash of its key and day (24 fields at most, one a
hour) and a day in the hash of its key and 32-day page (32 fields at most): both small enough
to stay listpacks whatever the mix of outcome classes, since a bucket's counts are one value
(gateway.store.codec.encode_counts).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from gateway.usage import CLASSES, HOUR_MS
from gateway.validation import InvalidField

DAY_MS = 24 * HOUR_MS
PAGE_DAYS = 32  # days per daily-bucket hash
HOUR, DAY = "hour", "day"
GRANULARITIES = (HOUR, DAY)
UNIT_MS = {HOUR: HOUR_MS, DAY: DAY_MS}
DEFAULT_SPAN_MS = {HOUR: DAY_MS, DAY: 30 * DAY_MS}  # from = to - this when from is not given
HOUR_BY_DEFAULT_MS = 7 * DAY_MS  # without granularity: hour up to this range, else day
MAX_BUCKETS = {HOUR: 31 * 24, DAY: 1100}  # the longest answer: 31 days of hours, ~3 years of days


def hour_slot(hour: int) -> tuple[int, int]:
    """(day index, field) of an hour bucket in the store."""
    return hour // 24, hour % 24


def day_slot(day: int) -> tuple[int, int]:
    """(page index, field) of a day bucket in the store."""
    return day // PAGE_DAYS, day % PAGE_DAYS


@dataclass(frozen=True, slots=True)
class Window:
    """The buckets a query covers: ``first`` to ``last`` (indexes in ``granularity`` units)."""

    granularity: str
    from_ms: int
    to_ms: int

    @property
    def first(self) -> int:
        return self.from_ms // UNIT_MS[self.granularity]

    @property
    def last(self) -> int:
        """The bucket holding the last millisecond before ``to``."""
        return (self.to_ms - 1) // UNIT_MS[self.granularity]

    def __len__(self) -> int:
        return self.last - self.first + 1


def parse_time(value: str, field: str) -> int:
    """RFC 3339 with a time zone (``2026-12-01T10:00:00Z``) -> ms since the epoch."""
    text = value.upper()  # RFC 3339 allows "t" and "z"
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or "T" not in text:
        raise InvalidField(field, f"{field} must be an RFC 3339 time with a time zone, "
                                  f"e.g. 2026-12-01T10:00:00Z; got {value!r}.")
    return int(parsed.timestamp() * 1000)


def window(now_ms: int, from_: str | None, to: str | None, granularity: str | None,
           hourly_days: int) -> Window:
    """The query's window, defaults applied; InvalidField naming the parameter at fault."""
    if granularity is not None and granularity not in GRANULARITIES:
        raise InvalidField("granularity", f"granularity must be hour or day; got {granularity!r}.")
    to_ms = now_ms if to is None else parse_time(to, "to")
    from_ms = None if from_ is None else parse_time(from_, "from")
    if granularity is None:
        granularity = HOUR if from_ms is None or to_ms - from_ms <= HOUR_BY_DEFAULT_MS else DAY
    if from_ms is None:
        from_ms = to_ms - DEFAULT_SPAN_MS[granularity]
    if from_ms >= to_ms:
        raise InvalidField("from", "from must be earlier than to.")
    if from_ms < 0:
        raise InvalidField("from", "from must not be before 1970.")
    found = Window(granularity, from_ms, to_ms)
    cap = MAX_BUCKETS[granularity]
    if len(found) > cap:
        span = "31 days" if granularity == HOUR else f"{cap} days"
        advice = "; use granularity=day" if granularity == HOUR else ""
        raise InvalidField("to", f"At most {cap} {granularity} buckets ({span}) per query{advice}.",
                           max_buckets=cap)
    if granularity == HOUR and found.first < now_ms // HOUR_MS - hourly_days * 24:
        raise InvalidField("from", f"Hourly buckets are kept {hourly_days} days; "
                                   "ask for granularity=day for older usage.")
    return found


def buckets(win: Window, found: dict[int, list[int]]) -> tuple[list[tuple[int, list[int]]], list[int]]:
    """Every bucket of ``win`` in order, as (start ms, counts), zeros where ``found`` has none; and the totals."""
    unit = UNIT_MS[win.granularity]
    zero = [0] * len(CLASSES)
    out = []
    totals = [0] * len(CLASSES)
    for index in range(win.first, win.last + 1):
        counts = found.get(index, zero)
        out.append((index * unit, counts))
        for i, n in enumerate(counts):
            totals[i] += n
    return out, totals


def table(rows: list[tuple[int, list[int]]], totals: list[int], label) -> str:
    """The buckets as a text table (``gateway keys usage``): start, a column per class, total;
    ``label(ms)`` writes a bucket's start."""
    head = ["start", *CLASSES, "total"]
    lines = [[label(start), *map(str, counts), str(sum(counts))] for start, counts in rows]
    lines.append(["total", *map(str, totals), str(sum(totals))])
    widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                     for r in [head, *lines]) + "\n"
