"""Per-key rate limits and quotas, what they are: fixed UTC windows (second, minute, hour for
rates; day and calendar month for quotas), the limit spec, the store-fault policy and the IETF
RateLimit headers. Pure; every time is an injected integer of milliseconds since the Unix epoch.

Headers follow draft-ietf-httpapi-ratelimit-headers-11 (May 2026; the structured-field form of
-08 to -11): ``RateLimit-Policy: "per-minute";q=100;w=60`` (a List, one item per limit) and
``RateLimit: "per-minute";r=42;t=17`` (remaining units, seconds to the reset). The lease
accounting that enforces the limits on one node is ``gateway.leases``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Sequence

import msgspec
from msgspec import Meta

SECOND, MINUTE, HOUR, DAY, MONTH = "second", "minute", "hour", "day", "month"
RATE_WINDOWS = (SECOND, MINUTE, HOUR)
QUOTA_PERIODS = (DAY, MONTH)
WINDOWS = RATE_WINDOWS + QUOTA_PERIODS
FIXED_MS = {SECOND: 1_000, MINUTE: 60_000, HOUR: 3_600_000, DAY: 86_400_000}
MAX_LIMIT = 999_999_999_999_999  # the largest structured-field Integer (15 digits)
OPEN, CLOSED = "open", "closed"

# --- windows ---------------------------------------------------------------------------------

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MS = dt.timedelta(milliseconds=1)


def window_bounds(window: str, now: int) -> tuple[int, int]:
    """[start, end) in ms of the UTC window holding ``now``; ``end`` is the reset time."""
    size = FIXED_MS.get(window)
    if size is not None:
        start = now - now % size
        return start, start + size
    if window != MONTH:
        raise ValueError(f"unknown window {window!r}; expected one of {', '.join(WINDOWS)}")
    # The calendar is datetime's (proleptic Gregorian, UTC): computed once per window, not per request.
    first = (_EPOCH + now * _MS).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = first.replace(year=first.year + (first.month == 12), month=first.month % 12 + 1)
    return (first - _EPOCH) // _MS, (following - _EPOCH) // _MS


def seconds_until(end: int, now: int) -> int:
    """Whole seconds from ``now`` to ``end``, rounded up (0 once it has passed)."""
    return max(0, -((now - end) // 1000))


class Limit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One limit of a key: at most ``limit`` request units per UTC ``window``."""

    window: Annotated[str, Meta(description="second, minute or hour (a rate); day or month (a quota, UTC calendar)")]
    limit: Annotated[int, Meta(description=f"request units per window, 1 to {MAX_LIMIT}")]

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise ValueError(f"window must be one of {', '.join(WINDOWS)}, not {self.window!r}")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or not 1 <= self.limit <= MAX_LIMIT:
            raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}, not {self.limit!r}")

    @property
    def is_quota(self) -> bool:
        return self.window in QUOTA_PERIODS

    @property
    def code(self) -> str:
        """The error code of a refusal by this limit."""
        return "quota_exceeded" if self.is_quota else "rate_limited"

    @property
    def policy_name(self) -> str:
        return f"per-{self.window}"


class FaultPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a limit whose lease the store cannot answer does once the held budget is spent."""

    # Rate windows protect the backend from bursts: a short store outage should not stop traffic;
    # quotas are what a customer paid for: never give away what cannot be counted.
    rate: Annotated[str, Meta(description="rate windows: open (admit) or closed (503)")] = OPEN
    quota: Annotated[str, Meta(description="quotas: open (admit) or closed (503 quota_unavailable)")] = CLOSED

    def __post_init__(self) -> None:
        for name in ("rate", "quota"):
            if getattr(self, name) not in (OPEN, CLOSED):
                raise ValueError(f"{name} must be {OPEN!r} or {CLOSED!r}, not {getattr(self, name)!r}")

    def opens(self, limit: Limit) -> bool:
        return (self.quota if limit.is_quota else self.rate) == OPEN

    @staticmethod
    def code(limit: Limit) -> str:
        return "quota_unavailable" if limit.is_quota else "rate_limit_unavailable"


# --- headers ---------------------------------------------------------------------------------

def _window_seconds(window: str, now: int) -> int:
    start, end = window_bounds(window, now)
    return (end - start) // 1000


def policy_header(limits: Sequence[Limit], now: int) -> str:
    """``RateLimit-Policy``: one item per limit; a month's ``w`` is the current month's length."""
    return ", ".join(f'"{limit.policy_name}";q={limit.limit};w={_window_seconds(limit.window, now)}'
                     for limit in limits)


def ratelimit_header(limit: Limit, remaining: int, end: int, now: int) -> str:
    """``RateLimit`` for one limit: the units left and whole seconds until its window ends."""
    return f'"{limit.policy_name}";r={max(0, remaining)};t={seconds_until(end, now)}'


# --- edits -----------------------------------------------------------------------------------

def narrower(old: Sequence[Limit] | None, new: Sequence[Limit] | None) -> tuple[Limit, ...]:
    """What an edit from ``old`` to ``new`` writes to a rolled key's aliases before the record:
    per window the smaller of the two limits, every window of either (a window one side does not
    limit is unlimited there), shortest window first. Never more permissive than either side, so
    an alias is no wider than its record at any step of the edit. () when neither limits anything.
    """
    least: dict[str, int] = {}
    for limit in (*(old or ()), *(new or ())):
        least[limit.window] = min(limit.limit, least.get(limit.window, limit.limit))
    return tuple(Limit(window, least[window]) for window in WINDOWS if window in least)
