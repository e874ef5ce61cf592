"""The proxy port's HTTP/1.1 server: an asyncio protocol parsing with httptools (llhttp).

Why not aiohttp's server here: on the gateway's hot path it cost about a third of a request
(its Request object, CIMultiDict headers, router, StreamResponse and payload writer; see
bench/README.md). This server does only what an edge proxy needs, and hands the handler
plain values: the method, the raw target, the header (name, value) pairs in order, the peer.

What it guarantees (tests/security exercises each):
- keep-alive and pipelining: requests on one connection are handled one at a time, answered
  in order; reading pauses while requests wait or while a body is not consumed;
- request bodies stream with backpressure; ``Expect: 100-continue`` is answered only when
  the handler first reads the body (a refused request never makes the client upload);
- a response whose request body was not read to its end closes the connection, so leftover
  bytes can never be taken for the next request;
- limits: request target, size of one header, number of headers, whole head; a connection
  must deliver a complete request head within ``head_timeout`` (from accept, then after
  each response), so idle and trickling clients are dropped;
- anything llhttp refuses (smuggling shapes such as CL+TE, bad chunks, bad bytes) is answered
  with the JSON envelope (``malformed_request``), never echoing the request, and the
  connection is closed.

Everything here is I/O; what to answer is the handler's business (gateway.proxy,
gateway.forward_auth).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections import deque
from dataclasses import dataclass
from typing import Awaitable, Callable

import httptools

from gateway.framing import ProtocolError, request_framing, trailer_refused
from gateway.writebatch import Deferred, batch_for

log = logging.getLogger("gateway")

HIGH_WATER = 256 * 1024  # buffered request-body bytes at which the socket is paused
LOW_WATER = 64 * 1024
MAX_QUEUED = 16  # pipelined requests parsed ahead of the one being handled
# A connection closed with a request body still arriving is half-closed first: the client gets
# our answer instead of a reset, while what it still sends is read and dropped, within bounds.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    max_target: int = 8190  # bytes of the request target (aiohttp's max_line_size)
    max_field: int = 16384  # bytes of one header name or value (aiohttp's max_field_size)
    max_headers: int = 128
    max_head: int = 65536  # bytes of the whole head (aiohttp has no such limit)
    head_timeout: float = 75.0  # seconds to deliver a complete request head


class BodyError(Exception):
    """The request body could not be read: malformed framing, or the client went away."""


class HttpRequest:
    """One parsed request head, with its body stream (None when the request has no body)."""

    __slots__ = ("method", "target", "headers", "keep_alive", "peer", "scheme", "body", "content_length")

    def __init__(self, conn: "HttpConnection", method: str, target: str, headers: list[tuple[str, str]],
                 keep_alive: bool, body: "RequestBody | None", content_length: int | None) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.keep_alive = keep_alive
        self.peer = conn.peer
        self.scheme = "http"
        self.body = body
        self.content_length = content_length

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower case), or None."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


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


Handler = Callable[[HttpRequest, "HttpConnection"], Awaitable[None]]
ErrorHandler = Callable[["HttpConnection", int, str, "str | None"], None]  # (connection, status, reason, code)


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests, runs the handler for each in turn, writes answers."""

    def __init__(self, server: "HttpServer") -> None:
        self.server = server
        self.loop = server.loop
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.out = Deferred(batch_for(server.loop))  # whole responses go out at the end of the round
        self.peer = ""
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[HttpRequest] = deque()
        self.active: HttpRequest | None = None
        self.closing = False
        self.lost = False
        self.paused = False
        self.buffered = 0  # body bytes received and not yet read by a handler
        self.deadline = 0.0  # loop time by which a complete request head must have arrived
        self._write_ready: asyncio.Future | None = None
        self._parse_error: ProtocolError | None = None
        self._writing: HttpRequest | None = None  # the request being answered
        self._discarded = 0
        self._linger: asyncio.TimerHandle | None = None
        self._response_started = self._response_done = self._close_after = False
        self._reset_head()

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.out.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
        self.deadline = self.loop.time() + self.limits.head_timeout
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closing or self._parse_error is not None:
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES:
                self.abort()
            return
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # CONNECT or an Upgrade: the head is complete; what follows is not HTTP/1.1 we
            # could read. The request is answered (it forwards nothing it should not), then
            # the connection closes.
            if self._body is not None:
                self._body.finish()
            self._stop_reading()
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__cause__ or exc.__context__
            self._protocol_error(cause if isinstance(cause, ProtocolError) else ProtocolError(400, "callback"))
            return
        except httptools.HttpParserError as exc:
            # llhttp's messages name the rule broken, never the bytes ("Invalid header value char").
            self._protocol_error(ProtocolError(400, f"{type(exc).__name__}: {exc}"))
            return
        if self._in_head and self._head_bytes > self.limits.max_head:
            # A header still incomplete: its pieces accumulate inside httptools until it ends.
            self._protocol_error(ProtocolError(431, "request head too large"))
            return
        # SECURITY: requests parsed from this read start only now, after llhttp has checked
        # everything that came with them (a bad chunk in the same read refuses the request
        # before any byte of it is forwarded).
        if self.active is None and self.queue:
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.closing = True
        self.out.drop_pending()
        if self._linger is not None:
            self._linger.cancel()
        self.server.connections.discard(self)
        for req in ([self.active] if self.active else []) + list(self.queue):
            if req.body is not None:
                req.body.finish(BodyError("the client closed the connection"))
        self.queue.clear()
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)

    def pause_writing(self) -> None:
        if self._write_ready is None or self._write_ready.done():
            self._write_ready = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)

    # -- httptools callbacks ------------------------------------------------------------
    def _reset_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0  # bytes read since the head began (a head still incomplete)
        self._head_size = 0  # bytes of the target and fields parsed (head, then trailers)
        self._fields = 0  # header fields, then trailer fields
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._body: RequestBody | None = None
        self._current: HttpRequest | None = None  # this message's request, once its head is in

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if len(self._url) > self.limits.max_target:
            raise ProtocolError(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self.limits
        if len(name) > limits.max_field or len(value) > limits.max_field:
            raise ProtocolError(431, "header too large")
        self._fields += 1
        if self._fields > limits.max_headers:
            raise ProtocolError(431, "too many headers")
        # SECURITY: counted field by field, however the bytes arrived (one read or many).
        self._head_size += len(name) + len(value) + 4
        if self._head_size > limits.max_head:
            raise ProtocolError(431, "request head too large")
        if not self._in_head:  # a trailer field of a chunked body: never forwarded
            if trailer_refused(name.decode("latin-1")):
                raise ProtocolError(400, "framing or Host field in trailers")
            return
        # Values as UTF-8 with surrogate escapes, as aiohttp decodes them: bytes that are not
        # UTF-8 stay visible (gateway.headers drops such values rather than forward them altered).
        self._headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        parser = self.parser
        self._in_head = False
        self._fields = 0
        self._head_size = 0
        method = parser.get_method().decode("latin-1")
        headers = self._headers
        http11 = parser.get_http_version() == "1.1"
        # SECURITY: every framing the gateway would not read exactly is refused here, before
        # the request is queued, so nothing of it is forwarded.
        content_length, chunked, expect = request_framing(headers, http11)
        body = None
        if chunked or content_length:
            body = self._body = RequestBody(self, expect)
        keep_alive = bool(parser.should_keep_alive()) and http11
        req = self._current = HttpRequest(self, method, self._url.decode("latin-1"), headers, keep_alive, body,
                                          content_length if not chunked else None)
        self.queue.append(req)  # started by data_received once this read is parsed
        if len(self.queue) >= MAX_QUEUED:
            self._pause()

    def on_body(self, data: bytes) -> None:
        if self._body is not None:
            self._body.feed(data)
            if self.buffered >= HIGH_WATER:
                self._pause()

    def on_message_complete(self) -> None:
        if self._body is not None:
            self._body.finish()
        self._reset_head()  # for the next message (no on_message_begin callback: one call less)

    # -- running requests ---------------------------------------------------------------
    def _next(self) -> None:
        """Start the handler for the next queued request, if any."""
        if not self.queue or self.lost:
            self.active = None
            return
        req = self.active = self.queue.popleft()
        _step(self._run(req))

    async def _run(self, req: HttpRequest) -> None:
        self._writing = req
        self._response_started = False
        self._response_done = False
        self._close_after = not req.keep_alive
        try:
            await self.server.handler(req, self)
        except Exception:  # a bug in the handler: answer 500 if still possible, and close
            log.exception("request handler failed")
            if not self._response_started:
                self.server.on_error(self, 500, "handler failed", None)
            self._close_after = True
        if not self._response_done:
            self._close_after = True
        body = req.body
        if body is not None and not body.drained:
            # SECURITY: unread body bytes must never be parsed as the next request. A body that
            # arrived whole (llhttp framed it) is dropped and the connection goes on; one still
            # arriving (or malformed) closes it.
            if not body.complete or body.error is not None:
                self._close_after = True
            self.buffered -= body.discard()
        if self._close_after or self.closing:
            self.close()
            return
        self.deadline = self.loop.time() + self.limits.head_timeout
        if self.paused and len(self.queue) < MAX_QUEUED and self.buffered < LOW_WATER:
            self._resume()
        self._next()
        if self.active is None and self._parse_error is not None:
            self._answer_parse_error()

    # -- writing the response -----------------------------------------------------------
    @property
    def response_started(self) -> bool:
        return self._response_started

    def write(self, data: bytes) -> None:
        """Write now, after whatever this connection deferred."""
        if self.transport is not None and not self.lost:
            self.out.flush_pending()
            self.transport.write(data)

    async def drain(self) -> None:
        if self._write_ready is not None and not self._write_ready.done():
            await self._write_ready

    def respond(self, status: int, reason: str, headers: list[tuple[str, str]] | bytes, body: bytes,
                close: bool = False) -> None:
        """Write a whole response (head and body) in one write."""
        if close or self._last_before_close():
            self._close_after = True
        head = _head(status, reason, headers, self._close_after)
        if (self._writing is not None and self._writing.method == "HEAD") or status in (204, 304) or status < 200:
            if status in (204, 304) or status < 200:
                data = head + b"\r\n"
            else:
                data = head + b"Content-Length: %d\r\n\r\n" % len(body)
        else:
            data = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        if not self.lost:
            self.out.write_soon(data)
        self._response_started = self._response_done = True

    def start_response(self, status: int, reason: str, headers: list[tuple[str, str]] | bytes,
                       content_length: int | None) -> "ResponseStream":
        """Write the head of a streamed response; the body follows through the returned stream."""
        no_body = (self._writing is not None and self._writing.method == "HEAD") or status in (204, 304)
        if self._last_before_close():
            self._close_after = True
        head = _head(status, reason, headers, self._close_after)
        if no_body:
            framing = b"" if status in (204, 304) else (b"" if content_length is None else b"Content-Length: %d\r\n" % content_length)
            mode = "none"
        elif content_length is not None:
            framing, mode = b"Content-Length: %d\r\n" % content_length, "length"
        else:
            framing, mode = b"Transfer-Encoding: chunked\r\n", "chunked"
        self.write(head + framing + b"\r\n")
        self._response_started = True
        return ResponseStream(self, mode)

    def _last_before_close(self) -> bool:
        """Nothing more will be read on this connection after the current request: an upgrade
        follows it, or its own body has not been read to the end."""
        req = self._writing
        if req is not None and req.body is not None and (not req.body.complete or req.body.error is not None):
            return True  # still arriving (or cut short): closing is the only safe way not to parse it
        err = self._parse_error  # one with a status is answered after this response, and closes
        return err is not None and not err.status and not self.queue

    def close(self) -> None:
        """Close after what was written; half-close first and drop what still arrives (bounded)."""
        if self.closing and self._linger is not None:
            return
        self.closing = True
        self.out.flush_pending()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        if self.paused:
            self.paused = False
            transport.resume_reading()
        self._linger = self.loop.call_later(LINGER_SECONDS, transport.close)

    def abort(self) -> None:
        self.closing = True
        self.out.drop_pending()
        if self.transport is not None:
            self.transport.abort()

    # -- flow control and errors --------------------------------------------------------
    def consumed(self, n: int) -> None:
        self.buffered -= n
        if self.paused and self.buffered <= LOW_WATER and len(self.queue) < MAX_QUEUED:
            self._resume()

    def _pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closing:
            self.paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.paused and self.transport is not None and not self.closing:
            self.paused = False
            self.transport.resume_reading()

    def _stop_reading(self) -> None:
        self._parse_error = self._parse_error or ProtocolError(0, "upgrade")
        if self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        if self.active is None:
            if self.queue:
                self._next()  # the upgrade request itself is answered, then the connection closes
            else:
                self._answer_parse_error()

    def _protocol_error(self, err: ProtocolError) -> None:
        """Stop parsing; answer once the requests before it are answered, then close."""
        self._parse_error = err
        if self._body is not None and not self._body.complete:
            self._body.finish(BodyError(str(err)))  # a handler streaming this body sees it cut short
        current = self._current
        if current is not None and current is not self.active and current in self.queue:
            self.queue.remove(current)  # its message is malformed: never started, never forwarded
        if self.transport is not None and not self.closing:
            self.transport.pause_reading()
            self.paused = True
        if self.active is None:
            if self.queue:
                self._next()  # the requests parsed before it are answered first
            else:
                self._answer_parse_error()

    def _answer_parse_error(self) -> None:
        err = self._parse_error
        if err is None or self.closing:
            return
        if err.status:
            self._writing = None
            self._close_after = True
            self.server.on_error(self, err.status, str(err), err.code)
        self.close()

    def timed_out(self, now: float) -> None:
        """Called by the server's sweeper: close an idle or trickling connection."""
        if self.active is None and not self.closing and now >= self.deadline:
            self.close()


def _step(coro, _done: "asyncio.Future | None" = None) -> None:
    """Run a request's coroutine until it waits; resume it when what it waits for is done.

    A task without the Task: no Task object, no trip through the event loop before the first
    step (a cache hit runs straight up to the upstream exchange), about 2 µs a request less.
    Nothing cancels these, and ``asyncio.current_task()`` is None inside them: what needs a
    real task (redis-py's timeouts) runs in one of its own (gateway.proxy.lookup).
    """
    try:
        waited = coro.send(None)
    except StopIteration:
        return
    except BaseException:  # _run answers every Exception itself: this is a bug, or shutdown
        log.exception("request coroutine failed")
        return
    if waited is None:  # a bare yield (asyncio.sleep(0)): go round the loop once
        asyncio.get_running_loop().call_soon(_step, coro)
    else:
        waited._asyncio_future_blocking = False
        waited.add_done_callback(functools.partial(_step, coro))


class ResponseStream:
    """The body of a streamed response: ``write`` each chunk (with backpressure), then ``end``."""

    __slots__ = ("conn", "mode")

    def __init__(self, conn: HttpConnection, mode: str) -> None:
        self.conn = conn
        self.mode = mode

    async def write(self, chunk: bytes) -> None:
        if not chunk or self.mode == "none":
            return
        if self.conn.lost:
            raise ConnectionResetError("the client closed the connection")
        if self.mode == "chunked":
            self.conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            self.conn.write(chunk)
        await self.conn.drain()

    def end(self) -> None:
        if self.mode == "chunked":
            self.conn.write(b"0\r\n\r\n")
        self.conn._response_done = True


_STATUS_REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 206: "Partial Content",
    301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified", 307: "Temporary Redirect",
    308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 410: "Gone", 413: "Payload Too Large",
    414: "URI Too Long", 415: "Unsupported Media Type", 422: "Unprocessable Content", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}
_STATUS_LINES: dict[tuple[int, str], bytes] = {}


def method_refused(method: str) -> str | None:
    """Why this server's parser (llhttp) refuses a request with this method, or None if it parses it.

    Methods are case-sensitive tokens from llhttp's list: ``get`` and ``FOO`` are refused (400).
    """
    if not method or not method.isascii() or not method.isprintable() or " " in method:
        return "not an HTTP method token"
    try:
        httptools.HttpRequestParser(None).feed_data(f"{method} / HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    except httptools.HttpParserUpgrade:  # CONNECT: parsed, then the connection is not HTTP any more
        return None
    except httptools.HttpParserError as exc:
        return str(exc)
    return None


def status_line(status: int, reason: str) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n``, cached per (status, reason)."""
    key = (status, reason)
    line = _STATUS_LINES.get(key)
    if line is None:
        text = reason or _STATUS_REASONS.get(status, "")
        line = f"HTTP/1.1 {status} {text}\r\n".encode("latin-1", "replace")
        if len(_STATUS_LINES) < 1024:  # upstream reasons repeat; bounded for hostile ones
            _STATUS_LINES[key] = line
    return line


def _head(status: int, reason: str, headers: list[tuple[str, str]] | bytes, close: bool) -> bytes:
    """Status line and headers (pairs, or lines already rendered), without the framing header
    and the blank line."""
    if isinstance(headers, bytes):
        return status_line(status, reason) + headers + (b"Connection: close\r\n" if close else b"")
    parts = [status_line(status, reason)]
    for name, value in headers:
        parts.append(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
    if close:
        parts.append(b"Connection: close\r\n")
    return b"".join(parts)


class HttpServer:
    """Listening sockets, live connections, the head-timeout sweeper and a graceful stop."""

    def __init__(self, handler: Handler, on_error: ErrorHandler, limits: Limits = Limits()) -> None:
        self.handler = handler
        self.on_error = on_error
        self.limits = limits
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self.connections: set[HttpConnection] = set()
        self._servers: list[asyncio.base_events.Server] = []
        self._sweeper: asyncio.Task | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen on host:port (0: a free port); returns the bound port."""
        self.loop = asyncio.get_running_loop()
        server = await self.loop.create_server(lambda: HttpConnection(self), host, port, reuse_address=True,
                                               reuse_port=reuse_port or None, backlog=1024)
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = self.loop.create_task(self._sweep())
        return server.sockets[0].getsockname()[1]

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self.loop.time()
            for conn in list(self.connections):
                conn.timed_out(now)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop listening, close idle connections, give in-flight requests ``grace`` seconds."""
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            if conn.active is None:
                conn.close()
        deadline = self.loop.time() + grace
        while any(c.active is not None for c in self.connections) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        await asyncio.sleep(0)  # the aborted transports' connection_lost runs (sockets closed)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
