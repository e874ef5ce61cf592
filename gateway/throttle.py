"""Failed-authentication throttling per client address (pure; no I/O; the clock is injected).

Each failed authentication from an address adds one to a leaky bucket that drains at
``limit / window`` per second. While one more failure would overflow the bucket, that address
gets 429 before any Redis lookup: ``limit`` failures in a burst, then one more every
``window / limit`` seconds. The bucket is capped at twice the limit, so a flood locks an address out for at most
one window after it stops. Memory is bounded: at most ``max_clients`` addresses are tracked; the
least recently failing one is forgotten first.

A valid key is never locked out: ``KnownKeys`` remembers keys this process has verified (id and
digest, bounded), and a request bearing one of them skips the throttle. It is still verified
in full afterwards, so a revoked key gains nothing from it.
"""

from __future__ import annotations

import hmac
import math
from collections import OrderedDict
from typing import Callable


class FailureThrottle:
    """Leaky buckets of failed authentications, keyed by client address."""

    def __init__(self, *, limit: int, window: float, max_clients: int, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.rate = limit / window if window > 0 else 0.0  # failures drained per second
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (level, at)
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.limit > 0 and self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    @property
    def tracking(self) -> bool:
        """Could any client be throttled now? (False: no failure is on record.)"""
        return bool(self._buckets) and self.enabled

    def _level(self, client: str, now: float) -> float:
        found = self._buckets.get(client)
        if found is None:
            return 0.0
        level, at = found
        return max(0.0, level - (now - at) * self.rate)

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may try again; 0 when it is not throttled."""
        if not self.enabled:
            return 0
        # Blocked while one more failure would overflow the bucket (level > limit - 1).
        excess = self._level(client, self.clock()) - (self.limit - 1)
        if excess <= 1e-9:  # 1e-9: float noise
            return 0
        return max(1, math.ceil(excess / self.rate - 1e-9))

    def record_failure(self, client: str) -> None:
        if not self.enabled:
            return
        now = self.clock()
        level = self._level(client, now) + 1
        self._buckets[client] = (min(level, self.limit * 2.0), now)  # capped: a flood cannot lock out for hours
        self._buckets.move_to_end(client)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
            self.evictions += 1


class KnownKeys:
    """Bounded LRU of key id -> digest of keys that verified successfully in this process."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._digests: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._digests)

    def add(self, key_id: str, digest: bytes) -> None:
        # Oldest first verified is forgotten first (not least recently used: no reordering on
        # every request); a forgotten key is added again the next time it verifies.
        digests = self._digests
        if digests.get(key_id) != digest:
            digests[key_id] = digest
            if len(digests) > self.max_size:
                digests.popitem(last=False)

    def vouches_for(self, key_id: str, digest: bytes) -> bool:
        known = self._digests.get(key_id)
        return known is not None and hmac.compare_digest(known, digest)
