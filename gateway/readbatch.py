"""The Redis reads of cache misses made in one event-loop round go out together, as one pipeline.

Why: a read holds a pooled connection for a whole round trip, and the round trip ends only when
the event loop comes back to it. With 1,000 client connections a round of the loop lasts tens
of milliseconds, so 64 connections carried a few thousand reads a second: a cold burst of
distinct keys queued past --redis-timeout and was answered 503 (bench/README.md, 1,000
connections). Sent together, the misses of one round cost one round trip on one connection
(up to MAX_PER_PIPELINE reads each), however many there are.

A read's error (a timeout, a lost connection) goes to every read of its pipeline: each of their
requests fails closed, as one failed read would. Which reads share a pipeline says nothing about
what they return: each gets its own record (or None).
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")

MAX_PER_PIPELINE = 256  # reads per round trip; a larger round is split into several pipelines


class ReadBatch(Generic[T]):
    """Collects reads by key id during one loop round, then runs ``fetch_many`` on them."""

    def __init__(self, fetch_many: Callable[[Sequence[str]], Awaitable[list[T]]],
                 max_per_pipeline: int = MAX_PER_PIPELINE) -> None:
        self._fetch_many = fetch_many
        self._max = max_per_pipeline
        self._ids: list[str] = []
        self._futures: list[asyncio.Future] = []
        self._running: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    def get(self, key_id: str) -> asyncio.Future:
        """The record of ``key_id``, read with the other reads of this round."""
        loop = asyncio.get_running_loop()
        if not self._ids:
            loop.call_soon(self._flush, loop)
        future = loop.create_future()
        self._ids.append(key_id)
        self._futures.append(future)
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        ids, futures = self._ids, self._futures
        self._ids, self._futures = [], []
        for i in range(0, len(ids), self._max):
            task = loop.create_task(self._run(ids[i:i + self._max], futures[i:i + self._max]))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, ids: list[str], futures: list[asyncio.Future]) -> None:
        try:
            results = await self._fetch_many(ids)
        except asyncio.CancelledError:  # shutting down: so are the waiters
            for future in futures:
                future.cancel()
            raise
        except Exception as exc:  # every waiter gets the error, which fails its request closed
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # retrieved: a waiter may be gone already
            return
        for future, result in zip(futures, results, strict=True):
            if not future.done():
                future.set_result(result)
