"""A lean HTTP/1.1 client for the one upstream the gateway forwards to: the connection pool.

Why not aiohttp's ClientSession: on the gateway's hot path it cost about two thirds of the
time of a whole request (URL objects, cookie and redirect machinery, per-request tracing
hooks). This client keeps a pool of keep-alive connections to one origin, writes the request
head as bytes, parses responses with httptools (llhttp, as aiohttp's server does; one
connection and its parser: gateway.upstreamconn), and streams bodies both ways with
backpressure: a reader that falls behind pauses the socket.

Errors: ``UpstreamConnectError`` (could not connect in time), ``UpstreamTimedOut`` (no byte
for ``read_timeout`` seconds), ``UpstreamBroken`` (the connection failed or the reply was
malformed). Everything here is I/O; the request head is built by ``request_head`` (pure).
What the upstream's framing is trusted with (one response, never more): gateway.upstreamconn.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import AsyncIterator
from urllib.parse import urlsplit

from gateway.httplimits import Limits
from gateway.upstreamconn import (
    LOW_WATER,
    RESPONSE_LIMITS,
    UpstreamBroken,
    UpstreamConnectError,
    UpstreamConnection,
    UpstreamError,
    UpstreamTimedOut,
)

# The errors a caller catches, importable from here with the pool.
__all__ = ["MAX_IDLE", "UpstreamBroken", "UpstreamConnectError", "UpstreamError", "UpstreamPool", "UpstreamResponse",
           "UpstreamTimedOut", "request_head"]


SWEEP_INTERVAL = 0.05  # seconds: how late a read timeout may fire
# Idle connections kept for reuse. The pool never holds more connections than exchanges were
# in flight at once, so this bound only matters after a spike; below the client connection
# count (it was 512) every burst closed connections that the next burst opened again: at 1,000
# client connections one request in twenty paid for a connect and an abort (bench/README.md).
MAX_IDLE = 4096


def request_head(method: str, target: str, host: str, headers: list[tuple[str, str]], framing: str | None) -> bytes:
    """The request line and header block; ``framing`` is a Content-Length or Transfer-Encoding line."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if framing:
        lines.append(framing)
    # UTF-8: the server decoded the client's header bytes as UTF-8, so this sends them back
    # exactly as they came (headers.py drops any value that could not round-trip).
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class UpstreamResponse:
    """Status, headers and the streamed body of one upstream reply."""

    def __init__(self, pool: "UpstreamPool", conn: UpstreamConnection) -> None:
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

    def __init__(self, base_url: str, *, connect_timeout: float, read_timeout: float, max_idle: int = MAX_IDLE,
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
        self._idle: list[UpstreamConnection] = []
        self._all: set[UpstreamConnection] = set()
        self._awaiting_head: set[UpstreamConnection] = set()  # exchanges waiting for a reply head
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

    async def _connect(self) -> UpstreamConnection:
        # No asyncio.wait_for here: requests run as bare coroutines (gateway/httpserver.py
        # _step), and from Python 3.12 on its timeout refuses to run outside a Task. The
        # connect attempt runs as a Task of its own, which a loop timer cancels.
        loop = asyncio.get_running_loop()
        connecting = asyncio.ensure_future(loop.create_connection(
            lambda: UpstreamConnection(loop, self.limits), self.host, self.port, ssl=self.ssl,
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

    def _take_idle(self) -> UpstreamConnection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
            self._all.discard(conn)
        return None

    def _put(self, conn: UpstreamConnection) -> None:
        conn.parser = None
        if len(self._idle) < self.max_idle and not conn.closed:
            self._idle.append(conn)
        else:
            self._discard(conn)

    def _discard(self, conn: UpstreamConnection) -> None:
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

    async def _exchange(self, conn: UpstreamConnection, method: str, head: bytes, body: AsyncIterator[bytes],
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
                if sender.done():
                    sender.result()  # the body failed (too large, client gone): raise that
                waiters = {conn.headers_done} if sender.done() else {conn.headers_done, sender}
                await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            conn.headers_done.result()
        except BaseException:
            if not sender.done():
                sender.cancel()
            self._discard(conn)
            raise
        if not sender.done():
            # The upstream answered before the whole body was sent: stop sending, and do not
            # reuse a connection whose request was cut short.
            sender.cancel()
            conn.reusable = False
        return UpstreamResponse(self, conn)

    @staticmethod
    async def _send_body(conn: UpstreamConnection, body: AsyncIterator[bytes], chunked: bool) -> None:
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
