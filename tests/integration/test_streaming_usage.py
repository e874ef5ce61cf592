"""Bodies stream both ways without buffering; last-used writes are batched and monotonic."""

from __future__ import annotations

import hashlib
import resource

from gateway.tasks import flush_usage
from tests.support import eventually

MB = 1024 * 1024


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def test_50_mb_streams_both_ways_without_buffering(stack):
    created = await stack.create_key(scopes=["tasks:read", "tasks:write"])
    chunk = bytes(range(256)) * 256  # 64 KiB
    total = 50 * MB
    digest = hashlib.sha256()
    for _ in range(total // len(chunk)):
        digest.update(chunk)

    async def body():
        for _ in range(total // len(chunk)):
            yield chunk

    before = peak_rss_mb()
    status, echoed, _ = await stack.call("POST", "/v1/tasks", created["key"], data=body(),
                                         headers={"Content-Length": str(total)})
    assert status == 200, echoed
    assert echoed["body_bytes"] == total and echoed["body_sha256"] == digest.hexdigest()

    received = 0
    async with stack.http.get(f"{stack.gateway}/v1/tasks?download={total}",
                              headers={"Authorization": f"Bearer {created['key']}"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(total)
        async for part in resp.content.iter_chunked(MB):
            received += len(part)
    assert received == total
    # Gateway, upstream and client share this process: buffering 50 MB anywhere would show.
    assert peak_rss_mb() - before < 25


async def test_many_requests_one_write_per_flush_and_admin_shows_it(stack, redis_server):
    created = await stack.create_key()
    other = await stack.create_key()
    for _ in range(20):
        assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 200
    assert (await stack.call("GET", "/v1/tasks", other["key"]))[0] == 200
    redis_server.client.config_resetstat()
    assert await flush_usage(stack.state.store, stack.state.usage, stack.state.metrics)
    stats = redis_server.client.info("commandstats")
    # One HSET of this node's hash for both keys and all 21 requests (in one MULTI/EXEC, between
    # two small scripts), and one history script (one HSET of this node's hash of the hour and one
    # of the day inside it) (exactness without the listener's pings around it:
    # tests/integration/test_usage_ledger.py).
    assert stats["cmdstat_exec"]["calls"] == 1 and stats["cmdstat_eval"]["calls"] == 3
    assert stats["cmdstat_hset"]["calls"] == 3 and "cmdstat_hincrby" not in stats
    _, listed, _ = await stack.admin_call("GET", "/v1/orgs/acme/api-keys")
    by_id = {k["id"]: k for k in listed["data"]}
    assert by_id[created["id"]]["request_count"] == 20
    assert by_id[created["id"]]["last_used_at"] is not None
    assert by_id[other["id"]]["request_count"] == 1


async def test_never_used_key_has_no_last_used(stack):
    created = await stack.create_key()
    assert created["last_used_at"] is None and created["request_count"] == 0
    stack.state.usage.add("key_doesnotexist0000", 1)
    assert await flush_usage(stack.state.store, stack.state.usage, stack.state.metrics)
    assert await stack.store.get("key_doesnotexist0000") is None  # usage never creates records
    one = await stack.store.get_for_org("acme", created["id"])
    assert one.last_used_at is None and one.request_count == 0


async def test_background_flusher_writes_within_its_interval(make_stack):
    stack = await make_stack(flush_interval=0.1)
    created = await stack.create_key()
    assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 200

    async def used():
        return (await stack.store.get_for_org("acme", created["id"])).last_used_at

    assert await eventually(used, timeout=3) >= created_ms(created)


def created_ms(created) -> int:
    import datetime as dt

    return int(dt.datetime.fromisoformat(created["created_at"].replace("Z", "+00:00")).timestamp() * 1000)
