"""Webhook endpoints and the delivery outbox in Redis (issue 17; docs/operations.md, "Redis layout").

Endpoints: one hash per org, ``<prefix>:org:{<org_id>}:webhooks`` (endpoint id -> gateway.webhooks
Endpoint JSON). Deliveries: a job per (event, endpoint), ``<prefix>:{wh}:job:<event_id>|<endpoint_id>``
(a hash), due in the sorted set ``<prefix>:{wh}:queue`` (score: next attempt, ms). A worker claims
due jobs in one script that moves their score to now + the visibility timeout, so a process that
dies mid-delivery loses nothing: the claim expires and another process delivers. ``{wh}:busy:<endpoint>``
holds an endpoint's claimed jobs (its concurrency), ``{wh}:log:<endpoint>`` its recent jobs,
``{wh}:dead`` the dead letters. Every ``{wh}`` key is in one hash slot (the scripts touch several).
The consumer group ``webhooks`` on ``<prefix>:events`` (gateway.store.events) feeds it.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError, ResponseError

from gateway.events import FeedEntry
from gateway.model import KeyEvent, KeyRecord
from gateway.store.events import decode_entry
from gateway.store.faults import Unavailable
from gateway.webhooks import Endpoint, decode_endpoint, encode_endpoint

GROUP = "webhooks"
RECENT = 100  # deliveries kept per endpoint for GET .../deliveries
DEAD_KEEP = 10_000  # dead letters listed in {wh}:dead (their jobs expire with DONE_TTL)
DONE_TTL = 7 * 86400  # seconds a delivered or dead job is kept for the deliveries list

_ENQUEUE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], 'org', ARGV[3], 'event', ARGV[4], 'type', ARGV[5], 'body', ARGV[6],
           'attempts', 0, 'state', 'pending', 'next_at', ARGV[2], 'created_at', ARGV[7])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[8]) + 1))
return 1
"""

# Claim up to ARGV[3] due jobs (of the first ARGV[4] due), skipping endpoints that already have
# ARGV[5] jobs claimed (their busy set, cleared of expired claims first): one slow endpoint holds
# at most that many, the others' jobs are claimed past it.
_CLAIM = """
local now, vis, want, per = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
local out, seen = {}, {}
for _, job in ipairs(due) do
  if #out >= want * 6 then break end
  local ep = string.match(job, '|([^|]+)$')
  local busy = ARGV[6] .. 'busy:' .. (ep or '')
  ep = ep or ""
  if not seen[ep] then redis.call('ZREMRANGEBYSCORE', busy, '-inf', now); seen[ep] = true end
  local key = ARGV[6] .. 'job:' .. job
  if redis.call('EXISTS', key) == 0 then
    redis.call('ZREM', KEYS[1], job)
  elseif redis.call('ZCARD', busy) < per then
    redis.call('ZADD', KEYS[1], now + vis, job)
    redis.call('ZADD', busy, now + vis, job)
    local attempts = redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('HSET', key, 'next_at', now + vis)
    local f = redis.call('HMGET', key, 'org', 'event', 'type', 'body')
    for _, v in ipairs({job, attempts, f[1], f[2], f[3], f[4]}) do out[#out + 1] = v end
  end
end
return out
"""

# ARGV: job, outcome (ok|retry|dead|drop), status, error, next_at, now, ttl, dead_keep
_FINISH = """
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('HGET', KEYS[2], 'state') == 'delivered' then return 0 end
local o = ARGV[2]
if o == 'drop' then
  redis.call('ZREM', KEYS[1], ARGV[1]); redis.call('DEL', KEYS[2]); return 1
end
redis.call('HSET', KEYS[2], 'status', ARGV[3], 'error', ARGV[4], 'last_at', ARGV[6])
if o == 'retry' then
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
  redis.call('HSET', KEYS[2], 'state', 'pending', 'next_at', ARGV[5])
  return 1
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'next_at', '')
redis.call('EXPIRE', KEYS[2], ARGV[7])
if o == 'ok' then
  redis.call('HSET', KEYS[2], 'state', 'delivered')
else
  redis.call('HSET', KEYS[2], 'state', 'dead')
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[1])
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -(tonumber(ARGV[8]) + 1))
end
return 1
"""


class Claimed(tuple):
    """A claimed job: (job id, attempt number, org id, event id, event type, body)."""

    __slots__ = ()

    @property
    def job(self) -> str:
        return self[0]


class WebhookStore:
    """Endpoints, the delivery jobs and the stream's consumer group, over a KeyStore's client."""

    def __init__(self, keystore) -> None:
        self.keys = keystore
        self.redis = keystore.redis
        self.p = keystore.p
        self.q = f"{keystore.p}:{{wh}}:"
        self.queue = self.q + "queue"
        self.dead = self.q + "dead"
        self.stream = keystore.events.stream
        self._enqueue = self.redis.register_script(_ENQUEUE)
        self._claim = self.redis.register_script(_CLAIM)
        self._finish = self.redis.register_script(_FINISH)

    def endpoints_key(self, org_id: str) -> str:
        return f"{self.p}:org:{{{org_id}}}:webhooks"

    def job_key(self, job: str) -> str:
        return self.q + "job:" + job

    def busy_key(self, endpoint_id: str) -> str:
        return self.q + "busy:" + endpoint_id

    def log_key(self, endpoint_id: str) -> str:
        return self.q + "log:" + endpoint_id

    # -- endpoints --------------------------------------------------------------------
    async def endpoints(self, org_id: str) -> list[Endpoint]:
        """The org's endpoints, oldest first. Unavailable on a Redis fault."""
        try:
            raw = await self.redis.hvals(self.endpoints_key(org_id))
        except (RedisError, OSError) as err:
            raise Unavailable(str(err)) from err
        found = [e for e in map(decode_endpoint, raw) if e is not None and e.org_id == org_id]
        return sorted(found, key=lambda e: (e.created_at, e.id))

    async def endpoint(self, org_id: str, endpoint_id: str) -> Endpoint | None:
        try:
            raw = await self.redis.hget(self.endpoints_key(org_id), endpoint_id)
        except (RedisError, OSError) as err:
            raise Unavailable(str(err)) from err
        found = decode_endpoint(raw) if raw else None
        return found if found is not None and found.org_id == org_id else None

    async def put_endpoint(self, endpoint: Endpoint) -> None:
        """Create or replace (confirmed by the required replicas, like a key's writes)."""
        name, value = self.endpoints_key(endpoint.org_id), encode_endpoint(endpoint)
        await self.keys._confirmed(lambda c: _gather(c.hset(name, endpoint.id, value)))

    async def delete_endpoint(self, org_id: str, endpoint_id: str) -> bool:
        """Remove the endpoint (its queued jobs are dropped when they come due)."""
        name = self.endpoints_key(org_id)
        done = await self.keys._confirmed(lambda c: _gather(c.hdel(name, endpoint_id)))
        return bool(done[0])

    # -- jobs -------------------------------------------------------------------------
    async def enqueue(self, job: str, due_ms: int, org_id: str, event_id: str, event_type: str, body: bytes,
                      now_ms: int, client=None) -> None:
        endpoint_id = job.rsplit("|", 1)[-1]
        await self._enqueue(keys=[self.queue, self.job_key(job), self.log_key(endpoint_id)],
                            args=[job, due_ms, org_id, event_id, event_type, body, now_ms, RECENT],
                            client=client)

    async def claim(self, now_ms: int, visibility_ms: int, want: int, scan: int, per_endpoint: int) -> list[Claimed]:
        flat = await self._claim(keys=[self.queue], args=[now_ms, visibility_ms, want, scan, per_endpoint, self.q])
        out = []
        for i in range(0, len(flat), 6):
            job, attempts, org, event, etype, body = flat[i:i + 6]
            out.append(Claimed((job.decode(), int(attempts), _text(org), _text(event), _text(etype), body or b"")))
        return out

    async def finish(self, job: str, outcome: str, now_ms: int, *, status: int | None = None, error: str = "",
                     next_at: int = 0) -> None:
        """Record an attempt's result: ok, retry (due again at ``next_at``), dead (the bound is
        reached: a dead letter) or drop (the endpoint is gone)."""
        endpoint_id = job.rsplit("|", 1)[-1]
        await self._finish(keys=[self.queue, self.job_key(job), self.busy_key(endpoint_id), self.dead],
                           args=[job, outcome, "" if status is None else status, error[:300], next_at, now_ms,
                                 DONE_TTL, DEAD_KEEP])

    async def deliveries(self, endpoint_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The endpoint's recent jobs, newest first (what GET .../deliveries shows)."""
        log = self.log_key(endpoint_id)
        jobs = [j.decode() for j in await self.redis.zrevrange(log, 0, limit - 1)]
        if not jobs:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                pipe.hgetall(self.job_key(job))
            rows = await pipe.execute()
        out = []
        for job, row in zip(jobs, rows, strict=True):
            if not row:
                continue
            fields = {k.decode(): v.decode() for k, v in row.items() if k != b"body"}
            out.append({"job": job, **fields})
        return out

    async def depth(self) -> tuple[int, int]:
        """(jobs queued or in flight, dead letters listed)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.queue)
            pipe.zcard(self.dead)
            queued, dead = await pipe.execute()
        return int(queued), int(dead)

    # -- the stream's consumer group --------------------------------------------------
    async def ensure_group(self) -> bool:
        """Create the consumer group once the stream exists (False until then: no key is created
        for a deployment that has no events yet). New groups read the stream from its start."""
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0")
        except ResponseError as err:
            if "BUSYGROUP" in str(err):
                return True
            if "requires the key to exist" in str(err) or "no such key" in str(err).lower():
                return False
            raise
        return True

    async def read(self, consumer: str, count: int, block_ms: int) -> list[tuple[str, FeedEntry | None]]:
        """New entries for this consumer (delivered to it, pending until acknowledged)."""
        got = await self.redis.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=count, block=block_ms)
        return [(sid.decode(), decode_entry(f.get(b"e", b""))) for _, rows in got or () for sid, f in rows]

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[tuple[str, FeedEntry | None]]:
        """Entries pending longer than ``min_idle_ms`` (their reader died, or their event had not
        landed yet), taken over by this consumer."""
        got = await self.redis.xautoclaim(self.stream, GROUP, consumer, min_idle_ms, "0-0", count=count)
        rows = got[1] if got else []
        return [(sid.decode(), decode_entry(f.get(b"e", b""))) for sid, f in rows if f]

    async def handled(self, ids: list[str]) -> None:
        """Acknowledge and delete handled entries (this group is the stream's only reader)."""
        if ids:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xack(self.stream, GROUP, *ids)
                pipe.xdel(self.stream, *ids)
                await pipe.execute()

    async def change_event(self, entry: FeedEntry) -> tuple[KeyEvent | None, KeyRecord | None]:
        """A key change's activity log event (None until it lands) and the key's record."""
        events = await self.keys._indexed_events(entry.org_id, [(entry.key_id, entry.version, entry.at)])
        record = await self.keys.get_for_org(entry.org_id, entry.key_id) if events else None
        return (events[0] if events else None), record


async def _gather(*calls) -> list:
    return [await c for c in calls]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")
