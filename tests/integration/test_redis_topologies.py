"""The same gateway and admin API on a real Redis Cluster (3 masters) and on Sentinel with failover."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest


from gateway.tasks import flush_usage
from tests.support import wait_for
from tests.support.redis_topologies import (
    migrate_keys, migrate_slot_begin, migrate_slot_finish, start_sentinels,
)


async def test_cluster_create_list_verify_flush_revoke(cluster, make_stack):
    stack = await make_stack(redis=cluster.url)
    assert stack.state.cache.trusted  # the invalidation subscription works on the cluster
    keys = []
    for i in range(6):
        stack.clock.advance(1)
        keys.append(await stack.create_key(org="acme", name=f"k{i}"))
    slots = {cluster.keyslot(f"gw:key:{{{k['id']}}}") for k in keys}
    owners = {cluster.owner_of(s) for s in slots}
    assert len(owners) >= 2  # the records really are spread over several masters

    status, listed, _ = await stack.admin_call("GET", "/v1/orgs/acme/api-keys?limit=4")
    assert status == 200 and [k["name"] for k in listed["data"]] == ["k5", "k4", "k3", "k2"]
    for k in keys:
        assert (await stack.call("GET", "/v1/tasks", k["key"]))[0] == 200
    assert await flush_usage(stack.state.store, stack.state.usage, stack.state.metrics)
    status, listed, _ = await stack.admin_call("GET", "/v1/orgs/acme/api-keys")
    assert all(k["last_used_at"] and k["request_count"] == 1 for k in listed["data"])
    # The usage scripts (merge on read, fold at shutdown) run on the cluster: one slot for all.
    usage = stack.state.usage
    usage.closing = True
    assert await flush_usage(stack.state.store, usage, stack.state.metrics)
    assert await stack.store.redis.hkeys(stack.store.ledger.node_key(usage.node_id)) == [b"^"]  # folded
    usage.closing = False
    status, listed, _ = await stack.admin_call("GET", "/v1/orgs/acme/api-keys")
    assert all(k["last_used_at"] and k["request_count"] == 1 for k in listed["data"])
    # The usage history too (written, folded at shutdown, read): one slot.
    status, history, _ = await stack.admin_call("GET", f"/v1/orgs/acme/api-keys/{keys[0]['id']}/usage")
    assert status == 200 and history["totals"]["2xx"] == 1, history

    victim = keys[0]
    assert (await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{victim['id']}/revoke"))[0] == 200
    status, body, _ = await stack.call("GET", "/v1/tasks", victim["key"])
    assert status == 401 and body["error"]["code"] == "revoked_api_key"
    assert stack.state.metrics.invalidations._value.get() == 1


async def test_cluster_keeps_working_while_a_slot_migrates(cluster, make_stack):
    stack = await make_stack(redis=cluster.url, cache_ttl=0)  # every request reads Redis
    created = await stack.create_key(org="migr", name="moving")
    record_key = f"gw:key:{{{created['id']}}}"
    slot = cluster.keyslot(record_key)
    src, dst = migrate_slot_begin(cluster, slot)
    try:
        # Still on the source while the slot is MIGRATING: served normally.
        assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 200
        # Every key of the slot: the record, its activity log (same hash tag), and any other
        # test's keys that hash there (the slot cannot be reassigned while the source holds one).
        moving = cluster.client(src).execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)
        assert record_key in moving and f"{record_key}:log" in moving
        migrate_keys(cluster, src, dst, moving)
        # Moved, slot not yet reassigned: the source answers ASK, the client follows it.
        assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 200
        # (Not the admin API here: redis-py's asyncio cluster client sends ASKING on one pooled
        # connection and the command on another once it holds several to the importing node, so
        # its reads of a migrating slot can answer 503 until the slot is reassigned: see
        # docs/operations.md, Redis topologies.)
    finally:
        migrate_slot_finish(cluster, slot, dst)
    status, one, _ = await stack.admin_call("GET", f"/v1/orgs/migr/api-keys/{created['id']}")
    assert status == 200 and one["name"] == "moving", one
    # Reassigned: MOVED, then the refreshed slot map.
    assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 200
    assert (await stack.admin_call("POST", f"/v1/orgs/migr/api-keys/{created['id']}/revoke"))[0] == 200
    assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 401
    assert cluster.owner_of(slot) == dst
    stack.state.usage.add(created["id"], 1)
    assert await flush_usage(stack.state.store, stack.state.usage, stack.state.metrics)


async def test_sentinel_failover_keeps_verification_and_writes_going(sentinels, make_stack):
    # Without replica confirmation (--redis-min-replicas 0): this test is about the client
    # following the master; step 2 leaves a single data node, where confirmed writes would be
    # refused (test_failover_durability.py covers the confirmed writes).
    stack = await make_stack(redis=sentinels.url, cache_ttl=0, redis_min_replicas="0")
    before = await stack.create_key(org="sent", name="before")
    stack.clock.advance(1)
    assert (await stack.call("GET", "/v1/tasks", before["key"]))[0] == 200
    old_master = sentinels.current_master()

    # 1. A graceful failover: the old master becomes a replica under open connections, so the
    #    next write there answers READONLY; the client must find the new master by itself.
    import redis as sync_redis

    with sync_redis.Redis(port=sentinels.sentinel_ports[0]) as sentinel:
        sentinel.execute_command("SENTINEL", "FAILOVER", sentinels.service)
    await wait_for(lambda: sentinels.current_master() != old_master, timeout=15)
    new_master = sentinels.current_master()
    await _eventually_ok(lambda: stack.create_key(org="sent", name="after failover"))
    stack.clock.advance(1)
    assert (await stack.call("GET", "/v1/tasks", before["key"]))[0] == 200

    # 2. The new master dies: after the sentinels promote the other node, everything resumes.
    sentinels.procs[new_master].send_signal(signal.SIGKILL)
    await wait_for(lambda: sentinels.current_master() != new_master, timeout=20)
    after = await _eventually_ok(lambda: stack.create_key(org="sent", name="after kill"))
    assert (await stack.call("GET", "/v1/tasks", after["key"]))[0] == 200
    stack.clock.advance(1)
    assert (await stack.admin_call("POST", f"/v1/orgs/sent/api-keys/{before['id']}/revoke"))[0] == 200
    assert (await stack.call("GET", "/v1/tasks", before["key"]))[0] == 401
    status, listed, _ = await stack.admin_call("GET", "/v1/orgs/sent/api-keys?include_revoked=true")
    assert [k["name"] for k in listed["data"]] == ["after kill", "after failover", "before"]
    # The activity log followed the master too: each change with its event, the revoke newest.
    status, log, _ = await stack.admin_call("GET", "/v1/orgs/sent/audit-events")
    ids = {k["name"]: k["id"] for k in listed["data"]}
    assert [(e["action"], e["key_id"]) for e in log["data"]] == [
        ("api_key.revoked", before["id"]), *(("api_key.created", ids[n]) for n in ("after kill", "after failover", "before"))]


async def _eventually_ok(make, timeout: float = 10.0):
    """Retry an operation that may meet 503 while the topology changes; return its result."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await make()
        except AssertionError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_cluster_activity_log_and_its_backfill(cluster, make_stack):
    """The org's activity index and the keys' logs are in different slots (on different masters):
    create and revoke write both, a page reads both; the backfill scans every master."""
    from gateway.model import KeyRecord
    from gateway.store.codec import encode_record

    stack = await make_stack(redis=cluster.url)
    store = stack.store
    keys = []
    for i in range(4):
        stack.clock.advance(1)
        keys.append(await stack.create_key(org="act", name=f"k{i}"))
    stack.clock.advance(1)
    assert (await stack.admin_call("POST", f"/v1/orgs/act/api-keys/{keys[1]['id']}/revoke"))[0] == 200
    index_slot = cluster.keyslot(store._org_activity("act"))
    log_slots = {cluster.keyslot(store._key_log(k["id"])) for k in keys}
    assert index_slot not in log_slots
    assert len({cluster.owner_of(s) for s in {index_slot, *log_slots}}) >= 2
    status, page, _ = await stack.admin_call("GET", "/v1/orgs/act/audit-events", params={"limit": 3})
    assert status == 200 and [e["action"] for e in page["data"]] == ["api_key.revoked"] + ["api_key.created"] * 2
    assert [e["key_id"] for e in page["data"]] == [keys[1]["id"], keys[3]["id"], keys[2]["id"]]
    status, rest, _ = await stack.admin_call("GET", "/v1/orgs/act/audit-events",
                                             params={"limit": 3, "cursor": page["next_cursor"]})
    assert [e["key_id"] for e in rest["data"]] == [keys[1]["id"], keys[0]["id"]] and rest["next_cursor"] is None
    status, one, _ = await stack.admin_call("GET", "/v1/orgs/act/audit-events", params={"key_id": keys[1]["id"]})
    assert [(e["action"], e["version"]) for e in one["data"]] == [("api_key.revoked", 2), ("api_key.created", 1)]

    # Records from before the log, in orgs whose indexes are spread over every master.
    orgs = {}
    for n in range(60):
        org = f"old{n}"
        orgs.setdefault(cluster.owner_of(cluster.keyslot(store._org_keys(org))), org)
    assert len(orgs) == 3
    old = []
    for i, org in enumerate(orgs.values()):
        r = KeyRecord(id=f"key_OLDCLUSTER{i:08d}", org_id=org, name="old", prefix="sop_AbCdEf", scopes=("tasks:read",),
                      digest="ab" * 32, created_at=1000 + i, created_by="cli", revoked_at=2000 + i, revoked_by="operator")
        raw = encode_record(r)
        await store.redis.hset(store._rec(r.id), mapping=dict(zip(raw[::2], raw[1::2], strict=True)))
        await store.redis.zadd(store._org_keys(org), {r.id: r.created_at})
        old.append(r)
    assert await store.backfill_activity(force=True) == 3
    for r in old:
        status, body, _ = await stack.admin_call("GET", f"/v1/orgs/{r.org_id}/audit-events")
        assert [(e["key_id"], e["action"], e["version"]) for e in body["data"]] == [
            (r.id, "api_key.revoked", 2), (r.id, "api_key.created", 1)]
    assert await store.backfill_activity(force=True) == 0


async def test_cluster_last_used_write_run_late_changes_nothing(cluster):
    """On a cluster the last-used write is one script (_WRITE), not the HSET in a transaction: a
    lost-answer write that Redis runs after the retry, then after the node's own fold, changes
    nothing (tests/integration/test_usage_ledger.py does the same on a standalone Redis)."""
    from gateway.metrics import Metrics
    from gateway.store import KeyStore, connect
    from gateway.usage import UsageBuffer

    store = KeyStore(connect(cluster.url))
    try:
        ledger, key = store.ledger, "key_" + "c" * 16
        buf = UsageBuffer("gw_cluster_late")
        buf.add(key, 1_000)
        lost = buf.drain()
        buf.restore(lost)
        buf.add(key, 2_000)
        assert await flush_usage(store, buf, Metrics())
        assert await ledger.write(buf.node_id, lost.seq, lost.values, gen=lost.gen)  # older: merged
        assert (await ledger.read([key]))[0] == {key: (2_000, 2)}
        buf.closing = True
        assert await flush_usage(store, buf, Metrics())  # folded into the base at shutdown
        assert not await ledger.write(buf.node_id, lost.seq, lost.values, gen=lost.gen)  # refused
        assert await store.redis.hkeys(ledger.node_key(buf.node_id)) == [b"^"]
        assert (await ledger.read([key]))[0] == {key: (2_000, 2)}
    finally:
        await store.redis.aclose()


async def test_cluster_sign_in_sessions(cluster):
    """The sign-in session store on a cluster, where its keys live in different slots (each of its
    commands names one key, so none depends on redis-py splitting a multi-key command)."""
    from gateway.store import KeyStore, connect

    client = connect(cluster.url)
    try:
        sessions = KeyStore(client).sessions
        sha = "d" * 64
        await sessions.put_login("e" * 64, {"nonce": "n"}, 60_000)
        assert await sessions.take_login("e" * 64) == {"nonce": "n"}
        await sessions.create(sha, {"sub": "alice", "role": "admin"}, 60_000, expires_ms=2**41, now_ms=1)
        assert await sessions.update(sha, {"role": "viewer"}, 60_000, 2**41)
        assert (await sessions.get(sha))["role"] == "viewer"
        assert await sessions.claim_refresh(sha, "me", 10_000)
        assert await sessions.live(1) >= 1
        await sessions.delete(sha)
        assert await sessions.get(sha) is None
        assert await sessions.claim_refresh(sha, "other", 10_000)  # the claim went with the session
    finally:
        await client.aclose()


async def test_cluster_rate_limit_budgets(cluster, make_stack):
    """The budget store on a cluster: a lease of several windows in one script (one slot: the key
    id's hash tag), returns of keys on several masters in one call, usage, and a gateway there that
    admits exactly the limit."""
    from gateway.leases import Want
    from gateway.ratelimit import Limit, window_bounds
    from gateway.store import KeyStore, connect

    client = connect(cluster.url)
    try:
        budgets = KeyStore(client).limits
        now = int(time.time() * 1000)  # (the counters expire at their window's end: real windows)
        limits = {"hour": Limit("hour", 10), "day": Limit("day", 100)}
        starts = {w: window_bounds(w, now)[0] for w in limits}
        ids = [f"key_cluster{i}" for i in range(8)]
        assert len({cluster.owner_of(cluster.keyslot(budgets.budget_key(k, "day", 0))) for k in ids}) >= 2
        for key_id in ids:
            reply = await budgets.lease(key_id, [Want("hour", starts["hour"], 7), Want("day", starts["day"], 7)],
                                        limits)
            assert [(g.amount, g.left) for g in reply.grants] == [(7, 3), (7, 93)]
            assert abs(reply.now - now) < 60_000  # Redis's clock
            reply = await budgets.lease(key_id, [Want("hour", starts["hour"], 7)], limits)
            assert [(g.amount, g.left) for g in reply.grants] == [(3, 0)]  # never past the limit
        assert await budgets.give_back([(k, [Want("day", starts["day"], 5)]) for k in ids]) == len(ids)
        for key_id in ids:
            assert await budgets.usage(key_id, list(limits.values()), now) == {"hour": 10, "day": 2}
    finally:
        await client.aclose()
    stack = await make_stack(redis=cluster.url, default_limits="minute=5")
    key = await stack.create_key()
    statuses = [(await stack.call("GET", "/v1/tasks", key["key"]))[0] for _ in range(7)]
    assert statuses == [200] * 5 + [429] * 2


async def test_cluster_returns_of_many_keys_never_take_more_than_a_few_connections(cluster):
    """A return tick of hundreds of keys was one concurrent script call per key: past the
    per-node pool (redis-py's cluster pools cannot queue) every call failed, all returns lost."""
    from gateway.leases import Want
    from gateway.ratelimit import Limit, window_bounds
    from gateway.store import KeyStore, connect

    client = connect(cluster.url, max_connections=4)
    try:
        budgets = KeyStore(client).limits
        now = int(time.time() * 1000)
        start = window_bounds("hour", now)[0]
        limits = {"hour": Limit("hour", 10)}
        ids = [f"key_many{i}" for i in range(300)]
        for key_id in ids[:3]:
            await budgets.lease(key_id, [Want("hour", start, 5)], limits)
        assert await budgets.give_back([(k, [Want("hour", start, 5)]) for k in ids]) == len(ids)
        assert await budgets.usage(ids[0], list(limits.values()), now) == {"hour": 0}
    finally:
        await client.aclose()


async def test_cluster_key_limits_through_create_roll_edit_and_usage(cluster, make_stack):
    from gateway.keys import parse_key
    stack = await make_stack(redis=cluster.url)
    keys = "/v1/orgs/acme/api-keys"
    limits = [{"window": "minute", "limit": 100}, {"window": "month", "limit": 5000}]
    status, created, _ = await stack.admin_call("POST", keys, json={"name": "n", "scopes": ["tasks:read"], "limits": limits})
    assert status == 201, created
    _, rolled, _ = await stack.admin_call("POST", f"{keys}/{created['id']}/roll", json={"grace_period": "1h"})
    alias_id = parse_key(rolled["key"]).key_id
    # The record and its alias are in different slots: the narrowing and the sync are one-key scripts.
    status, body, _ = await stack.admin_call("PATCH", f"{keys}/{created['id']}",
                                             json={"limits": [{"window": "minute", "limit": 10}]})
    assert status == 200 and body["limits"] == [{"window": "minute", "limit": 10}], body
    for hash_id in (created["id"], alias_id):
        assert (await stack.store.get(hash_id)).limits == (await stack.store.get(created["id"])).limits
    # Every window of one key is in its slot ({key_id}): the usage read is one MGET.
    status, one, _ = await stack.admin_call("GET", f"{keys}/{created['id']}")
    assert status == 200 and [u["used"] for u in one["limit_usage"]] == [0], one
    status, body, _ = await stack.admin_call("PATCH", f"{keys}/{created['id']}", json={"limits": None})
    assert status == 200 and (await stack.store.get(alias_id)).limits is None


@pytest.fixture
def fresh_sentinels(tmp_path):
    """A topology of its own (the module's ``sentinels`` lost a node in the failover test above)."""
    s = start_sentinels(tmp_path)
    yield s
    s.stop()


async def test_sentinel_limits_hold_across_a_failover(fresh_sentinels, make_stack):
    """Per-key limits on Sentinel: the budget a key spent before a graceful failover is still
    spent after it (the counters are on the new master), and leases follow the new master."""
    sentinels = fresh_sentinels
    stack = await make_stack(redis=sentinels.url, redis_min_replicas="0", default_limits="hour=5")
    spent, fresh = await stack.create_key(org="sent", name="spent"), await stack.create_key(org="sent", name="fresh")
    statuses = [(await stack.call("GET", "/v1/tasks", spent["key"]))[0] for _ in range(7)]
    assert statuses == [200] * 5 + [429] * 2
    # The node gives back what it holds (SIGTERM does the same), so the next asks go to Redis.
    await stack.state.limits.return_idle(everything=True)
    old_master = sentinels.current_master()
    import redis as sync_redis

    with sync_redis.Redis(port=sentinels.sentinel_ports[0]) as sentinel:
        sentinel.execute_command("SENTINEL", "FAILOVER", sentinels.service)
    await wait_for(lambda: sentinels.current_master() != old_master, timeout=15)

    async def answers(key: str, n: int) -> list[int]:
        out = []
        for _ in range(n):
            status, body, _ = await stack.call("GET", "/v1/tasks", key)
            assert status != 503 or body.get("error", {}).get("code") != "quota_unavailable", body
            out.append(status)
        return out

    # The spent key stays refused on the new master; the fresh one gets its whole budget there.
    deadline = time.monotonic() + 10
    while (fresh_statuses := await answers(fresh["key"], 1)) != [200]:
        assert time.monotonic() < deadline, fresh_statuses
        await asyncio.sleep(0.2)
    assert await answers(fresh["key"], 5) == [200] * 4 + [429]
    assert await answers(spent["key"], 3) == [429] * 3
