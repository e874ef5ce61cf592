"""Failed-authentication throttling per client address (pure; no I/O; the clock is injected).

Each failed authentication from an address adds one to a leaky bucket that drains at
``limit / window`` per second. While one more failure would overflow the bucket, that address
gets 429 before any Redis lookup: ``limit`` failures in a burst, then one more every
``window / limit`` seconds. The bucket is capped at twice the limit, so a flood locks an address out for at most
one window after it stops.

Addresses are counted the way an attacker can get them: IPv4 one by one, an IPv4-mapped IPv6
address (``::ffff:a.b.c.d``) as its IPv4 address, IPv6 by its ``ipv6_prefix`` (a /64 by
default: one subscriber or one host's whole interface-id space is one bucket). Any spelling of
an address (case, ``::`` compression, a ``%zone``) lands in the same bucket.

Memory is bounded: at most ``max_clients`` buckets are kept. SECURITY: forgetting must not
reset anyone. A full table forgets the bucket with the LOWEST current level first (drained
buckets are forgotten for free), never the oldest, and what it forgot is kept as a floor: an
address that is not in the table starts from the highest level forgotten so far (draining like
any bucket), since it may be one of them. So cycling through more addresses than the table holds
gains no tries: the floor ratchets up until newcomers are blocked too. A blocked bucket is never
forgotten in favour of a newcomer: when every kept bucket is blocked, a new address is not
tracked (``untracked`` counts those failures) and is refused until the least blocked bucket
drains. Both fail closed; keys this process has verified still pass (``KnownKeys``).

Each bucket is stored as the time it drains empty (``empty_at``); as every bucket drains at the
same rate, the lowest level is the smallest ``empty_at``: a min-heap with lazy deletion gives
O(log n) per failure, rebuilt when stale entries outnumber live ones (amortised O(1)).

A valid key is never locked out: ``KnownKeys`` remembers keys this process has verified (id and
digest, bounded), and a request bearing one of them skips the throttle. It is still verified
in full afterwards, so a revoked key gains nothing from it.
"""

from __future__ import annotations

import heapq
import hmac
import math
from collections import OrderedDict
from typing import Callable

from gateway.clientaddr import throttle_bucket

EPSILON = 1e-9  # float noise in levels and seconds


class FailureThrottle:
    """Leaky buckets of failed authentications, keyed by client address (IPv6 by prefix)."""

    def __init__(self, *, limit: int, window: float, max_clients: int, clock: Callable[[], float],
                 ipv6_prefix: int = 64) -> None:
        self.limit = limit
        self.rate = limit / window if window > 0 else 0.0  # failures drained per second
        self.max_clients = max_clients
        self.ipv6_prefix = ipv6_prefix
        self.clock = clock
        self._empty_at: dict[str, float] = {}  # bucket -> when its level reaches 0
        self._heap: list[tuple[float, str]] = []  # (empty_at, bucket); stale entries skipped
        self._floor = -math.inf  # empty_at of the fullest bucket forgotten: where newcomers start
        self.evictions = 0  # non-empty buckets forgotten to make room
        self.untracked = 0  # failures not recorded: every kept bucket was blocked

    @classmethod
    def for_settings(cls, settings, clock: Callable[[], float]) -> FailureThrottle:
        """The throttle ServeSettings / AdminSettings describe (the same four settings)."""
        return cls(limit=settings.auth_failure_limit, window=settings.auth_failure_window,
                   max_clients=settings.throttle_max_clients, ipv6_prefix=settings.throttle_ipv6_prefix,
                   clock=clock)

    @property
    def enabled(self) -> bool:
        return self.limit > 0 and self.rate > 0

    def __len__(self) -> int:
        return len(self._empty_at)

    @property
    def tracking(self) -> bool:
        """Could any client be throttled now? (False: no failure is on record.)"""
        return bool(self._empty_at) and self.enabled

    def bucket(self, client: str) -> str:
        """The bucket ``client``'s failures count against (its IPv4 address or IPv6 prefix)."""
        return throttle_bucket(client, self.ipv6_prefix)

    def _wait(self, empty_at: float, now: float) -> int:
        # Blocked while one more failure would overflow the bucket (level > limit - 1).
        excess = (empty_at - now) * self.rate - (self.limit - 1)
        if excess <= EPSILON:
            return 0
        return max(1, math.ceil(excess / self.rate - EPSILON))

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may try again; 0 when it is not throttled."""
        if not self.enabled:
            return 0
        now = self.clock()
        empty_at = self._empty_at.get(self.bucket(client))
        if empty_at is not None:
            return self._wait(empty_at, now)
        wait = self._wait(self._floor, now)  # it may be one of the forgotten
        if len(self._empty_at) < self.max_clients:
            return wait
        # Untracked, and the table is full: refused while even the least blocked bucket is blocked.
        least = self._least()
        return wait if least is None else max(wait, self._wait(least[0], now))

    def record_failure(self, client: str) -> None:
        if not self.enabled:
            return
        now = self.clock()
        key = self.bucket(client)
        self._forget_drained(now)
        empty_at = self._empty_at.get(key)
        if empty_at is None and len(self._empty_at) >= self.max_clients and not self._make_room(now):
            self.untracked += 1
            return
        if empty_at is None:
            empty_at = self._floor
        start = max(now, empty_at)
        # Capped: a flood cannot lock out for hours.
        new = min(start + 1 / self.rate, now + self.limit * 2.0 / self.rate)
        self._empty_at[key] = new
        heapq.heappush(self._heap, (new, key))
        if len(self._heap) > 2 * len(self._empty_at) + 64:
            self._heap = [(e, k) for k, e in self._empty_at.items()]
            heapq.heapify(self._heap)

    def _least(self) -> tuple[float, str] | None:
        """The kept bucket with the lowest level (the heap's top once stale entries are dropped)."""
        heap, live = self._heap, self._empty_at
        while heap and live.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # superseded by a later failure, or already forgotten
        return heap[0] if heap else None

    def _forget_drained(self, now: float) -> None:
        while (least := self._least()) is not None and least[0] <= now:
            heapq.heappop(self._heap)
            del self._empty_at[least[1]]

    def _make_room(self, now: float) -> bool:
        """Forget the lowest bucket, unless it is blocked (then every bucket is)."""
        least = self._least()
        if least is None:
            return True
        if self._wait(least[0], now):
            return False
        heapq.heappop(self._heap)
        del self._empty_at[least[1]]
        self.evictions += 1
        self._floor = max(self._floor, least[0])
        return True


class KnownKeys:
    """Bounded LRU of key id -> digest (SHA-256 hex, as ``KeyRecord.digest`` and
    ``ParsedKey.digest``) of keys that verified successfully in this process.

    Least recently verified first out: a key that keeps verifying is never forgotten in favour
    of others (a forgotten key could not come back while its address is throttled: it gets 429
    before it is verified again). Each ``add`` of a known key is one ``move_to_end`` (about 50 ns).
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._digests: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._digests)

    def add(self, key_id: str, digest: str) -> None:
        digests = self._digests
        if digests.get(key_id) == digest:
            digests.move_to_end(key_id)  # the common case: a key seen before verified again
            return
        digests[key_id] = digest
        digests.move_to_end(key_id)
        if len(digests) > self.max_size:
            digests.popitem(last=False)

    def vouches_for(self, key_id: str, digest: str) -> bool:
        known = self._digests.get(key_id)
        return known is not None and hmac.compare_digest(known, digest)
