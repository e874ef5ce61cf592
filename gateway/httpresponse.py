"""Responses of the proxy port's HTTP/1.1 server: the head bytes, a whole response in one
write, or a streamed one (``ResponseStream``).

``ResponseWriting`` holds the connection's writing methods (gateway.httpserver
``HttpConnection`` inherits them, so ``conn.respond(...)`` is still one call). A response whose
request body was not read to its end, or that comes before a refused message, closes the
connection (``Connection: close``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio
    from collections import deque

    from gateway.framing import ProtocolError
    from gateway.httprequest import HttpRequest
    from gateway.httpserver import HttpConnection
    from gateway.writebatch import Deferred

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


class ResponseWriting:
    """Writing the answer to the current request. Mixed into ``HttpConnection``, whose state it
    uses: ``transport``, ``out``, ``lost``, ``queue`` and the response flags below."""

    transport: asyncio.Transport | None
    out: Deferred
    lost: bool
    queue: deque[HttpRequest]
    _write_ready: asyncio.Future | None
    _parse_error: ProtocolError | None
    _writing: HttpRequest | None  # the request being answered
    _response_started: bool
    _response_done: bool
    _close_after: bool

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

