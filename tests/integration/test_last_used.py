"""Last used is the truth: every request whose key verified counts, whatever was answered.

On the proxy and in forward-auth mode (403, 404, 405 as well as 200) and on the admin API;
unknown, revoked and expired keys never count.
"""

from __future__ import annotations

import pytest

from admin_api.app import make_admin_app
from gateway.config import AdminSettings
from gateway.tasks import flush_usage
from tests.support import OPERATOR_TOKEN, SCOPES
from tests.integration.test_forward_auth import nginx


async def flushed_usage(stack, key: dict, *buffers) -> tuple[str | None, int]:
    """Flush the given processes' buffers, then read the key's usage through the admin API."""
    for usage in buffers:
        assert await flush_usage(stack.state.store, usage, stack.state.metrics)
    status, body, _ = await stack.admin_call("GET", f"/v1/orgs/acme/api-keys/{key['id']}")
    assert status == 200, body
    return body["last_used_at"], body["request_count"]


@pytest.mark.parametrize("method, path, expected, code", [
    ("POST", "/v1/tasks", 403, "insufficient_scope"),  # tasks:write needed
    ("GET", "/v1/no-such-route", 404, "route_not_found"),
    ("DELETE", "/v1/tasks", 405, "method_not_allowed"),
])
async def test_a_key_refused_after_verification_is_counted_as_used(stack, method, path, expected, code):
    created = await stack.create_key(scopes=["tasks:read"])
    status, body, _ = await stack.call(method, path, created["key"])
    assert status == expected and body["error"]["code"] == code, body
    last_used, count = await flushed_usage(stack, created, stack.state.usage)
    assert last_used is not None and count == 1


async def test_forward_auth_counts_refusals_after_verification(make_stack):
    auth = await make_stack(mode="forward-auth", upstream="")
    created = await auth.create_key(scopes=["tasks:read"])
    for method, uri, expected in [("POST", "/v1/tasks", 403), ("GET", "/v1/no-such-route", 404)]:
        async with auth.http.get(auth.gateway + "/", headers=nginx(method, uri, created["key"])) as resp:
            assert resp.status == expected, await resp.text()
    last_used, count = await flushed_usage(auth, created, auth.state.usage)
    assert last_used is not None and count == 2


async def test_a_key_used_only_on_the_admin_api_is_counted(stack):
    created = await stack.create_key(scopes=["api_keys:read"])
    status, body, _ = await stack.admin_call("GET", "/v1/me", token=created["key"])
    assert status == 200 and body["org_id"] == "acme" and body["grants_any"] is False, body  # only what it holds
    # What the admin API buffered reaches Redis with its own flush (the gateway saw nothing).
    assert len(stack.state.usage) == 0 and len(stack.admin_state.usage) == 1
    last_used, count = await flushed_usage(stack, created, stack.admin_state.usage)
    assert last_used is not None and count == 1
    # A refusal after authentication (403: no api_keys:manage) counts too.
    status, body, _ = await stack.admin_call("POST", "/v1/orgs/acme/api-keys", token=created["key"],
                                             json={"name": "x", "scopes": ["tasks:read"]})
    assert status == 403, body
    assert (await flushed_usage(stack, created, stack.admin_state.usage))[1] == 2


async def test_unknown_and_revoked_keys_are_not_counted(stack):
    created = await stack.create_key(scopes=["tasks:read"])
    status, _, _ = await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{created['id']}/revoke")
    assert status == 200
    assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 401
    assert (await stack.admin_call("GET", "/v1/me", token=created["key"]))[0] == 401
    assert (await stack.admin_call("GET", "/v1/me", token=OPERATOR_TOKEN))[0] == 200  # operators are no key
    assert len(stack.state.usage) == 0 and len(stack.admin_state.usage) == 0
    status, body, _ = await stack.admin_call("GET", f"/v1/orgs/acme/api-keys/{created['id']}")
    assert body["last_used_at"] is None and body["request_count"] == 0


async def test_the_admin_api_flushes_its_uses_when_it_stops(aiohttp_server, redis_url, stack):
    created = await stack.create_key(scopes=["api_keys:read"])
    settings = AdminSettings(redis=redis_url, scopes=str(SCOPES), operator_tokens=(OPERATOR_TOKEN,),
                             flush_interval=3600.0)
    server = await aiohttp_server(make_admin_app(settings))
    async with stack.http.get(server.make_url("/v1/me"), headers={"Authorization": f"Bearer {created['key']}"}) as resp:
        assert resp.status == 200
    await server.close()  # runs the app's cleanup: the last flush, then the fold of its hash
    record = await stack.store.get_for_org("acme", created["id"])
    assert record.last_used_at is not None and record.request_count == 1
    # Folded: each node hash holds only its marker (the generation a late write must reach)
    nodes = await stack.store.redis.keys("gw:usage:{gw}:node:*")
    assert nodes and all([await stack.store.redis.hkeys(n) == [b"^"] for n in nodes])
