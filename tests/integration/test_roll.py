"""Rolling a key: a new secret, the old one during its grace period, the same key for everyone else."""

from __future__ import annotations

import asyncio
import time


from gateway.store.lifecycle import TOMBSTONE_MS
from gateway.tasks import ACK_TIMEOUT

KEYS = "/v1/orgs/acme/api-keys"


async def roll(stack, key_id: str, grace: str, org: str = "acme", **kw):
    return await stack.admin_call("POST", f"/v1/orgs/{org}/api-keys/{key_id}/roll", json={"grace_period": grace}, **kw)


def backend_key_id(stack) -> str:
    return dict(stack.received[-1]["headers"])["X-Api-Key-Id"]


async def test_both_secrets_work_during_the_grace_then_the_old_one_is_rolled(stack):
    created = await stack.create_key()
    old = created["key"]
    assert (await stack.call("GET", "/v1/tasks", old))[0] == 200  # cached on the gateway
    status, rolled, resp = await roll(stack, created["id"], "1h")
    assert status == 200, rolled
    assert resp.headers["Cache-Control"] == "no-store" and resp.headers["ETag"] == '"2"'
    new = rolled["key"]
    assert new != old and rolled["id"] == created["id"] and rolled["version"] == 2
    assert rolled["prefix"] == new[:10] and rolled["rolled_at"] is not None
    assert [s["prefix"] for s in rolled["secrets"]] == [new[:10], old[:10]]
    assert rolled["secrets"][0]["expires_at"] is None
    assert rolled["secrets"][1]["expires_at"] == rolled["previous_secret_expires_at"]
    for secret in (old, new, old, new):  # the second pair from the gateway's cache
        assert (await stack.call("GET", "/v1/tasks", secret))[0] == 200
        assert backend_key_id(stack) == created["id"]  # the same key for the backend
    # The list and GET show both secrets and until when.
    status, listed, _ = await stack.admin_call("GET", KEYS)
    assert [s["prefix"] for s in listed["data"][0]["secrets"]] == [new[:10], old[:10]]
    status, one, resp = await stack.admin_call("GET", f"{KEYS}/{created['id']}")
    assert resp.headers["ETag"] == '"2"' and one["secrets"] == rolled["secrets"]

    stack.clock.advance(3600)  # the grace period is over, on the cached entries too
    status, body, _ = await stack.call("GET", "/v1/tasks", old)
    assert (status, body["error"]["code"]) == (401, "rolled_api_key")
    assert (await stack.call("GET", "/v1/tasks", new))[0] == 200
    status, one, _ = await stack.admin_call("GET", f"{KEYS}/{created['id']}")
    assert [s["prefix"] for s in one["secrets"]] == [new[:10]]
    assert len(stack.state.usage) == 1  # the uses of both secrets are the one key's


async def test_a_now_roll_is_refused_on_every_gateway_by_the_answer(make_stack):
    a = await make_stack()
    b = await make_stack()
    created = await a.create_key()
    for s in (a, b):
        for _ in range(2):
            assert (await s.call("GET", "/v1/tasks", created["key"]))[0] == 200
    started = time.perf_counter()
    status, rolled, _ = await roll(a, created["id"], "now")
    took = time.perf_counter() - started
    assert status == 200
    results = await asyncio.gather(*(s.call("GET", "/v1/tasks", created["key"]) for s in (a, b)))
    assert [(r[0], r[1]["error"]["code"]) for r in results] == [(401, "rolled_api_key")] * 2
    assert took < ACK_TIMEOUT / 2, took  # acknowledged, not timed out
    for s in (a, b):
        assert (await s.call("GET", "/v1/tasks", rolled["key"]))[0] == 200
    assert [x["prefix"] for x in rolled["secrets"]] == [rolled["key"][:10]]


async def test_revoke_refuses_both_secrets_and_rolling_a_revoked_or_expired_key_is_409(stack):
    created = await stack.create_key()
    _, rolled, _ = await roll(stack, created["id"], "24h")
    for secret in (created["key"], rolled["key"]):
        assert (await stack.call("GET", "/v1/tasks", secret))[0] == 200
    assert (await stack.admin_call("POST", f"{KEYS}/{created['id']}/revoke"))[0] == 200
    for secret in (created["key"], rolled["key"]):
        status, body, _ = await stack.call("GET", "/v1/tasks", secret)
        assert (status, body["error"]["code"]) == (401, "revoked_api_key")
    status, body, _ = await roll(stack, created["id"], "now")
    assert (status, body["error"]["code"]) == (409, "api_key_revoked")

    expiring = await stack.create_key(expires_in="30d")
    stack.clock.advance(31 * 86400)
    status, body, _ = await roll(stack, expiring["id"], "1h")
    assert (status, body["error"]["code"]) == (409, "api_key_expired")
    # An expired key can still be revoked (so it stays dead if its expiry is edited).
    status, body, _ = await stack.admin_call("POST", f"{KEYS}/{expiring['id']}/revoke")
    assert status == 200 and body["status"] == "revoked"


async def test_a_second_roll_ends_the_oldest_secret_at_once(stack):
    created = await stack.create_key()
    _, first, _ = await roll(stack, created["id"], "7d")
    _, second, _ = await roll(stack, created["id"], "24h")
    status, body, _ = await stack.call("GET", "/v1/tasks", created["key"])
    assert (status, body["error"]["code"]) == (401, "rolled_api_key")
    for secret in (first["key"], second["key"]):
        assert (await stack.call("GET", "/v1/tasks", secret))[0] == 200
    assert [s["prefix"] for s in second["secrets"]] == [second["key"][:10], first["key"][:10]]
    # The ended alias is a tombstone that goes a while after its end; the record never goes.
    aliases = [k for k in await stack.store.redis.keys("gw:key:*") if b":log" not in k
               and k != f"gw:key:{{{created['id']}}}".encode()]
    ttls = sorted([await stack.store.redis.pttl(k) for k in aliases])
    assert len(aliases) == 2 and ttls[0] == -1 and 0 < ttls[1] - TOMBSTONE_MS <= 24 * 3600_000 + 1000, ttls
    assert await stack.store.redis.pttl(f"gw:key:{{{created['id']}}}") == -1
    # An alias's id is not a key of the API.
    alias_id = aliases[0].decode().split("{")[1].rstrip("}")
    assert (await stack.admin_call("GET", f"{KEYS}/{alias_id}"))[0] == 404
    assert (await stack.admin_call("POST", f"{KEYS}/{alias_id}/revoke"))[0] == 404


def _hgetalls(client) -> int:
    return int(client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0))


async def test_a_miss_is_one_hgetall_for_either_secret(make_stack, redis_server):
    stack = await make_stack(cache_ttl=0)  # every request a miss
    created = await stack.create_key()
    _, rolled, _ = await roll(stack, created["id"], "1h")
    for secret in (created["key"], rolled["key"]):
        before = _hgetalls(redis_server.client)
        assert (await stack.call("GET", "/v1/tasks", secret))[0] == 200
        assert _hgetalls(redis_server.client) - before == 1


async def test_org_key_cannot_roll_a_key_with_scopes_it_does_not_hold(stack):
    admin = await stack.create_key(scopes=("api_keys:manage", "tasks:read"))
    other = await stack.create_key(scopes=("tasks:write",))
    status, body, _ = await roll(stack, other["id"], "now", token=admin["key"])
    assert (status, body["error"]["code"]) == (403, "scope_not_grantable")
    mine = await stack.create_key(scopes=("tasks:read",))
    assert (await roll(stack, mine["id"], "now", token=admin["key"]))[0] == 200


async def test_bad_roll_bodies_are_400s_naming_the_field(stack):
    created = await stack.create_key()
    status, body, _ = await roll(stack, created["id"], "2h")
    assert status == 400 and body["error"]["field"] == "grace_period" and "now, 1h, 24h, 7d" in body["error"]["message"]
    status, body, _ = await stack.admin_call("POST", f"{KEYS}/{created['id']}/roll", json={})
    assert status == 400 and body["error"]["field"] == "grace_period"


async def _roll_everywhere(stack):
    created = await stack.create_key()
    assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 200
    status, rolled, _ = await roll(stack, created["id"], "1h")
    assert status == 200, rolled
    for secret in (created["key"], rolled["key"]):
        assert (await stack.call("GET", "/v1/tasks", secret))[0] == 200
        assert backend_key_id(stack) == created["id"]
    status, again, _ = await roll(stack, created["id"], "now")
    assert status == 200
    for secret in (created["key"], rolled["key"]):
        status, body, _ = await stack.call("GET", "/v1/tasks", secret)
        assert (status, body["error"]["code"]) == (401, "rolled_api_key")
    assert (await stack.admin_call("POST", f"{KEYS}/{created['id']}/revoke"))[0] == 200
    status, body, _ = await stack.call("GET", "/v1/tasks", again["key"])
    assert (status, body["error"]["code"]) == (401, "revoked_api_key")


async def test_roll_on_a_cluster(cluster, make_stack):
    await _roll_everywhere(await make_stack(redis=cluster.url))


async def test_roll_on_sentinel(sentinels, make_stack):
    await _roll_everywhere(await make_stack(redis=sentinels.url))


async def test_a_roll_keeps_the_limits_and_what_they_have_used(stack):
    from gateway.keys import parse_key
    from gateway.ratelimit import window_bounds
    limits = [{"window": "second", "limit": 10}, {"window": "month", "limit": 100_000}]
    _, created, _ = await stack.admin_call("POST", KEYS, json={"name": "n", "scopes": ["tasks:read"], "limits": limits})
    start = window_bounds("month", int(stack.clock() * 1000))[0]
    await stack.store.redis.set(stack.store.limits.budget_key(created["id"], "month", start), 777)
    status, rolled, _ = await roll(stack, created["id"], "1h")
    assert status == 200 and rolled["limits"] == rolled["effective_limits"] == limits
    # The new secret's alias carries them, so the gateway holds either secret to the same limits.
    alias = await stack.store.get(parse_key(rolled["key"]).key_id)
    record = await stack.store.get(created["id"])
    assert alias.limits == record.limits and [x.limit for x in alias.limits] == [10, 100_000]
    _, one, _ = await stack.admin_call("GET", f"{KEYS}/{created['id']}")
    assert [(u["window"], u["used"]) for u in one["limit_usage"]] == [("second", 0), ("month", 777)]
