"""Webhooks (issue 17): endpoints through the admin API, and signed at-least-once delivery from the
Redis outbox to real receivers on 127.0.0.1 (one verifies with the standardwebhooks npm package,
one fails with 500, one is slow); a real redis-server."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support import eventually
from tests.support.webhooks import GOT, Verifier, receiver_app, verifier_install

FAST = {"webhooks_allow_private": True, "webhooks_retry_base": 0.1, "webhooks_retry_cap": 0.2,
        "webhooks_poll": 0.05, "webhooks_max_attempts": 3, "webhooks_timeout": 1.0}


@pytest.fixture(scope="module")
def verifier():
    v = Verifier(verifier_install())
    yield v
    v.stop()


async def _hook(stack, org: str, url: str, events=("*",), token=None, expect=201) -> dict:
    kw = {} if token is None else {"token": token}
    status, body, _ = await stack.admin_call("POST", f"/v1/orgs/{org}/webhooks",
                                             json={"url": url, "events": list(events)}, **kw)
    assert status == expect, body
    return body


async def test_endpoint_crud_shows_the_secret_once_and_keeps_orgs_apart(make_stack):
    stack = await make_stack(admin_settings=FAST)
    await stack.create_key(org="acme")
    created = await _hook(stack, "acme", "http://127.0.0.1:9/hook", ("api_key.revoked",))
    assert created["secret"].startswith("whsec_") and len(created["secret"]) >= 6 + 32
    assert created["events"] == ["api_key.revoked"]
    hook = f"/v1/orgs/acme/webhooks/{created['id']}"
    status, shown, _ = await stack.admin_call("GET", hook)
    assert status == 200 and "secret" not in shown and shown["url"] == "http://127.0.0.1:9/hook"
    status, listed, _ = await stack.admin_call("GET", "/v1/orgs/acme/webhooks")
    assert [h["id"] for h in listed["data"]] == [created["id"]] and "secret" not in listed["data"][0]
    status, edited, _ = await stack.admin_call("PATCH", hook, json={"events": ["*"], "description": "ops"})
    assert status == 200 and edited["events"] == ["*"] and edited["description"] == "ops"
    status, rotated, _ = await stack.admin_call("POST", hook + "/rotate-secret")
    assert status == 200 and rotated["secret"] != created["secret"]
    # Another org's key cannot see it; a reader cannot change it.
    other = await stack.create_key(org="other", scopes=("api_keys:manage",))
    status, body, _ = await stack.admin_call("GET", hook, token=other["key"])
    assert status == 404 and body["error"]["code"] == "org_not_found", body
    reader = await stack.create_key(org="acme", scopes=("api_keys:read",))
    status, _, _ = await stack.admin_call("GET", hook, token=reader["key"])
    assert status == 200
    status, body, _ = await stack.admin_call("DELETE", hook, token=reader["key"])
    assert status == 403 and body["error"]["code"] == "insufficient_scope"
    status, body, _ = await stack.admin_call("GET", "/v1/orgs/acme/webhooks/wh_0000000000000000")
    assert status == 404 and body["error"]["code"] == "webhook_not_found"
    status, body, _ = await stack.admin_call("POST", "/v1/orgs/acme/webhooks", json={"url": "http://x", "events": ["nope"]})
    assert status == 400
    status, _, _ = await stack.admin_call("DELETE", hook)
    assert status == 204
    status, _, _ = await stack.admin_call("GET", hook)
    assert status == 404


async def test_key_events_arrive_signed_as_an_independent_verifier_checks(make_stack, verifier):
    stack = await make_stack(admin_settings=FAST)
    await stack.create_key(org="acme")  # the org exists
    hook = await _hook(stack, "acme", verifier.url)
    verifier.set_secret(hook["secret"])
    before = len(verifier.received())
    key = await stack.create_key(org="acme", name="hooked")
    status, _, _ = await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{key['id']}/revoke")
    assert status == 200

    async def arrived():
        got = verifier.received()[before:]
        return got if len(got) >= 2 else None
    got = await eventually(arrived, timeout=10)
    assert all(g["verified"] for g in got), got
    bodies = {g["id"]: json.loads(g["body"]) for g in got}
    assert bodies[f"evt_{key['id']}_1"]["type"] == "api_key.created"
    assert bodies[f"evt_{key['id']}_2"]["type"] == "api_key.revoked"
    assert bodies[f"evt_{key['id']}_1"]["data"]["key"]["name"] == "hooked"
    assert "key" not in json.dumps(bodies[f"evt_{key['id']}_1"]["data"]["key"].get("secret", ""))
    # A test-send reaches this endpoint (and the deliveries list says delivered).
    status, queued, _ = await stack.admin_call("POST", f"/v1/orgs/acme/webhooks/{hook['id']}/test")
    assert status == 202

    async def tested():
        return [g for g in verifier.received() if g["id"] == queued["event_id"]]
    (test_got,) = await eventually(tested, timeout=10)
    assert test_got["verified"] and json.loads(test_got["body"])["type"] == "webhook.test"

    async def listed():
        _, body, _ = await stack.admin_call("GET", f"/v1/orgs/acme/webhooks/{hook['id']}/deliveries")
        return body["data"] if all(d["state"] == "delivered" for d in body["data"]) and len(body["data"]) >= 3 else None
    deliveries = await eventually(listed, timeout=10)
    assert {d["status_code"] for d in deliveries} == {204}
    assert deliveries[0]["event_id"] == queued["event_id"]  # newest first


async def test_a_failing_and_a_slow_endpoint_do_not_delay_a_good_one(make_stack, aiohttp_server):
    stack = await make_stack(admin_settings={**FAST, "webhooks_per_endpoint": 1, "webhooks_timeout": 3.0})
    release = asyncio.Event()
    good, failing, slow = (await aiohttp_server(receiver_app()), await aiohttp_server(receiver_app(status=500)),
                           await aiohttp_server(receiver_app(hold=release)))
    await stack.create_key(org="acme")
    hooks = {}
    for name, server in (("slow", slow), ("failing", failing), ("good", good)):
        hooks[name] = await _hook(stack, "acme", str(server.make_url("/hook")), ("api_key.created",))
    keys = [await stack.create_key(org="acme", name=f"k{i}") for i in range(3)]
    wanted = {f"evt_{k['id']}_1" for k in keys}

    def ids(server) -> set[str]:
        return {g["headers"]["webhook-id"] for g in server.app[GOT]}
    # The good endpoint gets all three while the slow one still holds its first.
    await eventually(lambda: _async(wanted <= ids(good)), timeout=5)
    assert len(slow.app[GOT]) == 1 and not release.is_set()
    release.set()
    await eventually(lambda: _async(wanted <= ids(slow)), timeout=10)
    # The failing one: three attempts per event (same webhook-id each time), then dead letters.

    async def dead():
        _, body, _ = await stack.admin_call("GET", f"/v1/orgs/acme/webhooks/{hooks['failing']['id']}/deliveries")
        rows = [d for d in body["data"] if d["event_id"] in wanted]
        return rows if len(rows) == 3 and all(d["dead_lettered"] for d in rows) else None
    rows = await eventually(dead, timeout=15)
    assert {(d["attempts"], d["status_code"], d["error"]) for d in rows} == {(3, 500, "HTTP 500")}
    per_event: dict[str, int] = {}
    for g in failing.app[GOT]:
        per_event[g["headers"]["webhook-id"]] = per_event.get(g["headers"]["webhook-id"], 0) + 1
    assert all(per_event[i] == 3 for i in wanted)


async def test_an_endpoint_of_another_org_or_another_event_type_gets_nothing(make_stack, aiohttp_server):
    stack = await make_stack(admin_settings=FAST)
    mine, theirs, revokes = (await aiohttp_server(receiver_app()), await aiohttp_server(receiver_app()),
                             await aiohttp_server(receiver_app()))
    await stack.create_key(org="acme")
    await stack.create_key(org="beta")
    await _hook(stack, "acme", str(mine.make_url("/")))
    await _hook(stack, "beta", str(theirs.make_url("/")))
    await _hook(stack, "acme", str(revokes.make_url("/")), ("api_key.revoked",))
    key = await stack.create_key(org="acme")

    def orgs(server) -> list[tuple[str, str]]:
        return [(b["data"]["org_id"], b["data"]["key_id"]) for b in (json.loads(g["body"]) for g in server.app[GOT])]
    await eventually(lambda: _async(("acme", key["id"]) in orgs(mine)), timeout=5)
    await asyncio.sleep(0.3)  # the other endpoints would have had it by now
    assert all(org == "beta" for org, _ in orgs(theirs)) and revokes.app[GOT] == []


async def _async(value):
    return value
