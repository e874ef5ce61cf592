"""Forward-auth mode in-process: the check endpoint for nginx, Traefik and Envoy (gateway serve --mode forward-auth)."""

from __future__ import annotations

import logging

import orjson
import pytest

from gateway import keys
from gateway.config import ServeSettings
from gateway.forward_auth import ERROR_HEADER
from gateway_verify import verify_request
from tests.support.rawhttp import raw_request

SECRET = "2025-01:forward-auth-secret-0123456789abcdefghij"


def nginx(method: str, uri: str, key: str | None = None, **extra: str) -> dict[str, str]:
    """The headers of nginx's auth_request subrequest (deploy/nginx/forward-auth.conf)."""
    headers = {"X-Original-Method": method, "X-Original-URI": uri, **extra}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def traefik(method: str, uri: str, key: str | None = None, **extra: str) -> dict[str, str]:
    headers = {"X-Forwarded-Method": method, "X-Forwarded-Uri": uri, "X-Forwarded-Proto": "https",
               "X-Forwarded-Host": "api.example", **extra}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return headers


@pytest.fixture
async def auth(make_stack):
    return await make_stack(mode="forward-auth", upstream="")


async def check(stack, headers, method: str = "GET", path: str = "/"):
    async with stack.http.request(method, stack.gateway + path, headers=headers) as resp:
        return resp.status, await resp.read(), resp


def assert_error(status, body, resp, expected_status, code):
    assert status == expected_status, body
    error = orjson.loads(body)["error"]
    assert error["code"] == code, error
    assert error["request_id"] == resp.headers["X-Request-Id"]
    return error


def test_proxy_mode_needs_an_upstream_and_forward_auth_does_not():
    with pytest.raises(ValueError, match="--upstream"):
        ServeSettings()
    assert ServeSettings(mode="forward-auth").upstream == ""


@pytest.mark.parametrize("convention", [nginx, traefik])
async def test_a_valid_key_passes_with_the_identity_headers(auth, convention):
    created = await auth.create_key(scopes=("tasks:read", "reservations:read"))
    status, body, resp = await check(auth, convention("GET", "/v1/tasks/42?expand=x", created["key"]))
    assert status == 200 and body == b""
    assert resp.headers.getall("X-Org-Id") == ["acme"]
    assert resp.headers.getall("X-Api-Key-Id") == [created["id"]]
    assert resp.headers.getall("X-Api-Key-Scopes") == ["tasks:read reservations:read"]
    assert resp.headers["X-Request-Id"].startswith("req_")
    assert "X-Gateway-Signature" not in resp.headers  # signing is off
    assert auth.received == []  # forward-auth forwards nothing itself


async def test_envoy_sends_the_original_method_and_path_under_its_prefix(auth):
    created = await auth.create_key(scopes=("tasks:read",))
    bearer = {"Authorization": f"Bearer {created['key']}"}
    status, _, resp = await check(auth, bearer, "GET", "/envoy/v1/tasks?page=2")
    assert status == 200 and resp.headers["X-Org-Id"] == "acme"
    status, body, resp = await check(auth, bearer, "POST", "/envoy/v1/tasks")
    assert assert_error(status, body, resp, 403, "insufficient_scope")["required_scope"] == "tasks:write"
    status, body, resp = await check(auth, bearer, "GET", "/envoy/v1/nowhere")
    assert_error(status, body, resp, 404, "route_not_found")


async def test_the_pipeline_answers_as_the_proxy_does(auth):
    created = await auth.create_key(scopes=("tasks:read",))
    key = created["key"]
    status, body, resp = await check(auth, nginx("GET", "/v1/tasks"))
    assert_error(status, body, resp, 401, "missing_api_key")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    status, body, resp = await check(auth, nginx("GET", "/v1/tasks", "sop_" + "A" * 36))
    assert_error(status, body, resp, 401, "invalid_api_key")
    status, body, resp = await check(auth, nginx("DELETE", "/v1/tasks", key))
    assert_error(status, body, resp, 405, "method_not_allowed")
    assert "GET" in resp.headers["Allow"]
    status, body, resp = await check(auth, nginx("GET", "/v1/tasks?api_key=x", key))
    assert_error(status, body, resp, 400, "api_key_in_query")
    status, body, resp = await check(auth, nginx("GET", "/v1/tasks/../guests", key))
    assert_error(status, body, resp, 400, "invalid_path")
    # A public route passes without a key, and without identity.
    status, _, resp = await check(auth, nginx("GET", "/v1/status", X_Org_Id="evil"))
    assert status == 200 and "X-Org-Id" not in resp.headers and "X-Api-Key-Id" not in resp.headers


async def test_the_client_sent_identity_headers_are_not_echoed(auth):
    created = await auth.create_key(scopes=("tasks:read",))
    spoof = {"X-Org-Id": "evil", "X-Api-Key-Scopes": "tasks:write", "X-Request-Id": "req_forged"}
    status, _, resp = await check(auth, nginx("GET", "/v1/tasks", created["key"], **spoof))
    assert status == 200
    assert resp.headers.getall("X-Org-Id") == ["acme"]
    assert resp.headers.getall("X-Api-Key-Scopes") == ["tasks:read"]
    assert resp.headers.getall("X-Request-Id") != ["req_forged"]


@pytest.mark.parametrize("raw", [
    "/v1/%74asks", "/v1/tasks/%7e", "/v1/tasks/42%ef%bc%8fcomplete", "/v1/tasks?", '/v1/tasks/"',
])
async def test_only_targets_already_in_canonical_form_are_authorized(auth, raw):
    # SECURITY: the proxy would accept these (it forwards the canonical form); an edge forwards
    # the raw target, so authorizing its canonical form would authorize something else.
    created = await auth.create_key(scopes=("tasks:read",))
    status, body, resp = await check(auth, nginx("GET", raw, created["key"]))
    assert_error(status, body, resp, 400, "invalid_path")
    got = await raw_request(auth.gateway, f"GET /envoy{raw} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                                          f"{created['key']}\r\nConnection: close\r\n\r\n".encode())
    assert got.status == 400 and got.json()["error"]["code"] == "invalid_path"


@pytest.mark.parametrize("headers, path", [
    ({}, "/"),
    ({}, "/envoy"),
    ({"X-Original-URI": "/v1/tasks"}, "/"),
    ({"X-Original-Method": "GET"}, "/"),
    ({"X-Forwarded-Uri": "/v1/tasks"}, "/"),
    ({"X-Original-Method": "GET", "X-Original-URI": "/v1/tasks", "X-Forwarded-Uri": "/v1/status"}, "/"),
    ({"X-Original-Method": "GET", "X-Original-URI": "/v1/tasks", "X-Forwarded-Method": "GET"}, "/"),
    ({"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/v1/status"}, "/envoy/v1/tasks"),
    ({"X-Original-Method": "GET", "X-Original-URI": "/v1/status"}, "/envoy/v1/tasks"),
    ({"X-Original-Method": "G T", "X-Original-URI": "/v1/tasks"}, "/"),
    ({"X-Original-Method": "", "X-Original-URI": "/v1/tasks"}, "/"),
])
async def test_without_exactly_one_original_request_nothing_is_authorized(auth, headers, path):
    status, body, resp = await check(auth, headers, "GET", path)
    assert_error(status, body, resp, 400, "missing_original_request")


@pytest.mark.parametrize("name", ["X-Original-URI", "X-Original-Method", "X-Forwarded-Uri", "X-Forwarded-Method"])
async def test_a_repeated_original_request_header_is_refused(auth, name):
    headers = "\r\n".join(f"{k}: {v}" for k, v in [
        *(nginx("GET", "/v1/status") if name.startswith("X-Original") else traefik("GET", "/v1/status")).items(),
        (name, "/v1/status" if name.endswith(("URI", "Uri")) else "GET"),
    ])
    got = await raw_request(auth.gateway, f"GET / HTTP/1.1\r\nHost: x\r\n{headers}\r\nConnection: close\r\n\r\n".encode())
    assert got.status == 400 and got.json()["error"]["code"] == "missing_original_request"


async def test_nginx_also_gets_the_error_in_a_header_the_others_do_not(auth):
    status, body, resp = await check(auth, nginx("POST", "/v1/tasks"))
    assert status == 401
    assert orjson.loads(resp.headers[ERROR_HEADER]) == orjson.loads(body)
    status, body, resp = await check(auth, traefik("POST", "/v1/tasks"))
    assert status == 401 and ERROR_HEADER not in resp.headers
    status, body, resp = await check(auth, {}, "POST", "/envoy/v1/tasks")
    assert status == 401 and ERROR_HEADER not in resp.headers


async def test_use_is_recorded_and_logged_like_the_proxy(auth, caplog):
    created = await auth.create_key(scopes=("tasks:read",))
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        status, _, resp = await check(auth, traefik("HEAD", "/v1/tasks/7?secret=1", created["key"]), "GET", "/")
        await check(auth, traefik("POST", "/v1/tasks", created["key"]))
    assert status == 200
    assert created["id"] in auth.state.usage.drain().values
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    assert lines[0] == {**lines[0], "request_id": resp.headers["X-Request-Id"], "method": "HEAD", "path": "/v1/tasks/7",
                        "route": "/v1/tasks/{task_id}", "org_id": "acme", "key_id": created["id"], "status": 200,
                        "outcome": "ok"}
    assert lines[1]["status"] == 403 and lines[1]["outcome"] == "insufficient_scope" and lines[1]["method"] == "POST"
    assert "secret" not in caplog.text and created["key"] not in caplog.text
    ok = auth.state.metrics.requests.count("ok", "/v1/tasks/{task_id}")
    assert ok == 1


async def test_failures_count_against_the_client_the_edge_names(make_stack):
    stack = await make_stack(mode="forward-auth", upstream="", auth_failure_limit=2, trusted_proxies=("127.0.0.1/32",))
    bad = "sop_" + "B" * 36
    for _ in range(2):
        status, _, _ = await check(stack, nginx("GET", "/v1/tasks", bad, **{"X-Forwarded-For": "192.0.2.7"}))
        assert status == 401
    status, body, resp = await check(stack, nginx("GET", "/v1/tasks", bad, **{"X-Forwarded-For": "192.0.2.7"}))
    assert_error(status, body, resp, 429, "too_many_failed_attempts")
    assert int(resp.headers["Retry-After"]) >= 1
    status, _, _ = await check(stack, nginx("GET", "/v1/tasks", bad, **{"X-Forwarded-For": "192.0.2.8"}))
    assert status == 401  # another client behind the same edge is not locked out


async def test_signed_identity_verifies_for_the_target_the_edge_forwards(make_stack):
    stack = await make_stack(mode="forward-auth", upstream="", signing_secrets=(SECRET,))
    created = await stack.create_key(scopes=("tasks:read",))
    status, _, resp = await check(stack, nginx("GET", "/v1/tasks/42?limit=5", created["key"]))
    assert status == 200
    # What the backend receives: the raw target, and the headers the edge copied from this answer.
    copied = [(k, v) for k, v in resp.headers.items() if k.lower().startswith(("x-org", "x-api-key", "x-request", "x-gateway"))]
    identity = verify_request("GET", "/v1/tasks/42?limit=5", copied, SECRET, now=stack.clock())
    assert identity.org_id == "acme" and identity.key_id == created["id"]
    status, _, resp = await check(stack, nginx("GET", "/v1/status"))
    public = [(k, v) for k, v in resp.headers.items() if k.lower().startswith(("x-request", "x-gateway"))]
    assert verify_request("GET", "/v1/status", public, SECRET, now=stack.clock()).authenticated is False


async def test_redis_down_is_503_never_an_allow(make_stack):
    stack = await make_stack(mode="forward-auth", upstream="", redis="redis://127.0.0.1:1/0", cache_ttl=0)
    status, body, resp = await check(stack, nginx("GET", "/v1/tasks", keys.generate_key()))
    assert_error(status, body, resp, 503, "auth_unavailable")
    assert resp.headers["Retry-After"] == "1"
    assert orjson.loads(resp.headers[ERROR_HEADER]) == orjson.loads(body)


@pytest.mark.parametrize("mode", ["proxy", "forward-auth"])
async def test_a_bug_is_one_500_envelope_and_one_access_line_in_either_mode(make_stack, monkeypatch, caplog, mode):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    if mode == "proxy":
        stack = await make_stack()
        monkeypatch.setattr("gateway.proxy.forward", broken)
    else:
        stack = await make_stack(mode="forward-auth", upstream="")
        monkeypatch.setattr("gateway.forward_auth.require_canonical", broken)
    created = await stack.create_key(scopes=("tasks:read",))
    with caplog.at_level(logging.INFO):
        status, body, resp = await check(stack, traefik("GET", "/v1/tasks", created["key"]), "GET",
                                         "/v1/tasks" if mode == "proxy" else "/")
    error = assert_error(status, body, resp, 500, "internal_error")
    assert "a bug" not in error["message"]
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    assert [(line["status"], line["outcome"], line["request_id"]) for line in lines] == [
        (500, "internal_error", resp.headers["X-Request-Id"])]
    assert "malformed HTTP request refused" not in caplog.text  # a bug is not the client's fault
    assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in caplog.records)
