"""The edge proxy: the request pipeline (`handle`) and the streaming forwarder.

decide (gateway.decision: canonicalize -> public? -> credential -> throttle + verify -> record
use -> route + scope) -> rewrite headers -> forward. Every refusal is an ApiError, answered
in the JSON envelope by gateway.envelope.
"""

from __future__ import annotations

import logging
from typing import AsyncIterator

from gateway import errors
from gateway.clientaddr import is_trusted_peer
from gateway.decision import GatewayState, decide, rate_header_bytes, rate_headers
from gateway.envelope import request_handler
from gateway.httpserver import BodyError, HttpConnection, HttpRequest, RequestBody
from gateway.headers import ClientInfo, upstream_request_headers, upstream_response_headers
from gateway.paths import Target
from gateway.upstream import UpstreamError, UpstreamTimedOut

log = logging.getLogger("gateway")


async def _pipeline(st: GatewayState, req: HttpRequest, conn: HttpConnection, request_id: str,
                    entry: dict) -> tuple[int, str]:
    # 1-5. Canonicalize, public route?, credential, throttle + verify, route + scope.
    target, identity, limited = await decide(st, req.method, req.target, req.headers, req.peer, entry,
                                             req.content_length)

    # 6. Header hygiene, then injection; stream to the upstream and back.
    headers = upstream_request_headers(
        req.headers, identity=identity, request_id=request_id, client=client_info(req, st),
    )
    if st.signer is not None:
        headers.extend(st.signer.headers(
            now=st.clock(), method=req.method, path=target.path, query=target.query,
            identity=identity, request_id=request_id,
        ))
    if limited is None:
        return await forward(st, req, conn, target, headers, request_id)
    try:
        return await forward(st, req, conn, target, headers, request_id, limited=rate_header_bytes(st, limited))
    except errors.ApiError as err:  # (a 502, 504 or 413 after the limiter: its headers too)
        err.more_headers = rate_headers(st, limited)
        raise


# SECURITY: the RateLimit headers of a limited key's answer are the gateway's: the upstream's
# copies are dropped, so a backend cannot tell the client another budget. An unlimited key's
# answer passes the backend's own (its limits, not ours).
_RATE_HEADERS = (b"ratelimit", b"ratelimit-policy")  # (9 and 16 bytes: most names are told apart without lower())


# handle(st, req, conn): the whole per-request pipeline of the gateway; refusals get the JSON envelope.
handle = request_handler(_pipeline)


def client_info(req: HttpRequest, st: GatewayState) -> ClientInfo:
    return ClientInfo(peer=req.peer, proto=req.scheme, host=req.header("host"),
                      trusted_proxy=is_trusted_peer(req.peer, st.trusted_nets))


async def _body_chunks(body: RequestBody, limit: int, state: dict) -> AsyncIterator[bytes]:
    """The request body as it arrives, refused once it exceeds ``limit`` bytes."""
    sent = 0
    while True:
        try:
            chunk = await body.read()
        except BodyError:  # a malformed chunked body, or the client went away
            # The upstream request is then aborted (UpstreamPool._exchange): it never sees
            # the end of a body that was cut short or malformed.
            raise errors.MalformedRequest() from None
        if not chunk:
            return
        sent += len(chunk)
        if sent > limit:
            state["too_large"] = True
            raise errors.PayloadTooLarge()
        yield chunk


async def forward(st: GatewayState, req: HttpRequest, conn: HttpConnection, target: Target,
                  headers: list[tuple[str, str]], request_id: str,
                  limited: bytes | None = None) -> tuple[int, str]:
    """Stream the request to the upstream and its response back, with limits and timeouts.

    ``limited``: a limited key's RateLimit header lines (``rate_header_bytes``), which replace
    the upstream's. Returns the status answered and the access log's outcome.
    """
    limit = st.settings.max_body_bytes
    if req.content_length is not None and req.content_length > limit:
        raise errors.PayloadTooLarge()
    body_state: dict = {}
    # SECURITY: the canonical path (and the query) go out byte for byte: the backend sees
    # exactly what was authorized.
    target_text = target.path + ("?" + target.query if target.query else "")
    data = _body_chunks(req.body, limit, body_state) if req.body is not None else None
    assert st.pool is not None
    try:
        upstream = await st.pool.request(req.method, target_text, headers, data, req.content_length)
    except errors.ApiError:
        raise
    except UpstreamTimedOut:
        raise errors.UpstreamTimeout() from None
    except (UpstreamError, OSError):
        if body_state.get("too_large"):
            raise errors.PayloadTooLarge() from None
        raise errors.UpstreamUnavailable() from None
    if upstream.spoiled:
        # SECURITY: bytes after the end of the response (or a malformed body) arrived with it:
        # the upstream's framing is off, so this answer may not be the one to this request.
        # Nothing of it is passed on.
        upstream.release()
        log.warning("upstream response malformed or followed by extra bytes (request %s)", request_id)
        raise errors.UpstreamUnavailable()
    length = None
    lines = []
    for name, value in upstream_response_headers(upstream.raw_headers, request_id=request_id):
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            length = int(value)  # httptools accepted it: digits only
        elif (size == 9 or size == 16) and limited is not None and name.lower() in _RATE_HEADERS:
            continue
        else:
            lines.append(name + b": " + value + b"\r\n")
    if limited is not None:
        lines.append(limited)
    response_headers = b"".join(lines)
    body_now = upstream.complete_body if req.method != "HEAD" else None
    if body_now is not None:  # the whole (small) reply is in already: one write
        conn.respond(upstream.status, upstream.reason, response_headers, body_now)
        return upstream.status, "ok"
    stream = conn.start_response(upstream.status, upstream.reason, response_headers, length)
    try:
        async for chunk in upstream.iter_chunks():
            await stream.write(chunk)
    except (UpstreamError, OSError) as exc:
        # Headers are gone already: cut the connection so the client sees a truncated
        # body rather than a clean end of message.
        log.warning("upstream failed mid-response (request %s): %r", request_id, exc)
        conn.abort()
        return upstream.status, "upstream_failed_mid_response"
    finally:
        upstream.release()
    stream.end()
    return upstream.status, "ok"
