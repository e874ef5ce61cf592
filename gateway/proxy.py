"""The edge proxy's request pipeline, top to bottom in `handle`, and the streaming forwarder.

canonicalize -> public? -> credential -> throttle + verify -> route + scope -> rewrite headers
-> forward -> record use. Every refusal is an ApiError turned into the JSON envelope right here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from redis.exceptions import RedisError

from gateway import accesslog, errors, keys
from gateway.cache import MISS, VerdictCache
from gateway.config import ServeSettings
from gateway.clientaddr import client_address, is_trusted_peer
from gateway.credentials import extract_credential, key_in_query
from gateway.headers import ClientInfo, Identity, upstream_request_headers, upstream_response_headers
from gateway.metrics import Metrics
from gateway.model import KeyRecord
from gateway.paths import InvalidPath, Target, canonicalize, query_params
from gateway.query import method_override_in_query
from gateway.reload import RulesHolder
from gateway.scopes import Match, MethodNotAllowed, RouteNotFound
from gateway.signing import Signer
from gateway.store import KeyStore
from gateway.throttle import FailureThrottle, KnownKeys
from gateway.upstream import UpstreamError, UpstreamPool, UpstreamTimeout
from gateway.usage import UsageBuffer

log = logging.getLogger("gateway")

CHUNK = 64 * 1024


@dataclass
class GatewayState:
    """Everything one gateway process shares between requests."""

    settings: ServeSettings
    rules: RulesHolder
    store: KeyStore
    cache: VerdictCache
    metrics: Metrics
    clock: Callable[[], float]
    throttle: FailureThrottle
    known_keys: KnownKeys
    usage: UsageBuffer = field(default_factory=UsageBuffer)
    pool: UpstreamPool | None = None
    trusted_nets: tuple = ()
    upstream: str = ""
    signer: Signer | None = None  # signs the identity headers when --signing-secrets is set


STATE = web.AppKey("gateway_state", GatewayState)


_REQUEST_ID_PREFIX = "req_" + secrets.token_hex(6)  # random per process
_request_ids = itertools.count()


def new_request_id() -> str:
    """Unique, not secret: a per-process random prefix and a counter (no syscall per request)."""
    return f"{_REQUEST_ID_PREFIX}{next(_request_ids):012x}"


async def handle(request: web.Request) -> web.StreamResponse:
    """The whole per-request pipeline of the gateway."""
    st = request.app[STATE]
    started = time.perf_counter()
    request_id = new_request_id()
    entry: dict = {"request_id": request_id, "method": request.method, "route": None,
                   "org_id": None, "key_id": None}
    outcome = "ok"
    response: web.StreamResponse | None = None
    try:
        # 1-5. Canonicalize, public route?, credential, throttle + verify, route + scope.
        target, identity = await decide(st, request.method, request.raw_path, request.headers,
                                        request.remote or "", entry)

        # 6. Header hygiene, then injection; stream to the upstream and back.
        headers = upstream_request_headers(
            request.headers.items(), identity=identity, request_id=request_id,
            client=client_info(request, st),
        )
        if st.signer is not None:
            headers.extend(st.signer.headers(
                now=st.clock(), method=request.method, path=target.path, query=target.query,
                identity=identity, request_id=request_id,
            ))
        response = await forward(request, st, target, headers, request_id)

        # 7. Record use (buffered; flushed to Redis in batches).
        if identity is not None:
            st.usage.add(identity.key_id, int(st.clock() * 1000))
        return response
    except errors.ApiError as err:
        outcome = err.code
        response = error_response(err, request_id)
        return response
    finally:
        log_request(st, entry, response.status if response is not None else 499, outcome, started)


def log_request(st: GatewayState, entry: dict, status: int, outcome: str, started: float) -> None:
    """Metrics and the JSON access-log line of one request (the proxy's and forward-auth's)."""
    duration = time.perf_counter() - started
    st.metrics.request_counter(outcome, entry["route"] or "-").inc()
    st.metrics.latency.observe(duration)
    entry.update(status=status, outcome=outcome, duration_ms=round(duration * 1000, 3))
    accesslog.write(orjson.dumps(entry))


async def decide(st: GatewayState, method: str, raw_target: str, headers: CIMultiDictProxy[str] | CIMultiDict[str],
                 peer: str, entry: dict) -> tuple[Target, Identity | None]:
    """May this request pass? Steps 1-5 of the pipeline, shared by the proxy and forward-auth.

    Returns the canonical target and the identity to inject (None on a public route); raises
    the ApiError to answer otherwise. Fills ``entry`` (the access log line) as it learns.
    """
    # 1. Canonicalize: authorize exactly the path that will be forwarded.
    try:
        target = canonicalize(raw_target)
    except InvalidPath:
        raise errors.InvalidPath() from None
    entry["path"] = target.path  # never the query string: it may carry secrets
    if target.query:
        params = query_params(target.query)
        if key_in_query(params):
            raise errors.KeyInQuery()
        if method_override_in_query(params):
            raise errors.MethodOverrideRefused()
    found = st.rules.current.match(method, target.segments)

    # 2. Public route: forwarded without a key.
    identity = None
    if not (isinstance(found, Match) and found.rule.public):
        # 3. Credential, 4. throttle + verify (401 before anything about routes is revealed).
        record = await authenticate(st, headers, peer, extract_credential(headers.items()))
        entry["org_id"], entry["key_id"] = record.org_id, record.id
        # 5. Route, then scope.
        authorize(found, record)
        identity = Identity(record.org_id, record.id, record.scopes)
    entry["route"] = found.rule.template
    return target, identity


async def authenticate(st: GatewayState, headers: CIMultiDictProxy[str] | CIMultiDict[str], peer: str,
                       credential: str) -> KeyRecord:
    """The failed-auth throttle, then verification; each failure counts against the client address."""
    client = client_address(peer, headers.getall("X-Forwarded-For", ()), st.trusted_nets)
    try:
        parsed = keys.parse_key(credential)
    except keys.InvalidKeyFormat:
        parsed = None  # no Redis command for a malformed key
    # SECURITY: decided before any Redis lookup; a key this process has verified before is
    # never locked out by someone else's guessing from the same address (it is still verified).
    if parsed is None or not st.known_keys.vouches_for(parsed.key_id, parsed.digest):
        wait = st.throttle.retry_after(client)
        if wait:
            st.metrics.throttled.inc()
            raise errors.TooManyFailedAttempts(wait)
    try:
        if parsed is None:
            raise errors.InvalidApiKey()
        record = await verify(st, parsed)
    except errors.Unauthorized:
        st.throttle.record_failure(client)
        raise
    st.known_keys.add(record.id, record.digest)
    return record


async def verify(st: GatewayState, parsed: keys.ParsedKey) -> KeyRecord:
    """The in-process cache, then one Redis read; then digest, revocation and expiry."""
    record = st.cache.get(parsed.key_id)
    if record is MISS:
        generation = st.cache.generation
        started = time.perf_counter()
        try:
            record = await st.store.get(parsed.key_id)
        except (RedisError, OSError):
            st.metrics.redis_errors.labels("verify").inc()
            # SECURITY: fail closed, and say so: never a 401 and never an allow without Redis,
            # unless the operator opted in to serving recently verified keys (--stale-if-error),
            # at the price of not seeing revocations made during the outage.
            record = st.cache.get_stale(parsed.key_id, st.settings.stale_if_error) if st.settings.stale_if_error else None
            if record is None:
                raise errors.AuthUnavailable() from None
            st.metrics.stale_served.inc()
        else:
            st.metrics.redis_latency.observe(time.perf_counter() - started)
            st.cache.put(parsed.key_id, record, generation)
    # SECURITY: the digest comparison authenticates, cached or not.
    if record is None or not secrets.compare_digest(record.digest, parsed.digest):
        raise errors.InvalidApiKey()
    status = record.status(int(st.clock() * 1000))
    if status == "revoked":
        raise errors.RevokedApiKey()
    if status == "expired":
        raise errors.ExpiredApiKey()
    return record


def authorize(found: Match | RouteNotFound | MethodNotAllowed, record: KeyRecord) -> None:
    """404 / 405 for the route, then 403 when the key lacks the rule's scope."""
    if isinstance(found, RouteNotFound):
        raise errors.RouteNotFound()
    if isinstance(found, MethodNotAllowed):
        raise errors.MethodNotAllowed(found.allow)
    scope = found.rule.scope
    if scope is not None and scope not in record.scopes:
        raise errors.InsufficientScope(scope)


def client_info(request: web.Request, st: GatewayState) -> ClientInfo:
    peer = request.remote or ""
    return ClientInfo(peer=peer, proto=request.scheme, host=request.headers.get("Host"),
                      trusted_proxy=is_trusted_peer(peer, st.trusted_nets))


async def forward(
    request: web.Request, st: GatewayState, target: Target, headers: list[tuple[str, str]], request_id: str
) -> web.StreamResponse:
    """Stream the request to the upstream and its response back, with limits and timeouts."""
    limit = st.settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise errors.PayloadTooLarge()
    too_large = False

    async def body() -> AsyncIterator[bytes]:
        nonlocal too_large
        sent = 0
        while True:
            try:
                chunk = await request.content.readany()
            except web.RequestPayloadError:  # a malformed chunked body from the client
                raise errors.BadRequest() from None
            if not chunk:
                break
            sent += len(chunk)
            if sent > limit:
                too_large = True
                raise errors.PayloadTooLarge()
            yield chunk

    # SECURITY: the canonical path (and the query) go out byte for byte: the backend sees
    # exactly what was authorized.
    target_text = target.path + ("?" + target.query if target.query else "")
    data = body() if request.body_exists else None
    assert st.pool is not None
    try:
        upstream = await st.pool.request(request.method, target_text, headers, data, request.content_length)
    except errors.ApiError:
        raise
    except UpstreamTimeout:
        raise errors.UpstreamTimeout() from None
    except (UpstreamError, OSError):
        if too_large:
            raise errors.PayloadTooLarge() from None
        raise errors.UpstreamUnavailable() from None
    response_headers = upstream_response_headers(_decode_headers(upstream.raw_headers), request_id=request_id)
    body_now = upstream.complete_body if request.method != "HEAD" else None
    if body_now is not None:  # the whole (small) reply is in already: one write
        response = web.Response(status=upstream.status, reason=upstream.reason or None, body=body_now)
        for name, value in response_headers:
            if name.lower() != "content-length":
                response.headers.add(name, value)
        return response
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason or None)
    for name, value in response_headers:
        response.headers.add(name, value)
    await response.prepare(request)
    try:
        async for chunk in upstream.iter_chunks():
            await response.write(chunk)
    except (UpstreamError, OSError) as exc:
        # Headers are gone already: cut the connection so the client sees a truncated
        # body rather than a clean end of message.
        log.warning("upstream failed mid-response (request %s): %r", request_id, exc)
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("upstream failed mid-response") from None
    finally:
        upstream.release()
    await response.write_eof()
    return response


@web.middleware
async def router_errors(request: web.Request, handler) -> web.StreamResponse:
    """What aiohttp itself refuses (a target the catch-all route cannot match) gets our envelope."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return error_response(errors.InvalidPath(), new_request_id())


def error_response(err: errors.ApiError, request_id: str) -> web.Response:
    """The JSON error envelope with its status-specific headers."""
    headers = {"X-Request-Id": request_id, "Cache-Control": "no-store", **err.headers()}
    return web.Response(
        status=err.status,
        body=orjson.dumps(errors.envelope(err, request_id)),
        content_type="application/json",
        headers=headers,
    )


def _decode_headers(raw: tuple[tuple[bytes, bytes], ...]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
