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


# -- limits (issue 16) ----------------------------------------------------------------------------

def lim(*pairs):
    return [{"window": w, "limit": n} for w, n in pairs]


async def create_limited(stack, limits):
    status, created, _ = await stack.admin_call("POST", KEYS, json={"name": "limited", "scopes": ["tasks:read"],
                                                                   "limits": limits})
    assert status == 201, created
    return created


async def raw_limits(stack, hash_id: str):
    return await stack.store.redis.hget(stack.store._rec(hash_id), "L")


async def test_limits_are_edited_cleared_logged_and_reach_every_secret(stack):
    created = await create_limited(stack, lim(("minute", 100)))
    _, rolled, _ = await stack.admin_call("POST", f"{KEYS}/{created['id']}/roll", json={"grace_period": "1h"})
    alias = rolled["key"]  # the new secret's hash is an alias of the record
    from gateway.keys import parse_key
    alias_id = parse_key(alias).key_id
    assert await raw_limits(stack, alias_id) == b"minute:100"  # the roll copied them
    # The gateway holds both secrets' records in its cache: the edit must drop them.
    for secret in (created["key"], alias):
        assert (await stack.call("GET", "/v1/tasks", secret))[0] == 200
    assert stack.state.cache.get(alias_id).limits is not None
    status, body, _ = await patch(stack, created["id"], {"limits": lim(("minute", 10), ("month", 5000))})
    assert status == 200 and body["limits"] == lim(("minute", 10), ("month", 5000)), body
    from gateway.cache import MISS
    assert stack.state.cache.get(alias_id) is MISS and stack.state.cache.get(created["id"]) is MISS
    assert await raw_limits(stack, created["id"]) == await raw_limits(stack, alias_id) == b"minute:10 month:5000"
    status, body, _ = await patch(stack, created["id"], {"limits": None})
    assert status == 200 and body["limits"] is None and body["effective_limits"] == []
    assert await raw_limits(stack, created["id"]) is None and await raw_limits(stack, alias_id) is None
    # The same limits again change nothing (no event).
    assert (await patch(stack, created["id"], {"limits": None}))[1]["version"] == body["version"]
    log = [decode_event(e, created["id"], "acme")
           for e in await stack.store.redis.lrange(stack.store._key_log(created["id"]), 0, -1)]
    assert [(e.action, sorted(e.changes)) for e in log[2:]] == [("api_key.updated", ["limits"])] * 2
    assert (log[2].changes["limits"].before, log[2].changes["limits"].after) == (
        lim(("minute", 100)), lim(("minute", 10), ("month", 5000)))
    assert (log[3].changes["limits"].before, log[3].changes["limits"].after) == (
        lim(("minute", 10), ("month", 5000)), None)
    _, events, _ = await stack.admin_call("GET", f"/v1/orgs/acme/audit-events?key_id={created['id']}")
    assert events["data"][0]["changes"]["limits"] == {"before": lim(("minute", 10), ("month", 5000)), "after": None}


async def _stopped_after_narrowing(stack, monkeypatch, created, body):
    """PATCH ``body``, the admin API stopping (a Redis fault) after narrowing the aliases and
    before the record is written; returns the alias's id."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from gateway.keys import parse_key
    _, rolled, _ = await stack.admin_call("POST", f"{KEYS}/{created['id']}/roll", json={"grace_period": "1h"})

    async def crash(*args, **kwargs):
        raise RedisConnectionError("stopped between the steps of the edit")
    monkeypatch.setattr(stack.admin_state.store.lifecycle, "_commit", crash)
    status, answer, _ = await patch(stack, created["id"], body)
    assert (status, answer["error"]["code"]) == (503, "store_unavailable")
    return parse_key(rolled["key"]).key_id


async def test_a_lowered_limit_reaches_the_aliases_before_the_record(stack, monkeypatch):
    created = await create_limited(stack, lim(("minute", 100), ("day", 50)))
    alias_id = await _stopped_after_narrowing(stack, monkeypatch, created, {"limits": lim(("minute", 10), ("hour", 70))})
    # The alias enforces the smaller of before and after on every window of either, the record
    # still the old limits: at no step is a secret held to less than its record says.
    assert await raw_limits(stack, alias_id) == b"minute:10 hour:70 day:50"
    assert await raw_limits(stack, created["id"]) == b"minute:100 day:50"


async def test_own_limits_replacing_the_default_keep_the_defaults_windows_on_the_aliases_meanwhile(make_stack, monkeypatch):
    stack = await make_stack(admin_settings={"default_limits": "minute=600,month=1000"})
    created = await create_limited(stack, None)
    alias_id = await _stopped_after_narrowing(stack, monkeypatch, created, {"limits": lim(("minute", 10))})
    # None meant the default (minute 600, month 1000): the alias keeps the default's month until
    # the record says minute 10 alone, and gets minute 10 before it.
    assert await raw_limits(stack, alias_id) == b"minute:10 month:1000"
    assert await raw_limits(stack, created["id"]) is None
    monkeypatch.undo()
    # A looser one needs no write before the record: the default the alias still has is narrower.
    other = await create_limited(stack, None)
    alias_id = await _stopped_after_narrowing(stack, monkeypatch, other, {"limits": lim(("minute", 900))})
    assert await raw_limits(stack, alias_id) is None


async def test_a_raised_limit_leaves_the_aliases_until_the_record_is_written(stack, monkeypatch):
    created = await create_limited(stack, lim(("minute", 100)))
    alias_id = await _stopped_after_narrowing(stack, monkeypatch, created, {"limits": None})
    assert await raw_limits(stack, alias_id) == await raw_limits(stack, created["id"]) == b"minute:100"


async def test_bad_limit_edits_are_400s_naming_the_field(stack):
    created = await create_limited(stack, lim(("minute", 100)))
    for limits, text in [(lim(("fortnight", 1)), "limits[0].window"), ([], "1 to 5 limits"),
                         (lim(("day", 1), ("day", 2)), "day is given more than once")]:
        status, answer, _ = await patch(stack, created["id"], {"limits": limits})
        assert (status, answer["error"]["field"]) == (400, "limits") and text in answer["error"]["message"], answer
    assert await raw_limits(stack, created["id"]) == b"minute:100"
