"""Leak marks in Redis (issue 17; docs/secret-scanning.md): a key a secret scanner reported gets
its ``leak`` field (codec.LEAK) and an ``api_key.leaked`` event in its activity log, atomically,
by the event-log protocol (the org's activity index entry and the outbox entry first).

A batch of keys is marked in two round trips (the index and outbox entries of all of them, then
one script call per key); a key whose version moved meanwhile is read again and retried alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.model import Change, KeyEvent, KeyRecord, Leak
from gateway.store.codec import decode_record, encode_event, encode_leak, event_id

if TYPE_CHECKING:
    from gateway.store.keystore import KeyStore

# ARGV: deadline, org, the version the event was made for, the event, the leak mark.
# 0: no such key of the org; 1: marked before (nothing written); 2: revoked meanwhile (nothing
# written); 3: marked now; -2: the record changed since it was read (read it again).
_MARK = """
local t = redis.call('TIME')
if t[1] * 1000 + math.floor(t[2] / 1000) > tonumber(ARGV[1]) then return -1 end
if redis.call('HGET', KEYS[1], 'o') ~= ARGV[2] or redis.call('HEXISTS', KEYS[1], 'a') == 1 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'k') == 1 then return 1 end
if redis.call('HEXISTS', KEYS[1], 'r') == 1 then return 2 end
if tonumber(redis.call('HGET', KEYS[1], 'v') or '0') + 1 ~= tonumber(ARGV[3]) then return -2 end
redis.call('HSET', KEYS[1], 'k', ARGV[5], 'v', ARGV[3])
redis.call('RPUSH', KEYS[2], ARGV[4])
return 3
"""
GONE, BEFORE, REVOKED, MARKED, MOVED = 0, 1, 2, 3, -2
OUTCOMES = {GONE: "gone", BEFORE: "marked_before", REVOKED: "revoked_before", MARKED: "marked"}
MARK_ATTEMPTS = 5


class LeakMarks:
    """``KeyStore.leaks``: mark keys leaked with their event."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self._mark = store.redis.register_script(_MARK)

    async def mark(self, records: list[KeyRecord], leaks: dict[str, Leak], actor: str) -> dict[str, str]:
        """Mark ``records`` (keys' own records, read lately; ``leaks``: key id -> its mark) leaked:
        key id -> an OUTCOMES word. Raises RedisError (NotReplicated, WriteTooLate included) like
        every acknowledged write: the caller answers 503 and the scanner sends the report again."""
        out: dict[str, str] = {}
        todo = [r for r in records if r.leak is None and r.revoked_at is None]
        for r in records:
            if r.leak is not None or r.revoked_at is not None:
                out[r.id] = OUTCOMES[BEFORE if r.leak is not None else REVOKED]
        for _ in range(MARK_ATTEMPTS):
            if not todo:
                return out
            results = await self._attempt(todo, leaks, actor)
            moved = []
            for record, result in zip(todo, results, strict=True):
                if result == -1:
                    from gateway.store.keystore import WriteTooLate
                    raise WriteTooLate("a leak mark reached Redis after its deadline")
                if result == MOVED:
                    await self.store._reindex(record.org_id, record.id, record.version + 1)
                    moved.append(record.id)
                else:
                    out[record.id] = OUTCOMES[result]
            todo = [r for r in await self._reread(moved) if r.id not in out]
            for r in todo[:]:
                if r.leak is not None or r.revoked_at is not None:
                    out[r.id] = OUTCOMES[BEFORE if r.leak is not None else REVOKED]
                    todo.remove(r)
        from gateway.store.keystore import Contended
        raise Contended(f"keys changed on each of {MARK_ATTEMPTS} attempts to mark them leaked")

    async def _attempt(self, records: list[KeyRecord], leaks: dict[str, Leak], actor: str) -> list:
        st = self.store
        events = {}
        for r in records:
            leak = leaks[r.id]
            mark = {"url": leak.url, "source": leak.source, "scanner": leak.scanner, "action": leak.action}
            events[r.id] = KeyEvent("api_key.leaked", r.id, r.org_id, actor, leak.at, r.version + 1,
                                    {"leak": Change(None, mark)})
        # Event-log protocol: every key's activity index entry and outbox entry first (one
        # confirmed round trip), then each mark with its event (one more).
        await self._round_trip([
            call for r in records for call in (
                lambda c, r=r: c.zadd(st._org_activity(r.org_id), {event_id(r.id, r.version + 1): leaks[r.id].at}),
                lambda c, r=r: st.events.add_change(c, r.org_id, r.id, r.version + 1, leaks[r.id].at))], scripts=False)
        return await self._round_trip([lambda c, r=r: self._mark(
            keys=[st._rec(r.id), st._key_log(r.id)],
            args=[st._deadline(), r.org_id, r.version + 1, encode_event(events[r.id]), encode_leak(leaks[r.id])],
            client=c) for r in records], scripts=True)

    async def _round_trip(self, calls, *, scripts: bool) -> list:
        """``calls(client)`` pipelined and, where replicas must confirm, followed by the WAIT
        (KeyStore._confirmed); else as one pipeline (scripts: KeyStore._scripts, which a cluster
        sends to each slot's node at once)."""
        st = self.store
        if await st.replicas.needed():
            return await st._confirmed(lambda c: st._gather(*(lambda call=call: call(c) for call in calls)))
        if scripts:
            return await st._scripts(calls)
        async with st.redis.pipeline(transaction=False) as pipe:
            for call in calls:
                call(pipe)
            return await pipe.execute()

    async def _reread(self, key_ids: list[str]) -> list[KeyRecord]:
        if not key_ids:
            return []
        raws = [await self.store.redis.hgetall(self.store._rec(key_id)) for key_id in key_ids]
        return [r for r in (decode_record(k, raw) for k, raw in zip(key_ids, raws, strict=True)) if r is not None]
