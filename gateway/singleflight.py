"""Single-flight reads: one Redis read per key id at a time, however many requests wait for it.

SECURITY: a read is shared only within one cache generation (gateway.cache: bumped on every
invalidation). A request that arrives after a revocation's invalidation never joins a read that
started before it: it starts its own.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, TypeVar

T = TypeVar("T")


class SingleFlight:
    """In-flight reads by key id, each with the cache generation it started at."""

    def __init__(self) -> None:
        self._reads: dict[str, tuple[int, asyncio.Future]] = {}

    def __len__(self) -> int:
        return len(self._reads)

    def read(self, key_id: str, generation: int, start: Callable[[], Awaitable[T]]) -> asyncio.Future:
        """The read of ``key_id`` started at ``generation`` (joined if one is in flight, else
        ``start()`` in a Task of its own). Await it through asyncio.shield: a waiter that is
        cancelled must not cancel the others' read. Its error, if any, goes to every waiter."""
        found = self._reads.get(key_id)
        if found is not None and found[0] == generation:
            return found[1]
        future = asyncio.ensure_future(start())
        entry = (generation, future)
        self._reads[key_id] = entry

        def done(_: asyncio.Future) -> None:
            if self._reads.get(key_id) is entry:  # not a newer read of the same key
                del self._reads[key_id]

        future.add_done_callback(done)
        return future
