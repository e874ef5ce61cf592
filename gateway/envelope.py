"""How every answer is framed: request ids, the JSON error envelope, the access-log line.

Shared by the proxy, forward-auth, the aiohttp listeners and the admin API, so it imports no
HTTP server and no aiohttp (the admin process loads this without the gateway's server or
upstream client). A connection here is anything with ``respond``, ``abort``,
``response_started`` and ``peer`` (gateway.httpserver.HttpConnection).
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from typing import Any, Awaitable, Callable

import orjson

from gateway import accesslog, errors
from gateway.usage import outcome_class

log = logging.getLogger("gateway")

_REQUEST_ID_PREFIX = "req_" + secrets.token_hex(6)  # random per process
_request_ids = itertools.count()

# The access-log entry's field naming the key that authenticated (set by gateway.decision, popped
# before the line is written): its use is counted once the answer's status is known.
KEY_USED = "_key_used"

# Worded once, for the proxy's parser and aiohttp's (gateway.aiohttp_runner), so one search finds both.
MALFORMED_REFUSED = "malformed HTTP request refused ({kind}, status {status}) from %s"


def new_request_id() -> str:
    """Unique, not secret: a per-process random prefix and a counter (no syscall per request)."""
    return f"{_REQUEST_ID_PREFIX}{next(_request_ids):012x}"


def error_headers(err: errors.ApiError, request_id: str) -> list[tuple[str, str]]:
    """The headers of an error answer: JSON, its request id, no-store, and the error's own."""
    headers = [("Content-Type", "application/json"), ("X-Request-Id", request_id), ("Cache-Control", "no-store"),
               *err.headers().items()]
    if err.more_headers:
        headers += err.more_headers.items()
    return headers


def error_body(err: errors.ApiError, request_id: str) -> bytes:
    """The JSON error envelope, the one body every error answer has."""
    return orjson.dumps(errors.envelope(err, request_id))


def send_error(conn, err: errors.ApiError, request_id: str, close: bool = False) -> None:
    """Answer the JSON error envelope with its status-specific headers."""
    conn.respond(err.status, "", error_headers(err, request_id), error_body(err, request_id), close=close)


def answer_failure(conn, request_id: str) -> errors.ApiError:
    """A bug while answering (the exception being handled): log it, answer 500 if nothing was
    sent yet, else cut the connection. Returns the error answered, for the access log."""
    log.exception("request %s failed", request_id)
    err = errors.ApiError()
    if not conn.response_started:
        send_error(conn, err, request_id, close=True)
    else:
        conn.abort()
    return err


def log_refusal(request_id: str, err: errors.ApiError) -> None:
    """The access-log line of a request refused before it could be read (nothing of the
    request is in it: its method and path are exactly what could not be parsed)."""
    accesslog.write(orjson.dumps({
        "request_id": request_id, "method": None, "route": None, "org_id": None, "key_id": None,
        "path": None, "status": err.status, "outcome": err.code, "duration_ms": 0.0,
    }))


_PROTOCOL_ERRORS: dict[int, type[errors.ApiError]] = {
    400: errors.MalformedRequest, 413: errors.PayloadTooLarge, 414: errors.UriTooLong, 431: errors.HeadersTooLarge,
}
_PROTOCOL_CODES: dict[str | None, type[errors.ApiError]] = {"invalid_host": errors.InvalidHost}


def protocol_error(status: int, code: str | None = None) -> errors.ApiError:
    """The error for what an HTTP parser refused, by status (and code, where one status has
    several); any other status (500: a handler failed, 504) keeps its status as internal_error."""
    found = _PROTOCOL_CODES.get(code) or _PROTOCOL_ERRORS.get(status)
    if found is not None:
        return found()
    err = errors.ApiError()
    err.status = status
    return err


def answer_protocol_error(conn, status: int, reason: str, code: str | None = None) -> None:
    """What the HTTP parser refused, or a limit: the envelope, never a byte of the request."""
    if status < 500:  # (a 500 here is a handler that failed: gateway/httpserver.py logged it)
        log.warning(MALFORMED_REFUSED.format(kind=reason, status=status), conn.peer)
    err = protocol_error(status, code)
    request_id = new_request_id()
    send_error(conn, err, request_id, close=True)
    log_refusal(request_id, err)  # the access log has a line for every answer, this one included


def log_request(metrics, entry: dict, status: int, outcome: str, started: float) -> None:
    """Metrics and the JSON access-log line of one request (the proxy's and forward-auth's)."""
    duration = time.perf_counter() - started
    metrics.requests.record(outcome, entry["route"] or "-", duration)
    entry.update(status=status, outcome=outcome, duration_ms=round(duration * 1000, 3))
    accesslog.write(orjson.dumps(entry))


def _send_refusal(conn, err: errors.ApiError, request_id: str, req: Any) -> None:
    send_error(conn, err, request_id)


# step(state, request, connection, request_id, entry) -> (status answered, access-log outcome)
Step = Callable[[Any, Any, Any, str, dict], Awaitable[tuple[int, str]]]
Refuse = Callable[[Any, errors.ApiError, str, Any], None]


def request_handler(step: Step, refuse: Refuse = _send_refusal) -> Callable[[Any, Any, Any], Awaitable[None]]:
    """``handler(state, req, conn)`` around ``step``: a request id, the access-log entry, and
    one exit for every outcome. An ApiError is answered by ``refuse`` (the JSON envelope
    unless told otherwise), any other exception is a bug (500, logged), and every request,
    cancelled ones included (499), gets its metrics and access-log line. ``state`` needs
    ``metrics``; ``step`` fills ``entry`` as it learns. A request whose key authenticated
    (``entry[KEY_USED]``) is counted in ``state.usage`` by the class of what it was answered:
    refused when the handler itself refused it with 403, 404, 405 or 429 (gateway.usage)."""

    async def handler(st, req, conn) -> None:
        started = time.perf_counter()
        request_id = new_request_id()
        entry: dict = {"request_id": request_id, "method": req.method, "route": None,
                       "org_id": None, "key_id": None}
        outcome = "ok"
        status = 499
        refused = False
        try:
            status, outcome = await step(st, req, conn, request_id, entry)
        except errors.ApiError as err:
            outcome, status, refused = err.code, err.status, True
            refuse(conn, err, request_id, req)
        except Exception:
            err = answer_failure(conn, request_id)
            outcome, status = err.code, err.status
        finally:
            used = entry.pop(KEY_USED, None)
            if used is not None:
                st.usage.add(used, int(st.clock() * 1000), outcome_class(status, refused))
            log_request(st.metrics, entry, status, outcome, started)

    return handler
