"""Redis faults with a real redis-server that is killed, restarted and paused (SIGSTOP) under load.

A request that needs Redis gets 503 auth_unavailable, never 401/403 and never an allow; the
gateway recovers by itself; nothing buffered is lost; no write lands after it was reported failed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from gateway import keys
from gateway.store import KeyStore, Unavailable, WriteTooLate, connect
from gateway.metrics import Metrics
from gateway.tasks import flush_usage
from gateway.usage import UsageBuffer
from tests.support import free_port, wait_for


class OwnRedis:
    """A redis-server of one test, with AOF on so that a restart keeps the keys."""

    def __init__(self, tmp: Path) -> None:
        self.port, self.dir, self.proc = free_port(), tmp, None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis did not start"
                time.sleep(0.02)
            finally:
                client.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.resume()
            self.kill()


@pytest.fixture
def own_redis(tmp_path):
    r = OwnRedis(tmp_path)
    r.start()
    yield r
    r.stop()


async def _load(stack, key: str, stop: asyncio.Event, out: list, pause: float = 0.005) -> None:
    while not stop.is_set():
        status, body, resp = await stack.call("GET", "/v1/tasks", key)
        code = body["error"]["code"] if isinstance(body, dict) and "error" in body else None
        out.append((time.monotonic(), status, code, resp.headers.get("Retry-After")))
        await asyncio.sleep(pause)


async def test_killed_and_restarted_redis_never_turns_into_an_allow_or_a_401(own_redis, make_stack):
    stack = await make_stack(redis=own_redis.url, cache_ttl=0, auth_failure_limit=0)  # every request needs Redis
    valid = await stack.create_key(name="valid")
    revoked = await stack.create_key(name="revoked")
    await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{revoked['id']}/revoke")
    unknown = keys.generate_key()
    results = {"valid": [], "revoked": [], "unknown": []}
    stop = asyncio.Event()
    loads = [asyncio.create_task(_load(stack, k, stop, results[name]))
             for name, k in (("valid", valid["key"]), ("revoked", revoked["key"]), ("unknown", unknown))
             for _ in range(3)]
    await asyncio.sleep(0.4)
    own_redis.kill()
    await asyncio.sleep(1.0)
    own_redis.start()
    restarted = time.monotonic()
    await asyncio.sleep(2.5)
    stop.set()
    await asyncio.gather(*loads)

    outage = [r for r in results["valid"] if r[1] == 503]
    assert outage, "the outage was not seen"
    assert all(code == "auth_unavailable" and retry for _, _, code, retry in outage)
    assert {r[1] for r in results["valid"]} == {200, 503}
    assert {r[1] for r in results["revoked"]} <= {401, 503} and {r[2] for r in results["revoked"]} <= {
        "revoked_api_key", "auth_unavailable"}
    assert {r[1] for r in results["unknown"]} <= {401, 503} and {r[2] for r in results["unknown"]} <= {
        "invalid_api_key", "auth_unavailable"}
    recovered_at = min(t for t, status, _, _ in results["valid"] if status == 200 and t > restarted)
    assert recovered_at - restarted < 2.0, recovered_at - restarted
    assert all(status == 200 for t, status, _, _ in results["valid"] if t > recovered_at + 0.1)
    await wait_for(lambda: stack.state.cache.trusted, timeout=2.0)  # resubscribed by itself


async def test_paused_redis_answers_503_quickly_readyz_false_and_recovers(own_redis, make_stack):
    stack = await make_stack(redis=own_redis.url, cache_ttl=0)
    created = await stack.create_key(name="before")
    own_redis.pause()
    try:
        started = time.monotonic()
        status, body, resp = await stack.call("GET", "/v1/tasks", created["key"])
        assert status == 503 and body["error"]["code"] == "auth_unavailable" and resp.headers["Retry-After"]
        assert time.monotonic() - started < 2.5  # every Redis call has a timeout
        async with stack.http.get(stack.ops + "/readyz") as ready:
            assert ready.status == 503 and (await ready.json())["checks"]["redis"] is False
        status, body, _ = await stack.admin_call(
            "POST", "/v1/orgs/acme/api-keys", json={"name": "during", "scopes": ["tasks:read"]})
        assert status == 503 and body["error"]["code"] == "store_unavailable"
    finally:
        own_redis.resume()
    resumed = time.monotonic()

    async def ok():
        return (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 200

    while not await ok():
        assert time.monotonic() - resumed < 2.0
        await asyncio.sleep(0.05)
    async with stack.http.get(stack.ops + "/readyz") as ready:
        assert ready.status == 200
    await asyncio.sleep(0.3)  # anything Redis still had queued has run by now
    status, listed, _ = await stack.admin_call("GET", "/v1/orgs/acme/api-keys")
    assert [k["name"] for k in listed["data"]] == ["before"]


async def test_a_write_redis_runs_after_its_deadline_changes_nothing(own_redis):
    store = KeyStore(connect(own_redis.url, timeout=0.2))
    store.write_deadline_ms = 300
    try:
        existing, _ = await store.create(org_id="o", name="kept", scopes=["tasks:read"], expires_at=None,
                                         actor="t", now_ms=1)
        own_redis.pause()
        try:
            with pytest.raises((redis.RedisError, Unavailable)):  # its read of the version, or the write
                await store.revoke(org_id="o", key_id=existing.id, actor="t", now_ms=2)
            await asyncio.sleep(0.5)  # the revoke is still queued in the paused server
        finally:
            own_redis.resume()
        await asyncio.sleep(0.3)
        assert (await store.get(existing.id)).revoked_at is None  # refused by its deadline
        with pytest.raises(WriteTooLate):
            store.write_deadline_ms = -1000
            await store.create(org_id="o", name="late", scopes=["tasks:read"], expires_at=None, actor="t", now_ms=3)
        with pytest.raises(WriteTooLate):
            await store.revoke(org_id="o", key_id=existing.id, actor="t", now_ms=4)
        store.write_deadline_ms = 5000
        assert (await store.get(existing.id)).revoked_at is None
        assert [e.action for e in (await store.activity("o")).events] == ["api_key.created"]  # no event either
        assert [r.name for r in (await store.list("o")).records] == ["kept"]
        assert sorted(await store.redis.keys("gw:key:*")) == [store._rec(existing.id).encode(),
                                                               store._key_log(existing.id).encode()]  # and its log
    finally:
        await store.redis.aclose()


async def test_a_cancelled_redis_call_never_hands_its_reply_to_the_next_one(own_redis):
    store = KeyStore(connect(own_redis.url, timeout=2.0))
    try:
        made = [await store.create(org_id="o", name=f"k{i}", scopes=["tasks:read"], expires_at=None, actor="t",
                                   now_ms=i) for i in range(2)]
        for round_ in range(5):
            own_redis.pause()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(store.get(made[0][0].id), 0.05)  # cancelled while waiting
            own_redis.resume()
            got = await store.get(made[1][0].id)
            assert got is not None and got.id == made[1][0].id, round_
    finally:
        await store.redis.aclose()


async def test_the_stores_reads_raise_its_own_error_for_a_timeout_and_a_dead_redis(own_redis):
    """What the hot path's fail-closed clause catches: Unavailable, for every Redis or socket error."""
    store = KeyStore(connect(own_redis.url, timeout=0.2))
    try:
        made, _ = await store.create(org_id="o", name="k", scopes=["tasks:read"], expires_at=None, actor="t", now_ms=1)
        assert [r.id for r in await store.get_many([made.id, made.id])] == [made.id, made.id]
        own_redis.pause()  # a timeout
        for read in (store.get(made.id), store.get_many([made.id]), store.get_many([made.id, "key_x"])):
            with pytest.raises(Unavailable) as caught:
                await read
            assert isinstance(caught.value.__cause__, redis.RedisError)
        own_redis.stop()  # nothing listening: connection refused
        for read in (store.get(made.id), store.get_many([made.id, "key_x"])):
            with pytest.raises(Unavailable):
                await read
    finally:
        await store.redis.aclose()


async def test_stale_if_error_is_opt_in(own_redis, make_stack):
    strict = await make_stack(redis=own_redis.url)
    lenient = await make_stack(redis=own_redis.url, stale_if_error=60)
    created = await strict.create_key()
    for stack in (strict, lenient):
        assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 200  # cached
    own_redis.pause()
    try:
        await wait_for(lambda: not strict.state.cache.trusted and not lenient.state.cache.trusted, timeout=3)
        status, body, _ = await strict.call("GET", "/v1/tasks", created["key"])
        assert status == 503 and body["error"]["code"] == "auth_unavailable"  # fail closed by default
        assert (await lenient.call("GET", "/v1/tasks", created["key"]))[0] == 200  # the documented opt-in
        assert lenient.state.metrics.stale_served._value.get() == 1
        status, _, _ = await lenient.call("GET", "/v1/tasks", keys.generate_key())
        assert status == 503  # only keys verified before the outage
    finally:
        own_redis.resume()


async def test_a_flush_that_timed_out_but_ran_later_is_not_counted_twice(own_redis):
    store = KeyStore(connect(own_redis.url, timeout=0.2))
    metrics = Metrics()
    try:
        record, _ = await store.create(org_id="o", name="k", scopes=["tasks:read"], expires_at=None, actor="t",
                                       now_ms=1)
        buf = UsageBuffer()
        for _ in range(3):
            buf.add(record.id, 1_000)
        assert await flush_usage(store, buf, metrics)
        for _ in range(2):
            buf.add(record.id, 2_000)
        own_redis.pause()
        try:
            assert not await flush_usage(store, buf, metrics)  # sent, but no answer in time
        finally:
            own_redis.resume()
        got = await store.get_for_org("o", record.id)
        assert (got.last_used_at, got.request_count) == (2_000, 5)  # Redis ran it after all
        assert await flush_usage(store, buf, metrics)  # the retry writes totals, it does not add
        got = await store.get_for_org("o", record.id)
        assert (got.last_used_at, got.request_count) == (2_000, 5)
        assert metrics.flushes.labels("failed")._value.get() == 1
    finally:
        await store.redis.aclose()


async def test_last_used_is_kept_through_an_outage_and_written_after(own_redis, make_stack):
    stack = await make_stack(redis=own_redis.url)
    created = await stack.create_key()
    for _ in range(3):
        assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 200
    own_redis.pause()
    try:
        assert not await flush_usage(stack.state.store, stack.state.usage, stack.state.metrics)
        assert len(stack.state.usage) == 1
        assert stack.state.metrics.flushes.labels("failed")._value.get() == 1
    finally:
        own_redis.resume()
    assert await flush_usage(stack.state.store, stack.state.usage, stack.state.metrics)
    status, listed, _ = await stack.admin_call("GET", "/v1/orgs/acme/api-keys")
    assert listed["data"][0]["request_count"] == 3 and listed["data"][0]["last_used_at"]
