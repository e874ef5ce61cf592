"""Last-used bookkeeping of one gateway process (a node): running totals per key, written as absolutes.

Pure. ``add`` is all a request does. gateway.tasks drains the keys changed since the last flush,
writes their absolute totals (latest use, request count) with one HSET into this node's usage
hash, and reports back: ``confirm`` when it landed, ``restore`` when it failed (the keys are
written again next time, so nothing is lost during a Redis outage), ``rebase`` when the node's
hash was folded into the durable base while it was away.
"""

from __future__ import annotations

import itertools
import os
import secrets
from dataclasses import dataclass


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

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, key_id: str, at_ms: int, count: int = 1) -> None:
        """Record ``count`` uses of a key, the latest at ``at_ms`` (called on every request)."""
        last, n = self._pending.get(key_id, _RETRY)
        self._pending[key_id] = (max(last, at_ms), n + count)

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
