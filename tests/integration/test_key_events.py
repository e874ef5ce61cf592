"""The key-event finder (issue 17): keys crossing 7 days / 1 day before expiry, expiry and their org's
unused_days make exactly one event each in the outbox; revoked keys none; a finder that dies between
the emit and clearing it makes the event at least once, never zero; auto-expiry of unused keys goes
through the edit path (every gateway drops the key). A real redis-server and an injected clock."""

from __future__ import annotations

import asyncio
import json

import pytest

from admin_api.finder import KeyEventFinder
from admin_api.guard import AuthGuard
from admin_api.ops import AdminMetrics
from gateway.config import AdminSettings
from gateway.events import EXPIRED, EXPIRING, UNUSED
from gateway.keyevents import DAY_MS
from gateway.model import rfc3339
from gateway.orgsettings import OrgSettings
from gateway.store import KeyStore, connect
from gateway.store.events import decode_entry
from gateway.store.finder import expiry_member
from tests.support import Clock, eventually
from tests.support.webhooks import GOT, receiver_app

FOUND = (EXPIRING, EXPIRED, UNUSED)
MINUTE = 60_000


@pytest.fixture
async def store(redis_url):
    s = KeyStore(connect(redis_url))
    yield s
    await s.redis.aclose()


def finder(store: KeyStore, clock: Clock) -> KeyEventFinder:
    return KeyEventFinder(store, clock, AdminMetrics(AuthGuard(AdminSettings(), clock)), ack_timeout=0.0)


def found(redis_server) -> list:
    """The found events in the outbox, oldest first."""
    entries = [decode_entry(f[b"e"]) for _, f in redis_server.client.xrange("gw:events")]
    return [e for e in entries if e is not None and e.type in FOUND]


def now_ms(clock: Clock) -> int:
    return int(clock() * 1000)


async def create(store: KeyStore, clock: Clock, expires_in_ms: int | None = None, org: str = "org_ev"):
    now = now_ms(clock)
    record, _ = await store.create(org_id=org, name="k", scopes=("tasks:read",), actor="usr_1", now_ms=now,
                                   expires_at=None if expires_in_ms is None else now + expires_in_ms)
    return record


async def ticks(clock: Clock, finders, advance_ms: int, n: int = 2) -> None:
    """Advance the clock, then tick each finder ``n`` times (some at once: one runs, one skips)."""
    clock.advance(advance_ms / 1000)
    for _ in range(n):
        await asyncio.gather(*(f.tick() for f in finders))


async def test_expiring_7d_and_1d_then_expired_each_make_exactly_one_event(store, redis_server):
    clock = Clock()
    a, b = finder(store, clock), finder(store, clock)  # two admin API processes
    key = await create(store, clock, expires_in_ms=30 * DAY_MS)
    quiet = await create(store, clock)  # never expires: no expiry event
    expires = key.expires_at
    await ticks(clock, [a, b], 0)
    assert found(redis_server) == []
    await ticks(clock, [a, b], 23 * DAY_MS - MINUTE)  # just before the 7-day line
    assert found(redis_server) == []
    await ticks(clock, [a, b], 2 * MINUTE)
    [seven] = found(redis_server)
    assert (seven.type, seven.key_id, seven.org_id, seven.id) == (EXPIRING, key.id, "org_ev",
                                                                   f"evt_{key.id}_expiring_7d_{expires}")
    assert seven.data["days_left"] == 7 and seven.data["expires_at"] == rfc3339(expires)
    assert seven.data["prefix"] == key.prefix and "digest" not in seven.data
    await ticks(clock, [a, b], 3 * DAY_MS)
    assert len(found(redis_server)) == 1
    await ticks(clock, [a, b], 3 * DAY_MS)  # the 1-day line
    assert [(e.type, e.data["days_left"]) for e in found(redis_server)] == [(EXPIRING, 7), (EXPIRING, 1)]
    await ticks(clock, [a, b], DAY_MS)  # expired
    events = [e for e in found(redis_server) if e.key_id == key.id]
    assert [(e.type, e.data["days_left"]) for e in events] == [(EXPIRING, 7), (EXPIRING, 1), (EXPIRED, 0)]
    assert len({e.id for e in events}) == 3
    await ticks(clock, [a, b], 40 * DAY_MS)  # nothing more about it (an expired key is not "unused")
    assert [e for e in found(redis_server) if e.key_id == key.id] == events
    [idle] = [e for e in found(redis_server) if e.key_id == quiet.id]  # never used: 30 days after its creation
    assert idle.type == UNUSED and idle.data["last_used_at"] is None and idle.data["days"] == 30
    assert redis_server.client.zscore(store.finder.expiry, expiry_member(key.id, expires)) is None


async def test_a_revoked_key_makes_no_event(store, redis_server):
    clock = Clock()
    f = finder(store, clock)
    await f.tick()
    keys = [await create(store, clock, expires_in_ms=3 * DAY_MS), await create(store, clock)]
    for k in keys:
        await store.revoke(org_id="org_ev", key_id=k.id, actor="usr_1", now_ms=now_ms(clock))
    assert redis_server.client.zcard(store.finder.expiry) == redis_server.client.zcard(store.finder.lastused) == 0
    await store.ledger.write("node_a", 1, {keys[1].id: (now_ms(clock), 1)})  # a late flush: not indexed again
    assert redis_server.client.zcard(store.finder.lastused) == 0
    for step in (DAY_MS, 3 * DAY_MS, 40 * DAY_MS):
        await ticks(clock, [f], step)
    assert found(redis_server) == []


async def test_unused_after_the_orgs_days_from_the_last_use_once(store, redis_server):
    clock = Clock()
    f = finder(store, clock)
    await store.orgs.put("org_ev", OrgSettings(unused_days=10))
    used, other_org = await create(store, clock), await create(store, clock, org="org_other")  # 30 days there
    await f.tick()
    clock.advance(2 * 86400)
    last = now_ms(clock)
    await store.ledger.beat("node_a", False)  # a gateway's flusher: it beats before it writes
    await store.ledger.write("node_a", 1, {used.id: (last, 3)})  # the last-used flush raises its index entry
    assert redis_server.client.zscore(store.finder.lastused, used.id) == last
    await ticks(clock, [f], 10 * DAY_MS - MINUTE)
    assert found(redis_server) == []  # other_org's key is idle 12 days: under its 30
    await ticks(clock, [f], 2 * MINUTE)
    [event] = found(redis_server)
    assert (event.type, event.key_id, event.id) == (UNUSED, used.id, f"evt_{used.id}_unused_{last}")
    assert event.data["last_used_at"] == rfc3339(last) and event.data["days"] == 10
    await ticks(clock, [f], 5 * DAY_MS)
    assert len(found(redis_server)) == 1
    await ticks(clock, [f], 16 * DAY_MS)  # other_org's key: 33 days since its creation
    assert [(e.type, e.key_id) for e in found(redis_server)[1:]] == [(UNUSED, other_org.id)]
    clock.advance(86400)
    await store.ledger.write("node_a", 2, {used.id: (now_ms(clock), 4)})  # used again, idle again: a new event
    await ticks(clock, [f], 11 * DAY_MS)
    assert [e.key_id for e in found(redis_server)] == [used.id, other_org.id, used.id]


class Killed(BaseException):
    """The process stops here (nothing after it runs: not the clearing of what it emitted)."""


class DiesAfterEmit(KeyEventFinder):
    async def emit_all(self, entries) -> None:
        await super().emit_all(entries)
        if entries:
            raise Killed()


class DiesBeforeEmit(KeyEventFinder):
    async def emit_all(self, entries) -> None:
        if entries:
            raise Killed()
        await super().emit_all(entries)


@pytest.mark.parametrize("dying, copies", [(DiesAfterEmit, 2), (DiesBeforeEmit, 1)])
async def test_a_finder_that_dies_mid_emit_loses_nothing(store, redis_server, dying, copies):
    clock = Clock()
    key = await create(store, clock, expires_in_ms=DAY_MS + 10 * MINUTE)
    clock.advance(11 * 60)
    metrics = AdminMetrics(AuthGuard(AdminSettings(), clock))
    with pytest.raises(Killed):
        await dying(store, clock, metrics, 0.0).tick()
    redis_server.client.delete(store.finder.lock)  # (a real death leaves it to its lease)
    after = finder(store, clock)
    await after.tick()
    await ticks(clock, [after], MINUTE)
    events = found(redis_server)
    assert [(e.id, e.type) for e in events] == [(f"evt_{key.id}_expiring_1d_{key.expires_at}", EXPIRING)] * copies
    assert redis_server.client.hlen(store.finder.pending) == 0


async def test_one_process_at_a_time_runs_a_tick(store, redis_server):
    clock = Clock()
    await create(store, clock, expires_in_ms=DAY_MS)
    redis_server.client.set(store.finder.lock, "someone else", px=60_000)
    assert await finder(store, clock).tick() is False
    assert found(redis_server) == []
    redis_server.client.delete(store.finder.lock)
    assert await finder(store, clock).tick() is True
    assert [e.type for e in found(redis_server)] == [EXPIRING]


async def test_keys_created_before_the_indexes_are_backfilled_once(store, redis_server):
    clock = Clock()
    key = await create(store, clock, expires_in_ms=5 * DAY_MS)
    redis_server.client.delete(store.finder.expiry, store.finder.lastused)  # as before this change
    await finder(store, clock).tick()
    assert [(e.type, e.key_id, e.data["days_left"]) for e in found(redis_server)] == [(EXPIRING, key.id, 5)]
    assert redis_server.client.zscore(store.finder.lastused, key.id) == key.created_at
    assert redis_server.client.exists(store.finder.backfilled)


async def test_an_unused_key_of_an_org_that_asks_expires_on_every_gateway(make_stack, redis_server, aiohttp_server):
    # The found events are checked where the org hears of them: its webhook endpoint (a real
    # receiver; the admin API's dispatcher takes entries out of the outbox as it delivers them).
    stack = await make_stack(flush_interval=0.05, admin_settings={"key_events_interval": 0.05, "webhooks_allow_private": True})
    store = stack.admin_state.store
    await store.orgs.put("acme", OrgSettings(unused_days=30, expire_unused_days=60))
    receiver = await aiohttp_server(receiver_app())
    created = await stack.create_key(org="acme")
    status, hook, _ = await stack.admin_call("POST", "/v1/orgs/acme/webhooks",
                                             json={"url": str(receiver.make_url("/hook")), "events": list(FOUND)})
    assert status == 201, hook
    born = (await store.get(created["id"])).created_at
    stack.clock.advance(5)
    for _ in range(2):  # cached by the gateway
        assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 200

    async def flushed():  # the gateway's last-used flush raised the key's score in the index
        return redis_server.client.zscore(store.finder.lastused, created["id"]) == born + 5000
    await eventually(flushed)
    stack.clock.advance(2 * 86400)  # idle for more than a day: scheduled
    await asyncio.sleep(0.3)
    stack.clock.advance(29 * 86400)

    async def types(*expected):
        got = [json.loads(r["body"]) for r in receiver.app[GOT]]
        return [(e["type"], e["data"]["key_id"]) for e in got] == [(t, created["id"]) for t in expected]
    await eventually(lambda: types(UNUSED), timeout=10)
    assert (await store.get(created["id"])).expires_at is None  # unused, not expired yet (a call would use it)
    await asyncio.sleep(0.3)
    stack.clock.advance(30 * 86400)
    await eventually(lambda: types(UNUSED, EXPIRED), timeout=10)
    status, body, _ = await stack.call("GET", "/v1/tasks", created["key"])
    assert (status, body["error"]["code"]) == (401, "expired_api_key")
    _, log, _ = await stack.admin_call("GET", "/v1/orgs/acme/audit-events", params={"key_id": created["id"]})
    update = next(e for e in log["data"] if e["action"] == "api_key.updated")
    assert update["actor"] == "system:unused" and list(update["changes"]) == ["expires_at"]


async def test_cluster_indexes_and_finder(cluster):
    """On a real Redis Cluster: the indexes written with create, edit, revoke and the flush (other
    slots than the records'), the finder's claims (its own slot), the backfill's SCAN of every node."""
    store = KeyStore(connect(cluster.url), prefix="gwkev")
    try:
        clock = Clock()
        f = finder(store, clock)
        ending = await create(store, clock, expires_in_ms=30 * DAY_MS)
        gone = await create(store, clock, expires_in_ms=30 * DAY_MS)
        await store.lifecycle.edit(org_id="org_ev", key_id=ending.id, actor="usr_1", now_ms=now_ms(clock),
                                   ack_timeout=0.0, expires_at=now_ms(clock) + 3 * DAY_MS)
        await store.revoke(org_id="org_ev", key_id=gone.id, actor="usr_1", now_ms=now_ms(clock))
        assert [m for m, _ in await store.redis.zrange(store.finder.expiry, 0, -1, withscores=True)] == [
            expiry_member(ending.id, now_ms(clock) + 3 * DAY_MS).encode()]
        await store.ledger.beat("node_c", False)
        await store.ledger.write("node_c", 1, {ending.id: (now_ms(clock) + 1, 1), gone.id: (now_ms(clock) + 1, 1)})
        assert await store.redis.zrange(store.finder.lastused, 0, -1) == [ending.id.encode()]
        assert await f.tick()
        events = [decode_entry(fields[b"e"]) for _, fields in await store.redis.xrange(store.events.stream)]
        assert [(e.type, e.key_id, e.data["days_left"]) for e in events if e.type in FOUND] == [
            (EXPIRING, ending.id, 3)]
        await store.redis.delete(store.finder.backfilled, store.finder.found, store.finder.marks)
        assert await store.finder.backfill() == 1  # the one key not revoked, found on its node
    finally:
        await store.redis.aclose()


async def test_a_revoke_that_fails_leaves_the_key_indexed(store, redis_server):
    # (review of issue 17, 5) the index entries go only once the revoke is done
    from redis.exceptions import ConnectionError as RedisConnectionError
    clock = Clock()
    key = await create(store, clock, expires_in_ms=30 * DAY_MS)
    real = store._revoke

    def broken(*args, **kwargs):
        raise RedisConnectionError("lost before the revoke script ran")

    store._revoke = broken
    with pytest.raises(RedisConnectionError):
        await store.revoke(org_id="org_ev", key_id=key.id, actor="usr_1", now_ms=now_ms(clock))
    store._revoke = real
    assert (await store.get(key.id)).revoked_at is None
    assert redis_server.client.zscore(store.finder.lastused, key.id) is not None
    assert redis_server.client.zscore(store.finder.expiry, expiry_member(key.id, key.expires_at)) is not None
    await store.revoke(org_id="org_ev", key_id=key.id, actor="usr_1", now_ms=now_ms(clock))
    assert redis_server.client.zscore(store.finder.lastused, key.id) is None
    assert redis_server.client.zcard(store.finder.expiry) == 0


async def test_no_second_unused_event_at_auto_expiry_long_after_it(store, redis_server):
    # (review of issue 17, 4) expire_unused_days - unused_days > the 8 days a marker lasts
    clock = Clock()
    f = finder(store, clock)
    await store.orgs.put("org_ev", OrgSettings(unused_days=30, expire_unused_days=60))
    key = await create(store, clock)
    await f.tick()
    for _ in range(65):
        clock.advance(86400)
        await f.tick()
    unused = [e for e in found(redis_server) if e.type == UNUSED]
    assert [e.id for e in unused] == [f"evt_{key.id}_unused_{key.created_at}"]
    assert (await store.get(key.id)).status(now_ms(clock)) == "expired"


def auto_updates(redis_server, key_id: str) -> int:
    """The api_key.updated events the auto-expiry wrote in the key's activity log."""
    return sum(1 for raw in redis_server.client.lrange(f"gw:key:{{{key_id}}}:log", 0, -1)
               if b"api_key.updated" in raw and b"system:unused" in raw)


async def test_a_tick_that_lost_its_lock_stops_at_the_next_batch(store, redis_server, monkeypatch):
    # (review of issue 17, 2) no two processes expire the same keys
    import admin_api.finder as finder_module
    monkeypatch.setattr(finder_module, "BATCH", 2)
    clock = Clock()
    await store.orgs.put("org_ev", OrgSettings(unused_days=1, expire_unused_days=2))
    keys = [await create(store, clock) for _ in range(6)]
    b = finder(store, clock)

    class LosesItsLock(KeyEventFinder):
        batches = 0

        async def _unused_batch(self, key_ids, now):
            self.batches += 1
            await super()._unused_batch(key_ids, now)
            redis_server.client.delete(store.finder.lock)  # its lease ran out: b takes the next tick
            assert await b.tick()

    a = LosesItsLock(store, clock, AdminMetrics(AuthGuard(AdminSettings(), clock)), 0.0)
    await f_tick(b)
    clock.advance(3 * 86400)
    await a.tick()
    assert a.batches == 1 and a.metrics.keys_auto_expired._value.get() == 2  # its first batch, then it stopped
    assert [auto_updates(redis_server, k.id) for k in keys] == [1] * 6


async def f_tick(f) -> None:
    assert await f.tick()


async def test_a_tick_emits_at_most_its_cap_and_the_next_goes_on(store, redis_server, monkeypatch):
    # (review of issue 17, 2 and 7) a partial tick's watermark is where it got to
    import admin_api.finder as finder_module
    monkeypatch.setattr(finder_module, "BATCH", 2)
    clock = Clock()
    keys = [await create(store, clock, expires_in_ms=7 * DAY_MS + 10 * MINUTE) for _ in range(6)]
    f = finder(store, clock)
    f.found_cap = 2
    await f.tick()
    clock.advance(11 * 60)
    counts = []
    for _ in range(4):
        await f.tick()
        counts.append(len(found(redis_server)))
    assert counts == [2, 4, 6, 6]
    assert sorted(e.key_id for e in found(redis_server)) == sorted(k.id for k in keys)


async def test_a_key_used_while_its_batch_is_handled_is_not_expired(store, redis_server):
    # (review of issue 17, 3) the last use is read again right before each key's edit
    clock = Clock()
    await store.orgs.put("org_ev", OrgSettings(unused_days=30, expire_unused_days=60))
    keys = [await create(store, clock) for _ in range(3)]
    used = keys[1]

    class UsedMeanwhile(KeyEventFinder):
        async def _emit(self, entries, now, keep=None):
            await super()._emit(entries, now, keep)
            if entries:
                await store.ledger.beat("node_a", False)
                await store.ledger.write("node_a", 1, {used.id: (now + 1000, 1)})  # a request now

    f = UsedMeanwhile(store, clock, AdminMetrics(AuthGuard(AdminSettings(), clock)), 0.0)
    await f.tick()
    clock.advance(61 * 86400)
    await f.tick()
    states = [(await store.get(k.id)).status(now_ms(clock)) for k in keys]
    assert states == ["expired", "active", "expired"]
    assert auto_updates(redis_server, used.id) == 0


async def test_turning_auto_expiry_on_reaches_keys_already_idle(store, redis_server):
    # (review of issue 17, 1) a key announced unused and no longer scheduled
    clock = Clock()
    f = finder(store, clock)
    key = await create(store, clock)
    await f.tick()
    for _ in range(35):
        clock.advance(86400)
        await f.tick()
    assert [e.type for e in found(redis_server)] == [UNUSED] and redis_server.client.zcard(store.finder.due) == 0
    clock.advance(10 * 86400)  # longer than an unused marker lasts
    await store.orgs.change("org_ev", {"expire_unused_days": 60}, "usr_1", now_ms(clock))
    await store.orgs.change("org_ev", {"unused_days": 40}, "usr_1", now_ms(clock))  # raised: no rescan of its own
    await f.tick()
    assert redis_server.client.hlen(store.finder.rescan) == 0
    assert (await store.get(key.id)).status(now_ms(clock)) == "active"  # 45 days idle
    for _ in range(16):
        clock.advance(86400)
        await f.tick()
    assert (await store.get(key.id)).status(now_ms(clock)) == "expired"
    assert [e.type for e in found(redis_server)] == [UNUSED, EXPIRED]  # not announced unused again


async def test_the_expired_window_drops_members_their_record_denies(store, redis_server):
    # (review of issue 17, 9) a change that did not land leaves a member: not skipped forever
    clock = Clock()
    f = finder(store, clock)
    key = await create(store, clock, expires_in_ms=30 * DAY_MS)
    await f.tick()
    stale = expiry_member(key.id, now_ms(clock) + 5 * MINUTE)
    redis_server.client.zadd(store.finder.expiry, {stale: now_ms(clock) + 5 * MINUTE})
    await ticks(clock, [f], 5 * MINUTE + MINUTE // 2, n=1)
    assert redis_server.client.zscore(store.finder.expiry, stale) is not None  # within the slack: kept
    await ticks(clock, [f], MINUTE, n=1)
    assert redis_server.client.zscore(store.finder.expiry, stale) is None
    assert redis_server.client.zscore(store.finder.expiry, expiry_member(key.id, key.expires_at)) is not None
    assert found(redis_server) == []
