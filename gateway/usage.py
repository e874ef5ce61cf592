"""Usage bookkeeping of one gateway process (a node): last-used totals and the usage history.

Pure. ``add`` is all a request does, once its answer is known (its outcome class: ``outcome_class``).

Last-used: running totals per key, written as absolutes. gateway.tasks drains the keys changed
since the last flush, writes their absolute totals (latest use, request count) with one HSET into
this node's usage hash, and reports back: ``confirm`` when it landed, ``restore`` when it failed
(the keys are written again next time, so nothing is lost during a Redis outage), ``rebase`` when
the node's hash was folded into the durable base while it was away.

History: counts per key, UTC hour and outcome class, sent as *increments* in the same flush (one
script call beside the HSET, gateway.store.ledger). Increments are exact only if each is applied
once, so they travel in numbered batches (``HistoryBatch.seq``, per node, increasing) and the
script applies a batch only if its number is above the last one it applied for this node. A
batch whose write failed (it may or may not have landed, now or later) is sent again *unchanged*,
same number, before any newer one (``drain_history`` returns it until ``confirm_history``): so a
retry of a batch that had landed is skipped, a late copy of a batch already applied is skipped,
and a batch that never landed is applied by its retry. Uses that arrive meanwhile wait in the
next batch. Nothing is counted twice, nothing is lost while the process lives.
"""

from __future__ import annotations

import itertools
import os
import secrets
from dataclasses import dataclass


# Outcome classes: the index of each count in a history entry, and their names in the API.
OK, REDIRECT, CLIENT_ERROR, SERVER_ERROR, REFUSED = range(5)
CLASSES = ("2xx", "3xx", "4xx", "5xx", "refused")
# Refusals by the gateway after the key was authenticated: 403 insufficient scope, 404 no route,
# 405 wrong method, 429 (rate limits). The same statuses from the upstream count by their class.
REFUSED_STATUSES = frozenset({403, 404, 405, 429})
HOUR_MS = 3_600_000


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
    values: dict[str, tuple[int, int]]  # key id -> (last used ms, request count) since the node began
    deltas: dict[str, tuple[int, int]]  # key id -> (latest use, count) of the uses new in this write

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True, slots=True)
class HistoryBatch:
    """One write of history increments, applied at most once (by ``seq``, per node)."""

    seq: int
    entries: list[tuple[str, int, list[int]]]  # (key id, hour since the epoch, counts per class)

    def __len__(self) -> int:
        return len(self.entries)


_RETRY = (0, 0)  # a pending entry with no new use: the key's totals must be written again


class UsageBuffer:
    """Per-key totals of this process's uses; memory is bounded by the number of keys it has used."""

    def __init__(self, node_id: str | None = None) -> None:
        self.node_id = node_id or new_node_id()
        self._pending: dict[str, tuple[int, int]] = {}  # uses since the last drain (and retries)
        self._totals: dict[str, tuple[int, int]] = {}  # everything drained so far
        self._unconfirmed: list[Batch] = []  # writes since the last one known to have landed
        self._suspect: set[str] = set()  # keys of failed writes: written once more after a success
        self._seq = 0
        self.registered = False  # the node has announced itself in Redis (ledger beat)
        self.beat_at: float | None = None  # monotonic time of the last beat that was answered
        self.closing = False  # set at shutdown: the last flush then folds this node's hash
        # History: hour -> key id -> counts per class, not yet in a batch; the batch in flight.
        self._hours: dict[int, dict[str, list[int]]] = {}
        self._hour = -1  # the hour of ``_current`` (the dict of the latest hour used)
        self._current: dict[str, list[int]] = {}
        self._history_seq = 0
        self._outstanding: HistoryBatch | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, key_id: str, at_ms: int, outcome: int = OK) -> None:
        """Record one use of a key at ``at_ms`` with its outcome class (called on every request)."""
        last, n = self._pending.get(key_id, _RETRY)
        self._pending[key_id] = (at_ms if at_ms > last else last, n + 1)
        hour = at_ms // HOUR_MS
        if hour != self._hour:
            self._hour = hour
            self._current = self._hours.setdefault(hour, {})
        counts = self._current.get(key_id)
        if counts is None:
            counts = self._current[key_id] = [0, 0, 0, 0, 0]
        counts[outcome] += 1

    @property
    def history_pending(self) -> int:
        """History entries (key, hour) waiting to be written, the batch in flight included."""
        waiting = sum(len(keys) for keys in self._hours.values())
        return waiting + (len(self._outstanding) if self._outstanding is not None else 0)

    def drain_history(self, limit: int | None = None) -> HistoryBatch | None:
        """The next history write: the one in flight again if it was not confirmed, else up to
        ``limit`` new (key, hour) entries, oldest hours first."""
        if self._outstanding is not None:
            return self._outstanding
        if not self._hours:
            return None
        entries: list[tuple[str, int, list[int]]] = []
        for hour in sorted(self._hours):
            keys = self._hours[hour]
            while keys and (limit is None or len(entries) < limit):
                key_id, counts = keys.popitem()
                entries.append((key_id, hour, counts))
            if keys:
                break
            del self._hours[hour]
        self._hour = -1  # ``_current`` may be a dict just emptied and dropped
        self._history_seq += 1
        self._outstanding = HistoryBatch(self._history_seq, entries)
        return self._outstanding

    def confirm_history(self, batch: HistoryBatch) -> None:
        """``batch`` was applied (or had been: the script skipped it); the next one may go."""
        if self._outstanding is batch:
            self._outstanding = None

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
        return Batch(self._seq, values, deltas)

    def confirm(self, batch: Batch) -> None:
        """``batch`` landed. Every earlier write's keys were carried by it, so all of them did too."""
        self._unconfirmed.clear()
        # A failed write may still be executed late by Redis, after a newer one: write those keys
        # once more now that one write has been answered, so a stale value cannot stay.
        for key_id in self._suspect:
            self._pending.setdefault(key_id, _RETRY)
        self._suspect = set()

    def restore(self, batch: Batch) -> None:
        """``batch`` failed (it may or may not have landed): its keys go first into the next write."""
        self._unconfirmed.append(batch)
        self._suspect.update(batch.values)
        retry = dict.fromkeys(batch.values, _RETRY)
        retry.update(self._pending)  # keeps the retried keys first, with any newer uses
        self._pending = retry

    def rebase(self, landed_seq: int) -> None:
        """This node's hash was folded into the base; its last write that landed was ``landed_seq``.

        What had landed is counted in the base now, so the totals restart from the uses that
        had not: those of later writes, and those not yet written.
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
        self._suspect = set()

    def retire(self) -> None:
        """This node folded its own hash (at shutdown): start afresh should it be used again."""
        self._totals = {}
        self._unconfirmed.clear()
        self._suspect = set()
        self.registered = False
        self.beat_at = None
