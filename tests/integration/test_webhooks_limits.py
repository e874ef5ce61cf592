"""Webhook bounds and faults through the admin API (issue 17 review): test-sends are rate-limited
and an endpoint's queue is bounded (W2); a rotated secret keeps signing for its grace, checked by
the independent verifier (W5); every webhook route answers 503 store_unavailable with Redis down
(W6); an endpoint's huge answer is read only up to --webhooks-max-response. Real redis-server."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from gateway import webhooks
from gateway.store import KeyStore, Unavailable, connect
from gateway.store.webhooks import WebhookStore
from tests.integration.test_webhooks import FAST, _hook
from tests.support import eventually, wait_for
from tests.support.webhooks import Verifier, outbox_handled, verifier_install


async def test_test_sends_are_rate_limited_and_the_queue_is_bounded(make_stack, redis_server):
    stack = await make_stack(admin_settings={**FAST, "webhooks_test_sends": 5, "webhooks_max_queued": 3,
                                             "webhooks_retry_base": 60.0, "webhooks_retry_cap": 60.0})
    await stack.create_key(org="acme")
    await wait_for(lambda: outbox_handled(redis_server.client))  # the key's created event: before the endpoint
    hook = await _hook(stack, "acme", "http://127.0.0.1:9/closed")  # refused: every job waits its retry
    path = f"/v1/orgs/acme/webhooks/{hook['id']}"
    for _ in range(5):
        status, body, _ = await stack.admin_call("POST", path + "/test")
        assert status == 202, body
    status, body, resp = await stack.admin_call("POST", path + "/test")
    assert (status, body["error"]["code"]) == (429, "too_many_test_sends") and int(resp.headers["Retry-After"]) >= 1
    # 5 queued past a bound of 3: the last 2 are dead letters at once, with the reason, counted.
    _, listed, _ = await stack.admin_call("GET", path + "/deliveries")
    dead = [d for d in listed["data"] if d["dead_lettered"]]
    assert len(listed["data"]) == 5 and len(dead) == 2, listed
    assert all(d["error"].startswith("not queued") and d["attempts"] == 0 for d in dead)
    metrics = stack.admin_state.metrics.webhooks
    assert metrics.deliveries.labels("overflow")._value.get() == 2


async def test_a_rotated_secret_signs_beside_the_new_one_for_its_grace(make_stack):
    verifier = Verifier(verifier_install())
    try:
        stack = await make_stack(admin_settings={**FAST, "webhooks_rotation_grace": 1.5})
        await stack.create_key(org="acme")
        hook = await _hook(stack, "acme", verifier.url)
        path = f"/v1/orgs/acme/webhooks/{hook['id']}"
        before = time.time()
        status, rotated, _ = await stack.admin_call("POST", path + "/rotate-secret")
        assert status == 200 and rotated["secret"] != hook["secret"]
        until = rotated["previous_secret_expires_at"]
        assert until and before + 1 <= _epoch(until) <= time.time() + 2

        async def send(secret: str) -> dict:
            verifier.set_secret(secret)
            status, queued, _ = await stack.admin_call("POST", path + "/test")
            assert status == 202

            async def arrived():
                got = [g for g in verifier.received() if g["id"] == queued["event_id"]]
                return got[0] if got else None
            return await eventually(arrived, timeout=5)
        # Within the grace, a receiver that still has the old secret and one that has the new accept.
        assert (await send(hook["secret"]))["verified"]
        assert (await send(rotated["secret"]))["verified"]
        await asyncio.sleep(max(0.0, _epoch(until) - time.time()) + 0.2)
        assert not (await send(hook["secret"]))["verified"]  # the old one no longer signs
        assert (await send(rotated["secret"]))["verified"]
        stored = await stack.admin_state.store.redis.hget("gw:org:{acme}:webhooks", hook["id"])
        assert hook["secret"].encode() not in stored  # deleted after the grace
    finally:
        verifier.stop()


async def test_every_webhook_route_answers_503_with_redis_down(make_stack, redis_server):
    stack = await make_stack(admin_settings={**FAST, "redis_timeout": 0.5})
    await stack.create_key(org="acme")
    hook = await _hook(stack, "acme", "http://127.0.0.1:9/hook")
    path = f"/v1/orgs/acme/webhooks/{hook['id']}"
    redis_server.stop()
    try:
        for method, url, body in (("GET", "/v1/orgs/acme/webhooks", None), ("GET", path, None),
                                  ("GET", path + "/deliveries", None), ("POST", path + "/test", None),
                                  ("POST", "/v1/orgs/acme/webhooks", {"url": "http://127.0.0.1:9/x"}),
                                  ("PATCH", path, {"description": "x"}), ("POST", path + "/rotate-secret", None),
                                  ("DELETE", path, None)):
            status, answer, _ = await stack.admin_call(method, url, **({} if body is None else {"json": body}))
            assert (status, answer["error"]["code"]) == (503, "store_unavailable"), (method, url, answer)
    finally:
        redis_server.start()


async def test_every_webhook_store_call_raises_unavailable(redis_url, redis_server):
    store = KeyStore(connect(redis_url, timeout=0.5))
    ws = WebhookStore(store)
    redis_server.stop()
    try:
        endpoint = webhooks.Endpoint("wh_0000000000000000", "acme", "http://x", webhooks.secret_from(b"k" * 32))
        for call in (ws.deliveries(endpoint.id), ws.depth(), ws.endpoints("acme"), ws.endpoint("acme", endpoint.id),
                     ws.put_endpoint(endpoint), ws.delete_endpoint("acme", endpoint.id),
                     ws.replace_endpoint(endpoint, endpoint), ws.test_send_allowed(endpoint.id, 1, 60),
                     ws.enqueue("evt|" + endpoint.id, 0, "acme", "evt", "t", b"{}", 0), ws.claim(0, 1, 1, 1, 1),
                     ws.finish("evt|" + endpoint.id, "ok", 0), ws.ensure_group(), ws.read("c", 1, None),
                     ws.reclaim("c", 1, 1), ws.handled(["1-0"]), ws.trim_outbox()):
            with pytest.raises(Unavailable):
                await call
    finally:
        redis_server.start()
        await store.redis.aclose()


async def test_a_huge_answer_is_read_only_up_to_the_cap(make_stack, aiohttp_server):
    sent = {"complete": False, "bytes": 0}

    async def huge(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=200)
        resp.content_length = 10 * 1024 * 1024
        await resp.prepare(request)
        chunk = b"x" * 65536
        try:
            for _ in range(160):
                await resp.write(chunk)
                sent["bytes"] += len(chunk)
            sent["complete"] = True
        except (ConnectionResetError, ConnectionError):
            pass
        return resp
    app = web.Application()
    app.router.add_post("/hook", huge)
    server = await aiohttp_server(app)
    stack = await make_stack(admin_settings={**FAST, "webhooks_max_response": 65536, "webhooks_timeout": 5.0})
    await stack.create_key(org="acme")
    hook = await _hook(stack, "acme", str(server.make_url("/hook")))
    status, queued, _ = await stack.admin_call("POST", f"/v1/orgs/acme/webhooks/{hook['id']}/test")
    assert status == 202

    async def delivered():
        _, body, _ = await stack.admin_call("GET", f"/v1/orgs/acme/webhooks/{hook['id']}/deliveries")
        rows = [d for d in body["data"] if d["event_id"] == queued["event_id"] and d["state"] != "pending"]
        return rows[0] if rows else None
    row = await eventually(delivered, timeout=5)
    assert (row["state"], row["status_code"], row["attempts"]) == ("delivered", 200, 1)
    await asyncio.sleep(0.3)
    assert not sent["complete"], sent  # the admin API stopped reading and closed the connection


def _epoch(text: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def test_readyz_reports_a_dead_webhook_task(make_stack):
    stack = await make_stack(admin_settings=FAST)
    assert (await stack.admin_state.ready_checks())["webhook_tasks"] is True
    wh = stack.admin_state.webhook_tasks_alive.__self__  # admin_api.webhooks.Webhooks of this process
    wh.tasks[0].cancel()  # as if the dispatcher had ended
    await asyncio.gather(wh.tasks[0], return_exceptions=True)
    assert (await stack.admin_state.ready_checks())["webhook_tasks"] is False
