"""The edge proxy's request pipeline, top to bottom in `handle`, and the streaming forwarder.

canonicalize -> public? -> credential -> throttle + verify -> record use -> route + scope
-> rewrite headers -> forward. Every refusal is an ApiError turned into the JSON envelope right here.
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
from redis.exceptions import RedisError

from gateway import accesslog, errors, keys
from gateway.cache import MISS, VerdictCache
from gateway.config import ServeSettings
from gateway.clientaddr import client_address, is_trusted_peer
from gateway.credentials import extract_credential, key_in_path, redacted_path
from gateway.httpserver import BodyError, HttpConnection, HttpRequest, RequestBody
from gateway.headers import ClientInfo, Identity, identity_of, upstream_request_headers, upstream_response_headers
from gateway.metrics import Metrics
from gateway.model import KeyRecord
from gateway.paths import InvalidPath, Target, canonicalize
from gateway.query import key_in_query, method_override_in_query, query_params
from gateway.readbatch import ReadBatch
from gateway.reload import RulesHolder
from gateway.scopes import Match, MethodNotAllowed, RouteNotFound
from gateway.signing import Signer
from gateway.singleflight import SingleFlight
from gateway.store import KeyStore
from gateway.throttle import FailureThrottle, KnownKeys
from gateway.upstream import UpstreamError, UpstreamPool, UpstreamTimeout
from gateway.usage import UsageBuffer

log = logging.getLogger("gateway")

@dataclass
class GatewayState:
    """Everything one gateway process shares between requests."""

    settings: ServeSettings
    rules: RulesHolder
    store: KeyStore  # request reads (verification)
    background: KeyStore  # the same Redis on connections of its own: subscription, registry, flushes
    cache: VerdictCache
    metrics: Metrics
    clock: Callable[[], float]
    throttle: FailureThrottle
    known_keys: KnownKeys
    usage: UsageBuffer = field(default_factory=UsageBuffer)
    reads: SingleFlight = field(default_factory=SingleFlight)  # the Redis reads of cache misses in flight
    batch: ReadBatch = field(init=False)  # the misses of one loop round, read in one round trip
    pool: UpstreamPool | None = None
    trusted_nets: tuple = ()
    signer: Signer | None = None  # signs the identity headers when --signing-secrets is set

    def __post_init__(self) -> None:
        self.batch = ReadBatch(lambda key_ids: self.store.get_many(key_ids))  # the store at the time of the read


_REQUEST_ID_PREFIX = "req_" + secrets.token_hex(6)  # random per process
_request_ids = itertools.count()


def new_request_id() -> str:
    """Unique, not secret: a per-process random prefix and a counter (no syscall per request)."""
    return f"{_REQUEST_ID_PREFIX}{next(_request_ids):012x}"


async def handle(st: GatewayState, req: HttpRequest, conn: HttpConnection) -> None:
    """The whole per-request pipeline of the gateway."""
    started = time.perf_counter()
    request_id = new_request_id()
    entry: dict = {"request_id": request_id, "method": req.method, "route": None,
                   "org_id": None, "key_id": None}
    outcome = "ok"
    status = 499
    try:
        # 1-5. Canonicalize, public route?, credential, throttle + verify, route + scope.
        target, identity = await decide(st, req.method, req.target, req.headers, req.peer, entry)

        # 6. Header hygiene, then injection; stream to the upstream and back.
        headers = upstream_request_headers(
            req.headers, identity=identity, request_id=request_id, client=client_info(req, st),
        )
        if st.signer is not None:
            headers.extend(st.signer.headers(
                now=st.clock(), method=req.method, path=target.path, query=target.query,
                identity=identity, request_id=request_id,
            ))
        status, outcome = await forward(st, req, conn, target, headers, request_id)
    except errors.ApiError as err:
        outcome, status = err.code, err.status
        send_error(conn, err, request_id)
    except Exception:
        err = answer_failure(conn, request_id)
        outcome, status = err.code, err.status
    finally:
        log_request(st, entry, status, outcome, started)


def log_request(st: GatewayState, entry: dict, status: int, outcome: str, started: float) -> None:
    """Metrics and the JSON access-log line of one request (the proxy's and forward-auth's)."""
    duration = time.perf_counter() - started
    st.metrics.requests.record(outcome, entry["route"] or "-", duration)
    entry.update(status=status, outcome=outcome, duration_ms=round(duration * 1000, 3))
    accesslog.write(orjson.dumps(entry))


async def decide(st: GatewayState, method: str, raw_target: str, headers: list[tuple[str, str]],
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
    # SECURITY: a key pasted into the path is refused, and logged with its segment redacted.
    if key_in_path(target.path):
        entry["path"] = redacted_path(target.path)
        raise errors.KeyInPath()
    entry["path"] = target.path  # never the query string: it may carry secrets
    if target.query:
        params = query_params(target.query)
        if key_in_query(params):
            raise errors.KeyInQuery()
        if method_override_in_query(params):
            raise errors.MethodOverrideRefused()
    found = st.rules.current.match(method, target.segments)
    if isinstance(found, Match):
        entry["route"] = found.rule.template  # logged for refusals too (a 401 or 403 on this route)
        # 2. Public route: forwarded without a key.
        if found.rule.public:
            return target, None
    # 3. Credential, 4. throttle + verify (401 before anything about routes is revealed).
    record = await authenticate(st, headers, peer, extract_credential(headers), entry)
    # 7. Record use: every request whose key verified counts, whatever is answered next
    # (403, 404, 502, ...; buffered, flushed to Redis in batches).
    st.usage.add(record.id, int(st.clock() * 1000))
    # 5. Route, then scope.
    authorize(found, record)
    return target, _identity(record)


async def authenticate(st: GatewayState, headers: list[tuple[str, str]], peer: str, credential: str,
                       entry: dict) -> KeyRecord:
    """The failed-auth throttle, then verification; each failure counts against the client address.

    Fills the org and key id of ``entry`` (the access log line) once the key is known to be
    genuine, so a revoked or expired key is logged with its id too.
    """
    try:
        parsed = keys.parse_key(credential)
    except keys.InvalidKeyFormat:
        parsed = None  # no Redis command for a malformed key
    # SECURITY: decided before any Redis lookup; a key this process has verified before is
    # never locked out by someone else's guessing from the same address (it is still verified).
    if st.throttle.tracking:
        wait = st.throttle.retry_after(_client(st, headers, peer))
        if wait and not (parsed is not None and st.known_keys.vouches_for(parsed.key_id, parsed.digest)):
            st.metrics.throttled.inc()
            raise errors.TooManyFailedAttempts(wait)
    try:
        if parsed is None:
            raise errors.InvalidApiKey()
        record = st.cache.get(parsed.key_id)
        if record is MISS:
            record = await lookup(st, parsed)
        check(st, record, parsed, entry)
    except errors.Unauthorized:
        st.throttle.record_failure(_client(st, headers, peer))
        raise
    st.known_keys.add(record.id, record.digest)
    return record


def _client(st: GatewayState, headers: list[tuple[str, str]], peer: str) -> str:
    """The address failed attempts count against (only computed when the throttle needs it)."""
    return client_address(peer, (v for n, v in headers if n.lower() == "x-forwarded-for"), st.trusted_nets)


async def lookup(st: GatewayState, parsed: keys.ParsedKey) -> KeyRecord | None:
    """Not in the cache: one Redis read (the record, or None for an unknown id), then cached.

    Concurrent misses of one key share a single read (gateway.singleflight), unless an
    invalidation came in between: a burst on a cold cache costs one HGETALL, not one each.
    The reads of distinct keys made in one loop round share a round trip (gateway.readbatch).
    """
    generation = st.cache.generation
    key_id = parsed.key_id
    try:
        # A task of its own: redis-py's timeouts need one (gateway/httpserver.py runs
        # requests without); shielded, so no waiter can cancel the read of the others.
        record = await asyncio.shield(st.reads.read(key_id, generation, lambda: _read(st, key_id, generation)))
    except (RedisError, OSError):
        # SECURITY: fail closed, and say so: never a 401 and never an allow without Redis,
        # unless the operator opted in to serving recently verified keys (--stale-if-error),
        # at the price of not seeing revocations made during the outage.
        record = st.cache.get_stale(key_id, st.settings.stale_if_error) if st.settings.stale_if_error else None
        if record is None:
            raise errors.AuthUnavailable() from None
        st.metrics.stale_served.inc()
        return record
    return record


async def _read(st: GatewayState, key_id: str, generation: int) -> KeyRecord | None:
    """The one Redis read of a miss, shared by its waiters; cached unless fenced off by ``generation``."""
    started = time.perf_counter()
    try:
        record = await st.batch.get(key_id)
    except (RedisError, OSError):
        st.metrics.redis_errors.labels("verify").inc()
        raise
    st.metrics.redis_latency.observe(time.perf_counter() - started)
    st.cache.put(key_id, record, generation)
    return record


def check(st: GatewayState, record: KeyRecord | None, parsed: keys.ParsedKey, entry: dict) -> None:
    """Digest, revocation and expiry of a record, cached or just read."""
    # SECURITY: the digest comparison authenticates, cached or not. Only after it are the ids
    # logged: an unknown key is logged without any.
    if record is None or not secrets.compare_digest(record.digest, parsed.digest):
        raise errors.InvalidApiKey()
    entry["org_id"], entry["key_id"] = record.org_id, record.id
    status = record.status(int(st.clock() * 1000))
    if status == "revoked":
        raise errors.RevokedApiKey()
    if status == "expired":
        raise errors.ExpiredApiKey()


_identities: dict[str, tuple[KeyRecord, Identity]] = {}  # key id -> (record, its identity)


def _identity(record: KeyRecord) -> Identity:
    """The identity of a record, built (and its headers checked) once per cached record."""
    found = _identities.get(record.id)
    if found is not None and found[0] is record:
        return found[1]
    identity = identity_of(record.org_id, record.id, record.scopes)
    if len(_identities) >= 65536:
        _identities.clear()
    _identities[record.id] = (record, identity)
    return identity


def authorize(found: Match | RouteNotFound | MethodNotAllowed, record: KeyRecord) -> None:
    """404 / 405 for the route, then 403 when the key lacks the rule's scope."""
    if isinstance(found, RouteNotFound):
        raise errors.RouteNotFound()
    if isinstance(found, MethodNotAllowed):
        raise errors.MethodNotAllowed(found.allow)
    scope = found.rule.scope
    if scope is not None and scope not in record.scopes:
        raise errors.InsufficientScope(scope)


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
                  headers: list[tuple[str, str]], request_id: str) -> tuple[int, str]:
    """Stream the request to the upstream and its response back, with limits and timeouts.

    Returns the status answered and the access log's outcome.
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
    except UpstreamTimeout:
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
        if len(name) == 14 and name.lower() == b"content-length":
            length = int(value)  # httptools accepted it: digits only
        else:
            lines.append(name + b": " + value + b"\r\n")
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


def answer_failure(conn: HttpConnection, request_id: str) -> errors.ApiError:
    """A bug while answering (the exception being handled): log it, answer 500 if nothing was
    sent yet, else cut the connection. Returns the error answered, for the access log."""
    log.exception("request %s failed", request_id)
    err = errors.ApiError()
    if not conn.response_started:
        send_error(conn, err, request_id, close=True)
    else:
        conn.abort()
    return err


def send_error(conn: HttpConnection, err: errors.ApiError, request_id: str, close: bool = False) -> None:
    """Answer the JSON error envelope with its status-specific headers."""
    conn.respond(err.status, "", error_headers(err, request_id), error_body(err, request_id), close=close)


def error_headers(err: errors.ApiError, request_id: str) -> list[tuple[str, str]]:
    return [("Content-Type", "application/json"), ("X-Request-Id", request_id), ("Cache-Control", "no-store"),
            *err.headers().items()]


def error_body(err: errors.ApiError, request_id: str) -> bytes:
    return orjson.dumps(errors.envelope(err, request_id))


_PROTOCOL_ERRORS: dict[int, type[errors.ApiError]] = {
    400: errors.MalformedRequest, 413: errors.PayloadTooLarge, 414: errors.UriTooLong, 431: errors.HeadersTooLarge,
}
_PROTOCOL_CODES: dict[str | None, type[errors.ApiError]] = {"invalid_host": errors.InvalidHost}


def answer_protocol_error(conn: HttpConnection, status: int, reason: str, code: str | None = None) -> None:
    """What the HTTP parser refused, or a limit: the envelope, never a byte of the request."""
    if status < 500:  # (a 500 here is a handler that failed: gateway/httpserver.py logged it)
        # Worded as the admin API's filter (gateway/app.py ServerLog) words it, so one search finds both.
        log.warning("malformed HTTP request refused (%s, status %d) from %s", reason, status, conn.peer)
    err = (_PROTOCOL_CODES.get(code) or _PROTOCOL_ERRORS.get(status, errors.ApiError))()
    request_id = new_request_id()
    send_error(conn, err, request_id, close=True)
    # The access log has a line for every answer, this one included (nothing of the request
    # is in it: its method and path are exactly what could not be parsed).
    accesslog.write(orjson.dumps({
        "request_id": request_id, "method": None, "route": None, "org_id": None, "key_id": None,
        "path": None, "status": err.status, "outcome": err.code, "duration_ms": 0.0,
    }))

