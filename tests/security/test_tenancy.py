"""One tenant against the others, and keys against their creators (issue 12, items 2 and 8).

- A key created by an org key cannot outlive it; operators' keys are not capped.
- A cascade revoke revokes a key and every key it created, recursively, and a real `gateway
  serve` process refuses each of them right after the answer; without cascade they stay active.
- An org key is held to a per-org key limit and a create rate, counted in Redis (two admin API
  apps share them, and concurrent creates cannot exceed them).
- A Redis with a small maxmemory filled by one tenant's creates refuses the next create with
  503 store_full, while another tenant's revoke still succeeds and its key is refused.

The admin API runs in-process on a real socket; the gateway is a real process; Redis is real.
Each test uses orgs of its own, and nothing here flushes Redis (a flush would drop the gateway's
registration, and a revoke would not wait for its acknowledgement).
"""

from __future__ import annotations

import asyncio
import os
import datetime as dt
import itertools
import uuid

import aiohttp
import msgspec
import pytest

from admin_api.app import make_admin_app
from gateway import config
from gateway.config import AdminSettings
from gateway.model import DAY_MS, EXPIRY_CHOICES, rfc3339
from tests.support import OPERATOR_TOKEN, SCOPES, RedisServer
from tests.security.conftest import start_gateway, stop_gateway

ALL_SCOPES = ["tasks:read", "tasks:write", "reservations:read", "reservations:write", "properties:read",
              "properties:write", "guests:read", "guests:write", "messages:read", "messages:write",
              "api_keys:read", "api_keys:manage"]
MANAGER = ["api_keys:manage", "tasks:read"]


class Admin:
    """One admin API app on a real socket."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url, self.http = url, http

    async def call(self, method: str, path: str, token: str = OPERATOR_TOKEN, **kw):
        headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
        async with self.http.request(method, self.url + path, headers=headers, **kw) as resp:
            raw = await resp.read()
            return resp.status, (msgspec.json.decode(raw) if raw else None), resp

    async def create(self, org: str, token: str = OPERATOR_TOKEN, scopes=MANAGER, expires_in: str = "never",
                     name: str = "k", expect: int = 201):
        status, body, resp = await self.call("POST", f"/v1/orgs/{org}/api-keys", token,
                                             json={"name": name, "scopes": list(scopes), "expires_in": expires_in})
        assert status == expect, body
        return body if expect == 201 else (body["error"], resp)

    async def revoke(self, org: str, key_id: str, token: str = OPERATOR_TOKEN, **kw):
        status, body, _ = await self.call("POST", f"/v1/orgs/{org}/api-keys/{key_id}/revoke", token, **kw)
        assert status == 200, body
        return body

    async def count(self, org: str) -> int:
        status, body, _ = await self.call("GET", f"/v1/orgs/{org}/api-keys", params={"include_revoked": "true",
                                                                                      "limit": "100"})
        return len(body["data"]) if status == 200 else 0


@pytest.fixture
async def admins(aiohttp_server, redis_server, clock):
    """Factory: admin API apps on the shared Redis (or ``redis``), with AdminSettings overrides."""
    http = aiohttp.ClientSession()

    async def factory(redis: str = redis_server.url, **overrides) -> Admin:
        settings = AdminSettings(redis=redis, scopes=str(SCOPES), operator_tokens=(OPERATOR_TOKEN,),
                                 reload_interval=0.0, flush_interval=3600.0, **overrides)
        server = await aiohttp_server(make_admin_app(settings, clock=clock))
        return Admin(str(server.make_url("")).rstrip("/"), http)

    yield factory
    await http.close()


@pytest.fixture
def org() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def gw(redis_server, recorder, tmp_path_factory):
    proc = start_gateway(tmp_path_factory.mktemp("tenancy-gw"), redis_server.url, recorder, "--auth-failure-limit", "0")
    yield proc
    stop_gateway(proc)


def gateway_code(gw, key: str) -> tuple[int, str]:
    resp = gw.request("GET", "/v1/tasks", key=key)
    return resp.status, (resp.json()["error"]["code"] if resp.status >= 400 else "ok")


# -- item 8: a key cannot outlive the key that creates it ----------------------------------------

@pytest.mark.parametrize("parent, child", list(itertools.product(EXPIRY_CHOICES, EXPIRY_CHOICES)))
async def test_a_child_expiry_is_capped_at_its_creators(admins, org, parent, child):
    admin = await admins()
    creator = await admin.create(org, expires_in=parent)
    fits = parent == "never" or (child != "never" and EXPIRY_CHOICES[child] <= EXPIRY_CHOICES[parent])
    if fits:
        made = await admin.create(org, creator["key"], ["tasks:read"], child)
        assert made["created_by"] == f"key:{creator['id']}"
        assert made["expires_at"] == (None if child == "never" else
                                      rfc3339(_ms(creator["created_at"]) + EXPIRY_CHOICES[child]))
        return
    error, _ = await admin.create(org, creator["key"], ["tasks:read"], child, expect=400)
    assert error["code"] == "validation_failed" and error["field"] == "expires_in", error
    assert error["max_expires_at"] == creator["expires_at"]
    assert creator["expires_at"] in error["message"] and "outlive" in error["message"]
    assert error["allowed_expires_in"] == [c for c in ("30d", "90d", "1y")
                                           if EXPIRY_CHOICES[c] <= EXPIRY_CHOICES[parent]]
    assert await admin.count(org) == 1  # nothing was written


def _ms(text: str) -> int:
    return round(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


@pytest.mark.parametrize("parent, later_ms, allowed", [
    ("30d", 1, []),                       # a millisecond later, not even 30d fits
    ("90d", 1, ["30d"]),
    ("90d", 60 * DAY_MS + 1, []),
    ("1y", 275 * DAY_MS, ["30d", "90d"]),
    ("1y", 364 * DAY_MS, []),
])
async def test_the_cap_follows_the_time_the_creator_has_left(admins, org, clock, parent, later_ms, allowed):
    admin = await admins()
    creator = await admin.create(org, expires_in=parent)
    clock.advance(later_ms / 1000)
    for choice in EXPIRY_CHOICES:
        if choice in allowed:
            await admin.create(org, creator["key"], ["tasks:read"], choice)
        else:
            error, _ = await admin.create(org, creator["key"], ["tasks:read"], choice, expect=400)
            assert error["field"] == "expires_in" and error["allowed_expires_in"] == allowed
            if not allowed:
                assert "none of the choices fits" in error["message"]


async def test_children_of_children_are_capped_at_their_own_creator(admins, org, clock):
    admin = await admins()
    root = await admin.create(org, expires_in="1y")
    child = await admin.create(org, root["key"], expires_in="90d")
    clock.advance(1)
    for choice in ("never", "1y", "90d"):  # the child's 90d, not the root's year, is the cap
        error, _ = await admin.create(org, child["key"], ["tasks:read"], choice, expect=400)
        assert error["max_expires_at"] == child["expires_at"]
    grandchild = await admin.create(org, child["key"], expires_in="30d")
    assert grandchild["created_by"] == f"key:{child['id']}"
    error, _ = await admin.create(org, grandchild["key"], ["tasks:read"], "never", expect=400)
    assert error["max_expires_at"] == grandchild["expires_at"]


@pytest.mark.parametrize("choice", list(EXPIRY_CHOICES))
async def test_operator_keys_and_never_expiring_creators_are_not_capped(admins, org, clock, choice):
    admin = await admins()
    made = await admin.create(org, expires_in=choice)
    assert made["created_by"] == "operator"
    creator = await admin.create(org, expires_in="never")
    clock.advance(400 * 86400)
    assert (await admin.create(org, creator["key"], ["tasks:read"], choice))["status"] == "active"


# -- item 8: cascade revocation ----------------------------------------------------------------

async def _tree(admin: Admin, org: str) -> dict[str, dict]:
    """root -> a, b; a -> a1 -> a11; and an operator key beside them."""
    keys = {"root": await admin.create(org, name="root")}
    keys["a"] = await admin.create(org, keys["root"]["key"], name="a")
    keys["b"] = await admin.create(org, keys["root"]["key"], ["tasks:read"], name="b")
    keys["a1"] = await admin.create(org, keys["a"]["key"], name="a1")
    keys["a11"] = await admin.create(org, keys["a1"]["key"], ["tasks:read"], name="a11")
    keys["other"] = await admin.create(org, name="other")
    return keys


@pytest.mark.parametrize("how", ["query", "body", "either"])
async def test_cascade_revokes_every_descendant_on_the_gateway_at_once(admins, org, gw, how):
    admin = await admins()
    keys = await _tree(admin, org)
    for k in keys.values():  # cached on the gateway: the refusal below is the invalidation's doing
        assert gateway_code(gw, k["key"]) == (200, "ok")
    kw = {"query": {"params": {"cascade": "true"}}, "body": {"json": {"cascade": True}},
          "either": {"params": {"cascade": "false"}, "json": {"cascade": True}}}[how]
    body = await admin.revoke(org, keys["a"]["id"], keys["root"]["key"], **kw)
    assert body["id"] == keys["a"]["id"] and body["status"] == "revoked"
    assert body["revoked_ids"] == [keys["a"]["id"], keys["a1"]["id"], keys["a11"]["id"]]  # level by level
    for name in ("a", "a1", "a11"):
        assert gateway_code(gw, keys[name]["key"]) == (401, "revoked_api_key"), name
    for name in ("root", "b", "other"):
        assert gateway_code(gw, keys[name]["key"]) == (200, "ok"), name
    body = await admin.revoke(org, keys["root"]["id"], **kw)  # the operator, from the top
    assert set(body["revoked_ids"]) == {keys[n]["id"] for n in ("root", "a", "b", "a1", "a11")}
    assert body["revoked_ids"][:1] == [keys["root"]["id"]]
    for name in ("root", "b"):
        assert gateway_code(gw, keys[name]["key"]) == (401, "revoked_api_key"), name
    assert gateway_code(gw, keys["other"]["key"]) == (200, "ok")


async def test_without_cascade_the_children_stay_active_and_show_their_creator(admins, org, gw):
    admin = await admins()
    keys = await _tree(admin, org)
    body = await admin.revoke(org, keys["root"]["id"])
    assert body["revoked_ids"] == [keys["root"]["id"]]
    assert gateway_code(gw, keys["root"]["key"]) == (401, "revoked_api_key")
    status, page, _ = await admin.call("GET", f"/v1/orgs/{org}/api-keys")
    listed = {k["id"]: k for k in page["data"]}
    for name in ("a", "b"):
        assert listed[keys[name]["id"]]["created_by"] == f"key:{keys['root']['id']}"
        assert listed[keys[name]["id"]]["status"] == "active"
        assert gateway_code(gw, keys[name]["key"]) == (200, "ok")
    # The orphan still creates (capped at its own expiry), and a later cascade still finds its tree.
    await admin.create(org, keys["a"]["key"], ["tasks:read"], name="a2")
    body = await admin.revoke(org, keys["root"]["id"], params={"cascade": "true"})
    assert len(body["revoked_ids"]) == 6


async def test_a_create_that_races_its_creators_revocation_leaves_no_active_key(admins, org):
    """The create answered after its creator was revoked: the new key is revoked too, never shown."""
    admin = await admins()
    parent = await admin.create(org)
    tasks = [admin.call("POST", f"/v1/orgs/{org}/api-keys", parent["key"],
                        json={"name": f"race {i}", "scopes": ["tasks:read"]}) for i in range(30)]
    tasks.insert(10, admin.call("POST", f"/v1/orgs/{org}/api-keys/{parent['id']}/revoke", params={"cascade": "true"}))
    await asyncio.gather(*tasks)
    status, page, _ = await admin.call("GET", f"/v1/orgs/{org}/api-keys")
    assert [k["name"] for k in page["data"]] == []  # every key of the org is revoked


@pytest.mark.parametrize("kw, status, field", [
    ({"params": {"cascade": "maybe"}}, 400, "cascade"),
    ({"params": [("cascade", "true"), ("cascade", "true")]}, 400, "cascade"),
    ({"json": {"cascade": "yes"}}, 400, "cascade"),
    ({"json": {"cascade": True, "also": 1}}, 400, "also"),
    ({"data": b'{"cascade": true, "cascade": false}', "headers": {"Content-Type": "application/json"}}, 400, "cascade"),
    ({"data": b"[]", "headers": {"Content-Type": "application/json"}}, 400, None),
    ({"data": b"cascade=true", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415, None),
])
async def test_bad_cascade_requests_are_refused_and_revoke_nothing(admins, org, kw, status, field):
    admin = await admins()
    key = await admin.create(org)
    got, body, _ = await admin.call("POST", f"/v1/orgs/{org}/api-keys/{key['id']}/revoke", **kw)
    assert got == status, body
    if field:
        assert body["error"]["field"] == field, body
    status, body, _ = await admin.call("GET", f"/v1/orgs/{org}/api-keys/{key['id']}")
    assert body["status"] == "active"


# -- issue 14: the activity log, one org against the others --------------------------------------

async def _activity(admin: Admin, org: str, token: str = OPERATOR_TOKEN, **params):
    """Every event of GET /v1/orgs/{org}/audit-events (pages of 2), or (status, body) of a refusal."""
    events, cursor = [], None
    while True:
        status, body, _ = await admin.call("GET", f"/v1/orgs/{org}/audit-events", token,
                                           params={"limit": "2", **params, **({"cursor": cursor} if cursor else {})})
        if status != 200:
            return status, body
        events += body["data"]
        if not (cursor := body["next_cursor"]):
            return events


async def _two_orgs(admin: Admin, org: str) -> dict[str, dict]:
    """``org`` and ``org``-b, each with a manager, a reader, a key its manager made, a revoked key."""
    keys = {}
    for o in (org, f"{org}-b"):
        keys[f"{o}/manager"] = await admin.create(o, name="manager")
        keys[f"{o}/reader"] = await admin.create(o, scopes=["api_keys:read", "tasks:read"], name="reader")
        keys[f"{o}/child"] = await admin.create(o, keys[f"{o}/manager"]["key"], ["tasks:read"], name="child")
        keys[f"{o}/gone"] = await admin.create(o, scopes=["tasks:read"], name="gone")
        await admin.revoke(o, keys[f"{o}/gone"]["id"], keys[f"{o}/manager"]["key"])
    return keys


@pytest.mark.parametrize("who", ["manager", "reader"])
async def test_an_org_key_reads_only_its_own_orgs_activity(admins, org, who):
    admin = await admins()
    keys = await _two_orgs(admin, org)
    token = keys[f"{org}/{who}"]["key"]
    own = {k["id"] for name, k in keys.items() if name.startswith(f"{org}/")}
    events = await _activity(admin, org, token)
    assert len(events) == 5 and {e["org_id"] for e in events} == {org} and {e["key_id"] for e in events} == own
    for k in own:  # one key's log, through the filter: its own events only
        assert {(e["key_id"], e["org_id"]) for e in await _activity(admin, org, token, key_id=k)} == {(k, org)}
    # The other org: its audit-events answer 404 org_not_found, as its key list does, whatever the parameters.
    listed = await admin.call("GET", f"/v1/orgs/{org}-b/api-keys", token)
    assert (listed[0], listed[1]["error"]["code"]) == (404, "org_not_found")
    foreign = keys[f"{org}-b/manager"]["id"]
    for params in ({}, {"key_id": foreign}, {"key_id": keys[f"{org}/manager"]["id"]}):
        status, body = await _activity(admin, f"{org}-b", token, **params)
        assert (status, body["error"]["code"]) == (404, "org_not_found"), params


async def test_another_orgs_key_id_answers_404_key_not_found_like_get_key(admins, org):
    admin = await admins()
    keys = await _two_orgs(admin, org)
    token = keys[f"{org}/reader"]["key"]
    foreign, missing = keys[f"{org}-b/child"]["id"], "key_0000000000000000"
    got = await admin.call("GET", f"/v1/orgs/{org}/api-keys/{foreign}", token)
    assert (got[0], got[1]["error"]["code"]) == (404, "key_not_found")
    bodies = []
    for key_id, who in ((foreign, token), (missing, token), (foreign, OPERATOR_TOKEN)):
        status, body = await _activity(admin, org, who, key_id=key_id)
        assert (status, body["error"]["code"]) == (404, "key_not_found"), (key_id, body)
        bodies.append({**body["error"], "request_id": ""})
    assert bodies[0] == bodies[1] == bodies[2] == {**got[1]["error"], "request_id": ""}  # nothing tells them apart


async def test_a_cursor_from_another_orgs_page_shows_only_the_own_orgs_events(admins, org):
    admin = await admins()
    keys = await _two_orgs(admin, org)
    token = keys[f"{org}/manager"]["key"]
    own = {e["id"] for e in await _activity(admin, org, token)}
    # Every cursor of the other org's log (operator) used on this org: a position, never a way across.
    status, page, _ = await admin.call("GET", f"/v1/orgs/{org}-b/audit-events", params={"limit": "1"})
    foreign_cursors = []
    while page["next_cursor"]:
        foreign_cursors.append(page["next_cursor"])
        page = (await admin.call("GET", f"/v1/orgs/{org}-b/audit-events",
                                 params={"limit": "1", "cursor": page["next_cursor"]}))[1]
    assert len(foreign_cursors) == 4
    for cursor in foreign_cursors:
        status, body, _ = await admin.call("GET", f"/v1/orgs/{org}/audit-events", token, params={"cursor": cursor})
        assert status == 200 and {e["id"] for e in body["data"]} <= own and {e["org_id"] for e in body["data"]} <= {org}
        # With this org's key in the filter the foreign cursor is refused; with the foreign key, 404.
        own_key = keys[f"{org}/manager"]["id"]
        status, body, _ = await admin.call("GET", f"/v1/orgs/{org}/audit-events", token,
                                           params={"cursor": cursor, "key_id": own_key})
        assert (status, body["error"]["code"]) == (400, "validation_failed")
        foreign_key = cursor.split(".", 1)[1].split(":")[0]
        status, body, _ = await admin.call("GET", f"/v1/orgs/{org}/audit-events", token,
                                           params={"cursor": cursor, "key_id": foreign_key})
        assert (status, body["error"]["code"]) == (404, "key_not_found")


async def test_an_index_entry_naming_another_orgs_key_shows_nothing(admins, org, redis_server):
    """Defence in depth: the stored event names neither key nor org, so the page checks each
    entry's record; an entry of this org's index that names another org's real event is skipped."""
    from gateway.store import KeyStore
    from gateway.store.codec import event_id

    admin = await admins()
    keys = await _two_orgs(admin, org)
    names = KeyStore(redis_server.client)
    victim = keys[f"{org}-b/reader"]
    created_at = _ms(victim["created_at"])
    redis_server.client.zadd(names._org_activity(org), {event_id(victim["id"], 1): created_at})
    for who in (keys[f"{org}/manager"]["key"], OPERATOR_TOKEN):
        events = await _activity(admin, org, who)
        assert len(events) == 5 and victim["id"] not in {e["key_id"] for e in events}


async def test_an_operator_reads_every_orgs_activity(admins, org):
    admin = await admins()
    keys = await _two_orgs(admin, org)
    for o in (org, f"{org}-b"):
        events = await _activity(admin, o)
        assert {e["key_id"] for e in events} == {k["id"] for name, k in keys.items() if name.startswith(f"{o}/")}
        assert {e["org_id"] for e in events} == {o} and len(events) == 5
        assert [e["actor"] for e in events if e["action"] == "api_key.revoked"] == [f"key:{keys[f'{o}/manager']['id']}"]
        one = await _activity(admin, o, key_id=keys[f"{o}/gone"]["id"])
        assert [e["action"] for e in one] == ["api_key.revoked", "api_key.created"]
    status, body = await _activity(admin, f"{org}-none")
    assert (status, body["error"]["code"]) == (404, "org_not_found")


# -- item 2: per-org key limit and create rate --------------------------------------------------

async def test_the_key_limit_holds_org_keys_counts_in_redis_and_frees_on_revoke(admins, org):
    first, second = await admins(max_keys_per_org=4), await admins(max_keys_per_org=4)
    manager = await first.create(org)  # 1 of 4
    other_org = f"{org}-other"
    await first.create(other_org)
    for i, admin in enumerate([first, second, first]):  # 2, 3, 4 of 4, on either process
        await admin.create(org, manager["key"], ["tasks:read"], name=f"k{i}")
    for admin in (first, second):
        error, _ = await admin.create(org, manager["key"], ["tasks:read"], expect=409)
        assert error["code"] == "key_limit_reached" and error["limit"] == 4 and "4" in error["message"], error
    assert await first.count(org) == 4
    await first.create(other_org)  # another org is not held to this org's count
    await first.create(org)  # operators are not held to it (5 of 4 now)
    page = (await first.call("GET", f"/v1/orgs/{org}/api-keys"))[1]["data"]
    for k in [k for k in page if k["id"] != manager["id"]][:2]:
        await first.revoke(org, k["id"])  # revoked keys do not count: 3 of 4
    await second.create(org, manager["key"], ["tasks:read"])
    await second.create(org, manager["key"], ["tasks:read"], expect=409)


async def _concurrent_creates(apps, org: str, n: int) -> list[int]:
    """``n`` creates at once by one org key (made by an operator first), alternating between the
    admin processes ``apps``; their statuses, sorted."""
    manager = await apps[0].create(org)
    results = await asyncio.gather(*(
        apps[i % len(apps)].call("POST", f"/v1/orgs/{org}/api-keys", manager["key"],
                                 json={"name": f"c{i}", "scopes": ["tasks:read"]}) for i in range(n)))
    return sorted(status for status, _, _ in results)


async def test_concurrent_creates_on_two_processes_cannot_exceed_the_key_limit(admins, org):
    apps = [await admins(max_keys_per_org=10, create_rate_per_org=0) for _ in range(2)]
    statuses = await _concurrent_creates(apps, org, 40)
    assert statuses == [201] * 9 + [409] * 31, statuses
    assert await apps[0].count(org) == 10


async def test_the_create_rate_holds_org_keys_across_processes_with_retry_after(admins, org):
    first, second = await admins(create_rate_per_org=3), await admins(create_rate_per_org=3)
    manager = await first.create(org)  # operators do not count toward the rate
    for admin in (first, second, first):
        await admin.create(org, manager["key"], ["tasks:read"])
    for admin in (first, second):
        error, resp = await admin.create(org, manager["key"], ["tasks:read"], expect=429)
        assert error["code"] == "too_many_creates" and error["limit"] == 3, error
        assert 1 <= int(resp.headers["Retry-After"]) <= 60
    await first.create(org, name="operator, unlimited")
    other = await first.create(f"{org}-b")
    await first.create(f"{org}-b", other["key"], ["tasks:read"])  # another org has its own minute


async def test_concurrent_creates_cannot_exceed_the_rate(admins, org):
    apps = [await admins(create_rate_per_org=5, max_keys_per_org=0) for _ in range(2)]
    assert await _concurrent_creates(apps, org, 30) == [201] * 5 + [429] * 25


@pytest.mark.parametrize("name, env, value", [
    ("max_keys_per_org", "GATEWAY_MAX_KEYS_PER_ORG", 5),
    ("create_rate_per_org", "GATEWAY_CREATE_RATE_PER_ORG", 0),
    ("memory_high_water", "GATEWAY_MEMORY_HIGH_WATER", 0.75),
])
def test_the_limits_are_settings(name, env, value):
    assert getattr(config.load(AdminSettings, {}, {env: str(value)}), name) == value
    assert getattr(config.load(AdminSettings, {name: str(value)}, {}), name) == value
    with pytest.raises(config.ConfigError, match=config.flag(name)):
        config.load(AdminSettings, {name: "-1"}, {})


def test_the_defaults_bound_a_tenant():
    settings = AdminSettings()
    assert (settings.max_keys_per_org, settings.create_rate_per_org, settings.memory_high_water) == (1000, 60, 0.9)


# -- item 2: a tenant filling Redis cannot stop another's revoke --------------------------------

@pytest.fixture
def small_redis(tmp_path):
    server = RedisServer(tmp_path, "--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    yield server
    server.stop()


async def test_a_full_store_refuses_creates_but_another_tenants_revoke_works(admins, small_redis, recorder,
                                                                              tmp_path):
    gateway = start_gateway(tmp_path, small_redis.url, recorder, "--auth-failure-limit", "0")
    try:
        admin = await admins(redis=small_redis.url, max_keys_per_org=0, create_rate_per_org=0)
        victim = await admin.create("victim", scopes=["tasks:read"])
        assert gateway_code(gateway, victim["key"]) == (200, "ok")
        attacker = await admin.create("attacker", scopes=ALL_SCOPES)
        refusals: list[dict] = []

        async def fill(worker: int) -> None:
            for i in range(3000):
                status, body, _ = await admin.call(
                    "POST", "/v1/orgs/attacker/api-keys", attacker["key"],
                    json={"name": f"{'x' * 90} {worker} {i}", "scopes": ALL_SCOPES})
                if status != 201:
                    refusals.append(body["error"] | {"status": status})
                    return

        await asyncio.gather(*(fill(w) for w in range(4)))
        assert refusals and {(e["status"], e["code"]) for e in refusals} == {(503, "store_full")}, refusals
        info = small_redis.client.info("memory")
        assert 0.9 <= info["used_memory"] / info["maxmemory"] < 1.0, info
        await admin.create("victim", expect=503)  # everyone's creates wait: the store is full
        body = await admin.revoke("victim", victim["id"])  # a tiny write still fits
        assert body["status"] == "revoked"
        assert gateway_code(gateway, victim["key"]) == (401, "revoked_api_key")
        await admin.revoke("attacker", attacker["id"])
        assert gateway_code(gateway, attacker["key"]) == (401, "revoked_api_key")
        logs = gateway.all_logs()
        assert "OOM" not in logs, logs[-2000:]
    finally:
        stop_gateway(gateway)


# ---- `gateway keys create` is held to the same limits (CreateLimits) -------------------------------

def cli_create(redis_url: str, org: str, *extra: str, env: dict | None = None):
    from tests.integration.test_cli import gateway as gateway_cli

    clean = {k: "" for k in os.environ if k.startswith("GATEWAY_")}
    return gateway_cli("keys", "create", "--redis", redis_url, "--scopes", str(SCOPES), "--org", org,
                       "--name", "cli", "--scope", "tasks:read", *extra, env={**clean, **(env or {})})


def assert_cli_refused(result, code: str) -> None:
    assert result.returncode == 1 and result.stdout == "", (result.returncode, result.stdout, result.stderr)
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"gateway: {code}: "), line
    assert "sop_" not in result.stderr


def test_the_cli_is_held_to_the_key_limit_and_ignore_limits_lifts_it(redis_server, org):
    env = {"GATEWAY_MAX_KEYS_PER_ORG": "2", "GATEWAY_CREATE_RATE_PER_ORG": "0"}
    for _ in range(2):
        assert cli_create(redis_server.url, org, env=env).returncode == 0
    refused = cli_create(redis_server.url, org, env=env)
    assert_cli_refused(refused, "key_limit_reached")
    assert "--ignore-limits" in refused.stderr
    assert redis_server.client.zcard(f"gw:org:{{{org}}}:keys") == 2  # nothing written
    assert_cli_refused(cli_create(redis_server.url, org, "--max-keys-per-org", "1", env=env), "key_limit_reached")
    forced = cli_create(redis_server.url, org, "--ignore-limits", env=env)
    assert forced.returncode == 0 and msgspec.json.decode(forced.stdout)["key"].startswith("sop_")


def test_the_cli_is_held_to_the_create_rate(redis_server, org):
    env = {"GATEWAY_MAX_KEYS_PER_ORG": "0"}
    for _ in range(2):
        assert cli_create(redis_server.url, org, "--create-rate-per-org", "2", env=env).returncode == 0
    assert_cli_refused(cli_create(redis_server.url, org, "--create-rate-per-org", "2", env=env), "too_many_creates")
    assert cli_create(redis_server.url, org, "--create-rate-per-org", "2", "--ignore-limits", env=env).returncode == 0


def test_the_cli_is_held_to_the_memory_mark_even_with_ignore_limits(small_redis, org):
    for i in range(8):  # 2 of the 4 MB, plus what Redis itself uses
        small_redis.client.set(f"filler:{i}", "x" * (256 * 1024))
    for extra in ((), ("--ignore-limits",)):
        result = cli_create(small_redis.url, org, "--memory-high-water", "0.4", *extra)
        assert_cli_refused(result, "store_full")
    assert small_redis.client.exists(f"gw:org:{{{org}}}:keys") == 0
    small_redis.client.delete(*(f"filler:{i}" for i in range(8)))
    assert cli_create(small_redis.url, org, "--memory-high-water", "0.4").returncode == 0


# -- issue 14: edit and roll by an org key --------------------------------------------------------

async def test_an_org_key_cannot_edit_in_scopes_it_does_not_hold(admins, org):
    admin = await admins()
    manager = await admin.create(org, scopes=MANAGER)
    child = await admin.create(org, scopes=["tasks:read", "guests:read"])
    path = f"/v1/orgs/{org}/api-keys/{child['id']}"
    status, body, _ = await admin.call("PATCH", path, manager["key"], json={"scopes": ["tasks:read", "tasks:write"]})
    assert (status, body["error"]["code"], body["error"]["scopes"]) == (403, "scope_not_grantable", ["tasks:write"])
    # Removing one it does not hold is allowed (narrower is always fine); keeping it is no grant.
    status, body, _ = await admin.call("PATCH", path, manager["key"], json={"scopes": ["tasks:read"]})
    assert status == 200 and body["scopes"] == ["tasks:read"]
    # Another org's key is not found, whatever it holds.
    other = await admin.create(f"{org}-x", scopes=["tasks:read"])
    status, body, _ = await admin.call("PATCH", f"/v1/orgs/{org}-x/api-keys/{other['id']}", manager["key"],
                                       json={"name": "mine"})
    assert (status, body["error"]["code"]) == (404, "org_not_found")


async def test_an_org_key_cannot_edit_an_expiry_past_its_own(admins, org):
    admin = await admins()
    manager = await admin.create(org, scopes=MANAGER, expires_in="30d")
    child = await admin.create(org, manager["key"], scopes=["tasks:read"], expires_in="30d")
    status, body, _ = await admin.call("PATCH", f"/v1/orgs/{org}/api-keys/{child['id']}", manager["key"],
                                       json={"expires_in": "never"})
    assert (status, body["error"]["field"]) == (400, "expires_in")


async def test_an_org_key_cannot_roll_a_key_with_more_scopes_and_a_now_roll_is_refused_by_the_gateway(
        admins, org, gw):
    admin = await admins()
    manager = await admin.create(org, scopes=MANAGER)
    wider = await admin.create(org, scopes=["tasks:read", "tasks:write"])
    status, body, _ = await admin.call("POST", f"/v1/orgs/{org}/api-keys/{wider['id']}/roll", manager["key"],
                                       json={"grace_period": "now"})
    assert (status, body["error"]["code"]) == (403, "scope_not_grantable")
    mine = await admin.create(org, scopes=["tasks:read"])
    assert gateway_code(gw, mine["key"]) == (200, "ok")
    status, rolled, _ = await admin.call("POST", f"/v1/orgs/{org}/api-keys/{mine['id']}/roll", manager["key"],
                                         json={"grace_period": "now"})
    assert status == 200
    assert gateway_code(gw, mine["key"]) == (401, "rolled_api_key")  # the real process, right after the answer
    assert gateway_code(gw, rolled["key"]) == (200, "ok")


@pytest.mark.parametrize("target_expiry, allowed", [("never", False), ("1y", False), ("90d", False), ("30d", True)])
async def test_an_org_key_cannot_roll_a_key_that_outlives_it(admins, org, target_expiry, allowed):
    # The new secret is the caller's to keep: one that outlasts the caller's own expiry is the
    # lifetime escalation create refuses (expires_in capped at the caller's expiry).
    admin = await admins()
    manager = await admin.create(org, scopes=MANAGER, expires_in="30d")
    target = await admin.create(org, scopes=["tasks:read"], expires_in=target_expiry)
    status, body, _ = await admin.call("POST", f"/v1/orgs/{org}/api-keys/{target['id']}/roll", manager["key"],
                                       json={"grace_period": "1h"})
    if allowed:  # created in the same millisecond range: expires no later than the caller
        assert status == 200 and body["key"].startswith("sop_"), body
    else:
        assert (status, body["error"]["code"]) == (403, "key_outlives_caller"), body
        assert body["error"]["max_expires_at"] == manager["expires_at"]
        # Nothing changed: the key's one secret still works, no roll was logged.
        status, after, _ = await admin.call("GET", f"/v1/orgs/{org}/api-keys/{target['id']}")
        assert status == 200 and after["rolled_at"] is None and len(after["secrets"]) == 1


async def test_an_org_key_without_expiry_and_operators_roll_any_key_they_could_grant(admins, org):
    admin = await admins()
    manager = await admin.create(org, scopes=MANAGER)
    target = await admin.create(org, scopes=["tasks:read"])
    status, _, _ = await admin.call("POST", f"/v1/orgs/{org}/api-keys/{target['id']}/roll", manager["key"],
                                    json={"grace_period": "now"})
    assert status == 200
    status, _, _ = await admin.call("POST", f"/v1/orgs/{org}/api-keys/{target['id']}/roll", json={"grace_period": "now"})
    assert status == 200
