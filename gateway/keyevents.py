"""What the key-event finder finds (issue 17), pure: which expiry line a key has passed, when a key
counts as unused or expires for it, the stable ids of those events, and the windows of the indexes
a tick reads (docs/key-events.md; the Redis side is gateway.store.finder)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

DAY_MS = 86_400_000

EXPIRING_7D, EXPIRING_1D, EXPIRED = "expiring_7d", "expiring_1d", "expired"
# The lines of a key's expiry, latest first: each is passed ``before`` ms ahead of expires_at.
EXPIRY_LINES = ((EXPIRED, 0), (EXPIRING_1D, DAY_MS), (EXPIRING_7D, 7 * DAY_MS))
LINE_BEFORE = dict(EXPIRY_LINES)
UNUSED_WINDOW_MS = DAY_MS  # the shortest unused_days (and expire_unused_days) an org can set: 1


def passed_line(expires_at: int, now_ms: int) -> str | None:
    """The latest expiry line ``now_ms`` has passed (expired, then 1 day, then 7 days before), or
    None before the 7-day line. Only the latest is due: a key that comes within a day of its
    expiry before its 7-day reminder went out (its expiry was set that close) gets the 1-day one."""
    for line, before in EXPIRY_LINES:
        if now_ms >= expires_at - before:
            return line
    return None


def days_left(expires_at: int, now_ms: int) -> int:
    """Whole days until ``expires_at``, rounded up (7 at the 7-day line, 0 once expired)."""
    return max(0, -((now_ms - expires_at) // DAY_MS))


def expiry_event_id(key_id: str, line: str, expires_at: int) -> str:
    """Stable per key, line and expiry: an expiry that is changed makes new reminders."""
    return f"evt_{key_id}_{line}_{expires_at}"


def unused_event_id(key_id: str, last_ms: int) -> str:
    """Stable per key and last use (its creation if never used): a key used again and then
    idle again makes a new event."""
    return f"evt_{key_id}_unused_{last_ms}"


def rescan_needed(before: tuple[int, int | None] | None, after: tuple[int, int | None]) -> bool:
    """Whether an org's change of ``(unused_days, expire_unused_days)`` must have the finder look
    at its keys again: it lowers either, or turns auto-expiry on (keys already idle, and not
    scheduled any more, would never meet the new setting). ``before`` None: not known (yes)."""
    if before is None:
        return True
    (unused, expire), (new_unused, new_expire) = before, after
    return new_unused < unused or (new_expire is not None and (expire is None or new_expire < expire))


@dataclass(frozen=True, slots=True)
class UnusedPlan:
    """What is due for a key last used (or created) at ``last_ms``: the api_key.unused event,
    its auto-expiry, and when to look at it again (None: nothing more to do until it is used)."""

    event: bool
    expire: bool
    next_due: int | None


def unused_plan(last_ms: int, now_ms: int, unused_days: int, expire_unused_days: int | None) -> UnusedPlan:
    """The unused event is due ``unused_days`` after the last use, the auto-expiry (when the org
    set ``expire_unused_days``) that many days after it; ``next_due`` is the first of the two
    still ahead."""
    event_at = last_ms + unused_days * DAY_MS
    expire_at = None if expire_unused_days is None else last_ms + expire_unused_days * DAY_MS
    ahead = [t for t in (event_at, expire_at) if t is not None and t > now_ms]
    return UnusedPlan(now_ms >= event_at, expire_at is not None and now_ms >= expire_at,
                      min(ahead) if ahead else None)


def window(watermark: int | None, head: int, slack_ms: int, first: int | None) -> tuple[int | None, int]:
    """The scores one tick reads from an index: above the previous tick's head (``watermark``)
    less ``slack_ms`` (entries written a little late, by another clock) up to ``head``; on the
    first tick (no watermark) above ``first`` (None: from the lowest). ``(low exclusive, high
    inclusive)``; low None: -inf."""
    if watermark is None:
        return first, head
    return min(watermark - slack_ms, head), head


def index_due(values: dict[str, tuple[int, int]], indexed: dict[str, int], step_ms: int) -> dict[str, int]:
    """The last uses of a flush's ``values`` (key id -> (last used ms, count)) to raise in the index
    by last use: those ``step_ms`` or more past what this process last raised the key to
    (``indexed``), so that a key in steady use costs the index one write an interval, not one a flush."""
    return {key_id: last for key_id, (last, _) in values.items()
            if key_id not in indexed or last - indexed[key_id] >= step_ms}


def remember(indexed: OrderedDict[str, int], raised: dict[str, int], cap: int) -> None:
    """Note the last uses a flush raised in the index (``indexed``: key id -> last use raised to,
    least recently raised first), forgetting the least recently raised beyond ``cap``: a bounded
    LRU, O(raised) a flush however many keys are in use (a forgotten key's next use only costs
    one more ZADD)."""
    for key_id, last in raised.items():
        indexed.pop(key_id, None)
        indexed[key_id] = last
    while len(indexed) > cap:
        indexed.popitem(last=False)
