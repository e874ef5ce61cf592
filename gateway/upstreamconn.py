"""One keep-alive connection to the upstream, parsing its responses with httptools (llhttp).

``UpstreamConnection`` carries one exchange at a time for gateway.upstream's pool: it buffers
the response body up to a high-water mark (then pauses the socket), and records how the
exchange ended (complete, reusable, failed, overrun).

SECURITY: the upstream's framing is not trusted further than one response. The response
head has the client side's limits (gateway.httplimits.Limits: field size, field count, whole
head, however the bytes arrive). Bytes after the end of a response (a body after 204, 304
or a HEAD reply, bytes past Content-Length or after the last chunk, a second response) are
never passed on, and the connection is dropped, never reused. Except after a HEAD reply (a
common backend bug; the client's answer has no body anyway) they also mark the exchange
``overrun``: the proxy answers 502 when that is known before it passed the response on.
"""

from __future__ import annotations

import asyncio
from collections import deque

import httptools

from gateway.httplimits import Limits
from gateway.writebatch import Deferred, batch_for

HIGH_WATER = 256 * 1024  # buffered response bytes at which the socket is paused
LOW_WATER = 64 * 1024
NO_BODY_STATUS = frozenset({204, 304})
RESPONSE_LIMITS = Limits()  # the client side's head limits (head_timeout unused: read_timeout applies)


class UpstreamError(Exception):
    """Base of the upstream client's errors."""


class UpstreamConnectError(UpstreamError):
    """No connection could be made (refused, unreachable, or not within the connect timeout)."""


class UpstreamTimedOut(UpstreamError):
    """The upstream sent nothing for ``read_timeout`` seconds."""


class UpstreamBroken(UpstreamError):
    """The connection failed, or the upstream's reply was not valid HTTP/1.1."""


class _Overrun(Exception):
    """Bytes after the end of the response (raised in a parser callback to stop parsing)."""


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection; it carries one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: Limits = RESPONSE_LIMITS) -> None:
        self.loop = loop
        self.limits = limits
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False
        self._write_ready = loop.create_future()
        self._write_ready.set_result(None)
        self._parser: httptools.HttpResponseParser | None = None
        self.out = Deferred(batch_for(loop))  # a body-less request goes out at the end of the round
        self._reset()

    # -- per exchange ----------------------------------------------------------------------
    def _reset(self) -> None:
        self.parser: httptools.HttpResponseParser | None = None
        self.head_only = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.reason = ""
        self.headers_done: asyncio.Future | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.error: BaseException | None = None
        self.data_waiter: asyncio.Future | None = None
        self.last_data = 0.0
        self.paused = False
        self.replied = False  # a byte of the reply arrived
        self.overrun = False  # bytes arrived after the end of the response
        self.head_bytes = 0  # bytes read while the response head was incomplete
        self.head_size = 0  # bytes of the reason phrase and header fields parsed

    def start(self, head_only: bool) -> None:
        self._reset()
        # One parser per connection (it reads one keep-alive reply after the other); a HEAD
        # reply leaves it expecting a body, but such a connection is never reused (_finish).
        if self._parser is None:
            self._parser = httptools.HttpResponseParser(self)
        self.parser = self._parser
        self.head_only = head_only
        self.headers_done = self.loop.create_future()
        self.last_data = self.loop.time()

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.out.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_data = self.loop.time()
        if self.parser is None:
            self._fail(UpstreamBroken("data from the upstream outside of an exchange"))
            return
        if self.complete:
            self._overran()
            return
        self.replied = True
        in_head = self.status == 0
        if in_head:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.complete:  # what followed the response: not passed on, connection dropped
                self._overran()
            else:
                cause = exc.__cause__ or exc.__context__
                self._fail(cause if isinstance(cause, UpstreamBroken)
                           else UpstreamBroken(f"invalid response from the upstream: {exc}"))
            return
        if in_head and self.status == 0 and self.head_bytes > self.limits.max_head:
            # A header still incomplete: its pieces accumulate inside httptools until it ends.
            self._fail(UpstreamBroken("response head from the upstream too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            self._fail(UpstreamBroken(f"the upstream closed the connection: {exc!r}"))

    def pause_writing(self) -> None:
        if self._write_ready.done():
            self._write_ready = self.loop.create_future()

    def resume_writing(self) -> None:
        if not self._write_ready.done():
            self._write_ready.set_result(None)

    # -- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:
            raise _Overrun()  # a second response after this one's end

    def on_status(self, reason: bytes) -> None:
        if len(reason) > self.limits.max_field:
            raise UpstreamBroken("response reason phrase from the upstream too long")
        self.head_size += len(reason)
        self.reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self.limits
        if len(name) > limits.max_field or len(value) > limits.max_field:
            raise UpstreamBroken("response header from the upstream too large")
        if len(self.headers) >= limits.max_headers:
            raise UpstreamBroken("too many response headers from the upstream")
        self.head_size += len(name) + len(value) + 4
        if self.head_size > limits.max_head:
            raise UpstreamBroken("response head from the upstream too large")
        if self.status:  # a trailer of a chunked response: not passed on
            return
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.headers_done is not None and not self.headers_done.done():
            self.headers_done.set_result(None)
        if self.head_only or self.status in NO_BODY_STATUS:
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self.complete:  # SECURITY: a body after a HEAD/204/304 reply is the upstream's framing error
            raise _Overrun()
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered >= HIGH_WATER and not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def on_message_complete(self) -> None:
        self._finish()

    # -- helpers -------------------------------------------------------------------------
    def _finish(self) -> None:
        if self.complete:
            return
        self.complete = True
        self.reusable = bool(self.parser.should_keep_alive()) and not self.closed
        if self.head_only and self.status not in NO_BODY_STATUS:
            self.reusable = False  # a HEAD reply's announced body length cannot be trusted to be absent
        self._wake()

    def _overran(self) -> None:
        """Bytes after the end of the response: dropped, and so is the connection. After a HEAD
        reply that is all (backends that send a HEAD body are common, and the client's answer
        never has one); after any other it spoils the response (502 when not yet passed on)."""
        self.overrun = not self.head_only
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: BaseException) -> None:
        self.reusable = False
        if self.error is None:
            self.error = exc
        if self.headers_done is not None and not self.headers_done.done():
            self.headers_done.set_exception(exc)
            self.headers_done.exception()  # retrieved: the waiter may be gone already
        self._wake()
        if self.transport is not None:
            self.transport.abort()

    def time_out(self) -> None:
        """The upstream sent no response head within the read timeout."""
        if self.headers_done is not None and not self.headers_done.done():
            self._fail(UpstreamTimedOut("no response from the upstream in time"))

    def _wake(self) -> None:
        if self.data_waiter is not None and not self.data_waiter.done():
            self.data_waiter.set_result(None)

    async def drain(self) -> None:
        await self._write_ready

