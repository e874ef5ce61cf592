"""Last-used buffer: one entry per key (latest time, request count), drained in batches.

Pure; the flusher task in gateway.tasks writes each drained batch in one Redis pipeline and
puts it back on failure, so nothing is lost during a Redis outage.
"""

from __future__ import annotations


class UsageBuffer:
    """Accumulates uses per key id between flushes; bounded by the number of keys."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, key_id: str, at_ms: int, count: int = 1) -> None:
        """Record ``count`` uses of a key, the latest at ``at_ms``."""
        last, n = self._pending.get(key_id, (0, 0))
        self._pending[key_id] = (max(last, at_ms), n + count)

    def drain(self) -> dict[str, tuple[int, int]]:
        """Take everything buffered so far."""
        batch, self._pending = self._pending, {}
        return batch

    def restore(self, batch: dict[str, tuple[int, int]]) -> None:
        """Put back a batch whose write failed, merging with uses recorded since."""
        for key_id, (last, n) in batch.items():
            self.add(key_id, last, n)
