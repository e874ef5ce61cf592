"""PATCH a key: name, scopes, expiry; If-Match; removals enforced everywhere by the answer."""

from __future__ import annotations

import asyncio
import time

from gateway.model import DAY_MS, rfc3339
from gateway.store.codec import decode_event
from gateway.tasks import ACK_TIMEOUT

KEYS = "/v1/orgs/acme/api-keys"


async def patch(stack, key_id: str, body: dict, if_match: str | None = None, **kw):
    headers = {"If-Match": if_match} if if_match is not None else {}
    return await stack.admin_call("PATCH", f"{KEYS}/{key_id}", json=body, headers=headers, **kw)


async def test_each_field_is_edited_and_logged(stack):
    created = await stack.create_key(scopes=("tasks:read",), expires_in="90d")
    status, body, resp = await patch(stack, created["id"], {"name": "renamed"})
    assert status == 200 and body["name"] == "renamed" and resp.headers["ETag"] == '"2"'
    status, body, _ = await patch(stack, created["id"], {"scopes": ["tasks:read", "tasks:write"]}, '"2"')
    assert status == 200 and body["scopes"] == ["tasks:read", "tasks:write"] and body["version"] == 3
    status, body, _ = await patch(stack, created["id"], {"expires_in": "30d"})
    assert status == 200 and body["expires_at"] == rfc3339(int(stack.clock() * 1000) + 30 * DAY_MS)
    earlier = int(stack.clock() * 1000) + DAY_MS
    status, body, _ = await patch(stack, created["id"], {"expires_at": rfc3339(earlier)})
    assert status == 200 and body["expires_at"] == rfc3339(earlier)
    status, body, _ = await patch(stack, created["id"], {"expires_in": "never"})
    assert status == 200 and body["expires_at"] is None and body["version"] == 6
    log = [decode_event(e, created["id"], "acme")
           for e in await stack.store.redis.lrange(stack.store._key_log(created["id"]), 0, -1)]
    assert [(e.action, e.version, sorted(e.changes)) for e in log] == [
        ("api_key.created", 1, []), ("api_key.updated", 2, ["name"]), ("api_key.updated", 3, ["scopes"]), ("api_key.updated", 4, ["expires_at"]),
        ("api_key.updated", 5, ["expires_at"]), ("api_key.updated", 6, ["expires_at"])]
    assert log[2].changes["scopes"].before == ["tasks:read"]
    index = await stack.store.redis.zrange(stack.store._org_activity("acme"), 0, -1)
    assert {f"{created['id']}:{v}".encode() for v in range(2, 7)} <= set(index)


async def test_a_stale_if_match_is_412_with_the_current_version(stack):
    created = await stack.create_key()
    assert (await patch(stack, created["id"], {"name": "one"}, '"1"'))[0] == 200
    status, body, _ = await patch(stack, created["id"], {"name": "two"}, '"1"')
    assert (status, body["error"]["code"], body["error"]["current_version"]) == (412, "version_mismatch", 2)
    status, body, _ = await patch(stack, created["id"], {"name": "two"}, "2")
    assert status == 400 and body["error"]["field"] == "If-Match"


async def test_concurrent_edits_one_wins_and_the_aliases_follow_the_record(stack):
    created = await stack.create_key(scopes=("tasks:read", "tasks:write"))
    _, rolled, _ = await stack.admin_call("POST", f"{KEYS}/{created['id']}/roll", json={"grace_period": "1h"})
    results = await asyncio.gather(
        patch(stack, created["id"], {"scopes": ["tasks:read"]}, '"2"'),
        patch(stack, created["id"], {"scopes": ["tasks:write"]}, '"2"'))
    assert sorted(r[0] for r in results) == [200, 412]
    won = next(r[1] for r in results if r[0] == 200)
    for secret in (created["key"], rolled["key"]):  # both secrets: the winner's scopes, nothing more
        for path, scope in (("/v1/tasks", "tasks:read"), ("/v1/tasks/1", "tasks:write")):
            method = "GET" if scope == "tasks:read" else "PATCH"
            expected = 200 if scope in won["scopes"] else 403
            assert (await stack.call(method, path, secret))[0] == expected, (secret[:10], scope)
    # Without If-Match a concurrent change is retried: both apply.
    results = await asyncio.gather(patch(stack, created["id"], {"name": "a"}),
                                   patch(stack, created["id"], {"scopes": ["tasks:read", "tasks:write"]}))
    assert [r[0] for r in results] == [200, 200]
    _, one, _ = await stack.admin_call("GET", f"{KEYS}/{created['id']}")
    assert one["name"] == "a" and one["scopes"] == ["tasks:read", "tasks:write"]


async def test_a_removed_scope_is_refused_on_every_gateway_by_the_answer(make_stack):
    a = await make_stack()
    b = await make_stack()
    created = await a.create_key(scopes=("tasks:read", "tasks:write"))
    _, rolled, _ = await a.admin_call("POST", f"{KEYS}/{created['id']}/roll", json={"grace_period": "1h"})
    for s in (a, b):
        for secret in (created["key"], rolled["key"]):
            for _ in range(2):
                assert (await s.call("PATCH", "/v1/tasks/1", secret))[0] == 200
    started = time.perf_counter()
    status, _, _ = await patch(a, created["id"], {"scopes": ["tasks:read"]})
    took = time.perf_counter() - started
    assert status == 200 and took < ACK_TIMEOUT / 2, took
    results = await asyncio.gather(*(s.call("PATCH", "/v1/tasks/1", k) for s in (a, b)
                                     for k in (created["key"], rolled["key"])))
    assert [(r[0], r[1]["error"]["code"]) for r in results] == [(403, "insufficient_scope")] * 4
    # An addition applies on the next request too.
    assert (await patch(a, created["id"], {"scopes": ["tasks:read", "tasks:write"]}))[0] == 200
    results = await asyncio.gather(*(s.call("PATCH", "/v1/tasks/1", rolled["key"]) for s in (a, b)))
    assert [r[0] for r in results] == [200, 200]


async def test_an_earlier_expiry_is_enforced_on_every_secret(stack):
    created = await stack.create_key(expires_in="90d")
    _, rolled, _ = await stack.admin_call("POST", f"{KEYS}/{created['id']}/roll", json={"grace_period": "7d"})
    soon = int(stack.clock() * 1000) + 3600_000
    assert (await patch(stack, created["id"], {"expires_at": rfc3339(soon)}))[0] == 200
    stack.clock.advance(3601)
    for secret in (created["key"], rolled["key"]):
        status, body, _ = await stack.call("GET", "/v1/tasks", secret)
        assert (status, body["error"]["code"]) == (401, "expired_api_key")


async def test_bad_edits_are_400s_with_clear_messages(stack):
    created = await stack.create_key(expires_in="30d")
    cases = [
        ({}, "body", "at least one"),
        ({"expires_in": "30d", "expires_at": rfc3339(int(time.time() * 1000))}, "expires_at", "not both"),
        ({"expires_at": rfc3339(int(stack.clock() * 1000) + 60 * DAY_MS)}, "expires_at", "earlier"),
        ({"expires_at": rfc3339(int(stack.clock() * 1000) - 1000)}, "expires_at", "future"),
        ({"expires_at": "tomorrow"}, "expires_at", "RFC 3339"),
        ({"expires_in": "2d"}, "expires_in", "one of"),
        ({"scopes": ["tasks:reed"]}, "scopes", "Unknown scopes"),
        ({"scopes": []}, "scopes", ""),
        ({"name": "  "}, "name", "1 to 100"),
        ({"id": "key_x"}, "id", "unknown field"),
    ]
    for body, field, text in cases:
        status, answer, _ = await patch(stack, created["id"], body)
        assert status == 400 and answer["error"]["field"] == field and text in answer["error"]["message"], (body, answer)
    status, answer, _ = await patch(stack, "key_doesnotexist", {"name": "x"})
    assert (status, answer["error"]["code"]) == (404, "key_not_found")
    assert (await stack.admin_call("POST", f"{KEYS}/{created['id']}/revoke"))[0] == 200
    status, answer, _ = await patch(stack, created["id"], {"name": "x"})
    assert (status, answer["error"]["code"]) == (409, "api_key_revoked")
