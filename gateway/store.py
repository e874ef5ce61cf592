"""The Redis data-access layer: the only module that knows the key layout and record encoding.

Layout (hash tags keep each atomic operation inside one slot, so the same code runs on
standalone Redis, Sentinel and Redis Cluster):

  {P}:key:{<key_id>}          hash   the key record (digest, scopes, times, actors)
  {P}:key:{<key_id>}:audit    list   the key's audit events, written atomically with the change
  {P}:org:{<org_id>}:keys     zset   key ids of the org scored by created_at (ms)
  {P}:org:{<org_id>}:audit    stream the org's audit trail (create and revoke events)
  {P}:invalidate              pubsub channel carrying "<key_id> <nonce>" for each revoke
  {P}:acks                    pubsub channel carrying "<nonce> <node_id>" acknowledgements
  {P}:gateways                zset   live gateway processes, scored by registration expiry (ms)

The key id is derived one-way from the secret (gateway.keys.key_id_for), so verification is a
single HGETALL of the record followed by a constant-time digest comparison.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from dataclasses import dataclass
from urllib.parse import unquote
from typing import Any, Iterable

import msgspec
import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from gateway import keys
from gateway.model import AuditEvent, KeyRecord

__all__ = ["KeyStore", "Page", "RedisError", "connect"]

# Writes carry a deadline (ms, wall clock) checked against the server's clock: a write that a
# stalled or partitioned Redis runs only after the caller gave up (and answered 503 "nothing
# was changed") is refused instead of appearing later as a key nobody was shown.
_DEADLINE = """
local t = redis.call('TIME')
if t[1] * 1000 + math.floor(t[2] / 1000) > tonumber(ARGV[1]) then return -1 end
"""

_CREATE = _DEADLINE + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
"""

_REVOKE = _DEADLINE + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
if redis.call('HGET', KEYS[1], 'org_id') ~= ARGV[2] then return {} end
if redis.call('HEXISTS', KEYS[1], 'revoked_at') == 0 then
  redis.call('HSET', KEYS[1], 'revoked_at', ARGV[3], 'revoked_by', ARGV[4])
  redis.call('RPUSH', KEYS[2], ARGV[5])
end
return redis.call('HGETALL', KEYS[1])
"""

WRITE_DEADLINE_MS = 5000  # generous against clock skew between the admin host and Redis


class WriteTooLate(RedisError):
    """Redis ran a write after its deadline and refused it: nothing was changed."""




# SECURITY/consistency: monotonic, never recreates a record that does not exist.
_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cur = tonumber(redis.call('HGET', KEYS[1], 'last_used_at') or '0')
if tonumber(ARGV[1]) > cur then redis.call('HSET', KEYS[1], 'last_used_at', ARGV[1]) end
redis.call('HINCRBY', KEYS[1], 'request_count', ARGV[2])
return 1
"""

# Registry times come from the Redis server's clock, so gateways and admin APIs on different
# machines agree on who is live whatever their own clocks say.
_REGISTER = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""

_LIVE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"""

# The same, for many records in one call (standalone and Sentinel: Cluster would refuse keys
# of several slots). ARGV holds (last_used_ms, count) pairs in KEYS order.
_TOUCH_MANY = """
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    local cur = tonumber(redis.call('HGET', key, 'last_used_at') or '0')
    local ts = tonumber(ARGV[2 * i - 1])
    if ts > cur then redis.call('HSET', key, 'last_used_at', ARGV[2 * i - 1]) end
    redis.call('HINCRBY', key, 'request_count', ARGV[2 * i])
  end
end
return 1
"""
TOUCH_BATCH = 500  # records per script call: one round trip, and Redis is never blocked for long

_event_json = msgspec.json.Encoder()
_event_dec = msgspec.json.Decoder(AuditEvent)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of an org's keys, newest first; ``next_cursor`` is None on the last page."""

    records: list[KeyRecord]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A parsed Redis URL: standalone, Sentinel or Cluster."""

    kind: str  # "standalone", "sentinel" or "cluster"
    url: str  # standalone: the URL itself
    nodes: tuple[tuple[str, int], ...] = ()  # sentinels or cluster seed nodes
    service: str = ""  # sentinel: the monitored master's name
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_redis_url(url: str) -> RedisTarget:
    """Parse ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://`` or ``redis+cluster://``.

    redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]
    redis+cluster://[[user]:password@]host:port[,host:port...]
    The password is that of the data nodes (Sentinel and Cluster): ACL users work the same.
    Raises ValueError with a message that never contains the password.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("expected a URL such as redis://host:6379/0")
    if scheme in ("redis", "rediss", "unix"):
        return RedisTarget("standalone", url)
    if scheme not in ("redis+sentinel", "redis+cluster"):
        raise ValueError(f"unknown scheme {scheme}://; use redis://, rediss://, unix://, redis+sentinel:// "
                         "or redis+cluster://")
    userinfo, at, hostpart = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(pw) if colon else None)
    hosts, _, path = hostpart.partition("/")
    nodes = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"expected host:port in the node list, got {item.strip()!r}")
        nodes.append((host.strip("[]"), int(port)))
    if scheme == "redis+cluster":
        if path.strip("/"):
            raise ValueError("redis+cluster:// takes no path (Redis Cluster has database 0 only)")
        return RedisTarget("cluster", url, tuple(nodes), username=username, password=password)
    service, _, db = path.partition("/")
    if not service:
        raise ValueError("redis+sentinel:// needs the master's service name: redis+sentinel://host:26379/mymaster")
    if db and not db.isdigit():
        raise ValueError(f"expected a database number after the service name, got {db!r}")
    return RedisTarget("sentinel", url, tuple(nodes), service, int(db or 0), username, password)


def connect(url: str, *, timeout: float = 0.5) -> aioredis.Redis | RedisCluster:
    """A Redis client where every call has a timeout and one quick retry.

    Sentinel: the client asks the sentinels for the master, and asks again after a
    connection error or a READONLY reply (a failed-over master that became a replica).
    Cluster: the client follows MOVED and ASK redirections and refreshes its slot map.
    """
    target = parse_redis_url(url)
    common = dict(
        socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
    )
    if target.kind == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.nodes], username=target.username,
            password=target.password, require_full_coverage=True, **common,
        )
    if target.kind == "sentinel":
        sentinel = Sentinel(
            list(target.nodes), sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
            username=target.username, password=target.password, db=target.db, **common,
        )
        client = sentinel.master_for(target.service, redis_class=_SentinelMasterClient, health_check_interval=15)
        client.sentinel = sentinel
        return client
    return aioredis.Redis.from_url(url, health_check_interval=15, **common)


class _SentinelMasterClient(aioredis.Redis):
    """The master's client, which also closes its connections to the sentinels on aclose()."""

    sentinel: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel is not None:
            for client in self.sentinel.sentinels:
                await client.aclose()


def _encode(record: KeyRecord) -> list[str]:
    fields: list[str] = []
    for name, value in msgspec.structs.asdict(record).items():
        if value is None:
            continue
        if name == "scopes":
            value = " ".join(value)
        fields += [name, str(value)]
    return fields


_INT_FIELDS = ("created_at", "expires_at", "last_used_at", "request_count", "revoked_at")


def _decode(raw: dict[Any, Any] | list[Any]) -> KeyRecord | None:
    if isinstance(raw, list):  # Lua returns HGETALL as a flat list
        raw = dict(zip(raw[::2], raw[1::2]))
    if not raw:
        return None
    h = {(k.decode() if isinstance(k, bytes) else k): v.decode() for k, v in raw.items()}
    try:
        return KeyRecord(
            id=h["id"],
            org_id=h["org_id"],
            name=h["name"],
            prefix=h["prefix"],
            scopes=tuple(h["scopes"].split()),
            digest=h["digest"],
            created_by=h["created_by"],
            revoked_by=h.get("revoked_by"),
            **{f: int(h[f]) for f in _INT_FIELDS if f in h},
        )
    except (KeyError, ValueError):
        return None  # a half-written or foreign hash is never treated as a key


def _encode_cursor(score: int, key_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score}:{key_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Parse a list cursor; ValueError when it was not made by this store."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, key_id = raw.split(":", 1)
        if not key_id.startswith("key_"):
            raise ValueError
        return int(score), key_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("invalid cursor") from exc


class KeyStore:
    """Create, read, verify, list, revoke and touch API keys in Redis."""

    def __init__(self, client: aioredis.Redis, prefix: str = "gw") -> None:
        self.redis = client
        self.p = prefix
        self.write_deadline_ms = WRITE_DEADLINE_MS
        self.channel = f"{prefix}:invalidate"
        self.ack_channel = f"{prefix}:acks"
        self.registry = f"{prefix}:gateways"
        self._create = client.register_script(_CREATE)
        self._register = client.register_script(_REGISTER)
        self._live = client.register_script(_LIVE)
        self._revoke = client.register_script(_REVOKE)
        self._touch = client.register_script(_TOUCH)
        self._touch_many = client.register_script(_TOUCH_MANY)

    def _deadline(self) -> int:
        return int(time.time() * 1000) + self.write_deadline_ms

    # -- key names -----------------------------------------------------------------------
    def _rec(self, key_id: str) -> str:
        return f"{self.p}:key:{{{key_id}}}"

    def _rec_audit(self, key_id: str) -> str:
        return f"{self.p}:key:{{{key_id}}}:audit"

    def _org_keys(self, org_id: str) -> str:
        return f"{self.p}:org:{{{org_id}}}:keys"

    def _org_audit(self, org_id: str) -> str:
        return f"{self.p}:org:{{{org_id}}}:audit"

    # -- writes --------------------------------------------------------------------------
    async def create(
        self,
        *,
        org_id: str,
        name: str,
        scopes: Iterable[str],
        expires_at: int | None,
        actor: str,
        now_ms: int,
    ) -> tuple[KeyRecord, str]:
        """Create a key; return its record and the secret (the only time it exists)."""
        for _ in range(3):
            secret = keys.generate_key()
            parsed = keys.parse_key(secret)
            record = KeyRecord(
                id=parsed.key_id,
                org_id=org_id,
                name=name,
                prefix=parsed.prefix,
                scopes=tuple(scopes),
                digest=parsed.digest,
                created_at=now_ms,
                created_by=actor,
                expires_at=expires_at,
            )
            event = AuditEvent("api_key.created", record.id, org_id, actor, now_ms)
            # Index first: an index entry without a record is invisible (filtered on read),
            # while a record without an index entry would be an unlisted, working key.
            await self.redis.zadd(self._org_keys(org_id), {record.id: now_ms})
            try:
                created = await self._create(
                    keys=[self._rec(record.id), self._rec_audit(record.id)],
                    args=[self._deadline(), _event_json.encode(event), *_encode(record)],
                )
                if created == -1:
                    raise WriteTooLate("the create reached Redis after its deadline")
            except RedisError:
                await self._forget_index(org_id, record.id)
                raise
            if created:
                await self._org_event(event)
                return record, secret
        raise RuntimeError("could not allocate a unique key id")  # pragma: no cover

    async def revoke(self, *, org_id: str, key_id: str, actor: str, now_ms: int,
                     ack_timeout: float = 0.0) -> KeyRecord | None:
        """Revoke atomically; idempotent (a second call returns the first revocation).

        With ``ack_timeout``, returns only once every live gateway has dropped the key from its
        cache, or ``ack_timeout`` seconds have passed (see ``broadcast_revocation``).
        """
        event = AuditEvent("api_key.revoked", key_id, org_id, actor, now_ms)
        raw = await self._revoke(
            keys=[self._rec(key_id), self._rec_audit(key_id)],
            args=[self._deadline(), org_id, now_ms, actor, _event_json.encode(event)],
        )
        if raw == -1:
            raise WriteTooLate("the revoke reached Redis after its deadline")
        record = _decode(raw)
        if record is None:
            return None
        if ack_timeout > 0:
            await self.broadcast_revocation(key_id, ack_timeout)
        else:
            await self.publish_invalidation(key_id, secrets.token_hex(8))
        if record.revoked_at == now_ms and record.revoked_by == actor:
            await self._org_event(event)
        return record

    async def broadcast_revocation(self, key_id: str, timeout: float) -> tuple[set[str], set[str]]:
        """Publish the revocation and wait until every live gateway acknowledges it.

        Returns (acknowledged, expected) node ids. A gateway that does not acknowledge within
        ``timeout`` has stopped trusting its cache by then (its trust lapses one silence limit
        after it last heard from Redis), so the key is refused everywhere either way.
        """
        nonce = secrets.token_hex(8)
        acked: set[str] = set()
        await self.initialize()
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(self.ack_channel)
            deadline = asyncio.get_running_loop().time() + timeout
            while True:  # the subscription must be live before anything can be acknowledged
                msg = await pubsub.get_message(timeout=0.05)
                if msg is not None and msg["type"] == "subscribe":
                    break
                if asyncio.get_running_loop().time() > deadline:
                    raise ConnectionError("acknowledgement channel did not confirm the subscription")
            expected = {m.decode() for m in await self._live(keys=[self.registry], args=[])}
            await self.publish_invalidation(key_id, nonce)
            while not expected <= acked:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                msg = await pubsub.get_message(timeout=min(left, 0.05))
                if msg is not None and msg["type"] == "message":
                    got_nonce, _, node = msg["data"].decode().partition(" ")
                    if got_nonce == nonce:
                        acked.add(node)
            return acked, expected
        finally:
            await asyncio.shield(pubsub.aclose())

    async def initialize(self) -> None:
        """Load the slot map of a cluster client (its pub/sub needs it before any command)."""
        if isinstance(self.redis, RedisCluster):
            await self.redis.initialize()

    async def register_gateway(self, node_id: str, ttl_ms: int) -> None:
        """Announce a live gateway (its cache is in use) for ``ttl_ms`` by the server's clock."""
        await self._register(keys=[self.registry], args=[node_id, ttl_ms])

    async def acknowledge(self, nonce: str, node_id: str) -> None:
        await self.redis.publish(self.ack_channel, f"{nonce} {node_id}")

    async def record_usage(self, batch: dict[str, tuple[int, int]]) -> None:
        """Write last-used times and request counts: one script call per 500 keys (standalone)."""
        if not batch:
            return
        if isinstance(self.redis, RedisCluster):
            # Cluster pipelines refuse scripts: run them concurrently instead, a chunk at a time
            # (the client routes each to the node owning the key's slot).
            items = list(batch.items())
            for start in range(0, len(items), 256):
                await asyncio.gather(*(
                    self._touch(keys=[self._rec(key_id)], args=[last_ms, count])
                    for key_id, (last_ms, count) in items[start:start + 256]
                ))
            return
        items = list(batch.items())
        for start in range(0, len(items), TOUCH_BATCH):
            part = items[start:start + TOUCH_BATCH]
            await self._touch_many(keys=[self._rec(key_id) for key_id, _ in part],
                                   args=[v for _, (last_ms, count) in part for v in (last_ms, count)])

    async def publish_invalidation(self, key_id: str, nonce: str) -> None:
        await self.redis.publish(self.channel, f"{key_id} {nonce}")

    async def _org_event(self, event: AuditEvent) -> None:
        try:
            await self.redis.xadd(
                self._org_audit(event.org_id),
                {"event": _event_json.encode(event)},
                maxlen=100_000,
                approximate=True,
            )
        except RedisError:
            pass  # the per-key audit list, written atomically with the change, is the record

    async def _forget_index(self, org_id: str, key_id: str) -> None:
        try:
            await self.redis.zrem(self._org_keys(org_id), key_id)
        except RedisError:
            pass  # a dangling index entry is filtered out on read

    # -- reads ---------------------------------------------------------------------------
    async def get(self, key_id: str) -> KeyRecord | None:
        """One record by id (any org)."""
        return _decode(await self.redis.hgetall(self._rec(key_id)))

    async def get_for_org(self, org_id: str, key_id: str) -> KeyRecord | None:
        """One record by id, None unless it belongs to ``org_id``."""
        if not key_id.startswith("key_") or len(key_id) > 64:
            return None
        record = await self.get(key_id)
        return record if record is not None and record.org_id == org_id else None

    async def verify(self, parsed: keys.ParsedKey) -> KeyRecord | None:
        """Look a presented key up in one round trip; None when unknown."""
        record = await self.get(parsed.key_id)
        # SECURITY: the id only locates the record; the digest comparison authenticates.
        if record is None or not secrets.compare_digest(record.digest, parsed.digest):
            return None
        return record

    async def list(
        self, org_id: str, *, limit: int = 50, cursor: str | None = None, include_revoked: bool = False
    ) -> Page:
        """An org's keys newest first, reading only that org's index."""
        index = self._org_keys(org_id)
        max_score, after_id = decode_cursor(cursor) if cursor else (None, None)
        out: list[KeyRecord] = []
        offset, batch = 0, max(limit * 2, 20)
        while len(out) <= limit:
            top = "+inf" if max_score is None else max_score
            rows = await self.redis.zrange(
                index, top, "-inf", desc=True, byscore=True, offset=offset, num=batch, withscores=True
            )
            if not rows:
                break
            offset += len(rows)
            ids = []
            for member, score in rows:
                member = member.decode()
                # Skip what the previous page already returned (ties on created_at).
                if max_score is not None and int(score) == max_score and member >= after_id:
                    continue
                ids.append(member)
            async with self.redis.pipeline(transaction=False) as pipe:
                for key_id in ids:
                    pipe.hgetall(self._rec(key_id))
                raws = await pipe.execute()
            for raw in raws:
                record = _decode(raw)
                if record is None or record.org_id != org_id:
                    continue
                if record.revoked_at is not None and not include_revoked:
                    continue
                out.append(record)
            if len(rows) < batch:
                break
        next_cursor = None
        if len(out) > limit:
            last = out[limit - 1]
            next_cursor = _encode_cursor(last.created_at, last.id)
        return Page(out[:limit], next_cursor)

    async def audit_events(self, org_id: str, *, limit: int = 100) -> list[AuditEvent]:
        """The org's most recent audit events, newest first."""
        rows = await self.redis.xrevrange(self._org_audit(org_id), count=limit)
        return [_event_dec.decode(fields[b"event"]) for _, fields in rows]

    async def key_audit(self, key_id: str) -> list[AuditEvent]:
        """A key's own audit events, oldest first (written atomically with each change)."""
        return [_event_dec.decode(raw) for raw in await self.redis.lrange(self._rec_audit(key_id), 0, -1)]

    async def ping(self) -> bool:
        return bool(await self.redis.ping())
