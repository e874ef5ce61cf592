"""Message framing and Host rules for the proxy port's requests (RFC 9112 3.2, 6): pure.

gateway/httprequest.py calls ``request_framing`` once per request head, before the request is
queued, so a head the gateway will not read exactly is refused before any byte of it is
forwarded. The rules are stricter than llhttp's, on purpose (one reading, no interpretation):

- ``Transfer-Encoding``: at most one, its value exactly ``chunked`` (case-insensitive, no
  list, no parameters), only on HTTP/1.1, never together with ``Content-Length``;
- ``Content-Length``: at most one, ASCII digits only;
- ``Host``: exactly one on HTTP/1.1 (at most one on HTTP/1.0, where it is optional), a host
  name, IPv4 address or [IPv6] literal with an optional port: no userinfo, path, list,
  space or control byte.
- trailer fields of a chunked body are read and dropped (never forwarded); framing or Host
  fields in trailers are refused (``trailer_refused``).
"""

from __future__ import annotations

import re

_OWS = " \t"
_HOST = re.compile(r"(?:[A-Za-z0-9._~%-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
MAX_HOST = 261  # 255 for the name, ":" and a port
_TRAILER_REFUSED = frozenset({"content-length", "transfer-encoding", "host", "trailer"})
_MAX_CL_DIGITS = 19  # llhttp refuses more than 2**64 anyway; bounds int() on hostile input


class ProtocolError(Exception):
    """The client broke HTTP/1.1 or a limit: answered with ``status`` (and ``code``, when the
    status alone does not say it) and the connection closed."""

    def __init__(self, status: int, reason: str, code: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code


def _bad(reason: str) -> ProtocolError:
    return ProtocolError(400, reason)


def valid_host(value: str) -> bool:
    """A Host field value (OWS already trimmed) the gateway accepts."""
    return 0 < len(value) <= MAX_HOST and _HOST.fullmatch(value) is not None


def request_framing(headers: list[tuple[str, str]], http11: bool) -> tuple[int | None, bool, bool]:
    """(Content-Length or None, chunked?, Expect: 100-continue?) of a request head.

    Raises ProtocolError (400) for every framing the gateway does not read exactly, and 400
    ``invalid_host`` for a missing, repeated or invalid Host. One pass; names are compared by
    length first, so the common header costs one ``len``.
    """
    content_length: int | None = None
    chunked = expect = False
    hosts = 0
    for name, value in headers:
        n = len(name)
        if n == 4:
            if name.lower() == "host":
                hosts += 1
                if hosts > 1:
                    raise ProtocolError(400, "Host repeated", "invalid_host")
                if not valid_host(value.strip(_OWS)):
                    raise ProtocolError(400, "Host value invalid", "invalid_host")
        elif n == 14:
            if name.lower() == "content-length":
                if content_length is not None:
                    raise _bad("Content-Length repeated")
                digits = value.strip(_OWS)
                if not (digits.isascii() and digits.isdigit()) or len(digits) > _MAX_CL_DIGITS:
                    raise _bad("Content-Length not a single decimal number")
                content_length = int(digits)
        elif n == 17:
            if name.lower() == "transfer-encoding":
                if chunked:
                    raise _bad("Transfer-Encoding repeated")
                if value.strip(_OWS).lower() != "chunked":
                    raise _bad("Transfer-Encoding other than chunked")
                chunked = True
        elif n == 6:
            if name.lower() == "expect" and value.strip(_OWS).lower() == "100-continue":
                expect = True
    if chunked and content_length is not None:
        raise _bad("Content-Length with Transfer-Encoding")
    if chunked and not http11:
        raise _bad("Transfer-Encoding in HTTP/1.0")
    if hosts == 0 and http11:
        raise ProtocolError(400, "Host missing", "invalid_host")
    return content_length, chunked, expect


def trailer_refused(name: str) -> bool:
    """A trailer field that could change framing or routing if a backend merged it (refused)."""
    return name.lower() in _TRAILER_REFUSED
