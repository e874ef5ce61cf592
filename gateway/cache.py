"""The in-process verdict cache: key id -> record (or "unknown"), bounded in size and time.

Pure (no I/O). A generation counter, bumped on every invalidation, stops a fill that read
Redis before a revoke from being stored after it.

Least recently used first out: a hit moves its entry to the young end (``move_to_end``, about
50 ns), so with the hour-long default TTL a hot key stays cached however many other ids (a flood
of unknown ones included) pass through, instead of being evicted once ``max_size`` newer fills
came after it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable

from gateway.model import KeyRecord

MISS = object()  # sentinel: nothing cached (distinct from a cached "unknown key" = None)


class VerdictCache:
    """LRU of verified records and of unknown key ids, each with its own TTL (a hit refreshes recency)."""

    def __init__(
        self,
        *,
        max_size: int,
        ttl: float,
        negative_ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_size = max_size
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.clock = clock
        self.generation = 0
        # SECURITY: the cache is only consulted while the invalidation channel is known to be
        # delivering: the listener extends this deadline each time it hears from Redis and
        # drops it on any error. A listener that stalls silently loses trust by the deadline,
        # without having to notice anything, which is what lets the admin API bound its wait
        # for acknowledgements (see gateway.tasks).
        self.trusted_until = float("-inf")
        self.trust_lost_at = float("-inf")  # when the channel last broke (see get_stale)
        self._entries: OrderedDict[str, tuple[float, KeyRecord | None]] = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def trusted(self) -> bool:
        return self.clock() < self.trusted_until

    def trust_until(self, deadline: float) -> None:
        """The invalidation channel was heard from: the cache may be used until ``deadline``."""
        self.trusted_until = max(self.trusted_until, deadline)

    def get(self, key_id: str) -> KeyRecord | None | object:
        """The cached record, None for a cached unknown id, or MISS. A hit becomes the most
        recently used entry."""
        now = self.clock()
        if now >= self.trusted_until or self.ttl <= 0:
            return MISS
        entries = self._entries
        entry = entries.get(key_id)
        if entry is None or entry[0] <= now:
            if entry is not None:
                del entries[key_id]
            self.misses += 1
            return MISS
        self.hits += 1
        entries.move_to_end(key_id)
        return entry[1]

    def put(self, key_id: str, record: KeyRecord | None, generation: int) -> None:
        """Store a verdict read from Redis while ``generation`` was current."""
        if not self.trusted or self.ttl <= 0 or generation != self.generation:
            return
        ttl = self.ttl if record is not None else self.negative_ttl
        if ttl <= 0:
            return
        self._entries[key_id] = (self.clock() + ttl, record)
        self._entries.move_to_end(key_id)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)
            self.evictions += 1

    def invalidate(self, key_id: str) -> None:
        """Forget one key (a revoke message) and fence off fills already in flight."""
        self.generation += 1
        self._entries.pop(key_id, None)

    def distrust(self) -> None:
        """The invalidation channel broke: stop using the cache, but keep the entries for
        ``get_stale`` (opt-in --stale-if-error); a new subscription clears them."""
        self.generation += 1
        if self.trusted_until != float("-inf"):  # not already distrusted (retries call this again)
            self.trust_lost_at = min(self.clock(), self.trusted_until)
        self.trusted_until = float("-inf")

    def get_stale(self, key_id: str, max_stale: float) -> KeyRecord | None:
        """A verified record that was fresh when trust was lost, for ``max_stale`` seconds after
        that moment; None otherwise. Only for when Redis cannot answer.

        Counted from the loss of trust, not from the entry's TTL: every revocation published
        before that moment was applied, so ``max_stale`` bounds how long one made during the
        outage can go unseen, whatever the TTL.
        """
        lost = self.trusted_until if self.trusted_until != float("-inf") else self.trust_lost_at
        lost = min(lost, self.clock())
        entry = self._entries.get(key_id)
        if entry is None or entry[1] is None or entry[0] <= lost or lost + max_stale <= self.clock():
            return None
        return entry[1]

    def clear(self, *, trusted_until: float = float("-inf")) -> None:
        """Forget everything; the cache may be used afterwards only until ``trusted_until``."""
        self.generation += 1
        self._entries.clear()
        self.trusted_until = trusted_until
