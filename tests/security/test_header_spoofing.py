"""Header spoofing and methods over raw sockets: identity comes from the gateway alone.

The upstream (a byte-exact recorder) must get exactly one copy of each identity header, with the
gateway's value; never a client's copy, a credential, a method override, or a split header.
"""

from __future__ import annotations

import re
import socket

import pytest

from gateway.paths import canonicalize
from gateway.scopes import Match, load_rules
from tests.support import SCOPES
from tests.security.conftest import (
    refused_by_parser,
    TRUSTED_PROXY,
    GatewayProcess,
    RawResponse,
    check_forwarded_as_authorized,
    parse_responses,
)

RULES = load_rules(SCOPES)
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
SPOOF = "evil"  # every spoofed value contains this; no forwarded header may


def build(method: bytes, target: bytes, lines: list[bytes], key: str | None = None, body: bytes = b"") -> bytes:
    head = [method + b" " + target + b" HTTP/1.1", b"Host: api.example", b"Connection: close"]
    if key is not None:
        head.append(b"Authorization: Bearer " + key.encode())
    head += lines
    if body:
        head.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def send(gw: GatewayProcess, raw: bytes, *, source: str = "127.0.0.1"):
    """One request; the core invariant; (response, what the upstream got or None)."""
    before = len(gw.recorder.received)
    resp = gw.exchange(raw, source=source)
    new = gw.recorder.received[before:]
    if refused_by_parser(resp):  # refused by aiohttp's parser, before the pipeline
        assert resp.status == 400, resp.raw[:300]
        assert new == []
        return resp, None
    assert resp.status != 500, resp.raw[:300]
    got = check_forwarded_as_authorized(gw, resp)
    assert new == ([got] if got else []), new
    return resp, got


def fold(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def folded_values(got, name: str) -> list[str]:
    """Every value the upstream got under any spelling of ``name`` ("_" or "-", any case)."""
    return [v for k, v in got.headers if fold(k) == name]


def assert_identity_from_gateway(gw: GatewayProcess, resp, got, key_name: str | None) -> None:
    assert got is not None, resp.raw[:300]
    assert folded_values(got, "x-request-id") == [resp.header("X-Request-Id")]
    if key_name is None:
        for name in ("x-org-id", "x-api-key-id", "x-api-key-scopes"):
            assert folded_values(got, name) == [], got.headers
    else:
        spec = gw.keys[key_name]
        assert folded_values(got, "x-org-id") == ["sec-org"]
        assert folded_values(got, "x-api-key-id") == [spec["id"]]
        [scopes] = folded_values(got, "x-api-key-scopes")
        assert sorted(scopes.split(" ")) == sorted(spec["scopes"])
    for name, value in got.headers:
        assert not fold(name).startswith(("x-gateway-", "x-org-", "x-api-key-")) or fold(name) in (
            "x-org-id", "x-api-key-id", "x-api-key-scopes"), got.headers
        assert TOKEN.fullmatch(name), got.headers
        assert not re.search(r"[\r\n\x00]", value), got.headers
        assert SPOOF not in value and SPOOF not in name, got.headers
    assert SPOOF not in got.request_line


def spellings(name: str) -> list[str]:
    parts = name.split("-")
    return [
        name, name.lower(), name.upper(), "_".join(parts), "_".join(parts).lower(), "_".join(parts).upper(),
        "-".join([parts[0], "_".join(parts[1:])][:len(parts)]), "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(name)),
    ]


IDENTITY_NAMES = ["X-Org-Id", "X-Api-Key-Id", "X-Api-Key-Scopes", "X-Request-Id", "X-Gateway-Signature",
                  "X-Gateway-Timestamp", "X-Gateway-Signature-Key-Id", "X-Gateway-Verified", "X-Org-Role",
                  "X-Api-Key-Owner"]


@pytest.mark.parametrize("spelled", [
    pytest.param(s, id=f"{name}:{s}") for name in IDENTITY_NAMES for s in dict.fromkeys(spellings(name))
])
def test_identity_headers_in_every_spelling(gateway, spelled):
    n = spelled.encode()
    lines = [n + b": evil-1", n + b":   evil-2   ", n + b":\tevil-3\t", n + b": sec-org, evil-4", n + b":evil-5"]
    # copies before and after the credential, and repeated
    raw = build(b"GET", b"/v1/tasks", lines[:2] + [b"Authorization: Bearer " + gateway.keys["reader"]["key"].encode()]
                + lines[2:])
    resp, got = send(gateway, raw)
    assert resp.status == 200, resp.raw[:300]
    assert_identity_from_gateway(gateway, resp, got, "reader")


@pytest.mark.parametrize("spelled", ["X-Org-Id", "x_org_id", "X-API-KEY-SCOPES", "X_Api_Key_Id", "x-request-id"])
def test_identity_spoof_on_a_public_route_injects_nothing(gateway, spelled):
    resp, got = send(gateway, build(b"GET", b"/v1/status", [spelled.encode() + b": evil", b"X-Org-Id: evil"]))
    assert resp.status == 200
    assert_identity_from_gateway(gateway, resp, got, None)


@pytest.mark.parametrize("lines", [
    [b"X-Foo: a", b" X-Org-Id: evil"],
    [b"X-Foo: a", b"\tX-Org-Id: evil"],
    [b"X-Org-Id: sec-org", b" evil"],
    [b"X-Api-Key-Scopes: tasks:read", b"\tguests:read evil"],
    [b"X-Request-Id: x", b"  evil"],
], ids=["space-fold", "tab-fold", "fold-identity", "fold-scopes", "fold-request-id"])
def test_obs_fold_cannot_smuggle_identity(gateway, lines):
    resp, got = send(gateway, build(b"GET", b"/v1/tasks", lines, gateway.keys["reader"]["key"]))
    if got is not None:  # a parser that unfolds: the folded text must not survive anywhere
        assert_identity_from_gateway(gateway, resp, got, "reader")
    else:
        assert resp.status == 400


@pytest.mark.parametrize("connection", [
    [b"Connection: close, X-Org-Id, X-Api-Key-Scopes"],
    [b"Connection: X-Api-Key-Id, X-Request-Id"],
    [b"Connection: x_org_id, X_API_KEY_SCOPES, x-request-id"],
    [b"Connection: X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host"],
    [b"Connection: keep-alive, X-Org-Id", b"Connection: X-Api-Key-Id", b"Connection: X-Api-Key-Scopes"],
    [b"Connection: Authorization, X-API-Key"],
    [b"Connection: Host, X-Custom"],
    [b"Connection: , ,X-Org-Id,,  X-Api-Key-Id ,"],
])
def test_connection_cannot_remove_injected_headers(gateway, connection):
    lines = connection + [b"X-Org-Id: evil", b"X-Custom: custom", b"Keep-Alive: timeout=5 evil"]
    resp, got = send(gateway, build(b"GET", b"/v1/tasks", lines, gateway.keys["reader"]["key"]))
    assert resp.status == 200, resp.raw[:300]
    assert_identity_from_gateway(gateway, resp, got, "reader")
    # a header the client named in Connection is its own hop-by-hop header: not passed on
    assert got.values("X-Custom") == ([] if b"X-Custom" in b"".join(connection) else ["custom"])
    assert folded_values(got, "x-forwarded-for") == ["127.0.0.1"]
    assert folded_values(got, "x-forwarded-proto") == ["http"]
    assert folded_values(got, "x-forwarded-host") == ["api.example"]
    assert folded_values(got, "connection") == [] and folded_values(got, "keep-alive") == []
    assert got.values("Host") == [f"127.0.0.1:{gateway.recorder.port}"]


def test_connection_listing_content_length_keeps_the_body_framed(gateway):
    raw = build(b"POST", b"/v1/tasks", [b"Connection: Content-Length, Transfer-Encoding"],
                gateway.keys["writer"]["key"], body=b'{"a": 1}')
    resp, got = send(gateway, raw)
    assert resp.status == 200 and got.body == b'{"a": 1}'


FORWARDING_SPOOFS = [
    b"X-Forwarded-For: 6.6.6.6 evil", b"X-Forwarded-For: 6.6.6.7", b"x-forwarded-for: 6.6.6.8",
    b"X_Forwarded_For: 6.6.6.9", b"X-Forwarded-Proto: https evil", b"x_forwarded_proto: evil",
    b"X-Forwarded-Host: evil.example", b"X-FORWARDED-HOST: evil2", b"Forwarded: for=6.6.6.6;proto=https;host=evil",
    b"forwarded: for=evil", b"X-Real-IP: 6.6.6.6 evil", b"X_Real_Ip: evil", b"X-Forwarded-Port: 443 evil",
    b"X-Forwarded-Server: evil", b"X-Forwarded-Prefix: /evil", b"X-Forwarded-Ssl: on evil",
]


@pytest.mark.parametrize("public", [False, True], ids=["keyed", "public"])
def test_forwarding_headers_from_an_untrusted_peer_are_replaced(gateway, public):
    target, key = (b"/v1/status", None) if public else (b"/v1/tasks", gateway.keys["reader"]["key"])
    resp, got = send(gateway, build(b"GET", target, FORWARDING_SPOOFS, key))
    assert resp.status == 200
    assert_identity_from_gateway(gateway, resp, got, None if public else "reader")
    assert folded_values(got, "x-forwarded-for") == ["127.0.0.1"]
    assert folded_values(got, "x-forwarded-proto") == ["http"]
    assert folded_values(got, "x-forwarded-host") == ["api.example"]
    for name in ("forwarded", "x-real-ip", "x-forwarded-port", "x-forwarded-server", "x-forwarded-prefix",
                 "x-forwarded-ssl"):
        assert folded_values(got, name) == [], name
    assert "6.6.6" not in str(got.headers)


PATH_OVERRIDE_NAMES = [
    "X-Original-URL", "X-Original-Uri", "X-Rewrite-URL", "X-Override-URL", "X-Forwarded-Path",
    "X-Forwarded-Prefix", "X-Forwarded-Uri", "X-Envoy-Original-Path", "X-HTTP-Destinationurl", "X-Proxy-Url",
    "Base-Url", "Request-Uri", "X-Original-Path", "X-Rewrite-Path", "X-Envoy-Original-Url", "X-Script-Prefix",
    "X-Request-Uri", "X-Original-Request-Url", "X-Ms-Original-Url", "X-Custom-Prefix",
]


@pytest.mark.parametrize("spelled", [
    pytest.param(s, id=f"{name}:{s}") for name in PATH_OVERRIDE_NAMES for s in dict.fromkeys(spellings(name))
])
@pytest.mark.parametrize("source", ["127.0.0.1", TRUSTED_PROXY], ids=["client", "trusted-proxy"])
def test_path_override_headers_never_reach_upstream(gateway, spelled, source):
    """A backend honouring X-Original-URL (and kin) would serve /v1/guests on a /v1/tasks grant."""
    value = b"/v1/guests/evil?x=evil"
    lines = [spelled.encode() + b": " + value, spelled.encode() + b": http://evil.example/v1/guests"]
    resp, got = send(gateway, build(b"GET", b"/v1/tasks/42", lines, gateway.keys["reader"]["key"]), source=source)
    assert resp.status == 200, resp.raw[:300]
    assert got.target == "/v1/tasks/42"
    assert_identity_from_gateway(gateway, resp, got, "reader")  # no "evil" in any forwarded header
    assert not any("guests" in v for _, v in got.headers), got.headers


def test_path_override_headers_on_a_public_route_are_removed_too(gateway):
    lines = [f"{name}: /v1/guests/evil".encode() for name in PATH_OVERRIDE_NAMES]
    resp, got = send(gateway, build(b"GET", b"/v1/status", lines))
    assert resp.status == 200
    assert_identity_from_gateway(gateway, resp, got, None)


# Host-, scheme- and port-override channels (issue #12, class 10): a backend building redirects,
# absolute links or virtual-host routing from them would act for evil.example.
HOST_OVERRIDE_NAMES = [
    "X-Forwarded-Host", "X-Host", "X-HTTP-Host-Override", "X-Forwarded-Server", "X-Original-Host",
    "X-Forwarded-Proto", "X-Forwarded-Port", "X-Forwarded-Scheme", "X-Url-Scheme", "Front-End-Https",
    "Forwarded", "X-Http-Host", "X-Host-Override", "X-Scheme", "X-Original-Scheme", "X-Original-Proto",
    "X-Original-Port", "X-Forwarded-Hostname", "X-ForwardedHost", "X-Proxy-Host", "X-Real-Host",
    "X-Client-Scheme", "X-Forwarded-Protocol", "X-Https", "X-Ssl", "X-Backend-Server", "X-UrlScheme",
]
# What the trusted proxy itself may set, in this exact spelling (kept, as X-Forwarded-For is).
TRUSTED_FORWARDING = {"x-forwarded-host", "x-forwarded-proto"}


@pytest.mark.parametrize("spelled, source", [
    pytest.param(s, source, id=f"{where}-{name}:{s}")
    for name in HOST_OVERRIDE_NAMES for s in dict.fromkeys(spellings(name))
    for source, where in (("127.0.0.1", "client"), (TRUSTED_PROXY, "trusted-proxy"))
    if not (source == TRUSTED_PROXY and s.lower() in TRUSTED_FORWARDING)  # kept by design (test below)
])
def test_host_override_headers_never_reach_upstream(gateway, spelled, source):
    lines = [spelled.encode() + b": evil.example:8443", spelled.encode() + b": host=evil.example;proto=https"]
    resp, got = send(gateway, build(b"GET", b"/v1/tasks/42", lines, gateway.keys["reader"]["key"]), source=source)
    assert resp.status == 200, resp.raw[:300]
    assert_identity_from_gateway(gateway, resp, got, "reader")
    assert not any(SPOOF in v for _, v in got.headers), got.headers
    assert folded_values(got, "x-forwarded-host") == ["api.example"]
    assert folded_values(got, "x-forwarded-proto") == ["http"]


def test_host_override_headers_on_a_public_route_are_removed_too(gateway):
    lines = [f"{name}: evil.example".encode() for name in HOST_OVERRIDE_NAMES]
    resp, got = send(gateway, build(b"GET", b"/v1/status", lines))
    assert resp.status == 200
    assert_identity_from_gateway(gateway, resp, got, None)
    assert not any(SPOOF in v for _, v in got.headers), got.headers


@pytest.mark.parametrize("xff_lines, chain", [
    ([], "127.0.0.2"),
    ([b"X-Forwarded-For: 203.0.113.7"], "203.0.113.7, 127.0.0.2"),
    ([b"X-Forwarded-For: 203.0.113.7, 10.0.0.1"], "203.0.113.7, 10.0.0.1, 127.0.0.2"),
    ([b"X-Forwarded-For: 203.0.113.7", b"x-forwarded-for: 10.0.0.1"], "203.0.113.7, 10.0.0.1, 127.0.0.2"),
    ([b"X-Forwarded-For: 203.0.113.7", b"X_Forwarded_For: 6.6.6.6"], "203.0.113.7, 127.0.0.2"),
])
def test_forwarding_headers_from_the_trusted_proxy_are_kept_and_appended(gateway, xff_lines, chain):
    lines = xff_lines + [b"X-Forwarded-Proto: https", b"X-Forwarded-Host: public.example",
                         b"Forwarded: for=6.6.6.6", b"X-Org-Id: evil"]
    resp, got = send(gateway, build(b"GET", b"/v1/tasks", lines, gateway.keys["reader"]["key"]), source=TRUSTED_PROXY)
    assert resp.status == 200
    assert_identity_from_gateway(gateway, resp, got, "reader")
    assert folded_values(got, "x-forwarded-for") == [chain]
    assert folded_values(got, "x-forwarded-proto") == ["https"]
    assert folded_values(got, "x-forwarded-host") == ["public.example"]
    assert folded_values(got, "forwarded") == []


def test_the_trusted_proxy_cannot_spoof_identity_either(gateway):
    resp, got = send(gateway, build(b"GET", b"/v1/status", [b"X-Org-Id: evil", b"X-Api-Key-Scopes: evil"]),
                     source=TRUSTED_PROXY)
    assert resp.status == 200
    assert_identity_from_gateway(gateway, resp, got, None)


# ---- methods -------------------------------------------------------------------------------------

OVERRIDE_HEADERS = [s for name in ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")
                    for s in dict.fromkeys(spellings(name))]


@pytest.mark.parametrize("name", OVERRIDE_HEADERS)
def test_method_override_headers_never_reach_upstream(gateway, name):
    lines = [name.encode() + b": DELETE", name.encode() + b": evil"]
    resp, got = send(gateway, build(b"GET", b"/v1/tasks/42", lines, gateway.keys["writer"]["key"]))
    assert resp.status == 200
    assert got.method == "GET"
    for override in ("x-http-method-override", "x-http-method", "x-method-override"):
        assert folded_values(got, override) == []
    assert_identity_from_gateway(gateway, resp, got, "writer")


def test_method_override_header_on_a_write(gateway):
    lines = [b"X-HTTP-Method-Override: DELETE", b"X-Method-Override: PATCH"]
    resp, got = send(gateway, build(b"POST", b"/v1/tasks", lines, gateway.keys["writer"]["key"], body=b"{}"))
    assert resp.status == 200 and got.method == "POST" and got.body == b"{}"
    assert folded_values(got, "x-http-method-override") == folded_values(got, "x-method-override") == []


OVERRIDE_QUERIES = [
    b"_method=DELETE", b"_METHOD=DELETE", b"_Method=PUT", b"_httpmethod=DELETE", b"_HttpMethod=PATCH",
    b"x-http-method-override=DELETE", b"X-HTTP-Method-Override=DELETE", b"x_http_method_override=DELETE",
    b"x-http-method=DELETE", b"X_HTTP_METHOD=DELETE", b"x-method-override=DELETE", b"X_Method_Override=PUT",
    b"a=1&_method=DELETE", b"_method=DELETE&a=1", b"a=1&b=2&x-http-method=PATCH", b"_method", b"_method=",
    b"%5fmethod=DELETE", b"%5Fmethod=DELETE", b"_%6Dethod=DELETE", b"+_method=DELETE", b"_method+=DELETE",
    b"&&_method=DELETE", b"_method=GET",
    # the spellings frameworks normalise: PHP ("." and " " -> "_", "[]" stripped), Rack, C parsers
    b"_method[]=DELETE", b"_method[0]=DELETE", b"_method[x]=DELETE", b"_method%5B%5D=DELETE",
    b"_method%5b0%5d=DELETE", b"x.http.method.override=DELETE", b"X.HTTP.METHOD=PUT", b"x+http+method+override=1",
    b"x%20http%20method=PUT", b"x-method.override=PATCH", b"_METHOD=DELETE&x=1", b"_Method[]=PUT",
    b"_method%00=DELETE", b"_method%00junk=DELETE", b"%5Fmethod%00=DELETE", b"%255Fmethod=DELETE",
    b"%255fmethod=DELETE", b"%25255Fmethod=DELETE", b"_%256Dethod=DELETE", b"_method%2500=DELETE",
    b"%5F%6D%65%74%68%6F%64=DELETE", b"%EF%BC%BFmethod=DELETE", b"_%EF%BD%8Dethod=DELETE",
    b"%20_method=DELETE", b"_method%20=DELETE", b"_httpmethod[]=PUT", b"X_HTTP_METHOD_OVERRIDE[]=DELETE",
    b"a=1;_method=DELETE", b"x-http-method-override%5B%5D=DELETE",
]


@pytest.mark.parametrize("query", OVERRIDE_QUERIES)
@pytest.mark.parametrize("path, key_name", [(b"/v1/tasks/42", "writer"), (b"/v1/status", None)],
                         ids=["keyed", "public"])
def test_method_override_query_parameters_are_refused(gateway, query, path, key_name):
    key = gateway.keys[key_name]["key"] if key_name else None
    before = len(gateway.recorder.received)
    resp, got = send(gateway, build(b"GET", path + b"?" + query, [], key))
    assert got is None and gateway.recorder.received[before:] == []
    assert resp.status == 400, resp.raw[:300]
    assert resp.json()["error"]["code"] == "method_override_refused"


@pytest.mark.parametrize("query", [b"method=DELETE", b"x_method=1", b"_methods=1", b"my_method=DELETE",
                                   b"override=DELETE", b"q=_method%3DDELETE", b"http_method=1",
                                   b"my_method[]=1", b"method_=1", b"q=x.http.method.override", b"100%25=1"])
def test_parameters_that_are_not_overrides_are_forwarded(gateway, query):
    resp, got = send(gateway, build(b"GET", b"/v1/tasks?" + query, [], gateway.keys["reader"]["key"]))
    assert resp.status == 200 and got.target == "/v1/tasks?" + query.decode()


def test_head_is_authorized_by_get_and_forwarded_as_head(gateway):
    resp, got = send_head(gateway, b"/v1/tasks/42", gateway.keys["reader"]["key"])
    assert got.request_line == "HEAD /v1/tasks/42 HTTP/1.1"
    assert gateway.log_entry(resp.header("X-Request-Id"))["route"] == "/v1/tasks/{task_id}"
    resp, got = send_head(gateway, b"/v1/status", None)
    assert got.request_line == "HEAD /v1/status HTTP/1.1"


def send_head(gw: GatewayProcess, target: bytes, key: str | None):
    before = len(gw.recorder.received)
    resp = gw.exchange(build(b"HEAD", target, [], key))
    new = gw.recorder.received[before:]
    # The recorder answers HEAD with a body (as a broken backend might): none of it may reach
    # the client, whose next response on the connection would otherwise start with it.
    assert resp.status == 200 and resp.body == b"", resp.raw[:300]
    assert len(new) == 1 and new[0].header("X-Request-Id") == resp.header("X-Request-Id")
    return resp, new[0]


@pytest.mark.parametrize("target", [b"/v1/guests/1", b"/v1/tasks/1/complete", b"/v1/nothing"])
def test_head_without_a_get_grant_is_not_forwarded(gateway, target):
    resp, got = send(gateway, build(b"HEAD", target, [], gateway.keys["reader"]["key"]))
    assert got is None and resp.status in (403, 404, 405)


@pytest.mark.parametrize("target, allow", [(b"/v1/tasks", "GET, HEAD, POST"), (b"/v1/status", "GET, HEAD"),
                                           (b"/v1/tasks/42", "DELETE, GET, HEAD, PATCH")])
def test_options_is_not_a_route(gateway, target, allow):
    resp, got = send(gateway, build(b"OPTIONS", target, []))
    assert got is None and resp.status == 401 and resp.json()["error"]["code"] == "missing_api_key"
    resp, got = send(gateway, build(b"OPTIONS", target, [], gateway.keys["reader"]["key"]))
    assert got is None and resp.status == 405
    assert [m.strip() for m in resp.header("Allow").split(",")] == allow.split(", ")


@pytest.mark.parametrize("method", [b"get", b"Get", b"gEt", b"post", b"delete", b"patch", b"head", b"FOO", b"GETS",
                                    b"GE", b"PROPFIND", b"TRACE", b"TRACK", b"PURGE", b"MOVE", b"M-SEARCH", b"LINK",
                                    b"DELETE", b"PATCH", b"POST", b"PUT", b"QUERY", b"OPTIONS"])
@pytest.mark.parametrize("target", [b"/v1/tasks", b"/v1/tasks/42", b"/v1/status"])
def test_methods_without_an_exact_rule_are_never_forwarded(gateway, method, target):
    spec = gateway.keys["reader"]  # tasks:read only for tasks: every write is refused
    resp, got = send(gateway, build(method, target, [], spec["key"]))
    if got is None:
        assert 400 <= resp.status < 500, resp.raw[:300]
        return
    # forwarded: only under a rule for exactly this (upper-case) method, with the key's scope
    assert got.method == method.decode().upper() and got.method in ("GET", "HEAD"), got.request_line
    found = RULES.match(got.method, canonicalize(got.path).segments)
    assert isinstance(found, Match) and (found.rule.public or found.rule.scope in spec["scopes"])


def first_response(gw: GatewayProcess, raw: bytes, timeout: float = 3.0) -> RawResponse:
    """Send ``raw`` and return the first complete response, without waiting for the close."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        while True:
            responses = parse_responses(data)
            if responses and len(responses[0].body) >= int(responses[0].header("Content-Length") or 0):
                return responses[0]
            chunk = s.recv(65536)
            assert chunk, f"closed without a response: {data[:300]!r}"
            data += chunk


@pytest.mark.parametrize("method", [b"CONNECT", b"connect"])
@pytest.mark.parametrize("target", [b"/v1/tasks", b"/v1/status", b"api.example:443", b"127.0.0.1:6379"])
def test_connect_is_never_forwarded(gateway, method, target):
    # CONNECT never reaches the pipeline (aiohttp's router finds no path in it), so there is no
    # access-log line to check against: the recorder itself must stay untouched, and bytes sent
    # after the refusal are not tunnelled anywhere.
    before = len(gateway.recorder.received)
    tunnelled = b"GET /v1/guests HTTP/1.1\r\nHost: a\r\n\r\n"
    resp = first_response(gateway, build(method, target, [], gateway.keys["reader"]["key"]) + tunnelled)
    assert 400 <= resp.status < 500, resp.raw[:300]
    assert gateway.recorder.received[before:] == []


# ---- bytes that could split or inject a header -----------------------------------------------------

HEADER_BYTES = [
    b"X-Foo: a\x00b", b"X-Foo: a\rX-Org-Id: evil", b"X-Foo: a\nX-Org-Id: evil", b"X-Foo: a\r\rX-Org-Id: evil",
    b"X-Foo: a\n\nX-Org-Id: evil", b"X-Foo: a\x00\r\nX-Org-Id: evil", b"X-Foo\x00: a", b"X-Foo\r: a", b"X-F\xf6o: a",
    b"X-Foo : a", b"X Foo: a", b"X-Foo\t: a", b"X-Org-Id\x00: evil", b"X-Org-Id : evil", b"X-Org-Id\t: evil",
    b"\x00X-Org-Id: evil", b"X-Foo: \xff\xfe", b"X-Foo: caf\xe9", b"X-Foo: \x80x", b"X-Foo: a\x7fb", b"X-Foo: a\x1bb",
    b"X-Foo: a\x0bb", b"X-Foo: a\x0cb", b"X-Foo: \xc3\xa9t\xc3\xa9", b"X-Foo: \xe2\x80\xa8x", b"X-Foo: \xc2\x85x",
    b"X-Foo: \xed\xa0\x80", b"X-Org-Id: \xc3\xa9vil", b"X-Api-Key-Scopes: guests:read\x00 evil",
    b"X-Foo: %0d%0aX-Org-Id:%20x", b"X-Foo:\x00", b": evil", b"X-Foo", b"X-Foo;: evil",
    b"Host: evil\x00.example", b"Host: api.example\r\nHost: evil.example",
]


@pytest.mark.parametrize("line", HEADER_BYTES, ids=[repr(x) for x in HEADER_BYTES])
def test_bad_bytes_in_header_lines_never_split_or_inject(gateway, line):
    resp, got = send(gateway, build(b"GET", b"/v1/tasks", [line], gateway.keys["reader"]["key"]))
    if got is None:  # refused by a parser (or the Host check): never a 5xx
        assert 400 <= resp.status < 500, resp.raw[:300]
        return
    assert resp.status == 200
    assert_identity_from_gateway(gateway, resp, got, "reader")
    allowed = {"host", "x-foo", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id",
               "x-org-id", "x-api-key-id", "x-api-key-scopes"}
    assert {fold(k) for k, _ in got.headers} <= allowed, got.headers
    sent_name, _, sent_value = line.partition(b":")
    for value in folded_values(got, "x-foo"):  # forwarded exactly as sent, or not at all
        assert sent_name == b"X-Foo" and value.encode("latin-1") == sent_value.strip(), (line, value)


# ---- credentials -------------------------------------------------------------------------------------

def test_duplicated_credentials_are_ambiguous(gateway):
    reader, writer = gateway.keys["reader"]["key"], gateway.keys["writer"]["key"]
    cases = [
        [f"Authorization: Bearer {reader}", f"Authorization: Bearer {reader}"],
        [f"Authorization: Bearer {reader}", f"Authorization: Bearer {writer}"],
        [f"authorization: Bearer {reader}", f"AUTHORIZATION: Bearer {writer}"],
        [f"Authorization: Bearer {reader}", f"X-API-Key: {writer}"],
        [f"X-API-Key: {reader}", f"Authorization: Bearer {writer}"],
        [f"X-API-Key: {reader}", f"x-api-key: {reader}"],
        [f"X-API-Key: {reader}", f"X-API-KEY: {writer}"],
        [f"Authorization: Bearer {reader}", "Authorization: Basic dXNlcjpwYXNz"],
        [f"X-API-Key: {reader}", f"X-Api-Key: {reader}", f"Authorization: Bearer {reader}"],
    ]
    for lines in cases:
        raw = build(b"GET", b"/v1/tasks", [line.encode() for line in lines])
        resp, got = send(gateway, raw)
        assert got is None and resp.status == 400, (lines, resp.raw[:300])
        assert resp.json()["error"]["code"] == "ambiguous_credentials"
        assert reader.encode() not in resp.raw and writer.encode() not in resp.raw


@pytest.mark.parametrize("lines, target", [
    (["Authorization: Bearer {k}"], b"/v1/tasks"),
    (["Authorization: bearer {k}"], b"/v1/tasks"),
    (["Authorization:   Bearer   {k}  "], b"/v1/tasks"),
    (["X-API-Key: {k}"], b"/v1/tasks"),
    (["x-api-key: {k}"], b"/v1/tasks"),
    (["X-API-Key: {k}", "Authorization: Bearer {k}"], b"/v1/tasks"),
    (["Authorization: Bearer {k}", "Proxy-Authorization: Bearer {k}", "X_API_Key: {k}", "X-Api-Key-Id: {k}"],
     b"/v1/tasks"),
    (["Authorization: Bearer {k}", "Connection: Authorization, X-API-Key"], b"/v1/tasks"),
    (["Authorization: Bearer {k}"], b"/v1/status"),
    (["X-API-Key: {k}", "X_Api_Key: {k}"], b"/v1/status"),
])
def test_credentials_never_reach_upstream(gateway, lines, target):
    key = gateway.keys["reader"]["key"]
    resp, got = send(gateway, build(b"GET", target, [line.format(k=key).encode() for line in lines]))
    if got is None:  # e.g. the same key in two headers may be refused as ambiguous
        assert resp.status == 400 and resp.json()["error"]["code"] == "ambiguous_credentials"
        return
    assert resp.status == 200
    everything = got.request_line + repr(got.headers) + got.body.decode("latin-1")
    assert key not in everything and key[4:24] not in everything
    for name in ("authorization", "x-api-key", "proxy-authorization"):
        assert folded_values(got, name) == []
