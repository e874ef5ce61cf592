"""API keys in Redis: create, verify, list, revoke, the activity log, the gateway registry."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from gateway import keys
from gateway.model import ORG_SETTINGS_LOG, KeyEvent, KeyRecord, verdict
from gateway.ratelimit import Limit
from gateway.store.faults import Unavailable
from gateway.validation import is_org_id
from gateway.store.codec import (ORG, decode_audit_cursor, decode_cursor, decode_event, decode_record,
                                 encode_audit_cursor, encode_cursor, encode_event, encode_record, event_id,
                                 parse_event_id)
from gateway.store.ledger import UsageLedger
from gateway.store.lifecycle import Lifecycle, all_ids
from gateway.store.quota import NO_QUOTA, RESERVE, OrgQuota, check_reserve
from gateway.store.replication import AUTO, NotReplicated, ReplicaGuard
from gateway.store.sessions import SessionStore
from gateway.store.limits import BudgetStore
from gateway.store.events import EventFeed
from gateway.store.orgs import OrgSettingsStore
from gateway.store.leaks import LeakMarks
from gateway.store.finder import FinderStore

__all__ = ["AuditPage", "Contended", "KeyStore", "NotReplicated", "Page", "WriteTooLate", "decode_cursor"]

# Writes carry a deadline (ms, wall clock) checked against the server's clock: a write that a
# stalled or partitioned Redis runs only after the caller gave up (and answered 503 "nothing
# was changed") is refused instead of appearing later as a key nobody was shown.
_DEADLINE = """
local t = redis.call('TIME')
if t[1] * 1000 + math.floor(t[2] / 1000) > tonumber(ARGV[1]) then return -1 end
"""

_RESERVE = _DEADLINE + RESERVE

# Every change writes its event (KEYS[2], the key's log) in the script that makes it: a change
# and its event are atomic (the event-log protocol of issue 14; the org's activity index entry
# is written before the script).
_CREATE = _DEADLINE + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
"""

# ARGV: deadline, org, revoked at, actor, the version the event was made for, the event.
# Already revoked: nothing is written (no second event). -2: the record changed since it was
# read (another version): read it again and retry.
_REVOKE = _DEADLINE + """
if redis.call('HGET', KEYS[1], 'o') ~= ARGV[2] then return {} end
if redis.call('HEXISTS', KEYS[1], 'r') == 0 then
  if tonumber(redis.call('HGET', KEYS[1], 'v') or '0') + 1 ~= tonumber(ARGV[5]) then return -2 end
  redis.call('HSET', KEYS[1], 'r', ARGV[3], 'R', ARGV[4], 'v', ARGV[5])
  redis.call('RPUSH', KEYS[2], ARGV[6])
end
return redis.call('HGETALL', KEYS[1])
"""

# The one-time backfill of records written before the activity log (no `v`, an empty log):
# their create (and revoke) events, read from the record, and the version they make.
_BACKFILL = """
if redis.call('HEXISTS', KEYS[1], 'd') == 0 or redis.call('HEXISTS', KEYS[1], 'v') == 1 then return 0 end
if redis.call('LLEN', KEYS[2]) > 0 then return 0 end
redis.call('HSET', KEYS[1], 'v', ARGV[1])
redis.call('RPUSH', KEYS[2], unpack(ARGV, 2))
return 1
"""
BACKFILL_BATCH = 200  # records per round trip of the backfill
REVOKE_ATTEMPTS = 5  # a revoke racing edits of the same key reads it again this many times

WRITE_DEADLINE_MS = 5000  # generous against clock skew between the admin host and Redis

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

FOLD_ON_READ_CHUNKS = 8  # a read that finds a dead node folds at most this many chunks of it


class WriteTooLate(RedisError):
    """Redis ran a write after its deadline and refused it: nothing was changed."""


class Contended(RedisError):
    """The record changed under every attempt of a write (concurrent edits): nothing was changed."""


@dataclass(frozen=True, slots=True)
class AuditPage:
    """One page of an org's activity log, newest first; ``next_cursor`` is None on the last page."""

    events: list[KeyEvent]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of an org's keys, newest first; ``next_cursor`` is None on the last page."""

    records: list[KeyRecord]
    next_cursor: str | None


class KeyStore:
    """Create, read, verify, list and revoke API keys; the usage ledger; the gateway registry."""

    def __init__(self, client: aioredis.Redis, prefix: str = "gw", min_replicas: int = AUTO) -> None:
        self.redis = client
        self.replicas = ReplicaGuard(client, min_replicas, marker=f"{prefix}:replicated")
        self.p = prefix
        self.write_deadline_ms = WRITE_DEADLINE_MS
        self.channel = f"{prefix}:invalidate"
        self.ack_channel = f"{prefix}:acks"
        self.registry = f"{prefix}:gateways"
        self.ledger = UsageLedger(client, prefix, self._confirmed)
        self.sessions = SessionStore(client, prefix, self._confirmed)  # page sign-in (admin API)
        self.limits = BudgetStore(client, prefix, self._confirmed)  # per-key rate-limit and quota budgets (issue 16)
        self.events = EventFeed(client, prefix)  # the org event outbox (issue 17): written with the activity index
        self.orgs = OrgSettingsStore(client, prefix, self._confirmed)  # org settings (issue 17)
        self._create = client.register_script(_CREATE)
        self._reserve = client.register_script(_RESERVE)
        self._register = client.register_script(_REGISTER)
        self._live = client.register_script(_LIVE)
        self._revoke = client.register_script(_REVOKE)
        self._backfill = client.register_script(_BACKFILL)
        self.backfilled = f"{prefix}:activity:backfilled"
        self.lifecycle = Lifecycle(self)
        self.finder = FinderStore(self)  # the indexes by expiry and last use (issue 17: gateway.store.finder)
        self.roll = self.lifecycle.roll  # KeyStore.roll / .edit: gateway.store.lifecycle
        self.edit = self.lifecycle.edit
        self.leaks = LeakMarks(self)  # secret-scanning leak marks (issue 17)

    async def _confirmed(self, steps) -> list:
        """Run the writes ``steps(client)`` issues, then WAIT for the required replicas on the
        same connection (WAIT counts that connection's writes): NotReplicated when too few
        confirm. Without required replicas, the writes run as they are.

        The one path for every write that is acknowledged or counted as done: create, revoke,
        heartbeats, last-used flushes (UsageLedger) and any later one (the edit of issue 14 too).
        """
        needed = await self.replicas.needed()
        if not needed:
            return await steps(self.redis)
        async with self.redis.pipeline(transaction=False) as pipe:
            await steps(pipe)
            pipe.execute_command("WAIT", needed, self.replicas.timeout_ms)
            *results, got = await pipe.execute()
        await self.replicas.check(got, needed)
        return results

    def _deadline(self) -> int:
        return int(time.time() * 1000) + self.write_deadline_ms

    # -- key names -----------------------------------------------------------------------
    def _rec(self, key_id: str) -> str:
        return f"{self.p}:key:{{{key_id}}}"

    def _org_keys(self, org_id: str) -> str:
        return f"{self.p}:org:{{{org_id}}}:keys"

    def _org_revoked(self, org_id: str) -> str:
        return f"{self.p}:org:{{{org_id}}}:revoked"

    def _org_creates(self, org_id: str) -> str:
        return f"{self.p}:org:{{{org_id}}}:creates"

    def _key_log(self, key_id: str) -> str:
        """A key's activity log: a list of codec.encode_event elements, in the record's hash slot."""
        return f"{self.p}:key:{{{key_id}}}:log"

    def _org_activity(self, org_id: str) -> str:
        """The org's activity index: members "<key_id>:<version>" scored by the event's time,
        written before the change (an entry whose event is not in the key's log is skipped)."""
        return f"{self.p}:org:{{{org_id}}}:activity"

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
        quota: OrgQuota = NO_QUOTA,
        limits: tuple[Limit, ...] | None = None,
    ) -> tuple[KeyRecord, str]:
        """Create a key; return its record and the secret (the only time it exists).

        ``quota`` is checked atomically with the org index entry (KeyLimitReached, TooManyCreates),
        so concurrent creates on any number of admin API processes cannot exceed it.
        """
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
                version=1,
                limits=limits,
            )
            # Index first: an index entry without a record is invisible (filtered on read),
            # while a record without an index entry would be an unlisted, working key.
            reserved = await self._reserve(
                keys=[self._org_keys(org_id), self._org_revoked(org_id), self._org_creates(org_id)],
                args=[self._deadline(), record.id, now_ms, *quota.args()])
            if reserved == -1:
                raise WriteTooLate("the create reached Redis after its deadline")
            check_reserve(reserved, quota)
            event = KeyEvent("api_key.created", record.id, org_id, actor, now_ms, 1)
            try:
                # The activity index entry and the outbox entry first (the org's slot, the
                # outbox's), the finder's indexes, then the record and its event.
                *_, created = await self._confirmed(lambda c, r=record, e=event: self._gather(
                    lambda: c.zadd(self._org_activity(org_id), {event_id(r.id, 1): now_ms}),
                    lambda: self.events.add_change(c, org_id, r.id, 1, now_ms),
                    *self.finder.add_key(c, r.id, now_ms, r.expires_at),
                    lambda: self._create(keys=[self._rec(r.id), self._key_log(r.id)],
                                         args=[self._deadline(), encode_event(e), *encode_record(r)], client=c)))
                if created == -1:
                    raise WriteTooLate("the create reached Redis after its deadline")
            except NotReplicated:
                raise  # the record may be on the master: keep it listed (nobody has its secret)
            except RedisError:
                await self._forget(self._org_keys(org_id), record.id)
                raise
            if created:
                return record, secret
        raise RuntimeError("could not allocate a unique key id")  # pragma: no cover

    async def revoke(self, *, org_id: str, key_id: str, actor: str, now_ms: int,
                     ack_timeout: float = 0.0) -> KeyRecord | None:
        """Revoke atomically with its api_key.revoked event; idempotent (a second call returns
        the first revocation and writes no event).

        With ``ack_timeout``, returns only once every live gateway has dropped the key from its
        cache, or ``ack_timeout`` seconds have passed (see ``broadcast_revocation``).
        """
        return await self._revoke_once(org_id=org_id, key_id=key_id, actor=actor, now_ms=now_ms,
                                       ack_timeout=ack_timeout)

    async def _revoke_once(self, *, org_id: str, key_id: str, actor: str, now_ms: int,
                           ack_timeout: float) -> KeyRecord | None:
        revoked_aliases: set[str] = set()
        for _ in range(REVOKE_ATTEMPTS):
            # (read as the writes below are: a Redis error, not Unavailable, as for every write here)
            current = decode_record(key_id, await self.redis.hgetall(self._rec(key_id)))
            if current is None or current.org_id != org_id:
                return None
            if current.version == 0 and await self.backfill_records([current]):
                continue  # written before the activity log: its events first, then read it again
            if current.revoked_at is None:
                # A rolled key's aliases first (less permissive than the record until it is revoked),
                # then the record, then any alias a concurrent roll added meanwhile
                # (gateway.store.lifecycle).
                await self.lifecycle.revoke_aliases(current, (now_ms, actor), revoked_aliases)
            version = current.version + 1
            event = encode_event(KeyEvent("api_key.revoked", key_id, org_id, actor, now_ms, version))
            # The org's indexes first, as with creation: an entry whose record is not revoked,
            # or whose event is not in the key's log, is skipped when read.
            # Pipelined with the WAIT when replicas must confirm: the ZADD always writes (a new
            # score), so the WAIT also covers an earlier revocation of the key that no replica
            # had confirmed (a retry after a 503 is confirmed like the first attempt).
            index = {} if current.revoked_at is not None else {event_id(key_id, version): now_ms}
            *_, raw = await self._confirmed(lambda c, ev=event, v=version, i=index: self._gather(
                lambda: c.zadd(self._org_revoked(org_id), {key_id: now_ms}),
                *([lambda: c.zadd(self._org_activity(org_id), i),
                   lambda: self.events.add_change(c, org_id, key_id, v, now_ms)] if i else []),
                lambda: self._revoke(keys=[self._rec(key_id), self._key_log(key_id)],
                                     args=[self._deadline(), org_id, now_ms, actor, v, ev], client=c)))
            if raw == -1:
                raise WriteTooLate("the revoke reached Redis after its deadline")
            if raw != -2:
                break
            # Another change took this version meanwhile: its index entry may carry this
            # attempt's time now; put its own back, then try again on the new version.
            await self._reindex(org_id, key_id, version)
        else:
            raise Contended(f"the key changed on each of {REVOKE_ATTEMPTS} attempts to revoke it")
        record = decode_record(key_id, raw)
        if record is None:
            return None
        # The finder's indexes only once the revoke is done (best effort: the finder drops a revoked
        # key's entries when it reads them), so a revoke that fails leaves the key indexed.
        await self.finder.forget_key(record.id, record.expires_at)
        if record.revoked_at != now_ms:  # revoked before: index it at its real time
            await self.redis.zadd(self._org_revoked(org_id), {key_id: record.revoked_at})
        await self.lifecycle.revoke_aliases(record, (record.revoked_at, record.revoked_by or actor), revoked_aliases)
        if ack_timeout > 0:
            await self.broadcast_revocation(all_ids(record), ack_timeout)
        else:
            await self.publish_invalidation(all_ids(record), secrets.token_hex(8))
        return (await self._with_usage([record]))[0]

    async def _reindex(self, org_id: str, key_id: str, version: int) -> None:
        """Index the event ``version`` of the key at its own time (after a lost race for it)."""
        event = decode_event(await self.redis.lindex(self._key_log(key_id), version - 1) or b"", key_id, org_id)
        if event is not None and event.version == version:
            await self.redis.zadd(self._org_activity(org_id), {event_id(key_id, version): event.at})

    # -- the backfill of records written before the activity log ---------------------------
    async def backfill_records(self, records: Sequence[KeyRecord]) -> int:
        """Give the records written before the activity log (version 0, no events) their
        api_key.created (version 1) and api_key.revoked (2) events, read from the record, in
        two round trips (index entries first); how many were backfilled. Idempotent."""
        plans = []
        for r in records:
            if r.version:
                continue
            events = [KeyEvent("api_key.created", r.id, r.org_id, r.created_by, r.created_at, 1)]
            if r.revoked_at is not None:
                events.append(KeyEvent("api_key.revoked", r.id, r.org_id, r.revoked_by or "", r.revoked_at, 2))
            plans.append((r, events))
        if not plans:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for r, events in plans:
                pipe.zadd(self._org_activity(r.org_id), {event_id(r.id, e.version): e.at for e in events})
            await pipe.execute()
        done = await self._scripts([lambda c, r=r, events=events: self._backfill(
            keys=[self._rec(r.id), self._key_log(r.id)], args=[len(events), *map(encode_event, events)], client=c)
            for r, events in plans])
        return sum(done)

    async def _scripts(self, calls) -> list:
        """Run script calls ``call(client)`` (each on its own slot) in one round trip: pipelined,
        or on a cluster (whose pipelines refuse scripts) all at once, each to its slot's node."""
        if isinstance(self.redis, RedisCluster):
            return list(await asyncio.gather(*(call(self.redis) for call in calls)))
        async with self.redis.pipeline(transaction=False) as pipe:
            for call in calls:
                await call(pipe)
            return await pipe.execute()

    async def backfill_activity(self, *, force: bool = False) -> int | None:
        """Backfill every org's records written before the activity log (``backfill_records``):
        how many were, or None when an earlier run completed (and not ``force``). Walks the org
        indexes (SCAN, every node of a cluster); marks its completion in Redis."""
        if not force and await self.redis.exists(self.backfilled):
            return None
        done = 0
        async for org_id in self.org_ids():
            records = await self.org_records(org_id)
            for first in range(0, len(records), BACKFILL_BATCH):
                done += await self.backfill_records(records[first:first + BACKFILL_BATCH])
        await self.redis.set(self.backfilled, int(time.time() * 1000))
        return done

    async def org_ids(self):
        """Every org's id, from its key index (SCAN, every node of a cluster): for backfills only."""
        head, tail = f"{self.p}:org:{{", "}:keys"
        async for name in self.redis.scan_iter(match=f"{self.p}:org:*:keys", count=1000, _type="zset"):
            name = name.decode()
            org_id = name[len(head):-len(tail)]
            if name.startswith(head) and name.endswith(tail) and is_org_id(org_id):
                yield org_id

    async def broadcast_revocation(self, key_id: str | Sequence[str], timeout: float) -> tuple[set[str], set[str]]:
        """Publish the revocation (or roll, or edit) of ``key_id`` (one id, or all of a rolled
        key's: its record's and its aliases') and wait until every live gateway acknowledges it.

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

    async def publish_invalidation(self, key_id: str | Sequence[str], nonce: str) -> None:
        """The message is "<id>[,<id>...] <nonce>" (gateway.tasks applies every id, then acknowledges)."""
        ids = key_id if isinstance(key_id, str) else ",".join(key_id)
        await self.redis.publish(self.channel, f"{ids} {nonce}")

    @staticmethod
    async def _gather(*calls) -> list:
        """Call and await ``calls`` in order, one after the other (on a pipeline: queue them)."""
        return [await call() for call in calls]

    def beat_channel(self, node_id: str) -> str:
        return f"{self.p}:beat:{node_id}"

    async def heartbeat(self, node_id: str, token: str) -> None:
        """Publish ``token`` on the node's beat channel, confirmed like a write: the listener
        trusts its cache only while its beats come back on its subscription (gateway.tasks)."""
        await self._confirmed(lambda c: self._gather(lambda: c.publish(self.beat_channel(node_id), token)))

    async def _forget(self, index: str, key_id: str) -> None:
        try:
            await self.redis.zrem(index, key_id)
        except RedisError:
            pass  # a dangling index entry is filtered out on read

    # -- reads ---------------------------------------------------------------------------
    async def get(self, key_id: str) -> KeyRecord | None:
        """One record by id (any org), without usage: what verification needs, one round trip.

        Unavailable when Redis cannot answer (callers fail closed on it)."""
        try:
            raw = await self.redis.hgetall(self._rec(key_id))
        except (RedisError, OSError) as exc:
            raise Unavailable(f"reading a key record: {exc}") from exc
        return decode_record(key_id, raw)

    async def get_many(self, key_ids: Sequence[str]) -> list[KeyRecord | None]:
        """Records by id (any org) in one round trip: a pipeline of HGETALLs, not a transaction
        (gateway.readbatch sends the cache misses of one event-loop round this way)."""
        if len(key_ids) == 1:
            return [await self.get(key_ids[0])]
        pipe = self.redis.pipeline(transaction=False)
        for key_id in key_ids:
            pipe.hgetall(self._rec(key_id))
        try:
            raws = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable(f"reading {len(key_ids)} key records: {exc}") from exc
        return [decode_record(key_id, raw) for key_id, raw in zip(key_ids, raws, strict=True)]

    async def get_for_org(self, org_id: str, key_id: str) -> KeyRecord | None:
        """One record by id with its usage, None unless it belongs to ``org_id``."""
        if not key_id.startswith("key_") or len(key_id) > 64:
            return None
        record = await self.get(key_id)
        if record is None or record.org_id != org_id or record.alias_id is not None:
            return None  # an alias's id (a later secret's) is not a key id of this API
        return (await self._with_usage([record]))[0]

    async def verify(self, parsed: keys.ParsedKey, now_ms: int) -> KeyRecord:
        """Look a presented key up in one round trip, uncached, and judge it (gateway.model.verdict):
        the record, or InvalidApiKey / RevokedApiKey / ExpiredApiKey / RolledApiKey."""
        return verdict(await self.get(parsed.key_id), parsed.digest, now_ms)

    async def list(
        self, org_id: str, *, limit: int = 50, cursor: str | None = None, include_revoked: bool = False
    ) -> Page:
        """An org's keys newest first, with usage, reading only that org's index."""
        page = await self._page(org_id, limit, cursor, include_revoked)
        return Page(await self._with_usage(page.records), page.next_cursor)

    async def _page(self, org_id: str, limit: int, cursor: str | None, include_revoked: bool) -> Page:
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
            for record in await self._records(ids, org_id):
                if record.revoked_at is not None and not include_revoked:
                    continue
                out.append(record)
            if len(rows) < batch:
                break
        next_cursor = None
        if len(out) > limit:
            last = out[limit - 1]
            next_cursor = encode_cursor(last.created_at, last.id)
        return Page(out[:limit], next_cursor)

    async def activity(self, org_id: str, *, key_id: str | None = None, limit: int = 50,
                       cursor: str | None = None) -> AuditPage | None:
        """A page of the org's activity log (every create, edit, roll and revoke), newest first,
        as far back as it goes; with ``key_id``, that key's own log (None unless it is a key of
        the org). ``cursor`` (codec.encode_audit_cursor) is the last event of the page before."""
        after = decode_audit_cursor(cursor) if cursor else None
        if key_id is not None:
            return await self._key_activity(org_id, key_id, limit, after)
        return await self._org_activity_page(org_id, limit, after)

    async def _org_activity_page(self, org_id: str, limit: int, after: tuple[int, str, int] | None) -> AuditPage:
        """From the org's activity index, by time descending and, within a millisecond, member
        descending (Redis' own order, total: the cursor never skips or repeats an entry); each
        entry's event read from its key's log (one pipelined round trip per batch of entries)."""
        index = self._org_activity(org_id)
        top = "+inf" if after is None else after[0]
        after_member = None if after is None else event_id(after[1], after[2])
        out: list[KeyEvent] = []
        offset, batch = 0, limit + 1
        while len(out) <= limit:
            rows = await self.redis.zrange(index, top, "-inf", desc=True, byscore=True, offset=offset, num=batch,
                                           withscores=True)
            offset += len(rows)
            wanted = []
            for member, score in rows:
                # Skip what the previous page already returned (the same millisecond as its last).
                if after_member is not None and int(score) == after[0] and member.decode() >= after_member:
                    continue
                if (parsed := parse_event_id(member)) is not None and parsed[1] >= 1:
                    wanted.append((*parsed, int(score)))
            out += await self._indexed_events(org_id, wanted)
            if len(rows) < batch:
                break
        next_cursor = None
        if len(out) > limit:
            last = out[limit - 1]
            next_cursor = encode_audit_cursor(last.at, last.key_id, last.version)
        return AuditPage(out[:limit], next_cursor)

    async def _indexed_events(self, org_id: str, wanted: list[tuple[str, int, int]]) -> list[KeyEvent]:
        """The events (key id, version, time) of index entries, in order, from the keys' logs in
        one round trip: the event of version v is element v - 1 (every change appends one). An
        entry whose event is not there (its change did not happen) or differs, or whose key is
        not the org's (the record says; the stored event names neither), is skipped."""
        if not wanted:
            return []
        owner = org_id.encode()
        async with self.redis.pipeline(transaction=False) as pipe:
            for key_id, version, _ in wanted:
                if key_id == ORG_SETTINGS_LOG:  # the org's own settings changes (gateway.store.orgs)
                    pipe.lindex(self.orgs.settings_log(org_id), version - 1)
                    continue
                pipe.lindex(self._key_log(key_id), version - 1)
                pipe.hget(self._rec(key_id), ORG)
            results = iter(await pipe.execute())
        raws, orgs = [], []
        for key_id, _, _ in wanted:
            raws.append(next(results))
            orgs.append(owner if key_id == ORG_SETTINGS_LOG else next(results))
        out = []
        for (key_id, version, at), raw, org in zip(wanted, raws, orgs, strict=True):
            event = decode_event(raw, key_id, org_id) if raw and org == owner else None
            if event is not None and event.version == version and event.at == at:
                out.append(event)
        return out

    async def _key_activity(self, org_id: str, key_id: str, limit: int,
                            after: tuple[int, str, int] | None) -> AuditPage | None:
        """One key's log, newest first (versions descending), if the key is the org's."""
        if not key_id.startswith("key_") or len(key_id) > 64:
            return None
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self._rec(key_id), ORG)
            pipe.llen(self._key_log(key_id))
            owner, length = await pipe.execute()
        if owner is None or owner.decode() != org_id:
            return None
        before = None if after is None else after[2]  # versions below the cursor's
        # Versions rise by at least one per element from 1: version v is at index v - 1 or earlier.
        end = length - 1 if before is None else min(length - 1, before - 2)
        raws = await self.redis.lrange(self._key_log(key_id), max(0, end - limit), end) if end >= 0 else []
        events = [e for e in (decode_event(raw, key_id, org_id) for raw in reversed(raws))
                  if e is not None and (before is None or e.version < before)]
        next_cursor = None
        if len(events) > limit:
            last = events[limit - 1]
            next_cursor = encode_audit_cursor(last.at, key_id, last.version)
        return AuditPage(events[:limit], next_cursor)

    async def _records(self, ids: list[str], org_id: str) -> list[KeyRecord]:
        """The records of ``ids`` that exist and belong to ``org_id``, in order (one round trip)."""
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for key_id in ids:
                pipe.hgetall(self._rec(key_id))
            raws = await pipe.execute()
        records = (decode_record(key_id, raw) for key_id, raw in zip(ids, raws, strict=True))
        return [r for r in records if r is not None and r.org_id == org_id]

    async def _with_usage(self, records: list[KeyRecord]) -> list[KeyRecord]:
        """The records with last_used_at and request_count merged from the usage ledger."""
        if not records:
            return records
        usage, dead = await self.ledger.read([r.id for r in records])
        if dead:
            # Whoever notices a dead gateway's usage hash folds it: here one node, a bounded
            # number of chunks per read, and never an error for this read (the merge above
            # already counted it all).
            try:
                await self.ledger.fold(dead[0], only_if_idle=True, max_chunks=FOLD_ON_READ_CHUNKS)
            except RedisError:
                pass
        return [msgspec.structs.replace(r, last_used_at=usage[r.id][0], request_count=usage[r.id][1])
                for r in records]

    async def org_records(self, org_id: str, batch: int = 500) -> list[KeyRecord]:
        """Every record of the org, revoked ones too, oldest first, without usage (what a cascade
        revocation walks: the org's own index only)."""
        out: list[KeyRecord] = []
        start = 0
        while True:
            ids = [m.decode() for m in await self.redis.zrange(self._org_keys(org_id), start, start + batch - 1)]
            out += await self._records(ids, org_id)
            if len(ids) < batch:
                return out
            start += batch

    async def org_exists(self, org_id: str) -> bool:
        """An org exists from its first key on: its key index is there (one EXISTS)."""
        return bool(await self.redis.exists(self._org_keys(org_id)))

    async def ping(self) -> bool:
        return bool(await self.redis.ping())
