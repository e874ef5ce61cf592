"""Webhook delivery under load and faults (issue 17 review): one endpoint's backlog does not delay
another's first delivery (W1); the outbox keeps every entry the dispatcher has not read (W3); a
poisoned outbox entry is dropped after bounded tries while good ones flow (W4). The store, the
dispatcher and the workers run in the test over a real redis-server; receivers are real sockets."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway import webhooks
from gateway.events import FeedEntry
from gateway.store import KeyStore, connect
from gateway.store.events import encode_entry
from gateway.store.webhooks import WebhookStore
from gateway.webhook_delivery import DeliveryConfig, WebhookMetrics, dispatcher, workers
from prometheus_client import CollectorRegistry
from tests.support import eventually
from tests.support.webhooks import GOT, receiver_app

CFG = DeliveryConfig(allow_private=True, retry_base=60.0, retry_cap=60.0, timeout=30.0, visibility=40.0, poll=0.05,
                     grace=0.2, concurrency=16, per_endpoint=4)


@pytest.fixture
async def ws(redis_url):
    store = KeyStore(connect(redis_url))
    yield WebhookStore(store)
    await store.redis.aclose()


async def _endpoint(ws: WebhookStore, url: str, org: str = "acme") -> webhooks.Endpoint:
    endpoint = webhooks.Endpoint("wh_" + str(time.monotonic_ns())[-16:].zfill(16), org, url,
                                 webhooks.secret_from(b"k" * 32), created_at=1)
    await ws.put_endpoint(endpoint)
    return endpoint


async def _stop(*tasks):
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_backlog_of_5000_on_one_endpoint_does_not_delay_another(ws, aiohttp_server):
    hold = asyncio.Event()
    stuck, fresh = await aiohttp_server(receiver_app(hold=hold)), await aiohttp_server(receiver_app())
    a = await _endpoint(ws, str(stuck.make_url("/a")))
    b = await _endpoint(ws, str(fresh.make_url("/b")))
    now = int(time.time() * 1000)
    for i in range(5000):  # A's backlog, all due (older than B's event)
        await ws.enqueue(webhooks.job_id(f"evt_a{i}", a.id), now - 10_000 + i, "acme", f"evt_a{i}", "webhook.test",
                         b"{}", now - 10_000)
    task = asyncio.create_task(workers(ws, CFG, None))
    try:
        await eventually(lambda: _now(len(stuck.app[GOT]) == CFG.per_endpoint), timeout=5)  # A's share is busy
        started = time.monotonic()
        await ws.enqueue(webhooks.job_id("evt_b", b.id), int(time.time() * 1000), "acme", "evt_b", "webhook.test",
                         b"{}", int(time.time() * 1000))
        await eventually(lambda: _now(len(fresh.app[GOT]) == 1), timeout=2)
        assert time.monotonic() - started < 2
        assert len(stuck.app[GOT]) == CFG.per_endpoint  # A still holds only its share
    finally:
        hold.set()
        await _stop(task)


async def test_the_outbox_keeps_entries_the_dispatcher_has_not_read(ws, aiohttp_server):
    receiver = await aiohttp_server(receiver_app())
    await _endpoint(ws, str(receiver.make_url("/in")))
    # No dispatcher runs yet (the group exists: it was created by an earlier run). More entries than
    # the old MAXLEN cap (100,000), the first and the last ones for an endpoint.
    await ws.redis.xadd(ws.stream, {"e": encode_entry(FeedEntry("evt_seed", "quiet", 1, type="webhook.test"))})
    assert await ws.ensure_group()
    total, wanted = 101_000, set()
    for start in range(0, total, 5000):
        async with ws.redis.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + 5000, total)):
                org = "acme" if i < 10 or i >= total - 10 else "quiet"
                if org == "acme":
                    wanted.add(f"evt_{i}")
                await ws.keys.events.emit(FeedEntry(f"evt_{i}", org, int(time.time() * 1000), type="api_key.leaked",
                                                    data={"i": i}), client=pipe)
            await pipe.execute()
    assert await ws.redis.xlen(ws.stream) == total + 1  # nothing trimmed
    metrics = WebhookMetrics(CollectorRegistry())
    tasks = [asyncio.create_task(dispatcher(ws, CFG, "c1", metrics=metrics)),
             asyncio.create_task(workers(ws, CFG, None))]
    try:
        def got():
            return {g["headers"]["webhook-id"] for g in receiver.app[GOT]}
        await eventually(lambda: _now(got() >= wanted), timeout=60)
        assert got() == wanted

        async def drained():
            return await ws.redis.xlen(ws.stream) == 0
        await eventually(drained, timeout=20)
        assert (await ws.trim_outbox()) == (0, 0)
    finally:
        await _stop(*tasks)


async def test_a_poisoned_outbox_entry_does_not_stop_delivery(ws, aiohttp_server, redis_server):
    receiver = await aiohttp_server(receiver_app())
    await _endpoint(ws, str(receiver.make_url("/in")))
    metrics = WebhookMetrics(CollectorRegistry())
    tasks = [asyncio.create_task(dispatcher(ws, CFG, "c1", metrics=metrics)),
             asyncio.create_task(workers(ws, CFG, None))]
    try:
        await ws.keys.events.emit(FeedEntry("evt_first", "acme", int(time.time() * 1000), type="api_key.leaked"))
        await eventually(lambda: _now(len(receiver.app[GOT]) == 1), timeout=5)
        # As an operator's redis-cli XADD would: a timestamp no payload can hold, then garbage.
        redis_server.client.xadd(ws.stream, {"e": b'{"id":"evt_bad","org_id":"acme","at":1000000000000000000,'
                                                  b'"type":"api_key.leaked"}'})
        redis_server.client.xadd(ws.stream, {"x": b"not an entry"})
        for i in range(3):
            await ws.keys.events.emit(FeedEntry(f"evt_after{i}", "acme", int(time.time() * 1000), type="api_key.leaked"))

        def ids():
            return {g["headers"]["webhook-id"] for g in receiver.app[GOT]}
        await eventually(lambda: _now({"evt_after0", "evt_after1", "evt_after2"} <= ids()), timeout=5)
        assert not any(t.done() for t in tasks)
        # The poisoned entry: tried ENTRY_ATTEMPTS times (taken over after 5 s idle), then dropped.

        async def dropped():
            return metrics.bad_entries._value.get() == 1 and await ws.redis.xlen(ws.stream) == 0
        await eventually(dropped, timeout=30)
        assert "evt_bad" not in ids()
    finally:
        await _stop(*tasks)


async def _now(value):
    return value


async def _async(value):
    return await value


async def test_jobs_queued_by_the_earlier_layout_are_delivered(ws, aiohttp_server):
    receiver = await aiohttp_server(receiver_app())
    endpoint = await _endpoint(ws, str(receiver.make_url("/in")))
    job = webhooks.job_id("evt_old", endpoint.id)
    now = int(time.time() * 1000)
    # As the earlier version queued it: the job's hash and the shared queue only.
    await ws.redis.hset(ws.job_key(job), mapping={"org": "acme", "event": "evt_old", "type": "webhook.test",
                                                  "body": b"{}", "attempts": 0, "state": "pending", "next_at": now,
                                                  "created_at": now})
    await ws.redis.zadd(ws.queue, {job: now})
    task = asyncio.create_task(workers(ws, CFG, None))
    try:
        await eventually(lambda: _now(len(receiver.app[GOT]) == 1), timeout=5)
        assert await ws.redis.zcard(ws.queue) == 0 and await ws.migrate() == 0  # done once
    finally:
        await _stop(task)
