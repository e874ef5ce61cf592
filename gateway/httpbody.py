"""The request body of the proxy port's HTTP/1.1 server, as it arrives: streamed to the handler
with backpressure, ``Expect: 100-continue`` answered only on the first read.

gateway/httpserver.py feeds it from llhttp's callbacks; the handler reads it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.httpserver import HttpConnection


class BodyError(Exception):
    """The request body could not be read: malformed framing, or the client went away."""


class RequestBody:
    """A request body as it arrives; ``read`` returns b"" at its end."""

    __slots__ = ("_conn", "_chunks", "_size", "complete", "error", "_waiter", "_expect_continue", "started")

    def __init__(self, conn: "HttpConnection", expect_continue: bool) -> None:
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self.complete = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._expect_continue = expect_continue
        self.started = False

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self._conn.buffered += len(data)
        self._wake()

    @property
    def drained(self) -> bool:
        """Read to its end without error."""
        return self.complete and self.error is None and not self._chunks

    def discard(self) -> int:
        """Drop what was received and not read; returns the bytes dropped."""
        dropped, self._size = self._size, 0
        self._chunks.clear()
        return dropped

    def finish(self, error: BaseException | None = None) -> None:
        if error is not None and not self.complete and self.error is None:
            self.error = error
        self.complete = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> bytes:
        """The next chunk of the body, b"" at its end; BodyError if it cannot be read."""
        if not self.started:
            self.started = True
            if self._expect_continue and not self.complete:
                self._conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._size -= len(chunk)
                self._conn.consumed(len(chunk))
                return chunk
            if self.error is not None:
                raise BodyError(str(self.error))
            if self.complete:
                return b""
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

