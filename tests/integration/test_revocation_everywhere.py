"""Revocation reaches every gateway before the admin API answers, or the wait is bounded."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import redis.asyncio as aioredis

from gateway.cache import MISS
from gateway.store import KeyStore
from gateway.tasks import ACK_TIMEOUT, RESUBSCRIBE_AFTER, SILENCE_LIMIT
from tests.support import wait_for
from tests.support.webhooks import outbox_handled


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


def _hgetalls(redis_server) -> int:
    return int(redis_server.client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0))


async def test_a_loop_that_lagged_past_the_silence_limit_keeps_its_cache(make_stack, redis_server):
    # A burst (or a starved machine) can hold the event loop past SILENCE_LIMIT: no heartbeat is
    # heard, so trust lapses. The cache is bypassed at once, but not emptied: the next beat that
    # comes back restores it, and the burst is not made worse by a storm of misses.
    stack = await make_stack()
    created = await stack.create_key()
    st = stack.state
    assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 200  # now cached
    await wait_for(lambda: outbox_handled(redis_server.client), timeout=5)  # the dispatcher's reads are done
    resyncs = st.metrics.resyncs._value.get()
    time.sleep(SILENCE_LIMIT + 0.5)  # the loop is blocked: the listener hears nothing
    assert not st.cache.trusted
    before = _hgetalls(redis_server)
    assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 200  # bypassed: read from Redis
    assert _hgetalls(redis_server) - before == 1
    await wait_for(lambda: st.cache.trusted, timeout=SILENCE_LIMIT)  # the next beat came back
    before = _hgetalls(redis_server)
    for _ in range(3):
        assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 200
    assert _hgetalls(redis_server) == before  # served from the cache it kept
    assert st.metrics.resyncs._value.get() == resyncs  # the subscription was not renewed


async def test_a_revocation_made_while_the_loop_lagged_is_applied_before_the_cache_is_trusted(
        make_stack, redis_url):
    stack = await make_stack()
    created = await stack.create_key()
    st = stack.state
    assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 200  # now cached

    def revoke_elsewhere() -> None:  # another admin process, while this gateway's loop is blocked
        async def revoke() -> None:
            other = KeyStore(aioredis.from_url(redis_url))
            await other.revoke(org_id="acme", key_id=created["id"], actor="operator",
                               now_ms=int(time.time() * 1000), ack_timeout=ACK_TIMEOUT)
            await other.redis.aclose()
        asyncio.run(revoke())

    revoker = threading.Thread(target=revoke_elsewhere)
    revoker.start()
    time.sleep(SILENCE_LIMIT + 0.5)  # blocked: the revocation and the beats wait on the subscription
    revoker.join(5)
    assert not revoker.is_alive()
    # Untrusted: read from Redis. Then trusted again only after the invalidation came in.
    status, body, _ = await stack.call("GET", "/v1/tasks", created["key"])
    assert (status, body["error"]["code"]) == (401, "revoked_api_key")
    await wait_for(lambda: st.cache.trusted, timeout=SILENCE_LIMIT)
    assert st.cache.get(created["id"]) is MISS or st.cache.get(created["id"]).revoked_at is not None
    status, body, _ = await stack.call("GET", "/v1/tasks", created["key"])
    assert (status, body["error"]["code"]) == (401, "revoked_api_key")


async def test_a_channel_that_stays_silent_is_renewed_and_the_cache_emptied(make_stack, redis_server):
    stack = await make_stack()
    created = await stack.create_key()
    st = stack.state
    assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 200
    resyncs = st.metrics.resyncs._value.get()
    redis_server.proc.send_signal(signal.SIGSTOP)  # nothing comes back, and no error either
    try:
        await wait_for(lambda: st.metrics.resyncs._value.get() > resyncs,
                       timeout=SILENCE_LIMIT + RESUBSCRIBE_AFTER + 1.0)
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    await wait_for(lambda: st.cache.trusted, timeout=5.0)  # subscribed again
    assert len(st.cache) == 0  # a renewed subscription starts from an empty cache
