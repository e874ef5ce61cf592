"""Override channels in forward-auth mode (issue #12, class 10).

In proxy mode the gateway drops method- and path-override headers before forwarding. In
forward-auth mode the edge forwards the client's headers itself, so the gateway cannot drop
them: a request that carries one is refused (400), whatever its spelling, so the backend never
sees a method or path other than the one that was authorized. The edge's own protocol headers
(X-Original-URI of nginx, X-Forwarded-Uri of Traefik) are not overrides. Host-, scheme- and
port-override headers (X-Host, X-Url-Scheme, Forwarded, ...) are refused the same way, except the
ones the edge itself replaces on the request it forwards (nginx's X-Forwarded-Host, ...).
"""

from __future__ import annotations

import orjson
import pytest

from tests.integration.test_forward_auth import nginx, traefik

PATH_OVERRIDES = [
    "X-Original-URL", "x-original-url", "X-Rewrite-URL", "X-Override-URL", "X-Forwarded-Path",
    "X-Forwarded-Prefix", "X-Envoy-Original-Path", "X-HTTP-DestinationURL", "X-Proxy-Url", "Base-Url",
    "Request-Uri", "X_Original_URL", "X-Original_Url", "X-Custom-Uri", "X-Real-Path", "X-Api-Prefix",
]
METHOD_OVERRIDES = ["X-HTTP-Method-Override", "x-http-method", "X-Method-Override", "X_HTTP_Method_Override",
                    "X-Http-Method_Override"]
EDGES = {"nginx": nginx, "traefik": traefik}
# Reach the backend as the client sent them, through every edge.
HOST_OVERRIDES = [
    "X-Host", "x-host", "X_Host", "X-HTTP-Host-Override", "X-Original-Host", "X-Http-Host", "X-Url-Scheme",
    "X_Url_Scheme", "X-Forwarded-Scheme", "X-Scheme", "Front-End-Https", "front_end_https", "X-Forwarded-Ssl",
    "X_Forwarded_Host", "X-Forwarded_Proto", "x_forwarded_port", "X-ForwardedHost", "X-Original-Proto", "X-Https",
]
# Replaced by the shipped edge's own value (deploy/nginx proxy_set_header; Traefik's forwarded
# headers): harmless there, refused through the other edge.
EDGE_REPLACED = {"nginx": ["Forwarded", "X-Forwarded-Host", "x-forwarded-proto", "X-Forwarded-Port"],
                 "traefik": ["X-Forwarded-Server", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port"]}


@pytest.fixture
async def auth(make_stack):
    return await make_stack(mode="forward-auth", upstream="")


async def ask(stack, headers: dict[str, str]):
    async with stack.http.get(stack.gateway + "/", headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read()) if resp.status != 200 else None


@pytest.mark.parametrize("edge", list(EDGES))
@pytest.mark.parametrize("name", PATH_OVERRIDES)
async def test_a_path_override_header_is_refused(auth, edge, name):
    created = await auth.create_key()
    headers = EDGES[edge]("GET", "/v1/tasks", created["key"], **{name: "/v1/admin/secrets"})
    status, body = await ask(auth, headers)
    assert status == 400 and body["error"]["code"] == "path_override_refused", (name, body)


@pytest.mark.parametrize("edge", list(EDGES))
@pytest.mark.parametrize("name", METHOD_OVERRIDES)
async def test_a_method_override_header_is_refused(auth, edge, name):
    created = await auth.create_key()
    status, body = await ask(auth, EDGES[edge]("GET", "/v1/tasks", created["key"], **{name: "DELETE"}))
    assert status == 400 and body["error"]["code"] == "method_override_refused", (name, body)


@pytest.mark.parametrize("edge", list(EDGES))
async def test_the_edges_own_headers_and_look_alikes_that_are_no_overrides_pass(auth, edge):
    created = await auth.create_key()
    harmless = {"X-Path-Info-Enabled": "1", "Uri": "x", "X-Urlencoded": "1", "X-Report-To": "x", "X-Hostile": "1"}
    status, body = await ask(auth, EDGES[edge]("GET", "/v1/tasks", created["key"], **harmless))
    assert status == 200, body


async def test_the_edges_header_in_another_spelling_is_an_override(auth):
    # nginx names the original target X-Original-URI; "X_Original_URI" is the same name to a
    # CGI-style backend, but not the header nginx sets: an override.
    created = await auth.create_key()
    headers = nginx("GET", "/v1/tasks", created["key"], X_Original_URI="/v1/admin")
    status, body = await ask(auth, headers)
    assert status == 400 and body["error"]["code"] == "path_override_refused", body


async def test_a_refused_override_costs_no_redis_read(auth, redis_server):
    created = await auth.create_key()
    before = redis_server.client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)
    status, _ = await ask(auth, nginx("GET", "/v1/tasks", created["key"], **{"X-Rewrite-URL": "/x"}))
    after = redis_server.client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)
    assert status == 400 and after == before


@pytest.mark.parametrize("edge", list(EDGES))
@pytest.mark.parametrize("name", HOST_OVERRIDES)
async def test_a_host_override_header_is_refused(auth, edge, name):
    created = await auth.create_key()
    headers = EDGES[edge]("GET", "/v1/tasks", created["key"], **{name: "evil.example"})
    status, body = await ask(auth, headers)
    assert status == 400 and body["error"]["code"] == "host_override_refused", (name, body)


@pytest.mark.parametrize("edge, name", [(edge, name) for edge, names in EDGE_REPLACED.items() for name in names])
async def test_host_headers_the_edge_replaces_itself_pass_there_only(auth, edge, name):
    created = await auth.create_key()
    status, body = await ask(auth, EDGES[edge]("GET", "/v1/tasks", created["key"], **{name: "public.example"}))
    assert status == 200, (edge, name, body)
    [other] = set(EDGES) - {edge}
    if name.lower() not in {n.lower() for n in EDGE_REPLACED[other]}:
        status, body = await ask(auth, EDGES[other]("GET", "/v1/tasks", created["key"], **{name: "evil.example"}))
        assert status == 400 and body["error"]["code"] == "host_override_refused", (other, name, body)


@pytest.mark.parametrize("edge", list(EDGES))
@pytest.mark.parametrize("method", ["COPY", "MOVE"])
async def test_webdav_copy_and_move_are_refused(auth, edge, method):
    # Their Destination header names a second path the gateway would not authorize: no rule
    # can name these methods, so the edge never forwards them.
    created = await auth.create_key()
    headers = EDGES[edge](method, "/v1/tasks/42", created["key"], Destination="/v1/admin/secrets")
    status, body = await ask(auth, headers)
    assert status == 405 and body["error"]["code"] == "method_not_allowed", body
