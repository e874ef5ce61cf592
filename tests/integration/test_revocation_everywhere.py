"""Revocation reaches every gateway before the admin API answers, or the wait is bounded."""

from __future__ import annotations

import asyncio
import time

from gateway.tasks import ACK_TIMEOUT


async def test_revoke_is_answered_after_every_gateway_dropped_the_key(make_stack):
    a = await make_stack()
    b = await make_stack()
    created = await a.create_key()
    for stack in (a, b):
        for _ in range(2):  # the second call is served from each gateway's cache
            assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 200
        assert stack.state.cache.get(created["id"]) is not None
    live = await a.store.redis.zrange("gw:gateways", 0, -1)
    assert len(live) == 2  # both gateways registered themselves

    started = time.perf_counter()
    status, _, _ = await a.admin_call("POST", f"/v1/orgs/acme/api-keys/{created['id']}/revoke")
    took = time.perf_counter() - started
    assert status == 200
    # No polling: the very next request on each gateway is refused.
    results = await asyncio.gather(*(s.call("GET", "/v1/tasks", created["key"]) for s in (a, b)))
    assert [(r[0], r[1]["error"]["code"]) for r in results] == [(401, "revoked_api_key")] * 2
    assert took < ACK_TIMEOUT / 2, took  # acknowledged, not timed out
    assert a.state.metrics.invalidations._value.get() == 1
    assert b.state.metrics.invalidations._value.get() == 1


async def test_a_silent_gateway_delays_the_answer_by_at_most_the_ack_timeout(stack):
    created = await stack.create_key()
    await stack.store.register_gateway("gw_ghost", 10_000)  # registered, but never acknowledges
    started = time.perf_counter()
    status, _, _ = await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{created['id']}/revoke")
    took = time.perf_counter() - started
    assert status == 200
    assert ACK_TIMEOUT - 0.05 <= took < ACK_TIMEOUT + 1.0, took
    acked, expected = await stack.store.broadcast_revocation(created["id"], 0.3)
    assert "gw_ghost" in expected and "gw_ghost" not in acked and len(acked) == 1


async def test_registrations_expire_and_a_stopped_gateway_is_not_waited_for(stack):
    created = await stack.create_key()
    await stack.store.register_gateway("gw_gone", 50)
    await asyncio.sleep(0.1)
    acked, expected = await stack.store.broadcast_revocation(created["id"], 1.0)
    assert "gw_gone" not in expected and expected == acked and len(acked) == 1
