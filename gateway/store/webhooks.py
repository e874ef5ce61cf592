"""Webhook endpoints and the delivery outbox in Redis (issue 17; docs/operations.md, "Redis layout").

Endpoints: one hash per org, ``<prefix>:org:{<org_id>}:webhooks`` (endpoint id -> gateway.webhooks
Endpoint JSON). Deliveries: a job per (event, endpoint), ``<prefix>:{wh}:job:<event_id>|<endpoint_id>``
(a hash), due in its endpoint's own sorted set ``<prefix>:{wh}:eq:<endpoint_id>`` (score: next
attempt, ms); ``{wh}:ready`` scores each endpoint with queued jobs by when it can next be claimed
from, so a claim visits endpoints, not jobs, and one endpoint's backlog delays no other (W1).
``{wh}:queue`` lists every unfinished job (the depth gauge). A worker claims due jobs in one script
that moves their score to now + the visibility timeout, so a process that dies mid-delivery loses
nothing: the claim expires and another process delivers. ``{wh}:busy:<endpoint>`` holds an
endpoint's claimed jobs (its concurrency), ``{wh}:log:<endpoint>`` its recent jobs (RECENT),
``{wh}:dead`` the dead letters, ``{wh}:tests:<endpoint>`` its test-sends of the current window.
Every ``{wh}`` key is in one hash slot (the scripts touch several).
The consumer group ``webhooks`` on ``<prefix>:events`` (gateway.store.events) feeds it.
"""

from __future__ import annotations

import contextlib
from typing import Any

from redis.exceptions import RedisError, ResponseError

from gateway.events import FeedEntry
from gateway.model import KeyEvent, KeyRecord
from gateway.store.events import decode_entry
from gateway.store.faults import Unavailable
from gateway.store.replication import NotReplicated
from gateway.webhooks import Endpoint, decode_endpoint, encode_endpoint

GROUP = "webhooks"
RECENT = 100  # deliveries kept per endpoint for GET .../deliveries
DEAD_KEEP = 10_000  # dead letters listed in {wh}:dead (their jobs expire with DONE_TTL)
DONE_TTL = 7 * 86400  # seconds a delivered or dead job is kept for the deliveries list
MAX_QUEUED = 10_000  # jobs queued per endpoint (--webhooks-max-queued): past it a new job is a dead letter

# Replace an endpoint's JSON only if it is still what the caller read (the old secret's removal
# after the rotation grace must not undo an edit made meanwhile).
_SWAP = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

# Jobs queued before the per-endpoint queues (one shared {wh}:queue scanned by the claim) get their
# endpoint's queue and a place in {wh}:ready; idempotent, once per deployment (KEYS[3]: the marker).
_MIGRATE = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local rows = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #rows, 2 do
  local job, score = rows[i], rows[i + 1]
  local ep = string.match(job, '|([^|]+)$')
  if ep then
    local eq = ARGV[1] .. 'eq:' .. ep
    if not redis.call('ZSCORE', eq, job) then
      redis.call('ZADD', eq, score, job)
      redis.call('ZADD', KEYS[2], 'LT', score, ep)
    end
  end
end
if #rows > 0 then redis.call('SET', KEYS[3], '2') end  -- (none: nothing to mark, no key written)
return #rows / 2
"""

_ENQUEUE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], 'org', ARGV[3], 'event', ARGV[4], 'type', ARGV[5], 'body', ARGV[6],
           'attempts', 0, 'state', 'pending', 'next_at', ARGV[2], 'created_at', ARGV[7])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[8]) + 1))
if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[9]) then
  redis.call('HSET', KEYS[2], 'state', 'dead', 'next_at', '', 'last_at', ARGV[7],
             'error', 'not queued: the endpoint has ' .. ARGV[9] .. ' deliveries queued')
  redis.call('EXPIRE', KEYS[2], ARGV[11])
  redis.call('ZADD', KEYS[6], ARGV[7], ARGV[1])
  redis.call('ZREMRANGEBYRANK', KEYS[6], 0, -(tonumber(ARGV[12]) + 1))
  return 2
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[5], 'LT', ARGV[2], ARGV[10])
return 1
"""

# Fair claim: KEYS[1] (ready) holds each endpoint with queued jobs, scored by when it can next be
# claimed from. Visit the due endpoints (at most ARGV[4]), take from each at most its free share of
# ARGV[5] in-flight jobs (its busy set, cleared of expired claims first) from its own queue, then
# score it again: its next due job, or when a claim of a full endpoint expires, and never before
# now, so an endpoint just served goes behind the ones already waiting (round robin). One
# endpoint's backlog costs a claim only that endpoint's share, whatever its length.
_CLAIM = """
local now, vis, want, per = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local p = ARGV[6]
local eps = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
local out, n = {}, 0
for _, ep in ipairs(eps) do
  if n >= want then break end
  local busy, eq = p .. 'busy:' .. ep, p .. 'eq:' .. ep
  redis.call('ZREMRANGEBYSCORE', busy, '-inf', now)
  local take = math.min(per - redis.call('ZCARD', busy), want - n)
  if take > 0 then
    for _, job in ipairs(redis.call('ZRANGEBYSCORE', eq, '-inf', now, 'LIMIT', 0, take)) do
      local key = p .. 'job:' .. job
      if redis.call('EXISTS', key) == 0 then
        redis.call('ZREM', eq, job); redis.call('ZREM', p .. 'queue', job)
      else
        redis.call('ZADD', eq, now + vis, job)
        redis.call('ZADD', busy, now + vis, job)
        local attempts = redis.call('HINCRBY', key, 'attempts', 1)
        redis.call('HSET', key, 'next_at', now + vis)
        local f = redis.call('HMGET', key, 'org', 'event', 'type', 'body')
        for _, v in ipairs({job, attempts, f[1], f[2], f[3], f[4]}) do out[#out + 1] = v end
        n = n + 1
      end
    end
  end
  local nxt = redis.call('ZRANGE', eq, 0, 0, 'WITHSCORES')
  if #nxt == 0 then
    redis.call('ZREM', KEYS[1], ep)
  else
    local at = tonumber(nxt[2])
    if redis.call('ZCARD', busy) >= per then
      local b = redis.call('ZRANGE', busy, 0, 0, 'WITHSCORES')
      at = math.max(at, tonumber(b[2]))
    end
    redis.call('ZADD', KEYS[1], math.max(at, now), ep)
  end
end
return out
"""

# ARGV: job, outcome (ok|retry|dead|drop), status, error, next_at, now, ttl, dead_keep, endpoint
_FINISH = """
redis.call('ZREM', KEYS[3], ARGV[1])
local function reschedule()
  local nxt = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
  if #nxt == 0 then redis.call('ZREM', KEYS[6], ARGV[9])
  else redis.call('ZADD', KEYS[6], 'LT', nxt[2], ARGV[9]) end
end
if redis.call('HGET', KEYS[2], 'state') == 'delivered' then reschedule(); return 0 end
local o = ARGV[2]
if o == 'drop' then
  redis.call('ZREM', KEYS[1], ARGV[1]); redis.call('ZREM', KEYS[5], ARGV[1]); redis.call('DEL', KEYS[2])
  reschedule(); return 1
end
redis.call('HSET', KEYS[2], 'status', ARGV[3], 'error', ARGV[4], 'last_at', ARGV[6])
if o == 'retry' then
  redis.call('ZADD', KEYS[5], ARGV[5], ARGV[1])
  redis.call('HSET', KEYS[2], 'state', 'pending', 'next_at', ARGV[5])
  reschedule(); return 1
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('HSET', KEYS[2], 'next_at', '')
redis.call('EXPIRE', KEYS[2], ARGV[7])
if o == 'ok' then
  redis.call('HSET', KEYS[2], 'state', 'delivered')
else
  redis.call('HSET', KEYS[2], 'state', 'dead')
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[1])
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -(tonumber(ARGV[8]) + 1))
end
reschedule()
return 1
"""


class Claimed(tuple):
    """A claimed job: (job id, attempt number, org id, event id, event type, body)."""

    __slots__ = ()

    @property
    def job(self) -> str:
        return self[0]


@contextlib.contextmanager
def _mapped():
    """Every Redis call of this store goes through here: a Redis fault is Unavailable (503
    store_unavailable), NotReplicated stays itself (503 with its own message)."""
    try:
        yield
    except NotReplicated:
        raise
    except (RedisError, OSError) as err:
        raise Unavailable(str(err)) from err


class WebhookStore:
    """Endpoints, the delivery jobs and the stream's consumer group, over a KeyStore's client.
    Every method raises Unavailable (or NotReplicated for a confirmed write) on a Redis fault."""

    def __init__(self, keystore, max_queued: int = MAX_QUEUED) -> None:
        self.keys = keystore
        self.redis = keystore.redis
        self.p = keystore.p
        self.q = f"{keystore.p}:{{wh}}:"
        self.queue = self.q + "queue"
        self.ready = self.q + "ready"
        self.dead = self.q + "dead"
        self.stream = keystore.events.stream
        self.max_queued = max_queued
        self._enqueue = self.redis.register_script(_ENQUEUE)
        self._claim = self.redis.register_script(_CLAIM)
        self._finish = self.redis.register_script(_FINISH)
        self._swap = self.redis.register_script(_SWAP)
        self._migrate = self.redis.register_script(_MIGRATE)
        self.layout = self.q + "layout"

    def endpoints_key(self, org_id: str) -> str:
        return f"{self.p}:org:{{{org_id}}}:webhooks"

    def job_key(self, job: str) -> str:
        return self.q + "job:" + job

    def busy_key(self, endpoint_id: str) -> str:
        return self.q + "busy:" + endpoint_id

    def log_key(self, endpoint_id: str) -> str:
        return self.q + "log:" + endpoint_id

    def endpoint_queue_key(self, endpoint_id: str) -> str:
        return self.q + "eq:" + endpoint_id

    def tests_key(self, endpoint_id: str) -> str:
        return self.q + "tests:" + endpoint_id

    # -- endpoints --------------------------------------------------------------------
    async def endpoints(self, org_id: str) -> list[Endpoint]:
        """The org's endpoints, oldest first."""
        with _mapped():
            raw = await self.redis.hvals(self.endpoints_key(org_id))
        found = [e for e in map(decode_endpoint, raw) if e is not None and e.org_id == org_id]
        return sorted(found, key=lambda e: (e.created_at, e.id))

    async def endpoint(self, org_id: str, endpoint_id: str) -> Endpoint | None:
        with _mapped():
            raw = await self.redis.hget(self.endpoints_key(org_id), endpoint_id)
        found = decode_endpoint(raw) if raw else None
        return found if found is not None and found.org_id == org_id else None

    async def put_endpoint(self, endpoint: Endpoint) -> None:
        """Create or replace (confirmed by the required replicas, like a key's writes)."""
        name, value = self.endpoints_key(endpoint.org_id), encode_endpoint(endpoint)
        with _mapped():
            await self.keys._confirmed(lambda c: _gather(c.hset(name, endpoint.id, value)))

    async def replace_endpoint(self, old: Endpoint, new: Endpoint) -> bool:
        """Store ``new`` only if the endpoint is still ``old`` (no edit in between); whether it was."""
        with _mapped():
            return bool(await self._swap(keys=[self.endpoints_key(old.org_id)],
                                         args=[old.id, encode_endpoint(old), encode_endpoint(new)]))

    async def delete_endpoint(self, org_id: str, endpoint_id: str) -> bool:
        """Remove the endpoint (its queued jobs are dropped when they come due)."""
        name = self.endpoints_key(org_id)
        with _mapped():
            done = await self.keys._confirmed(lambda c: _gather(c.hdel(name, endpoint_id)))
        return bool(done[0])

    async def test_send_allowed(self, endpoint_id: str, limit: int, window_s: int) -> int:
        """Count a test-send in the endpoint's window: 0 if allowed, else seconds until the window ends."""
        key = self.tests_key(endpoint_id)
        with _mapped():
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, window_s, nx=True)
                pipe.ttl(key)
                count, _, ttl = await pipe.execute()
        return 0 if int(count) <= limit else max(1, int(ttl))

    # -- jobs -------------------------------------------------------------------------
    async def enqueue(self, job: str, due_ms: int, org_id: str, event_id: str, event_type: str, body: bytes,
                      now_ms: int, client=None) -> bool:
        """Queue a job (nothing if it exists). False if the endpoint already had ``max_queued`` jobs
        queued: the job is then a dead letter at once (listed in its deliveries with the reason)."""
        endpoint_id = job.rsplit("|", 1)[-1]
        with _mapped():
            got = await self._enqueue(
                keys=[self.queue, self.job_key(job), self.log_key(endpoint_id), self.endpoint_queue_key(endpoint_id),
                      self.ready, self.dead],
                args=[job, due_ms, org_id, event_id, event_type, body, now_ms, RECENT, self.max_queued, endpoint_id,
                      DONE_TTL, DEAD_KEEP], client=client)
        return int(got) != 2

    async def migrate(self) -> int:
        """Give jobs queued by an earlier version (shared queue only) their endpoint's queue: once
        per deployment (the ``{wh}:layout`` marker); how many were looked at."""
        with _mapped():
            return int(await self._migrate(keys=[self.queue, self.ready, self.layout], args=[self.q]))

    async def claim(self, now_ms: int, visibility_ms: int, want: int, scan: int, per_endpoint: int) -> list[Claimed]:
        """Up to ``want`` due jobs, fairly across endpoints (at most ``per_endpoint`` in flight each;
        ``scan``: endpoints visited)."""
        with _mapped():
            flat = await self._claim(keys=[self.ready], args=[now_ms, visibility_ms, want, scan, per_endpoint, self.q])
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
        with _mapped():
            await self._finish(keys=[self.queue, self.job_key(job), self.busy_key(endpoint_id), self.dead,
                                     self.endpoint_queue_key(endpoint_id), self.ready],
                               args=[job, outcome, "" if status is None else status, error[:300], next_at, now_ms,
                                     DONE_TTL, DEAD_KEEP, endpoint_id])

    async def deliveries(self, endpoint_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The endpoint's recent jobs, newest first (what GET .../deliveries shows)."""
        log = self.log_key(endpoint_id)
        with _mapped():
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
        with _mapped():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zcard(self.queue)
                pipe.zcard(self.dead)
                queued, dead = await pipe.execute()
        return int(queued), int(dead)

    # -- the stream's consumer group --------------------------------------------------
    async def ensure_group(self) -> bool:
        """Create the consumer group once the stream exists (False until then: no key is created
        for a deployment that has no events yet). New groups read the stream from its start."""
        with _mapped():
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
        with _mapped():
            got = await self.redis.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=count, block=block_ms)
        return [(sid.decode(), decode_entry(f.get(b"e", b""))) for _, rows in got or () for sid, f in rows]

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[tuple[str, FeedEntry | None]]:
        """Entries pending longer than ``min_idle_ms`` (their reader died, or their event had not
        landed yet), taken over by this consumer."""
        with _mapped():
            got = await self.redis.xautoclaim(self.stream, GROUP, consumer, min_idle_ms, "0-0", count=count)
        rows = got[1] if got else []
        return [(sid.decode(), decode_entry(f.get(b"e", b""))) for sid, f in rows if f]

    async def handled(self, ids: list[str]) -> None:
        """Acknowledge and delete handled entries (this group is the stream's only reader)."""
        if ids:
            with _mapped():
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.xack(self.stream, GROUP, *ids)
                    pipe.xdel(self.stream, *ids)
                    await pipe.execute()

    async def trim_outbox(self) -> tuple[int, int]:
        """Trim the stream below what the group still needs, never more (W3): entries before the
        oldest pending one (or, with none pending, up to the group's last-delivered id) were read
        and handled. Without the group nothing is trimmed (it reads from the start when created).
        Returns (entries not yet read by the group, entries read but not handled)."""
        with _mapped():
            try:
                groups = await self.redis.xinfo_groups(self.stream)
            except ResponseError as err:
                if "no such key" in str(err).lower():
                    return 0, 0
                raise
            group = next((g for g in groups if _text(g.get("name")) == GROUP), None)
            if group is None:
                return await self.redis.xlen(self.stream), 0
            summary = await self.redis.xpending(self.stream, GROUP)
            pending = int(summary.get("pending") or 0)
            if pending:
                floor = _text(summary["min"])
            else:
                ms, seq = _text(group["last-delivered-id"]).split("-")
                floor = f"{ms}-{int(seq) + 1}"
            if floor != "0-1":
                await self.redis.xtrim(self.stream, minid=floor, approximate=False)
            length = await self.redis.xlen(self.stream)
        # Handled entries are deleted at once, so the stream holds the pending ones and the unread.
        return max(0, length - pending), pending

    async def change_event(self, entry: FeedEntry) -> tuple[KeyEvent | None, KeyRecord | None]:
        """A key change's activity log event (None until it lands) and the key's record."""
        with _mapped():
            events = await self.keys._indexed_events(entry.org_id, [(entry.key_id, entry.version, entry.at)])
            record = await self.keys.get_for_org(entry.org_id, entry.key_id) if events else None
        return (events[0] if events else None), record


async def _gather(*calls) -> list:
    return [await c for c in calls]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")
