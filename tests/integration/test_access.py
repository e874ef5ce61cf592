"""The gateway's answers: every status and error code of the pipeline, in the order it checks them."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import pytest

from gateway import keys
from tests.support import free_port
from tests.support.rawhttp import get, raw_request

DAY = 86_400


def assert_error(status, body, resp, expected_status, code):
    assert status == expected_status, body
    assert body["error"]["code"] == code
    assert body["error"]["request_id"] == resp.headers["X-Request-Id"]
    assert body["error"]["message"]


async def test_valid_key_is_forwarded_with_identity(stack):
    created = await stack.create_key(scopes=["tasks:read", "reservations:read"])
    status, body, resp = await stack.call("GET", "/v1/tasks?page=2", created["key"])
    assert status == 200, body
    assert body["path"] == "/v1/tasks?page=2"
    got = {k.lower(): v for k, v in body["headers"]}
    assert got["x-org-id"] == "acme"
    assert got["x-api-key-id"] == created["id"]
    assert got["x-api-key-scopes"] == "tasks:read reservations:read"
    assert got["x-request-id"] == resp.headers["X-Request-Id"]
    assert "authorization" not in got


async def test_the_hot_paths_memos_live_in_the_gateways_state(stack):
    created = await stack.create_key(scopes=["tasks:read"])
    for _ in range(2):
        status, body, _ = await stack.call("GET", "/v1/tasks", created["key"])
        assert status == 200, body
    parsed = keys.parse_key(created["key"])
    assert stack.state.key_ids == {parsed.digest: created["id"]}
    record, identity = stack.state.identities[created["id"]]
    assert record.id == created["id"] and identity is stack.state.identities[created["id"]][1]


async def test_public_route_needs_no_key(stack):
    status, body, _ = await stack.call("GET", "/v1/status")
    assert status == 200 and body["path"] == "/v1/status"
    assert not any(k.lower().startswith("x-org") for k, _ in body["headers"])


async def test_missing_key(stack):
    status, body, resp = await stack.call("GET", "/v1/tasks")
    assert_error(status, body, resp, 401, "missing_api_key")
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert stack.received == []


async def test_unknown_key_and_bad_checksum_get_the_same_answer(stack, redis_server):
    unknown = keys.generate_key()
    bad = unknown[:-1] + ("a" if unknown[-1] != "a" else "b")
    redis_server.client.config_resetstat()
    s1, b1, r1 = await stack.call("GET", "/v1/tasks", bad)
    stats = redis_server.client.info("commandstats")
    assert not any(name.startswith("cmdstat_hgetall") for name in stats), "bad checksum must not touch Redis"
    s2, b2, r2 = await stack.call("GET", "/v1/tasks", unknown)
    assert_error(s1, b1, r1, 401, "invalid_api_key")
    assert_error(s2, b2, r2, 401, "invalid_api_key")
    assert b1["error"]["message"] == b2["error"]["message"]
    assert r1.headers["WWW-Authenticate"] == r2.headers["WWW-Authenticate"]
    assert 'error="invalid_token"' in r1.headers["WWW-Authenticate"]
    for body in (b1, b2):
        assert unknown not in str(body) and bad not in str(body)


async def test_expired_key(stack):
    created = await stack.create_key(expires_in="30d")
    assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 200
    stack.clock.advance(31 * DAY)
    status, body, resp = await stack.call("GET", "/v1/tasks", created["key"])
    assert_error(status, body, resp, 401, "expired_api_key")
    status, listed, _ = await stack.admin_call("GET", "/v1/orgs/acme/api-keys")
    assert [k["status"] for k in listed["data"]] == ["expired"]


async def test_revoked_key_is_refused_on_the_next_request(stack):
    created = await stack.create_key()
    for _ in range(3):
        assert (await stack.call("GET", "/v1/tasks", created["key"]))[0] == 200
    assert stack.state.cache.hits >= 2  # the verdict was being served from the cache
    status, revoked, _ = await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{created['id']}/revoke")
    assert status == 200 and revoked["status"] == "revoked"
    status, body, resp = await stack.call("GET", "/v1/tasks", created["key"])
    assert_error(status, body, resp, 401, "revoked_api_key")


async def test_ambiguous_credentials(stack):
    created = await stack.create_key()
    other = await stack.create_key()
    status, body, resp = await stack.call(
        "GET", "/v1/tasks", headers={"Authorization": f"Bearer {created['key']}", "X-API-Key": other["key"]}
    )
    assert_error(status, body, resp, 400, "ambiguous_credentials")
    raw = await raw_request(stack.gateway, get("/v1/tasks", [("X-API-Key", created["key"])] * 2))
    assert raw.status == 400 and raw.json()["error"]["code"] == "ambiguous_credentials"
    assert stack.received == []


async def test_x_api_key_header_works(stack):
    created = await stack.create_key()
    status, body, _ = await stack.call("GET", "/v1/tasks", headers={"X-API-Key": created["key"]})
    assert status == 200
    assert not any(k.lower() == "x-api-key" for k, _ in body["headers"])


async def test_key_in_query_string_is_refused(stack):
    created = await stack.create_key()
    status, body, resp = await stack.call("GET", f"/v1/tasks?api_key={created['key']}")
    assert_error(status, body, resp, 400, "api_key_in_query")
    assert created["key"] not in str(body)
    assert stack.received == []


async def test_unauthenticated_callers_learn_nothing_about_routes(stack):
    for method, path in (("GET", "/nope"), ("DELETE", "/v1/status"), ("GET", "/v1/tasks")):
        status, body, _ = await stack.call(method, path)
        assert status == 401 and body["error"]["code"] == "missing_api_key"


async def test_route_not_found_and_method_not_allowed(stack):
    created = await stack.create_key()
    status, body, resp = await stack.call("GET", "/v2/tasks", created["key"])
    assert_error(status, body, resp, 404, "route_not_found")
    status, body, resp = await stack.call("PUT", "/v1/tasks", created["key"])
    assert_error(status, body, resp, 405, "method_not_allowed")
    assert resp.headers["Allow"] == "GET, HEAD, POST"
    assert stack.received == []


async def test_insufficient_scope_names_the_scope(stack):
    created = await stack.create_key(scopes=["tasks:read"])
    status, body, resp = await stack.call("POST", "/v1/tasks", created["key"], json={"title": "x"})
    assert_error(status, body, resp, 403, "insufficient_scope")
    assert body["error"]["required_scope"] == "tasks:write"
    assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="api", error="insufficient_scope"')
    assert 'scope="tasks:write"' in resp.headers["WWW-Authenticate"]
    assert stack.received == []


async def test_head_is_authorized_by_get(stack):
    created = await stack.create_key(scopes=["tasks:read"])
    status, _, _ = await stack.call("HEAD", "/v1/tasks", created["key"])
    assert status == 200
    assert stack.received[-1]["method"] == "HEAD"


@pytest.mark.parametrize("target", ["/v1/tasks/../api-keys", "/v1/%2e%2e/tasks", "/v1//tasks", "/v1/tasks%2Fx",
                                    "/v1/tasks;x=1", "/v1/tasks/a%00"])
async def test_ambiguous_paths_are_rejected_before_auth(stack, target):
    created = await stack.create_key()
    raw = await raw_request(stack.gateway, get(target, {"Authorization": f"Bearer {created['key']}"}))
    assert raw.status == 400 and raw.json()["error"]["code"] == "invalid_path"
    assert stack.received == []


async def test_forwarded_path_is_the_authorized_canonical_path(stack):
    created = await stack.create_key(scopes=["tasks:read"])
    raw = await raw_request(stack.gateway, get("/v1/%74asks/caf%c3%a9", {"Authorization": f"Bearer {created['key']}"}))
    assert raw.status == 200, raw.body
    assert stack.received[-1]["path"] == "/v1/tasks/caf%C3%A9"


async def test_redis_down_is_503_not_401(make_stack):
    stack = await make_stack(redis=f"redis://127.0.0.1:{free_port()}/0", cache_ttl=0)
    status, body, resp = await stack.call("GET", "/v1/tasks", keys.generate_key())
    assert_error(status, body, resp, 503, "auth_unavailable")
    assert resp.headers["Retry-After"] == "1"


async def test_upstream_down_is_502(make_stack):
    stack = await make_stack(upstream=f"http://127.0.0.1:{free_port()}")
    created = await stack.create_key()
    status, body, resp = await stack.call("GET", "/v1/tasks", created["key"])
    assert_error(status, body, resp, 502, "upstream_unavailable")


async def test_upstream_too_slow_is_504(make_stack):
    stack = await make_stack(read_timeout=0.2)
    created = await stack.create_key()
    status, body, resp = await stack.call("GET", "/v1/tasks?sleep=2", created["key"])
    assert_error(status, body, resp, 504, "upstream_timeout")


async def test_upstream_that_never_accepts_is_502_within_the_connect_timeout(make_stack):
    # A listener whose accept queue is full: the kernel drops further SYNs, so connect() hangs.
    # The timeout is a loop timer, not asyncio.wait_for (which needs a Task from 3.12 on).
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(listener.getsockname())
        fillers.append(s)
    try:
        stack = await make_stack(upstream=f"http://127.0.0.1:{listener.getsockname()[1]}", connect_timeout=0.3)
        created = await stack.create_key()
        started = time.monotonic()
        status, body, resp = await stack.call("GET", "/v1/tasks", created["key"])
        assert_error(status, body, resp, 502, "upstream_unavailable")
        assert 0.25 <= time.monotonic() - started < 3
    finally:
        for s in [*fillers, listener]:
            s.close()


async def test_upstream_stalling_mid_body_is_cut_after_the_read_timeout(make_stack):
    # The head and part of the body, then nothing: the gateway's body read times out (a loop
    # timer) and the client's connection is closed before the promised length.
    done = asyncio.Event()
    writers = []

    async def stall(reader, writer):
        writers.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        await done.wait()

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        stack = await make_stack(upstream=f"http://127.0.0.1:{port}", read_timeout=0.3)
        created = await stack.create_key()
        started = time.monotonic()
        async with stack.http.get(f"{stack.gateway}/v1/tasks",
                                  headers={"Authorization": f"Bearer {created['key']}"}) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        assert 0.25 <= time.monotonic() - started < 3
    finally:
        done.set()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_body_over_the_limit_is_413(make_stack):
    stack = await make_stack(max_body_bytes=1000)
    created = await stack.create_key(scopes=["tasks:write"])
    status, body, resp = await stack.call("POST", "/v1/tasks", created["key"], data=b"x" * 2000)
    assert_error(status, body, resp, 413, "payload_too_large")

    async def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(4):
            yield b"y" * 500

    status, body, resp = await stack.call("POST", "/v1/tasks", created["key"], data=chunks())
    assert_error(status, body, resp, 413, "payload_too_large")
