"""Writes made while the event loop handles one round of events go out together at its end.

Why: a write to a loopback socket wakes the process at the other end, and waking a process
that sleeps on another CPU costs an inter-processor interrupt, which in a VM costs several
microseconds more than the write itself. Handled one by one, each request's upstream write and
each response woke a sleeping peer: half of the gateway's time per request (bench/README.md).
Deferred to the end of the round, the writes of all requests that arrived together go out
back to back: the first one wakes the peer, the others find it awake.

Order is kept per connection: a connection's deferred bytes are written before anything it
writes directly (streamed bodies) and before it half-closes (``Deferred.flush_pending``).
"""

from __future__ import annotations

import asyncio
import weakref


class Deferred:
    """A connection whose small writes may wait for the end of the round."""

    __slots__ = ("transport", "_pending", "_batch")

    def __init__(self, batch: "WriteBatch") -> None:
        self.transport: asyncio.Transport | None = None
        self._pending: list[bytes] | None = None
        self._batch = batch

    def write_soon(self, data: bytes) -> None:
        """Write ``data`` at the end of this round (with whatever else this connection adds)."""
        if self._pending is None:
            self._pending = [data]
            self._batch.due(self)
        else:
            self._pending.append(data)

    def flush_pending(self) -> None:
        """Write what waits now (before a direct write or a close)."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def drop_pending(self) -> None:
        self._pending = None


class WriteBatch:
    """The connections with deferred writes in this round of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._due: list[Deferred] = []

    def due(self, conn: Deferred) -> None:
        if not self._due:
            self.loop.call_soon(self._flush)
        self._due.append(conn)

    def _flush(self) -> None:
        due, self._due = self._due, []
        for conn in due:
            conn.flush_pending()


_batches: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, WriteBatch]" = weakref.WeakKeyDictionary()


def batch_for(loop: asyncio.AbstractEventLoop) -> WriteBatch:
    """The write batch of ``loop`` (one per loop, shared by the server and the upstream pool)."""
    batch = _batches.get(loop)
    if batch is None:
        batch = _batches[loop] = WriteBatch(loop)
    return batch
