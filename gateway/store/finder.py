"""The key-event finder's Redis side (issue 17; docs/key-events.md, docs/operations.md "Redis layout").

Two indexes, written with the key changes that move them (KeyStore.create, .revoke, Lifecycle.edit)
and by the last-used flush (UsageLedger.write: one ``ZADD XX GT``):

- ``<prefix>:keys:expiry``: members ``<key_id>:<expires_at>`` scored by expires_at, for the keys
  that expire and are not revoked. An edit of the expiry adds the new member before the change
  (the event-log protocol's order) and removes the old one after it; a member whose record says
  another expiry (a change that did not land) is skipped when read, and dropped by the finder's
  expired window once that expiry is a minute past.
- ``<prefix>:keys:lastused``: every key that is not revoked, scored by its last request (its
  creation until it is used); the flush only raises a score that is there (``XX GT``), so a
  revoked key is never added back, and a late flush never moves a score back.

The finder's own state shares one hash tag (single slot): the markers of what was found (so each
event is emitted once), the findings claimed but not yet known to be emitted (re-emitted by the
next tick: at least once), the keys to look at again when their unused time comes, the tick's
watermarks and the lock that lets one admin API process at a time run a tick.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import AsyncIterator

from redis.exceptions import RedisError

from gateway.events import FeedEntry
from gateway.keyevents import rescan_needed
from gateway.store.events import decode_entry, encode_entry

log = logging.getLogger("gateway.store.finder")

MARKER_TTL_MS = 8 * 86_400_000  # a found event's marker outlives every window that could find it again
BACKFILL_BATCH = 500  # records per round trip of the index backfill

# Claim findings not claimed before. KEYS: the markers (zset: event id -> marker end), the pending
# findings (hash: event id -> FeedEntry JSON). ARGV: event id, entry, marker end triples (a marker
# already there is only made to last longer).
# Returns the ids claimed now (the caller emits those, then clears them from pending).
_CLAIM = """
local out = {}
for i = 1, #ARGV, 3 do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], ARGV[i + 2], ARGV[i])
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    out[#out + 1] = ARGV[i]
  else
    redis.call('ZADD', KEYS[1], 'XX', 'GT', ARGV[i + 2], ARGV[i])
  end
end
return out
"""

# KEYS: the lock. ARGV: its token, its new lease (ms). Renews the lock if this process still holds it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: the lock. ARGV: its token. Deletes the lock if this process still holds it.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# KEYS: the rescan queue. ARGV: an org, the value read, the new one ('' : the org is done). Moves the
# org's cursor on if no change of its settings queued it again meanwhile.
_RESCAN_STEP = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return 1
"""


def finder_tag(prefix: str) -> str:
    return f"{prefix}:finder:{{{prefix}}}"


async def settings_changed(client, prefix: str, org_id: str, before, after, now_ms: int) -> None:
    """After a change of an org's settings (OrgSettings; ``before`` None: not known): queue the org
    for a rescan of its keys when the change lowers ``unused_days`` or sets or lowers
    ``expire_unused_days`` (keys already idle and no longer scheduled meet the new setting). The
    value: ``<cursor>:<unused_days before>:<time>`` (what the rescan must not announce again).
    Best effort: a Redis fault here loses the rescan, not the change."""
    old = None if before is None else (before.unused_days, before.expire_unused_days)
    if not rescan_needed(old, (after.unused_days, after.expire_unused_days)):
        return
    value = f"0:{'' if before is None else before.unused_days}:{now_ms}"
    try:
        await client.hset(f"{finder_tag(prefix)}:rescan", org_id, value)
    except RedisError:
        log.warning("key-event finder: could not queue org %s for a rescan after its settings changed", org_id)


def expiry_index(prefix: str) -> str:
    return f"{prefix}:keys:expiry"


def lastused_index(prefix: str) -> str:
    return f"{prefix}:keys:lastused"


def expiry_member(key_id: str, expires_at: int) -> str:
    return f"{key_id}:{expires_at}"


def parse_expiry_member(member: bytes) -> tuple[str, int] | None:
    key_id, _, at = member.decode().rpartition(":")
    return (key_id, int(at)) if key_id and at.isdigit() else None


class FinderStore:
    """``KeyStore.finder``: the two indexes and the finder's state (``store``: the KeyStore)."""

    def __init__(self, store) -> None:
        self.store = store
        self.redis = store.redis
        p = store.p
        self.expiry = expiry_index(p)
        self.lastused = lastused_index(p)
        tag = finder_tag(p)
        self.found = f"{tag}:found"
        self.pending = f"{tag}:pending"
        self.due = f"{tag}:due"
        self.marks = f"{tag}:marks"
        self.lock = f"{tag}:lock"
        self.backfilled = f"{tag}:backfilled"
        self.rescan = f"{tag}:rescan"
        self._rescan_step = self.redis.register_script(_RESCAN_STEP)
        self._claim = self.redis.register_script(_CLAIM)
        self._unlock = self.redis.register_script(_UNLOCK)
        self._renew = self.redis.register_script(_RENEW)

    # -- index writes queued with the key changes (one command each, on ``c``) -------------
    def add_key(self, c, key_id: str, created_at: int, expires_at: int | None) -> list:
        """The calls that index a new key (queued in the create's round trip)."""
        calls = [lambda: c.zadd(self.lastused, {key_id: created_at})]
        if expires_at is not None:
            calls.append(lambda: c.zadd(self.expiry, {expiry_member(key_id, expires_at): expires_at}))
        return calls

    async def forget_key(self, key_id: str, expires_at: int | None) -> None:
        """Take a revoked key out of both indexes (after the revoke; best effort: the finder drops
        a revoked key's entries when it reads them)."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(self.lastused, key_id)
                if expires_at is not None:
                    pipe.zrem(self.expiry, expiry_member(key_id, expires_at))
                await pipe.execute()
        except RedisError:
            pass

    async def forget_expiry(self, key_id: str, expires_at: int) -> None:
        """Remove an expiry a change replaced (after the change; best effort: a stale member is
        skipped when read)."""
        try:
            await self.redis.zrem(self.expiry, expiry_member(key_id, expires_at))
        except RedisError:
            pass

    # -- reads ------------------------------------------------------------------------------
    async def window(self, index: str, low: int | None, high: int, batch: int
                     ) -> AsyncIterator[list[tuple[bytes, int]]]:
        """The members of ``index`` scored in (low, high] (low None: -inf), a batch at a time, by
        score: a cursor on the last score read (and the members seen at it), so that members
        removed meanwhile never make it skip one."""
        lo, seen = ("-inf" if low is None else f"({low}"), set()
        while True:
            rows = await self.redis.zrangebyscore(index, lo, high, start=0, num=batch + len(seen),
                                                  withscores=True)
            fresh = [(m, int(s)) for m, s in rows if m not in seen]
            if fresh:
                yield fresh
            if len(rows) < batch + len(seen) or not fresh:
                return
            last = fresh[-1][1]
            seen = {m for m, s in rows if int(s) == last}
            lo = last

    async def due_now(self, now_ms: int, batch: int) -> list[str]:
        return [m.decode() for m in await self.redis.zrangebyscore(self.due, "-inf", now_ms, start=0, num=batch)]

    async def schedule(self, later: dict[str, int], done: list[str]) -> None:
        """Keys to look at again (key id -> when) and keys with nothing more due, one round trip."""
        if not later and not done:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            if later:
                pipe.zadd(self.due, later)
            if done:
                pipe.zrem(self.due, *done)
            await pipe.execute()

    async def drop(self, index: str, members: list[str | bytes]) -> None:
        if members:
            await self.redis.zrem(index, *members)

    # -- rescans of orgs whose settings changed ----------------------------------------------
    async def rescans(self) -> dict[str, str]:
        """The orgs queued for a rescan: org id -> ``<cursor>:<unused_days before>:<time>``."""
        return {k.decode(): v.decode() for k, v in (await self.redis.hgetall(self.rescan)).items()}

    async def org_key_ids(self, org_id: str, start: int, n: int) -> list[str]:
        return [m.decode() for m in await self.redis.zrange(self.store._org_keys(org_id), start, start + n - 1)]

    async def rescan_step(self, org_id: str, read: str, value: str | None) -> bool:
        """Move the org's cursor on to ``value`` (None: done), unless it was queued again meanwhile
        (False)."""
        return bool(await self._rescan_step(keys=[self.rescan], args=[org_id, read, value or ""]))

    # -- marks, claims, the lock --------------------------------------------------------------
    async def watermarks(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in (await self.redis.hgetall(self.marks)).items()}

    async def set_watermarks(self, marks: dict[str, int]) -> None:
        if marks:
            await self.redis.hset(self.marks, mapping=marks)

    async def claim(self, entries: list[FeedEntry], now_ms: int, keep: dict[str, int] | None = None
                    ) -> list[FeedEntry]:
        """The entries not found before, marked found and pending in one script call. A marker
        lasts MARKER_TTL_MS, or until ``keep[event id]`` if later (an unused event's marker lasts
        until its key is looked at again: it is not announced twice for the same last use)."""
        if not entries:
            return []
        args: list[object] = []
        keep = keep or {}
        for entry in entries:
            args += (entry.id, encode_entry(entry), max(now_ms + MARKER_TTL_MS, keep.get(entry.id, 0)))
        claimed = {m.decode() for m in await self._claim(keys=[self.found, self.pending], args=args)}
        return [e for e in entries if e.id in claimed]

    async def mark(self, ends: dict[str, int]) -> None:
        """Mark events found (event id -> marker end; a marker there only lasts longer), emitting nothing."""
        if ends:
            await self.redis.zadd(self.found, ends, gt=True)

    async def emitted(self, ids: list[str]) -> None:
        if ids:
            await self.redis.hdel(self.pending, *ids)

    async def unsettled(self) -> list[FeedEntry]:
        """Findings claimed by a tick that stopped before it knew them emitted."""
        raws = await self.redis.hvals(self.pending)
        return [e for e in map(decode_entry, raws) if e is not None]

    async def prune(self, now_ms: int) -> None:
        await self.redis.zremrangebyscore(self.found, "-inf", now_ms)

    async def acquire(self, ttl_ms: int) -> str | None:
        """The tick lock for ``ttl_ms`` (by Redis's clock), or None while another process holds it."""
        token = secrets.token_hex(8)
        return token if await self.redis.set(self.lock, token, nx=True, px=ttl_ms) else None

    async def renew(self, token: str, ttl_ms: int) -> bool:
        """Extend the tick lock to ``ttl_ms`` from now, if this process (``token``) still holds it."""
        return bool(await self._renew(keys=[self.lock], args=[token, ttl_ms]))

    async def release(self, token: str) -> None:
        await self._unlock(keys=[self.lock], args=[token])

    # -- the one-time backfill of keys created before the indexes ---------------------------
    async def backfill(self, *, force: bool = False) -> int | None:
        """Index every org's keys that are not revoked (expiry; last use, or creation), once per
        Redis (a marker says it was done; ``force``: again). How many keys were indexed, or None
        when an earlier run completed. Walks the org indexes (KeyStore.org_ids)."""
        st = self.store
        if not force and await self.redis.exists(self.backfilled):
            return None
        done = 0
        async for org_id in st.org_ids():
            records = [r for r in await st.org_records(org_id) if r.revoked_at is None and r.alias_id is None]
            for first in range(0, len(records), BACKFILL_BATCH):
                chunk = records[first:first + BACKFILL_BATCH]
                usage, _ = await st.ledger.read([r.id for r in chunk])
                async with self.redis.pipeline(transaction=False) as pipe:
                    for r in chunk:
                        pipe.zadd(self.lastused, {r.id: max(r.created_at, usage[r.id][0] or 0)}, gt=True)
                        if r.expires_at is not None:
                            pipe.zadd(self.expiry, {expiry_member(r.id, r.expires_at): r.expires_at})
                    await pipe.execute()
                done += len(chunk)
        await self.redis.set(self.backfilled, int(time.time() * 1000))
        return done
