"""The activity log (issue 14): every change of a key is an event in the key's log, written by the
script that makes the change, indexed per org; GET /v1/orgs/{org}/audit-events pages through it
newest first without a cap, whole org or one key. Real redis-server, real admin API socket."""

from __future__ import annotations

import pytest

from gateway.model import Change, KeyEvent, KeyRecord, rfc3339
from gateway.store.codec import encode_event, encode_record, event_id


async def page_all(stack, org: str = "acme", limit: int = 50, **params) -> tuple[list[dict], int]:
    seen, cursor, pages = [], None, 0
    while True:
        status, page, _ = await stack.admin_call("GET", f"/v1/orgs/{org}/audit-events",
                                                 params={"limit": limit, **params, **({"cursor": cursor} if cursor else {})})
        assert status == 200, page
        assert len(page["data"]) <= limit
        seen += page["data"]
        pages += 1
        if not (cursor := page["next_cursor"]):
            return seen, pages


async def test_create_and_revoke_write_their_events_with_version_and_actor(stack):
    created = await stack.create_key(name="Zapier")
    stack.clock.advance(5)
    first = (await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{created['id']}/revoke"))[1]
    stack.clock.advance(5)
    again = (await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{created['id']}/revoke"))[1]
    assert first["revoked_at"] == again["revoked_at"]
    status, body, _ = await stack.admin_call("GET", "/v1/orgs/acme/audit-events")
    assert status == 200 and body["next_cursor"] is None
    assert body["data"] == [  # the second revoke wrote no event
        {"id": f"{created['id']}:2", "action": "api_key.revoked", "key_id": created["id"], "org_id": "acme",
         "actor": "operator", "at": first["revoked_at"], "version": 2, "changes": {}},
        {"id": f"{created['id']}:1", "action": "api_key.created", "key_id": created["id"], "org_id": "acme",
         "actor": "operator", "at": created["created_at"], "version": 1, "changes": {}},
    ]
    assert (await stack.store.get(created["id"])).version == 2  # the event's version is the record's
    assert await stack.store.redis.llen(stack.store._key_log(created["id"])) == 2


async def test_a_cascade_writes_one_event_per_revoked_key_with_the_callers_actor(stack):
    parent = await stack.create_key(scopes=["api_keys:manage", "tasks:read"])
    child = (await stack.admin_call("POST", "/v1/orgs/acme/api-keys", token=parent["key"],
                                    json={"name": "child", "scopes": ["tasks:read"], "expires_in": "never"}))[1]
    grandchild = (await stack.admin_call("POST", "/v1/orgs/acme/api-keys", token=parent["key"],
                                         json={"name": "gc", "scopes": ["tasks:read"], "expires_in": "never"}))[1]
    stack.clock.advance(1)
    status, body, _ = await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{parent['id']}/revoke?cascade=true")
    assert status == 200 and len(body["revoked_ids"]) == 3
    events, _ = await page_all(stack)
    revokes = [(e["key_id"], e["actor"]) for e in events if e["action"] == "api_key.revoked"]
    assert sorted(revokes) == sorted((k, "operator") for k in (parent["id"], child["id"], grandchild["id"]))
    creates = {e["key_id"]: e["actor"] for e in events if e["action"] == "api_key.created"}
    assert creates == {parent["id"]: "operator", child["id"]: f"key:{parent['id']}",
                       grandchild["id"]: f"key:{parent['id']}"}


async def test_the_org_log_pages_through_every_event_exactly_once_in_order(stack):
    # 130 keys, 44 of them revoked: 174 events (more than the old cap of 100), many in one millisecond.
    base = int(stack.clock() * 1000)
    created = []
    for i in range(130):
        record, _ = await stack.store.create(org_id="acme", name=f"k{i}", scopes=["tasks:read"], expires_at=None,
                                             actor="operator", now_ms=base + i // 4)
        created.append(record)
    revoked = {}
    for i, record in enumerate(created[::3]):
        revoked[record.id] = base + 10 + i // 2
        await stack.store.revoke(org_id="acme", key_id=record.id, actor="operator", now_ms=revoked[record.id])
    await stack.store.create(org_id="globex", name="other", scopes=["tasks:read"], expires_at=None,
                             actor="operator", now_ms=base + 5)
    expected = [(r.created_at, event_id(r.id, 1), "api_key.created") for r in created]
    expected += [(at, event_id(key_id, 2), "api_key.revoked") for key_id, at in revoked.items()]
    expected.sort(reverse=True)  # time, then the event id, descending: a total order
    want = [(rfc3339(at), eid, action) for at, eid, action in expected]
    for limit in (100, 7, 1):
        events, pages = await page_all(stack, limit=limit)
        assert len(events) == 174 and pages == -(-174 // limit)
        assert [(e["at"], e["id"], e["action"]) for e in events] == want
    status, page, _ = await stack.admin_call("GET", "/v1/orgs/acme/audit-events")
    assert len(page["data"]) == 50 and page["next_cursor"]  # the default limit, as for the key list
    for bad in ({"limit": 0}, {"limit": 101}, {"cursor": "garbage"}, {"cursor": page["data"][0]["key_id"]},
                {"cursor": "5.key_abc"}, {"cursor": "5.r.key_abc"}, {"key_id": "nope"},
                {"key_id": [created[0].id, created[1].id]},
                {"key_id": created[1].id, "cursor": page["next_cursor"]}):  # another key's cursor
        status, body, _ = await stack.admin_call("GET", "/v1/orgs/acme/audit-events", params=bad)
        assert status == 400 and body["error"]["code"] == "validation_failed", (bad, body)


async def test_the_key_filter_pages_through_one_keys_log(stack):
    record, _ = await stack.store.create(org_id="acme", name="k", scopes=["tasks:read"], expires_at=None,
                                         actor="operator", now_ms=1000)
    other, _ = await stack.store.create(org_id="acme", name="o", scopes=["tasks:read"], expires_at=None,
                                        actor="operator", now_ms=1000)
    for v in range(2, 13):  # 11 edits by the protocol, all in the same millisecond: versions 2..12
        await append_by_protocol(stack.store, record.id, "acme", v, 1000, "api_key.updated",
                                 {"name": Change(f"n{v - 1}", f"n{v}")})
    for limit in (100, 5, 1):
        events, pages = await page_all(stack, limit=limit, key_id=record.id)
        assert [e["version"] for e in events] == list(range(12, 0, -1)) and pages == -(-12 // limit)
        assert {e["key_id"] for e in events} == {record.id}
    whole, _ = await page_all(stack, limit=3)
    assert len(whole) == 13 and {e["key_id"] for e in whole} == {record.id, other.id}
    assert len({e["id"] for e in whole}) == 13


async def append_by_protocol(store, key_id: str, org_id: str, version: int, at: int, action: str,
                             changes: dict) -> None:
    """What the roll engineer's edit and roll do: the index entry first, then one script that
    checks the version, bumps it and appends the event."""
    event = KeyEvent(action, key_id, org_id, "operator", at, version, changes)
    await store.redis.zadd(store._org_activity(org_id), {event_id(key_id, version): at})
    assert await store.redis.eval("""
        if tonumber(redis.call('HGET', KEYS[1], 'v')) + 1 ~= tonumber(ARGV[1]) then return 0 end
        redis.call('HSET', KEYS[1], 'v', ARGV[1])
        redis.call('RPUSH', KEYS[2], ARGV[2])
        return 1""", 2, store._rec(key_id), store._key_log(key_id), version, encode_event(event)) == 1


async def test_updated_and_rolled_events_appended_by_the_protocol_are_shown(stack):
    created = await stack.create_key(name="before", scopes=["tasks:read"])
    at = int(stack.clock() * 1000) + 1000
    await append_by_protocol(stack.store, created["id"], "acme", 2, at, "api_key.updated", {
        "name": Change("before", "after"), "scopes": Change(["tasks:read"], ["tasks:read", "tasks:write"]),
        "expires_at": Change(None, at + 86_400_000)})
    await append_by_protocol(stack.store, created["id"], "acme", 3, at + 1, "api_key.rolled", {
        "secret": Change("sop_AAAAAA", "sop_BBBBBB"), "previous_secret_expires_at": Change(None, at + 3_600_001)})
    for params in ({}, {"key_id": created["id"]}):
        status, body, _ = await stack.admin_call("GET", "/v1/orgs/acme/audit-events", params=params)
        assert status == 200
        rolled, updated, first = body["data"]
        assert (rolled["action"], rolled["id"], rolled["version"]) == ("api_key.rolled", f"{created['id']}:3", 3)
        assert rolled["changes"] == {"secret": {"before": "sop_AAAAAA", "after": "sop_BBBBBB"},
                                     "previous_secret_expires_at": {"before": None, "after": rfc3339(at + 3_600_001)}}
        assert updated["changes"] == {"name": {"before": "before", "after": "after"},
                                      "scopes": {"before": ["tasks:read"], "after": ["tasks:read", "tasks:write"]},
                                      "expires_at": {"before": None, "after": rfc3339(at + 86_400_000)}}
        assert first["action"] == "api_key.created"
    # A revoke after them takes the next version.
    status, _, _ = await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{created['id']}/revoke")
    status, body, _ = await stack.admin_call("GET", "/v1/orgs/acme/audit-events", params={"key_id": created["id"]})
    assert [(e["action"], e["version"]) for e in body["data"]][:1] == [("api_key.revoked", 4)]


async def test_index_entries_without_their_event_are_skipped(stack):
    created = await stack.create_key()
    index = stack.store._org_activity("acme")
    # A change that never happened (its script refused it), one at another time, a foreign member.
    await stack.store.redis.zadd(index, {event_id(created["id"], 2): 10**12 + 1, event_id(created["id"], 1): 5,
                                         "garbage": 7, event_id("key_0000000000000000", 1): 9})
    await stack.store.redis.zadd(index, {event_id(created["id"], 1): 6})  # time differs from the event's
    status, body, _ = await stack.admin_call("GET", "/v1/orgs/acme/audit-events")
    assert status == 200 and body["data"] == []
    real = (await stack.store.get(created["id"])).created_at
    await stack.store.redis.zadd(index, {event_id(created["id"], 1): real})
    status, body, _ = await stack.admin_call("GET", "/v1/orgs/acme/audit-events")
    assert [e["id"] for e in body["data"]] == [f"{created['id']}:1"]


async def test_pages_while_new_events_arrive_neither_repeat_nor_skip(stack):
    keys = []
    for i in range(30):
        stack.clock.advance(0.001 * (i % 2))  # pairs in one millisecond
        keys.append(await stack.create_key(name=f"k{i}"))
    there = [e["id"] for e in (await page_all(stack, limit=100))[0]]
    seen, cursor = [], None
    for step in range(100):
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        status, page, _ = await stack.admin_call("GET", "/v1/orgs/acme/audit-events", params=params)
        seen += [e["id"] for e in page["data"]]
        # Between pages: new keys, revokes of old ones (all newer than anything already there).
        stack.clock.advance(0.002)
        await stack.create_key(name=f"new{step}")
        await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{keys[step % 30]['id']}/revoke")
        if not (cursor := page["next_cursor"]):
            break
    assert seen == there and len(seen) == 30


async def test_records_from_before_the_log_are_backfilled_once(stack):
    store = stack.store
    old = [KeyRecord(id=f"key_OLD{i:013d}", org_id="acme", name=f"old{i}", prefix="sop_AbCdEf",
                     scopes=("tasks:read",), digest="ab" * 32, created_at=1000 + i, created_by="cli",
                     revoked_at=2000 + i if i % 2 else None, revoked_by="operator" if i % 2 else None)
           for i in range(4)]
    for r in old:  # as the code before the activity log wrote them: no version, no events
        await store.redis.hset(store._rec(r.id), mapping=dict(zip(*[iter(encode_record(r))] * 2, strict=True)))
        await store.redis.zadd(store._org_keys("acme"), {r.id: r.created_at})
    assert (await page_all(stack))[0] == []
    await store.redis.delete(store.backfilled)  # the admin API's start-up run found nothing to do
    assert await store.backfill_activity() == 4
    assert await store.backfill_activity() is None  # marked done
    assert await store.backfill_activity(force=True) == 0  # idempotent
    events, _ = await page_all(stack)
    assert [(e["key_id"], e["action"], e["actor"], e["version"]) for e in events] == [
        ("key_OLD0000000000003", "api_key.revoked", "operator", 2), ("key_OLD0000000000001", "api_key.revoked",
                                                                     "operator", 2),
        ("key_OLD0000000000003", "api_key.created", "cli", 1), ("key_OLD0000000000002", "api_key.created", "cli", 1),
        ("key_OLD0000000000001", "api_key.created", "cli", 1), ("key_OLD0000000000000", "api_key.created", "cli", 1)]
    assert [await store.get(r.id) for r in old][0].version == 1


async def test_revoking_a_record_from_before_the_log_backfills_it_first(stack):
    store = stack.store
    r = KeyRecord(id="key_OLDREVOKE0000000", org_id="acme", name="old", prefix="sop_AbCdEf", scopes=("tasks:read",),
                  digest="ab" * 32, created_at=1000, created_by="cli")
    await store.redis.hset(store._rec(r.id), mapping=dict(zip(*[iter(encode_record(r))] * 2, strict=True)))
    await store.redis.zadd(store._org_keys("acme"), {r.id: r.created_at})
    assert await store.revoke(org_id="acme", key_id=r.id, actor="operator", now_ms=5000)
    events, _ = await page_all(stack, key_id=r.id)
    assert [(e["action"], e["version"]) for e in events] == [("api_key.revoked", 2), ("api_key.created", 1)]


@pytest.mark.parametrize("change", ["roll", "edit"])
async def test_rolling_or_editing_a_record_from_before_the_log_backfills_it_first(stack, change):
    store = stack.store
    r = KeyRecord(id=f"key_OLD{change.upper()}000000000"[:20], org_id="acme", name="old", prefix="sop_AbCdEf",
                  scopes=("tasks:read",), digest="ab" * 32, created_at=1000, created_by="cli")
    await store.redis.hset(store._rec(r.id), mapping=dict(zip(*[iter(encode_record(r))] * 2, strict=True)))
    await store.redis.zadd(store._org_keys("acme"), {r.id: r.created_at})
    if change == "roll":
        assert await store.roll(org_id="acme", key_id=r.id, grace="1h", actor="operator", now_ms=5000, ack_timeout=0.0)
        action = "api_key.rolled"
    else:
        assert await store.edit(org_id="acme", key_id=r.id, actor="operator", now_ms=5000, ack_timeout=0.0, name="renamed")
        action = "api_key.updated"
    events, _ = await page_all(stack, key_id=r.id)
    assert [(e["action"], e["version"], e["actor"]) for e in events] == [(action, 2, "operator"),
                                                                         ("api_key.created", 1, "cli")]
    assert (await store.get(r.id)).version == 2


@pytest.mark.parametrize("n", [1000])
async def test_redis_memory_per_event(stack, n):
    """About 130 bytes per event in the key's log (listpack; 175 when events held their key and
    org ids) plus ~120 in the org index."""
    r = stack.store.redis
    record, _ = await stack.store.create(org_id="mem", name="k", scopes=["tasks:read"], expires_at=None,
                                         actor="key:key_0123456789ABCDEF", now_ms=1_764_000_000_000)
    one_log = await r.memory_usage(stack.store._key_log(record.id), samples=0)
    for v in range(2, n + 2):
        await append_by_protocol(stack.store, record.id, "mem", v, 1_764_000_000_000 + v, "api_key.updated",
                                 {"name": Change(f"name {v - 1}", f"name {v}")})
    log = await r.memory_usage(stack.store._key_log(record.id), samples=0)
    index = await r.memory_usage(stack.store._org_activity("mem"), samples=0)
    per_log, per_index = (log - one_log) / n, index / (n + 1)
    print(f"per event: log {per_log:.0f} B, org index {per_index:.0f} B")
    assert per_log < 150 and per_index < 160
