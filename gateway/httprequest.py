"""Request heads of the proxy port's HTTP/1.1 server: llhttp's callbacks, the head limits, the
framing refusals, and the request they produce.

``RequestParsing`` holds the callbacks httptools calls on the connection (gateway.httpserver
``HttpConnection`` inherits them: httptools looks them up once per connection, so having them
here costs no call). Each raises ``ProtocolError`` for what it refuses; the connection maps
that to the answer and closes.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import httptools

from gateway.framing import ProtocolError, request_framing, trailer_refused
from gateway.httpbody import RequestBody
from gateway.httplimits import Limits

if TYPE_CHECKING:
    from gateway.httpserver import HttpConnection

HIGH_WATER = 256 * 1024  # buffered request-body bytes at which the socket is paused
LOW_WATER = 64 * 1024
MAX_QUEUED = 16  # pipelined requests parsed ahead of the one being handled


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


class RequestParsing:
    """llhttp's callbacks for one connection: the limits, then the request queued for the handler.

    Mixed into ``HttpConnection``, whose state it uses: ``parser``, ``limits``, ``queue``,
    ``buffered`` and ``_pause``.
    """

    parser: httptools.HttpRequestParser
    limits: Limits
    queue: deque[HttpRequest]
    buffered: int

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

