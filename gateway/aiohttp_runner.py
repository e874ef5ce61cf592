"""aiohttp's server, with its own error pages replaced by the JSON envelope.

When aiohttp's HTTP parser refuses a request (a malformed header, a bad chunk size, a line
too long), aiohttp answers by itself in text/plain and quotes the offending line, which can be
an Authorization or X-API-Key header. This runner answers those with the same JSON error
envelope as everything else, without repeating a byte of the request.

It serves the admin API and the ops listener (the proxy port has its own server,
gateway/httpserver.py). It hooks into two aiohttp internals (``AppRunner._make_server`` and
``Server.__call__``); tests/security/test_admin_abuse.py fails if an aiohttp upgrade breaks
the hook.

SECURITY: slow and idle clients. aiohttp's keep-alive timer already closes a connection that has
no complete request head ``head_timeout`` seconds after connect or after its last response
(a head dribbled a byte at a time included: the handler is still waiting for it). On top of
that each listener holds at most ``max_connections``: past it, the oldest idle connections (no
request being handled or queued) are closed first, so idle sockets cannot lock the operator
out; when every other connection is busy, the new one is closed. Bodies are bounded by the
handlers that read them (the admin API's ``--body-timeout``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web, web_protocol, web_server
from aiohttp.http_exceptions import HttpProcessingError

from gateway import errors
from gateway.envelope import MALFORMED_REFUSED, error_body, error_headers, log_refusal, new_request_id, protocol_error


def error_response(err: errors.ApiError, request_id: str) -> web.Response:
    """The JSON error envelope with its status-specific headers, as an aiohttp response."""
    return web.Response(status=err.status, body=error_body(err, request_id), headers=error_headers(err, request_id))


class RedactMalformedRequests(logging.Filter):
    """aiohttp logs a request its parser refuses with the offending bytes, which can be the
    Authorization header: keep the event and the peer, drop the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            # SECURITY: the exception text repeats the raw request line or header (a credential):
            # only the error class is logged, no traceback.
            record.msg = MALFORMED_REFUSED.format(kind=type(exc).__name__, status=exc.code)
            record.args = record.args[-1:] if isinstance(record.args, tuple) else record.args
            record.exc_info = record.exc_text = None
        return True


_REDACT = RedactMalformedRequests()


def server_logger(name: str) -> logging.Logger:
    """The logger ``name``, redacted as above: give it to aiohttp's request handler."""
    logger = logging.getLogger(name)
    if _REDACT not in logger.filters:
        logger.addFilter(_REDACT)
    return logger


@web.middleware
async def ops_envelope_middleware(request: web.Request, handler) -> web.StreamResponse:
    """An ops listener's 404 and 405 in the JSON envelope, like every other error."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        err: errors.ApiError = errors.MethodNotAllowed(tuple(sorted(exc.allowed_methods)))
    except web.HTTPNotFound:
        err = errors.NotFound("No such endpoint.")
    return error_response(err, new_request_id())


class EnvelopeRequestHandler(web_protocol.RequestHandler):
    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        # Logging (through the redacting server_logger) and the "response already started" check.
        super().handle_error(request, status, exc, "")
        err = protocol_error(status)
        request_id = new_request_id()
        response = error_response(err, request_id)
        response.force_close()
        log_refusal(request_id, err)  # the access log has a line for every answer, this one included
        return response


@dataclass(frozen=True)
class ListenerLimits:
    """Per-listener bounds of an aiohttp server (see the module docstring)."""

    head_timeout: float = 75.0
    max_connections: int = 256

    @classmethod
    def for_settings(cls, settings) -> ListenerLimits:
        """ServeSettings (its ops listener) or AdminSettings (the admin port and its ops listener)."""
        most = getattr(settings, "max_connections", None) or settings.ops_max_connections
        return cls(head_timeout=settings.head_timeout, max_connections=most)


DEFAULT_LIMITS = ListenerLimits()


def _idle(handler: web_protocol.RequestHandler) -> bool:
    # aiohttp internals (checked by tests/security/test_slow_clients.py): no request running or queued.
    return not handler._request_in_progress and not handler._messages


class EnvelopeServer(web_server.Server):
    max_connections = 256

    def __call__(self) -> web_protocol.RequestHandler:
        return EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler, transport) -> None:
        super().connection_made(handler, transport)
        excess = len(self._connections) - self.max_connections
        if excess <= 0:
            return
        idle = [h for h in self._connections if h is not handler and _idle(h)][:excess]
        for h in idle or [handler]:  # all others busy: refuse the newcomer
            h.force_close()
            self._connections[h].close()


class EnvelopeAppRunner(web.AppRunner):
    """web.AppRunner whose protocol errors get the JSON envelope, within ``limits``."""

    def __init__(self, app: web.Application, *, limits: ListenerLimits = DEFAULT_LIMITS, **kwargs) -> None:
        super().__init__(app, keepalive_timeout=limits.head_timeout, **kwargs)
        self.limits = limits

    async def _make_server(self) -> web_server.Server:
        server = await super()._make_server()
        server.__class__ = EnvelopeServer  # same state, overridden factory and connection_made
        server.max_connections = self.limits.max_connections
        return server
