"""Usage bookkeeping of one gateway process (a node): last-used totals and the usage history.

Pure. ``add`` is all a request does, once its answer is known (its outcome class: ``outcome_class``).

Last-used: running totals per key, written as absolutes. gateway.tasks drains the keys changed
since the last flush, writes their absolute totals (latest use, request count) with one command
into this node's usage hash, and reports back: ``confirm`` when it landed, ``restore`` when it
failed (the keys are written again next time, so nothing is lost during a Redis outage),
``rebase`` when the node's hash was folded into the durable base while it was away. Each write
carries a sequence number and the node's *generation*: the totals restart, as a new generation,
once the node learns its hash was folded (``rebase``, ``retire``). The store keeps the later use
and the larger count of a write older than the hash's latest, and refuses a write of an older
generation (gateway.store.ledger): so a failed write that Redis runs late, whenever that is,
never sets a total back nor counts twice, and the node needs no write to repair it.

History: counts per key, UTC hour and outcome class, kept like the last-used totals: this
node's *absolute* counts per (hour, key) since it began, written with the same flush (one script
call beside the HSET: gateway.store.ledger) into this node's hash of that hour, one field a key.
A retry writes the same totals again, so it can never count twice; a failed write's keys are
written again, first. These counts only grow, and each write carries a sequence number: a
failed write that Redis runs late, after newer ones (whenever that is), only raises a count to
the larger one, class by class, so it changes nothing and the node needs no write to repair it.
(Once the hash is folded, its marker refuses the late write.) The same write carries, for each of its keys, this node's absolute
counts of the key's UTC day (the folded hours' counts plus the open ones), into the node's hash
of that day. Once an hour is over and everything of it has landed, the node folds its hash of
that hour into the per-key hour buckets (``foldable_hours``, ``forget_hour``); once a day is over
and all its hours are folded, its day hash into the per-key day buckets (``foldable_days``,
``forget_day``): the only per-key work in Redis, once per key and hour and once per key and day.

The history is written on every flush only when it must be (``history_due``): every
HISTORY_EVERY seconds (the freshness of the current hour in Redis), at once when an hour with
unwritten counts is over (so that it can be folded), after a failed write, and at shutdown.
Counts not written yet stay in memory. A node hash's expiry and its entry in the index of open
hashes are set by the first write of that hash that landed (``HistoryWrite.fresh``).
"""

from __future__ import annotations

import itertools
import os
import secrets
from dataclasses import dataclass, field


# Outcome classes: the index of each count in a history entry, and their names in the API.
OK, REDIRECT, CLIENT_ERROR, SERVER_ERROR, REFUSED = range(5)
CLASSES = ("2xx", "3xx", "4xx", "5xx", "refused")
# Refusals by the gateway after the key was authenticated: 403 insufficient scope, 404 no route,
# 405 wrong method, 429 (rate limits). The same statuses from the upstream count by their class.
REFUSED_STATUSES = frozenset({403, 404, 405, 429})
HOUR_MS = 3_600_000
HISTORY_EVERY = 10.0  # seconds between history writes: how fresh a node's current hour is in Redis


def outcome_class(status: int, by_gateway: bool) -> int:
    """The class of the answer the client got: REFUSED when the gateway itself refused with one
    of REFUSED_STATUSES, else by status (a gateway 502/504 is 5xx, a cancelled request's 499 is 4xx)."""
    if by_gateway and status in REFUSED_STATUSES:
        return REFUSED
    if status < 300:
        return OK
    if status < 400:
        return REDIRECT
    if status < 500:
        return CLIENT_ERROR
    return SERVER_ERROR


def new_node_id() -> str:
    return f"gw_{os.getpid()}_{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class Batch:
    """One write: this node's absolute totals for some keys, and the uses it is the first to carry."""

    seq: int
    values: dict[str, tuple[int, int]]  # key id -> (last used ms, request count) of the generation
    deltas: dict[str, tuple[int, int]]  # key id -> (latest use, count) of the uses new in this write
    gen: int = 0  # the node's generation: its totals restart with each fold it learns of

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True, slots=True)
class HistoryWrite:
    """One write of this node's absolute counts per hour and key, and per day and key (copies,
    taken at drain time). ``fresh``: the hashes (("h", hour) or ("d", day)) not known to have been
    written before, whose expiry and index entry this write sets (None: all of them). ``seq``
    grows with each write drained: a later one carries counts at least as large."""

    hours: dict[int, dict[str, tuple[int, ...]]]
    days: dict[int, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    fresh: frozenset[tuple[str, int]] | None = None
    seq: int = 0

    def is_fresh(self, kind: str, index: int) -> bool:
        return self.fresh is None or (kind, index) in self.fresh

    def __len__(self) -> int:
        return sum(len(keys) for keys in self.hours.values())


_RETRY = (0, 0)  # a pending entry with no new use: the key's totals must be written again


class UsageBuffer:
    """Per-key totals of this process's uses; memory is bounded by the number of keys it has used."""

    def __init__(self, node_id: str | None = None) -> None:
        self.node_id = node_id or new_node_id()
        self._pending: dict[str, tuple[int, int]] = {}  # uses since the last drain (and retries)
        self._totals: dict[str, tuple[int, int]] = {}  # everything drained so far
        self._unconfirmed: list[Batch] = []  # writes since the last one known to have landed
        self._seq = 0
        self._gen = 0  # one more per fold of this node's hash it learned of (rebase, retire)
        self.registered = False  # the node has announced itself in Redis (ledger beat)
        self.beat_at: float | None = None  # monotonic time of the last beat that was answered
        self.closing = False  # set at shutdown: the last flush then folds this node's hash
        # History: hour -> key id -> this node's counts per class since it began (unfolded hours),
        # and per hour the keys to write: changed since their last write, or retried.
        self._hours: dict[int, dict[str, list[int]]] = {}
        self._changed: dict[int, set[str]] = {}
        self._hour = -1  # the hour of ``_current`` and ``_current_changed`` (the latest hour used)
        self._current: dict[str, list[int]] = {}
        self._current_changed: set[str] = set()
        self._history_in_flight: list[HistoryWrite] = []  # writes sent (or failed) since the last success
        self._history_seq = 0  # of the latest history write drained
        self._latest_hour = -1  # of the latest use: the hours before it are over (uses are timed when answered)
        self._day_base: dict[int, dict[str, list[int]]] = {}  # day -> key -> counts of its folded hours
        self._written: set[tuple[str, int]] = set()  # node hashes a confirmed write set up (expiry, index)
        self.history_every = HISTORY_EVERY
        self.history_at: float | None = None  # monotonic time of the last history pass that wrote

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, key_id: str, at_ms: int, outcome: int = OK) -> None:
        """Record one use of a key at ``at_ms`` with its outcome class (called on every request)."""
        pending = self._pending
        last, n = pending.get(key_id, _RETRY)
        pending[key_id] = (at_ms if at_ms > last else last, n + 1)
        hour = at_ms // HOUR_MS
        if hour != self._hour:  # (once an hour, and after a drain emptied the hour's set)
            self._use_hour(hour)
        counts = self._current.get(key_id)
        if counts is None:
            counts = self._current[key_id] = [0, 0, 0, 0, 0]
        counts[outcome] += 1  # in place: no allocation for a key already counted this hour
        self._current_changed.add(key_id)

    def _use_hour(self, hour: int) -> None:
        self._hour = hour
        if hour > self._latest_hour:
            self._latest_hour = hour
        self._current = self._hours.setdefault(hour, {})
        self._current_changed = self._changed.setdefault(hour, set())

    @property
    def history_pending(self) -> int:
        """(hour, key) entries waiting to be written."""
        return sum(len(keys) for keys in self._changed.values())

    def history_due(self, now: float) -> bool:
        """Whether a flush at monotonic ``now`` writes the history: something is waiting, and it
        is the first write, HISTORY_EVERY seconds passed since the last, the last one failed, an
        hour with unwritten counts is over (so that it can be folded), or the node is closing."""
        if not self.history_pending:
            return False
        if self.closing or self._history_in_flight or self.history_at is None:
            return True
        if any(keys and hour < self._latest_hour for hour, keys in self._changed.items()):
            return True
        return now - self.history_at >= self.history_every

    def drain_history(self, limit: int | None = None) -> HistoryWrite | None:
        """The next history write: the absolute counts of up to ``limit`` changed (hour, key)
        entries, oldest hours first, and the day counts of their keys."""
        out: dict[int, dict[str, tuple[int, ...]]] = {}
        days: dict[int, dict[str, tuple[int, ...]]] = {}
        taken = 0
        for hour in sorted(self._changed):
            changed = self._changed[hour]
            counts = self._hours[hour]
            while changed and (limit is None or taken < limit):
                key_id = changed.pop()
                out.setdefault(hour, {})[key_id] = tuple(counts[key_id])
                days.setdefault(hour // 24, {})[key_id] = ()
                taken += 1
        self._changed = {h: keys for h, keys in self._changed.items() if keys}
        self._hour = -1  # the next add looks its hour's set up again
        if not out:
            return None
        for day, keys in days.items():
            base = self._day_base.get(day, {})
            open_hours = [self._hours[h] for h in range(day * 24, day * 24 + 24) if h in self._hours]
            for key_id in keys:
                total = list(base.get(key_id, (0, 0, 0, 0, 0)))
                for hour_counts in open_hours:
                    for i, n in enumerate(hour_counts.get(key_id, ())):
                        total[i] += n
                keys[key_id] = tuple(total)
        fresh = frozenset({("h", h) for h in out} | {("d", d) for d in days}) - self._written
        self._history_seq += 1
        write = HistoryWrite(out, days, fresh, self._history_seq)
        self._history_in_flight.append(write)  # until a write is confirmed: no fold
        return write

    def confirm_history(self, write: HistoryWrite) -> None:
        """``write`` landed: so did the failed ones before it (their keys are in it or were
        confirmed earlier). A failed one may still run late: as an older write than the hash's
        latest it only raises counts (gateway.store.ledger), so it needs no repair."""
        self._history_in_flight.clear()
        self._written |= write.fresh or set()

    def restore_history(self, write: HistoryWrite) -> None:
        """``write`` failed (it may or may not have landed): its keys are written again."""
        for hour, keys in write.hours.items():
            self._changed.setdefault(hour, set()).update(keys)
        self._hour = -1

    def foldable_hours(self, everything: bool = False) -> list[int]:
        """Hours whose counts have all landed and that no use joins any more: older than the
        latest use (uses are timed by this node's clock when answered; an idle node's last hour
        stays open, and is read as such, until a later use or shutdown); ``everything``: at
        shutdown, the latest one too. A use timed in an hour already folded (the clock set back)
        is not counted in the history."""
        return sorted(h for h in self._hours
                      if (everything or h < self._latest_hour) and not self._changed.get(h)
                      and not self._history_in_flight)

    def forget_hour(self, hour: int) -> None:
        """This node's hash of ``hour`` was folded: its counts are in the per-key buckets now
        (and, until its day is folded, in this node's counts of the day)."""
        base = self._day_base.setdefault(hour // 24, {})
        for key_id, counts in self._hours.pop(hour, {}).items():
            total = base.setdefault(key_id, [0, 0, 0, 0, 0])
            for i, n in enumerate(counts):
                total[i] += n
        self._changed.pop(hour, None)
        self._written.discard(("h", hour))
        self._hour = -1

    def foldable_days(self, everything: bool = False) -> list[int]:
        """Days whose hours are all folded (their day counts are written with the hours' counts)
        and that are over (the latest use is on a later day; ``everything``: at shutdown)."""
        open_days = {h // 24 for h in self._hours}
        return sorted(d for d in self._day_base
                      if (everything or d < self._latest_hour // 24) and d not in open_days
                      and not self._history_in_flight)

    def forget_day(self, day: int) -> None:
        """This node's hash of ``day`` was folded into the per-key day buckets."""
        self._day_base.pop(day, None)
        self._written.discard(("d", day))

    def drain(self, limit: int | None = None) -> Batch | None:
        """The next write: absolute totals of up to ``limit`` changed keys (retried keys first)."""
        if not self._pending:
            return None
        if limit is None or len(self._pending) <= limit:
            deltas, self._pending = self._pending, {}
        else:
            deltas = dict(itertools.islice(self._pending.items(), limit))
            for key_id in deltas:
                del self._pending[key_id]
        totals = self._totals
        values = {}
        for key_id, (last, n) in deltas.items():
            old = totals.get(key_id)
            if old is not None:
                last, n = max(old[0], last), old[1] + n
            elif n == 0:
                continue  # a retry of a key whose totals were folded away (see rebase)
            values[key_id] = totals[key_id] = (last, n)
        self._seq += 1
        return Batch(self._seq, values, deltas, self._gen)

    def confirm(self, batch: Batch) -> None:
        """``batch`` landed. Every earlier write's keys were carried by it, so all of them did too.
        A failed one may still run late: older than the hash's latest, it changes nothing (or, of
        an older generation, it is refused: gateway.store.ledger), so it needs no repair."""
        self._unconfirmed.clear()

    def restore(self, batch: Batch) -> None:
        """``batch`` failed (it may or may not have landed): its keys go first into the next write."""
        self._unconfirmed.append(batch)
        retry = dict.fromkeys(batch.values, _RETRY)
        retry.update(self._pending)  # keeps the retried keys first, with any newer uses
        self._pending = retry

    def rebase(self, landed_seq: int, gen: int = 0) -> None:
        """This node's hash was folded into the base; its last write that landed was ``landed_seq``,
        and the hash admits generation ``gen`` now (ledger.beat).

        What had landed is counted in the base now, so the totals restart from the uses that
        had not: those of later writes, and those not yet written, as a new generation (at
        least the one the folded hash admits; the store refuses the earlier ones' writes).
        """
        lost: dict[str, tuple[int, int]] = {}
        for batch in self._unconfirmed:
            if batch.seq > landed_seq:
                for key_id, (last, n) in batch.deltas.items():
                    if n:
                        old = lost.get(key_id, _RETRY)
                        lost[key_id] = (max(old[0], last), old[1] + n)
        for key_id, (last, n) in self._pending.items():
            if n:
                old = lost.get(key_id, _RETRY)
                lost[key_id] = (max(old[0], last), old[1] + n)
        self._pending = lost
        self._totals = {}
        self._unconfirmed.clear()
        self._gen = max(self._gen + 1, gen)

    def retire(self, gen: int = 0) -> None:
        """This node folded its own hash (at shutdown), which admits generation ``gen`` now:
        start afresh, as a new generation, should it be used again."""
        self._totals = {}
        self._unconfirmed.clear()
        self._gen = max(self._gen + 1, gen)
        self.registered = False
        self.beat_at = None
