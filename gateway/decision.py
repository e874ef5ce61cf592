"""May this request pass? The decision shared by the proxy and forward-auth, steps 1-5 of the pipeline.

canonicalize -> public? -> credential -> throttle + verify -> mark the key used -> route + scope
-> the key's limits. Raises the ApiError to answer; gateway.proxy (forwarding) and gateway.forward_auth (answering
the edge) do the rest. No HTTP server and no upstream client here.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from gateway import errors, keys
from gateway.cache import MISS, VerdictCache
from gateway.config import ServeSettings
from gateway.clientaddr import client_address
from gateway.credentials import extract_credential, key_in_path, redacted_path
from gateway.envelope import KEY_USED
from gateway.headers import Identity, identity_of
from gateway.leases import ADMIT
from gateway.limiter import Entry as LimitedKey, Limiter
from gateway.metrics import Metrics
from gateway.model import KeyRecord, verdict
from gateway.paths import NotCanonical, Target, canonicalize
from gateway.query import key_in_query, method_override_in_query, query_params
from gateway.readbatch import ReadBatch
from gateway.reload import RulesHolder
from gateway.scopes import Match, WrongMethod, NoRoute
from gateway.signing import Signer
from gateway.singleflight import SingleFlight
from gateway.store import KeyStore, Unavailable
from gateway.throttle import FailureThrottle, KnownKeys
from gateway.usage import UsageBuffer

if TYPE_CHECKING:
    from gateway.upstream import UpstreamPool


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
    limits: Limiter | None = None  # per-key rate limits and quotas (gateway.limiter); None: none enforced
    # Per-process memos of the hot path, public-safe (never a key): digest -> key id (keys.parse_key),
    # key id -> (record, its identity) built once per cached record.
    key_ids: dict[str, str] = field(default_factory=dict)
    identities: dict[str, tuple[KeyRecord, Identity]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.batch = ReadBatch(lambda key_ids: self.store.get_many(key_ids))  # the store at the time of the read


async def decide(st: GatewayState, method: str, raw_target: str, headers: list[tuple[str, str]],
                 peer: str, entry: dict, content_length: int | None = None) -> tuple[Target, Identity | None, LimitedKey | None]:
    """May this request pass? Steps 1-5 of the pipeline, shared by the proxy and forward-auth.

    Returns the canonical target, the identity to inject (None on a public route) and the key's
    limiter when it is limited (its RateLimit headers go on the answer: ``rate_headers``); raises
    the ApiError to answer otherwise. Fills ``entry`` (the access log line) as it learns.
    """
    # 1. Canonicalize: authorize exactly the path that will be forwarded.
    try:
        target = canonicalize(raw_target)
    except NotCanonical:
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
            return target, None, None
    # 3. Credential, 4. throttle + verify (401 before anything about routes is revealed).
    record = await authenticate(st, headers, peer, extract_credential(headers), entry)
    # 7. Record use: every request whose key verified counts, whatever is answered next
    # (403, 404, 502, ...), by the class of that answer: counted once it is known
    # (gateway.envelope.request_handler; buffered, flushed to Redis in batches).
    entry[KEY_USED] = record.id
    # 5. Route, then scope.
    authorize(found, record)
    # 5b. The key's limits, last: a 401, 403 or 404 spends nothing, and a refusal here neither
    # (gateway.leases). Admitting from the budget this node holds is synchronous; only a lease
    # (a few per second per key at most) goes to Redis.
    limited = None
    limits = st.limits
    if limits is not None:
        limited = limits.entry(record)
        if limited is not None:
            now = limits.now_ms()  # Redis's clock (gateway.limiter)
            # A body declared too large is refused before it spends the key's budget (the
            # proxy's content_length; a chunked body found too large later has spent it).
            if content_length is not None and content_length > st.settings.max_body_bytes:
                raise errors.PayloadTooLarge()
            cost = found.rule.cost
            decision = limits.admit(limited, cost, now)
            if decision is not ADMIT:
                await limits.settle(limited, decision, cost)
    return target, _identity(st, record), limited


def rate_headers(st: GatewayState, limited: LimitedKey | None) -> dict[str, str] | None:
    """The RateLimit-Policy and RateLimit headers of a limited key's answer (None: unlimited)."""
    if limited is None:
        return None
    return limited.headers(st.limits.now_ms())


def rate_header_bytes(st: GatewayState, limited: LimitedKey) -> bytes:
    """``rate_headers`` as the response head's lines (one CRLF-ended line each), for the proxy."""
    return limited.header_bytes(st.limits.now_ms())


async def authenticate(st: GatewayState, headers: list[tuple[str, str]], peer: str, credential: str,
                       entry: dict) -> KeyRecord:
    """The failed-auth throttle, then verification; each failure counts against the client address.

    Fills the org and key id of ``entry`` (the access log line) once the key is known to be
    genuine, so a revoked or expired key is logged with its id too.
    """
    try:
        parsed = keys.parse_key(credential, st.key_ids)
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
        verify_key(st, record, parsed, entry)
    except errors.Unauthorized:
        st.throttle.record_failure(_client(st, headers, peer))
        raise
    # By the presented secret's id and digest: a rolled key's secrets share record.id, and
    # vouches_for is asked with the parsed key's id.
    st.known_keys.add(parsed.key_id, parsed.digest)
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
    except Unavailable:  # (the store's reads turn every Redis and socket error into this)
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
    except Unavailable:
        st.metrics.redis_errors.labels("verify").inc()
        raise
    st.metrics.redis_latency.observe(time.perf_counter() - started)
    st.cache.put(key_id, record, generation)
    return record


def verify_key(st: GatewayState, record: KeyRecord | None, parsed: keys.ParsedKey, entry: dict) -> None:
    """Digest, revocation and expiry of a record, cached or just read (gateway.model.verdict)."""
    # SECURITY: the digest comparison authenticates, cached or not. Only after it are the ids
    # logged: an unknown key is logged without any.
    refused = None
    try:
        verdict(record, parsed.digest, int(st.clock() * 1000))  # InvalidApiKey: logged without ids
    except (errors.RevokedApiKey, errors.ExpiredApiKey, errors.RolledApiKey) as err:
        refused = err  # genuine, but refused: logged with its ids too
    entry["org_id"], entry["key_id"] = record.org_id, record.id
    if refused is not None:
        raise refused


IDENTITIES_MAX = 65536


def _identity(st: GatewayState, record: KeyRecord) -> Identity:
    """The identity of a record, built (and its headers checked) once per cached record."""
    memo = st.identities
    found = memo.get(record.id)
    if found is not None and found[0] is record:
        return found[1]
    identity = identity_of(record.org_id, record.id, record.scopes)
    if len(memo) >= IDENTITIES_MAX:
        memo.clear()
    memo[record.id] = (record, identity)
    return identity


def authorize(found: Match | NoRoute | WrongMethod, record: KeyRecord) -> None:
    """404 / 405 for the route, then 403 when the key lacks the rule's scope."""
    if isinstance(found, NoRoute):
        raise errors.RouteNotFound()
    if isinstance(found, WrongMethod):
        raise errors.MethodNotAllowed(found.allow)
    scope = found.rule.scope
    if scope is not None and scope not in record.scopes:
        raise errors.InsufficientScope(scope)
