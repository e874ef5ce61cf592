"""A lean HTTP/1.1 client for the one upstream the gateway forwards to.

Why not aiohttp's ClientSession: on the gateway's hot path it cost about two thirds of the
time of a whole request (URL objects, cookie and redirect machinery, per-request tracing
hooks). This client keeps a pool of keep-alive connections to one origin, writes the request
head as bytes, parses responses with httptools (llhttp, as aiohttp's server does), and
streams bodies both ways with backpressure: a reader that falls behind pauses the socket.

Errors: ``UpstreamConnectError`` (could not connect in time), ``UpstreamTimedOut`` (no byte
for ``read_timeout`` seconds), ``UpstreamBroken`` (the connection failed or the reply was
malformed). Everything here is I/O; the request head is built by ``request_head`` (pure).

SECURITY: the upstream's framing is not trusted further than one response. The response
head has the client side's limits (gateway.httpserver.Limits: field size, field count, whole
head, however the bytes arrive). Bytes after the end of a response (a body after 204, 304
or a HEAD reply, bytes past Content-Length or after the last chunk, a second response) are
never passed on, and the connection is dropped, never reused. Except after a HEAD reply (a
common backend bug; the client's answer has no body anyway) they also mark the exchange
``overrun``: the proxy answers 502 when that is known before it passed the response on.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import AsyncIterator
from urllib.parse import urlsplit

import httptools

from gateway.httpserver import Limits
from gateway.writebatch import Deferred, batch_for

HIGH_WATER = 256 * 1024  # buffered response bytes at which the socket is paused
LOW_WATER = 64 * 1024
NO_BODY_STATUS = frozenset({204, 304})
SWEEP_INTERVAL = 0.05  # seconds: how late a read timeout may fire


class UpstreamError(Exception):
    """Base of the upstream client's errors."""


class UpstreamConnectError(UpstreamError):
    """No connection could be made (refused, unreachable, or not within the connect timeout)."""


class UpstreamTimedOut(UpstreamError):
    """The upstream sent nothing for ``read_timeout`` seconds."""


class UpstreamBroken(UpstreamError):
    """The connection failed, or the upstream's reply was not valid HTTP/1.1."""


def request_head(method: str, target: str, host: str, headers: list[tuple[str, str]], framing: str | None) -> bytes:
    """The request line and header block; ``framing`` is a Content-Length or Transfer-Encoding line."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if framing:
        lines.append(framing)
    # UTF-8: the server decoded the client's header bytes as UTF-8, so this sends them back
    # exactly as they came (headers.py drops any value that could not round-trip).
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


RESPONSE_LIMITS = Limits()  # the client side's head limits (head_timeout unused: read_timeout applies)


class _Overrun(Exception):
    """Bytes after the end of the response (raised in a parser callback to stop parsing)."""


class _Connection(asyncio.Protocol):
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


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class UpstreamResponse:
    """Status, headers and the streamed body of one upstream reply."""

    def __init__(self, pool: "UpstreamPool", conn: _Connection) -> None:
        self._pool = pool
        self._conn = conn
        self.status = conn.status
        self.reason = conn.reason
        self.raw_headers = conn.headers
        self._released = False

    @property
    def spoiled(self) -> bool:
        """Known bad already: bytes after the end of this response (never passed on), or its
        body failed to parse, before any of it was passed on."""
        return self._conn.overrun or self._conn.error is not None

    @property
    def complete_body(self) -> bytes | None:
        """The whole body when it has already arrived (small replies), else None."""
        conn = self._conn
        if conn.complete and conn.error is None:
            body = b"".join(conn.chunks)
            conn.chunks.clear()
            conn.buffered = 0
            self.release()
            return body
        return None

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk, as fast as the caller consumes it; then the connection is reused."""
        conn = self._conn
        loop = conn.loop
        timeout = self._pool.read_timeout
        try:
            while True:
                if conn.chunks:
                    chunk = conn.chunks.popleft()
                    conn.buffered -= len(chunk)
                    if conn.paused and conn.buffered <= LOW_WATER and conn.transport is not None:
                        conn.transport.resume_reading()
                        conn.paused = False
                    yield chunk
                    continue
                if conn.error is not None:
                    raise conn.error
                if conn.complete:
                    return
                left = timeout - (loop.time() - conn.last_data)
                if left <= 0:
                    conn.reusable = False
                    raise UpstreamTimedOut("no data from the upstream in time")
                # A loop timer wakes the waiter, not asyncio.wait_for (see _connect); the
                # loop above then sees whether data came or the read timeout ran out.
                conn.data_waiter = waiter = loop.create_future()
                timer = loop.call_later(left, _wake, waiter)
                try:
                    await waiter
                finally:
                    timer.cancel()
        finally:
            self.release()

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        conn = self._conn
        if conn.complete and conn.reusable and not conn.chunks and conn.error is None:
            self._pool._put(conn)
        else:
            self._pool._discard(conn)


class UpstreamPool:
    """Keep-alive connections to one upstream origin (``http://`` or ``https://``)."""

    def __init__(self, base_url: str, *, connect_timeout: float, read_timeout: float, max_idle: int = 512,
                 limits: Limits = RESPONSE_LIMITS) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"expected an http:// or https:// upstream URL, got {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        default_port = self.port == (443 if url.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.base_path = url.path.rstrip("/")
        self.ssl = ssl.create_default_context() if url.scheme == "https" else None
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle
        self.limits = limits  # on response heads, as on the client side's request heads
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._awaiting_head: set[_Connection] = set()  # exchanges waiting for a reply head
        self._sweeper: asyncio.Task | None = None

    async def _sweep(self) -> None:
        """Time out exchanges whose upstream sent nothing for read_timeout seconds."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = loop.time()
            for conn in list(self._awaiting_head):
                if now - conn.last_data >= self.read_timeout:
                    conn.time_out()

    async def _connect(self) -> _Connection:
        # No asyncio.wait_for here: requests run as bare coroutines (gateway/httpserver.py
        # _step), and from Python 3.12 on its timeout refuses to run outside a Task. The
        # connect attempt runs as a Task of its own, which a loop timer cancels.
        loop = asyncio.get_running_loop()
        connecting = asyncio.ensure_future(loop.create_connection(
            lambda: _Connection(loop, self.limits), self.host, self.port, ssl=self.ssl,
            server_hostname=self.host if self.ssl else None))
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            connecting.cancel()

        timer = loop.call_later(self.connect_timeout, expire)
        try:
            _, conn = await connecting
        except asyncio.CancelledError:
            if not expired:
                raise
            raise UpstreamConnectError(
                f"cannot connect to the upstream: no connection within {self.connect_timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamConnectError(f"cannot connect to the upstream: {exc!r}") from None
        finally:
            timer.cancel()
            if not connecting.done():  # this request was abandoned: so is its connect attempt
                connecting.cancel()
        self._all.add(conn)
        return conn

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
            self._all.discard(conn)
        return None

    def _put(self, conn: _Connection) -> None:
        conn.parser = None
        if len(self._idle) < self.max_idle and not conn.closed:
            self._idle.append(conn)
        else:
            self._discard(conn)

    def _discard(self, conn: _Connection) -> None:
        self._all.discard(conn)
        conn.reusable = False
        if conn.transport is not None:
            conn.transport.abort()

    async def request(self, method: str, target: str, headers: list[tuple[str, str]],
                      body: AsyncIterator[bytes] | None = None, content_length: int | None = None) -> UpstreamResponse:
        """Send one request; return once the response headers are in (the body streams after)."""
        target = self.base_path + target
        if body is None:
            framing = "Content-Length: 0" if method in ("POST", "PUT", "PATCH") else None
        elif content_length is not None:
            framing = f"Content-Length: {content_length}"
        else:
            framing = "Transfer-Encoding: chunked"
        head = request_head(method, target, self.host_header, headers, framing)
        # A kept-alive connection may have been closed by the upstream just now: a request
        # without a body that fails before any byte of the reply is retried once on a new one.
        conn = self._take_idle()
        retry = conn is not None and body is None
        if conn is None:
            conn = await self._connect()
        while True:
            try:
                if body is not None:
                    return await self._exchange(conn, method, head, body, chunked=framing == "Transfer-Encoding: chunked")
                # The common case, inline (one coroutine less): one future, no timer, no task.
                conn.start(head_only=method == "HEAD")
                conn.out.write_soon(head)
                headers_done = conn.headers_done
                assert headers_done is not None
                if not headers_done.done():
                    # The read timeout is enforced by the pool's sweeper (_sweep), not by a
                    # timer per request.
                    self._awaiting_head.add(conn)
                    if self._sweeper is None:
                        self._sweeper = conn.loop.create_task(self._sweep())
                    try:
                        await headers_done
                    finally:
                        self._awaiting_head.discard(conn)
                elif headers_done.exception() is not None:
                    headers_done.result()
                return UpstreamResponse(self, conn)
            except UpstreamBroken:
                self._discard(conn)
                if not retry or conn.replied:  # a reply that started is never asked for twice
                    raise
                retry = False
                conn = await self._connect()
            except BaseException:  # a timeout, or the request was abandoned: never reused
                self._discard(conn)
                raise

    async def _exchange(self, conn: _Connection, method: str, head: bytes, body: AsyncIterator[bytes],
                        chunked: bool) -> UpstreamResponse:
        """One request with a body: the body is sent by a task of its own while the reply is awaited."""
        loop = conn.loop  # not asyncio.get_running_loop(): a getpid() syscall per call on 3.11
        conn.start(head_only=method == "HEAD")
        assert conn.transport is not None and conn.headers_done is not None
        conn.transport.write(head)
        sender = asyncio.ensure_future(self._send_body(conn, body, chunked))
        try:
            while not conn.headers_done.done():
                left = self.read_timeout - (loop.time() - conn.last_data)
                if left <= 0:
                    raise UpstreamTimedOut("no response from the upstream in time")
                if sender is not None and sender.done():
                    sender.result()  # the body failed (too large, client gone): raise that
                waiters = {conn.headers_done} if sender is None or sender.done() else {conn.headers_done, sender}
                await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            conn.headers_done.result()
        except BaseException:
            if sender is not None and not sender.done():
                sender.cancel()
            self._discard(conn)
            raise
        if sender is not None and not sender.done():
            # The upstream answered before the whole body was sent: stop sending, and do not
            # reuse a connection whose request was cut short.
            sender.cancel()
            conn.reusable = False
        return UpstreamResponse(self, conn)

    @staticmethod
    async def _send_body(conn: _Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
        assert conn.transport is not None
        async for chunk in body:
            if not chunk:
                continue
            if chunked:
                conn.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            else:
                conn.transport.write(chunk)
            await conn.drain()
            conn.last_data = conn.loop.time()  # upload progress counts as activity for the read timeout
        if chunked:
            conn.transport.write(b"0\r\n\r\n")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._all):
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
        self._all.clear()
