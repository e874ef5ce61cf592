"""A key's own limits in the admin API (issue 16): set at create, shown on reads with what the
gateways enforce (the default, the ceilings) and, on the single-key read, how much of each window
is used; refused with a 400 naming the field when they cannot be stored."""

from __future__ import annotations

from gateway.model import rfc3339
from gateway.ratelimit import window_bounds
from tests.support import RedisServer

KEYS = "/v1/orgs/acme/api-keys"


async def create(stack, limits=..., **extra):
    body = {"name": "limited", "scopes": ["tasks:read"], **extra}
    if limits is not ...:
        body["limits"] = limits
    return await stack.admin_call("POST", KEYS, json=body)


def lim(*pairs):
    return [{"window": w, "limit": n} for w, n in pairs]


async def test_limits_set_at_create_are_stored_shown_and_listed(stack):
    status, created, _ = await create(stack, lim(("month", 100_000), ("second", 10)))
    assert status == 201, created
    assert created["limits"] == created["effective_limits"] == lim(("second", 10), ("month", 100_000))
    raw = await stack.store.redis.hget(stack.store._rec(created["id"]), "L")
    assert raw == b"second:10 month:100000"
    _, listed, _ = await stack.admin_call("GET", KEYS)
    assert listed["data"][0]["limits"] == lim(("second", 10), ("month", 100_000))
    # Without limits: null, and with no default configured nothing is enforced.
    status, plain, _ = await create(stack)
    assert (status, plain["limits"], plain["effective_limits"]) == (201, None, [])
    _, one, _ = await stack.admin_call("GET", f"{KEYS}/{plain['id']}")
    assert one["limit_usage"] == []


async def test_the_single_read_shows_what_each_window_has_used_and_when_it_resets(stack):
    _, created, _ = await create(stack, lim(("minute", 600), ("month", 100_000)))
    now = int(stack.clock() * 1000)
    month_start, month_end = window_bounds("month", now)
    await stack.store.redis.set(stack.store.limits.budget_key(created["id"], "month", month_start), 1234)
    status, one, _ = await stack.admin_call("GET", f"{KEYS}/{created['id']}")
    assert status == 200
    assert one["limit_usage"] == [
        {"window": "minute", "limit": 600, "used": 0, "resets_at": rfc3339(window_bounds("minute", now)[1])},
        {"window": "month", "limit": 100_000, "used": 1234, "resets_at": rfc3339(month_end)},
    ]


async def test_keys_without_limits_of_their_own_show_the_default_capped_by_the_ceilings(make_stack, tmp_path):
    limits_file = tmp_path / "limits.yaml"
    limits_file.write_text("default: standard\nplans:\n  standard:\n    - {window: minute, limit: 600}\n"
                           "    - {window: month, limit: 1000000}\nmax:\n  - {window: second, limit: 100}\n")
    stack = await make_stack(admin_settings={"limits_file": str(limits_file)})
    status, plain, _ = await create(stack)
    assert status == 201 and plain["limits"] is None
    assert plain["effective_limits"] == lim(("second", 100), ("minute", 600), ("month", 1_000_000))
    _, own, _ = await create(stack, lim(("hour", 50)))
    assert own["effective_limits"] == lim(("second", 100), ("hour", 50))  # its own replace the default
    status, body, _ = await create(stack, lim(("second", 101)))
    assert (status, body["error"]["field"]) == (400, "limits")
    assert "per-second limit 101 is above this gateway's maximum of 100" in body["error"]["message"]


async def test_bad_limits_are_400s_naming_the_field(stack):
    cases = [
        (lim(("week", 5)), "limits[0].window must be one of: second, minute, hour, day, month"),
        (lim(("minute", 0)), "limits[0].limit must be an integer from 1 to 999999999999999"),
        (lim(("minute", 10**15)), "limits[0].limit must be an integer from 1 to"),
        (lim(("minute", 5), ("day", 2), ("minute", 6)), "minute is given more than once"),
        (lim(*[("minute", 1)] * 6), "1 to 5 limits, one per window"),
        ([], "1 to 5 limits"),
        ([{"window": "minute"}], "each limit is"),
        ([{"window": "minute", "limit": 5, "burst": 2}], "each limit is"),
        ([{"window": "minute", "limit": "5"}], "limits[0].limit must be an integer"),
        ({"minute": 5}, "limits"),
        ([{"window": "minute", "limit": 1.5}], "limits[0].limit must be an integer from 1 to"),
    ]
    for limits, text in cases:
        status, body, _ = await create(stack, limits)
        assert status == 400 and body["error"]["code"] == "validation_failed", (limits, body)
        assert body["error"]["field"] == "limits" and text in body["error"]["message"], (limits, body)
    status, listed, _ = await stack.admin_call("GET", KEYS)
    assert (status, listed["error"]["code"]) == (404, "org_not_found")  # nothing was created


async def test_the_key_reads_without_its_usage_when_redis_cannot_say(make_stack, tmp_path):
    # The record is read, then the budgets' read fails: a Redis without MGET (renamed away), which
    # only the budget read uses.
    server = RedisServer(tmp_path, "--rename-command", "MGET", "")
    try:
        stack = await make_stack(redis=server.url)
        _, created, _ = await create(stack, lim(("day", 5)))
        status, one, _ = await stack.admin_call("GET", f"{KEYS}/{created['id']}")
        assert status == 200 and one["limits"] == lim(("day", 5)) and one["limit_usage"] is None
    finally:
        server.stop()


async def test_an_integral_number_is_an_integer_limit(stack):
    # JSON Schema's integer (the document's) includes 600.0.
    status, created, _ = await create(stack, [{"window": "minute", "limit": 600.0}])
    assert status == 201 and created["limits"] == lim(("minute", 600)), created


async def test_an_org_key_cannot_give_keys_looser_limits_than_its_own(make_stack):
    stack = await make_stack(admin_settings={"default_limits": "hour=1000"})
    _, manager, _ = await stack.admin_call("POST", KEYS, json={
        "name": "manager", "scopes": ["api_keys:manage", "tasks:read"], "limits": lim(("minute", 100), ("month", 10_000))})
    token = manager["key"]

    async def as_manager(method, path, body):
        return await stack.admin_call(method, path, token=token, json=body)

    # Within its own: at least as strict on each of its windows (others may be added).
    status, ok, _ = await as_manager("POST", KEYS, {"name": "child", "scopes": ["tasks:read"],
                                                    "limits": lim(("second", 5), ("minute", 100), ("month", 9000))})
    assert status == 201, ok
    for limits, text in [
        (lim(("minute", 101), ("month", 10_000)), "per minute 101, where this key has 100"),
        (lim(("minute", 50)), "per month no limit, where this key has 10000"),
        (None, "per minute no limit, where this key has 100"),  # the default (hour 1000) has neither
    ]:
        status, body, _ = await as_manager("POST", KEYS, {"name": "child", "scopes": ["tasks:read"], "limits": limits})
        assert (status, body["error"]["code"]) == (403, "limits_exceed_caller"), body
        assert text in body["error"]["message"], body
    # An edit may loosen only within its own; making a key stricter is always allowed.
    status, body, _ = await as_manager("PATCH", f"{KEYS}/{ok['id']}", {"limits": lim(("minute", 100), ("month", 20_000))})
    assert (status, body["error"]["code"]) == (403, "limits_exceed_caller")
    _, plain, _ = await stack.admin_call("POST", KEYS, json={"name": "unmetered", "scopes": ["tasks:read"]})
    status, body, _ = await as_manager("PATCH", f"{KEYS}/{plain['id']}", {"limits": lim(("hour", 500))})
    assert status == 200 and body["limits"] == lim(("hour", 500)), body
    status, body, _ = await as_manager("PATCH", f"{KEYS}/{plain['id']}", {"name": "renamed"})
    assert status == 200, body
    # Nor roll a key looser than itself: it would hold that key's new secret.
    status, body, _ = await as_manager("POST", f"{KEYS}/{plain['id']}/roll", {"grace_period": "now"})
    assert (status, body["error"]["code"]) == (403, "limits_exceed_caller"), body
    status, body, _ = await as_manager("POST", f"{KEYS}/{ok['id']}/roll", {"grace_period": "now"})
    assert status == 200, body
    # The operator is held to the ceilings only.
    status, body, _ = await stack.admin_call("PATCH", f"{KEYS}/{ok['id']}", json={"limits": None})
    assert status == 200 and body["effective_limits"] == lim(("hour", 1000))
