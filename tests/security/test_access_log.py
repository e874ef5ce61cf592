"""What a real `gateway serve` logs about refused requests: the route that matched, and who
the key belongs to once it is known to be genuine (never the key; unknown keys name nobody)."""

from __future__ import annotations

import asyncio
import time
import urllib.request

from gateway import keys
from gateway.store import KeyStore, connect
from tests.security.conftest import SECURITY_ORG, create_keys


def revoke(redis_url: str, key_id: str) -> None:
    async def run() -> None:
        store = KeyStore(connect(redis_url))
        try:
            assert await store.revoke(org_id=SECURITY_ORG, key_id=key_id, actor="test",
                                      now_ms=int(time.time() * 1000), ack_timeout=1.5)
        finally:
            await store.redis.aclose()

    asyncio.run(run())


def create_expired(redis_url: str) -> dict:
    async def run() -> dict:
        store = KeyStore(connect(redis_url))
        try:
            now = int(time.time() * 1000)
            record, secret = await store.create(org_id=SECURITY_ORG, name="expired", scopes=["tasks:read"],
                                                expires_at=now - 1000, actor="test", now_ms=now - 2000)
            return {"key": secret, "id": record.id}
        finally:
            await store.redis.aclose()

    return asyncio.run(run())


def logged(gateway, resp) -> dict:
    entry = gateway.log_entry(resp.header("X-Request-Id"))
    assert entry["status"] == resp.status
    return entry


def test_a_403_logs_the_route_and_the_key(gateway):
    reader = gateway.keys["reader"]
    resp = gateway.request("POST", "/v1/tasks", key=reader["key"])
    assert resp.status == 403
    entry = logged(gateway, resp)
    assert entry["outcome"] == "insufficient_scope" and entry["route"] == "/v1/tasks"
    assert entry["key_id"] == reader["id"] and entry["org_id"] == SECURITY_ORG
    with urllib.request.urlopen(gateway.ops + "/metrics", timeout=5) as answer:
        metrics = answer.read().decode()
    assert 'gateway_requests_total{outcome="insufficient_scope",route="/v1/tasks"}' in metrics
    assert 'outcome="insufficient_scope",route="-"' not in metrics
    assert reader["key"] not in gateway.all_logs()


def test_a_revoked_or_expired_key_is_logged_with_its_id(gateway, redis_server):
    doomed = create_keys(redis_server.url, {"doomed": ("tasks:read",)})["doomed"]
    revoke(redis_server.url, doomed["id"])
    expired = create_expired(redis_server.url)
    for key, outcome in [(doomed, "revoked_api_key"), (expired, "expired_api_key")]:
        resp = gateway.request("GET", "/v1/tasks", key=key["key"])
        assert resp.status == 401 and resp.json()["error"]["code"] == outcome
        entry = logged(gateway, resp)
        assert entry["outcome"] == outcome and entry["route"] == "/v1/tasks"
        assert entry["key_id"] == key["id"] and entry["org_id"] == SECURITY_ORG
        assert key["key"] not in gateway.all_logs()


def test_an_unknown_key_names_nobody(gateway):
    unknown = keys.generate_key()  # well-formed, in no record
    reader = gateway.keys["reader"]["key"]
    bad_checksum = reader[:-1] + ("a" if reader[-1] != "a" else "b")
    for key in (unknown, bad_checksum):
        resp = gateway.request("GET", "/v1/tasks", key=key)
        assert resp.status == 401
        entry = logged(gateway, resp)
        assert entry["outcome"] == "invalid_api_key" and entry["key_id"] is None and entry["org_id"] is None
