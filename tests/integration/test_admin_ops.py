"""The admin API's ops side: failed-auth throttle, ops listener (/healthz, /readyz, /metrics),
access log, and the JSON envelope on every ops listener's 404/405. Real redis-server, real HTTP."""

from __future__ import annotations

import logging

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from admin_api.app import ADMIN, make_admin_app
from gateway import keys
from gateway.app import make_ops_app
from gateway.config import AdminSettings
from tests.support import OPERATOR_TOKEN, SCOPES, eventually
from tests.integration.test_redis_faults import OwnRedis


@pytest.fixture
async def make_admin(aiohttp_server, redis_url, clock):
    """Factory: an admin API and its ops listener on real sockets, with AdminSettings overrides."""
    sessions = []

    async def factory(**overrides):
        settings = AdminSettings(**{"redis": redis_url, "scopes": str(SCOPES), "operator_tokens": (OPERATOR_TOKEN,),
                                    "reload_interval": 0.0, **overrides})
        app = make_admin_app(settings, clock=clock)
        admin = await aiohttp_server(app)
        ops = await aiohttp_server(make_ops_app(app[ADMIN]))
        http = aiohttp.ClientSession()
        sessions.append(http)
        return app, str(admin.make_url("")).rstrip("/"), str(ops.make_url("")).rstrip("/"), http

    yield factory
    for http in sessions:
        await http.close()


async def call(http, url, token=None, method="GET", **kw):
    headers = dict(kw.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with http.request(method, url, headers=headers, **kw) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


async def create_key(http, admin, org="acme", scopes=("api_keys:read",)):
    status, body, _ = await call(http, f"{admin}/v1/orgs/{org}/api-keys", OPERATOR_TOKEN, "POST",
                                 json={"name": "k", "scopes": list(scopes)})
    assert status == 201, body
    return body


def hgetall_calls(redis_server) -> int:
    return int(redis_server.client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0))


async def test_failed_auth_is_throttled_before_redis_and_known_credentials_skip_it(make_admin, redis_server):
    app, admin, ops, http = await make_admin(auth_failure_limit=5, auth_failure_window=60)
    reader = await create_key(http, admin)  # verified once: this process knows it
    fresh = await create_key(http, admin)  # valid, never used here
    assert (await call(http, f"{admin}/v1/me", reader["key"]))[0] == 200
    url = f"{admin}/v1/orgs/acme/api-keys"
    statuses = []
    for i in range(40):
        wrong = keys.generate_key()  # well-formed: without the throttle, each costs a Redis read
        before = hgetall_calls(redis_server)
        status, body, headers = await call(http, url, wrong if i % 2 else "not-a-token-at-all")
        statuses.append(status)
        if status == 429:
            assert body["error"]["code"] == "too_many_failed_attempts" and int(headers["Retry-After"]) >= 1
            assert hgetall_calls(redis_server) == before  # decided before any Redis command
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429] * 35
    # A missing token is still 401 (nothing was tried), a fresh valid key waits like any guess...
    assert (await call(http, url))[0] == 401
    assert (await call(http, url, fresh["key"]))[0] == 429
    # ...while credentials this process accepted before still work from the same address.
    assert (await call(http, url, OPERATOR_TOKEN))[0] == 200
    assert (await call(http, url, reader["key"]))[0] == 200
    async with http.get(ops + "/metrics") as resp:
        text = await resp.text()
    assert "gateway_admin_auth_throttled_total 36.0" in text and "gateway_admin_auth_throttle_clients 1.0" in text


async def test_an_operator_token_never_accepted_waits_too(make_admin):
    _, admin, _, http = await make_admin(auth_failure_limit=2)
    for _ in range(2):
        assert (await call(http, f"{admin}/v1/me", "wrong-token-wrong-token"))[0] == 401
    status, body, _ = await call(http, f"{admin}/v1/me", OPERATOR_TOKEN)
    assert status == 429 and body["error"]["code"] == "too_many_failed_attempts"


async def test_behind_a_trusted_proxy_each_client_has_its_own_bucket(make_admin):
    _, admin, _, http = await make_admin(auth_failure_limit=2, trusted_proxies=("127.0.0.1/32",))
    guesser, other = {"X-Forwarded-For": "203.0.113.5"}, {"X-Forwarded-For": "203.0.113.6"}
    got = [(await call(http, f"{admin}/v1/me", "wrong-token-wrong-token", headers=guesser))[0] for _ in range(3)]
    assert got == [401, 401, 429]
    assert (await call(http, f"{admin}/v1/me", "wrong-token-wrong-token", headers=other))[0] == 401
    # Spoofing X-Forwarded-For from an untrusted peer is what the default (no trusted proxies) ignores:
    _, admin2, _, http2 = await make_admin(auth_failure_limit=2)
    got = [(await call(http2, f"{admin2}/v1/me", "wrong-token-wrong-token",
                       headers={"X-Forwarded-For": f"198.51.100.{i}"}))[0] for i in range(3)]
    assert got == [401, 401, 429]


async def test_admin_ops_listener_readyz_follows_redis(aiohttp_server, tmp_path, clock):
    own = OwnRedis(tmp_path)
    own.start()
    app = make_admin_app(AdminSettings(redis=own.url, scopes=str(SCOPES), operator_tokens=(OPERATOR_TOKEN,),
                                       redis_timeout=0.2), clock=clock)
    await aiohttp_server(app)
    ops = await aiohttp_server(make_ops_app(app[ADMIN]))
    async with aiohttp.ClientSession() as http:
        async def readyz():
            async with http.get(str(ops.make_url("/readyz"))) as resp:
                return resp.status, await resp.json()

        try:
            assert await readyz() == (200, {"ready": True, "checks": {"rules_loaded": True, "redis": True}})
            own.kill()
            status, body = await readyz()
            assert status == 503 and body["checks"] == {"rules_loaded": True, "redis": False}
            async with http.get(str(ops.make_url("/healthz"))) as resp:
                assert resp.status == 200  # alive, only not ready: no restart for a Redis outage
            own.start()

            async def ready_again():
                return (await readyz())[0] == 200

            await eventually(ready_again)
        finally:
            if own.proc.poll() is None:
                own.kill()


async def test_admin_metrics_count_requests_by_route_status_outcome_and_redis_errors(make_admin, redis_server):
    _, admin, ops, http = await make_admin()
    redis_server.client.config_set("requirepass", "now-locked")  # before the admin API's first connection
    try:
        assert (await call(http, f"{admin}/v1/orgs/acme/api-keys", OPERATOR_TOKEN))[0] == 503
    finally:
        redis_server.client.execute_command("AUTH", "now-locked")
        redis_server.client.config_set("requirepass", "")
    await create_key(http, admin)
    await call(http, f"{admin}/v1/orgs/acme/api-keys", OPERATOR_TOKEN)
    await call(http, f"{admin}/v1/orgs/acme/api-keys/key_0123456789ABCDEF", OPERATOR_TOKEN)
    await call(http, f"{admin}/nowhere")
    async with http.get(ops + "/metrics") as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    counts = {(s.labels["route"], s.labels["status"], s.labels["outcome"]): s.value
              for s in families["gateway_admin_requests"].samples if s.name == "gateway_admin_requests_total"}
    assert counts == {
        ("/v1/orgs/{org_id}/api-keys", "201", "ok"): 1,  # the create (POST)
        ("/v1/orgs/{org_id}/api-keys", "200", "ok"): 1,
        ("/v1/orgs/{org_id}/api-keys/{key_id}", "404", "key_not_found"): 1,
        ("-", "404", "not_found"): 1,
        ("/v1/orgs/{org_id}/api-keys", "503", "store_unavailable"): 1,
    }
    assert [s.value for s in families["gateway_admin_redis_errors"].samples
            if s.name == "gateway_admin_redis_errors_total"] == [1]
    assert "gateway_admin_request_duration_seconds" in families


async def test_admin_access_log_has_who_and_what_but_no_credential(make_admin, caplog):
    _, admin, _, http = await make_admin()
    manager = await create_key(http, admin, scopes=("api_keys:manage",))
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        await call(http, f"{admin}/v1/orgs/acme/api-keys?cursor=&secret=hunter2", manager["key"])
        await call(http, f"{admin}/v1/orgs/acme/api-keys", manager["key"], "POST",
                   json={"name": "body-name-xyz", "scopes": ["api_keys:read"]})
        await call(http, f"{admin}/v1/me", "wrong-token-wrong-token")
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    listed, created, denied = lines[-3:]
    assert listed == {
        "request_id": listed["request_id"], "method": "GET", "path": "/v1/orgs/acme/api-keys",
        "route": "/v1/orgs/{org_id}/api-keys", "org_id": "acme", "key_id": manager["id"],
        "actor": f"key:{manager['id']}", "status": 200, "outcome": "ok", "duration_ms": listed["duration_ms"],
    }
    assert listed["request_id"].startswith("req_") and listed["duration_ms"] >= 0
    assert created["method"] == "POST" and created["status"] == 201 and created["org_id"] == "acme"
    assert denied["status"] == 401 and denied["outcome"] == "invalid_token" and denied["actor"] is None
    text = caplog.text
    for secret in (manager["key"], OPERATOR_TOKEN, "wrong-token-wrong-token", "hunter2", "body-name-xyz", "Bearer"):
        assert secret not in text


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/nope", 404, "not_found"),
    ("GET", "/metrics/", 404, "not_found"),
    ("POST", "/readyz", 405, "method_not_allowed"),
    ("DELETE", "/metrics", 405, "method_not_allowed"),
])
async def test_every_ops_listener_answers_404_and_405_in_the_envelope(make_admin, stack, method, path, status, code):
    _, _, admin_ops, http = await make_admin()
    for ops in (admin_ops, stack.ops):  # the admin API's and the gateway's
        async with http.request(method, ops + path) as resp:
            body = await resp.json()
            assert resp.status == status and resp.content_type == "application/json", (ops, await resp.text())
            assert set(body["error"]) == {"code", "message", "request_id"} and body["error"]["code"] == code
            assert resp.headers["X-Request-Id"] == body["error"]["request_id"]
            if status == 405:
                assert resp.headers["Allow"] == "GET, HEAD"
