"""Host rules (RFC 9112 3.2; issue 12, item 7), in proxy and forward-auth mode.

HTTP/1.1 needs exactly one Host with a valid host[:port]; HTTP/1.0 may leave it out, but not
repeat it or send an invalid one. Anything else is 400 invalid_host in the JSON envelope,
decided by gateway/httpserver.py before the pipeline runs: no Redis lookup (a well-formed key
this process has never seen would cost one HGETALL), nothing forwarded.
"""

from __future__ import annotations

import pytest

from gateway.keys import checksum
from tests.security.conftest import parse_responses, stop_gateway
from tests.security.test_credentials import redis_calls
from tests.security.test_nginx_forward_auth import start_forward_auth

UNSEEN_KEY = "sop_" + "Q" * 30 + checksum("sop_" + "Q" * 30)  # well formed, in no cache, not in Redis

REFUSED = {
    "absent": [],
    "duplicate-same": [b"Host: api.example", b"Host: api.example"],
    "duplicate-different": [b"Host: api.example", b"Host: evil.example"],
    "duplicate-case": [b"Host: api.example", b"host: api.example"],
    "duplicate-upper": [b"HOST: api.example", b"Host: api.example"],
    "duplicate-empty": [b"Host: api.example", b"Host: "],
    "empty": [b"Host: "],
    "whitespace-only": [b"Host:   \t "],
    "inner-space": [b"Host: api example"],
    "inner-tab": [b"Host: api\texample"],
    "userinfo": [b"Host: user@api.example"],
    "userinfo-colon": [b"Host: user:pw@api.example"],
    "path": [b"Host: api.example/v1"],
    "backslash": [b"Host: api.example\\evil"],
    "query": [b"Host: api.example?x"],
    "fragment": [b"Host: api.example#x"],
    "comma-list": [b"Host: api.example,evil.example"],
    "comma-list-space": [b"Host: api.example, evil.example"],
    "port-not-digits": [b"Host: api.example:http"],
    "port-empty": [b"Host: api.example:"],
    "port-too-long": [b"Host: api.example:123456"],
    "two-ports": [b"Host: api.example:80:81"],
    "ipv6-unclosed": [b"Host: [::1"],
    "ipv6-bare": [b"Host: ::1"],
    "quoted": [b"Host: \"api.example\""],
    "too-long": [b"Host: " + b"a" * 300],
    "non-ascii": ["Host: \u00e9xample.com".encode()],
    "percent-slash-like": [b"Host: api.example;x"],
}
ACCEPTED = {
    "name": b"Host: api.example",
    "name-port": b"Host: API.Example:8080",
    "ipv4-port": b"Host: 127.0.0.1:1",
    "ipv6-port": b"Host: [::1]:8080",
    "idn": b"Host: xn--bcher-kva.example",
    "trailing-ows": b"Host: api.example \t",
    "name-case": b"hOsT: api.example",
}


def request(lines: list[bytes], target: bytes = b"/v1/tasks", version: bytes = b"HTTP/1.1") -> bytes:
    head = [b"GET " + target + b" " + version, b"Authorization: Bearer " + UNSEEN_KEY.encode(), *lines,
            b"Connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n"


def assert_invalid_host(raw_answer: bytes) -> None:
    [resp] = parse_responses(raw_answer)
    assert resp.status == 400, resp.raw[:300]
    assert resp.json()["error"]["code"] == "invalid_host"
    assert resp.header("X-Request-Id") == resp.json()["error"]["request_id"]
    assert resp.header("Connection") == "close"
    assert UNSEEN_KEY.encode() not in raw_answer


@pytest.mark.parametrize("lines", [pytest.param(v, id=k) for k, v in REFUSED.items()])
def test_proxy_refuses_a_bad_host_before_redis_and_upstream(gateway, redis_server, lines):
    heads = len(gateway.recorder.heads)
    lookups = redis_calls(redis_server, "hgetall")
    assert_invalid_host(gateway.send(request(lines)))
    assert redis_calls(redis_server, "hgetall") == lookups
    assert gateway.recorder.heads[heads:] == []


@pytest.mark.parametrize("line", [pytest.param(v, id=k) for k, v in ACCEPTED.items()])
def test_proxy_accepts_a_valid_host(gateway, line):
    before = len(gateway.recorder.received)
    [resp] = parse_responses(gateway.send(request([line], b"/v1/status?host")))
    assert resp.status == 200 and resp.header("X-Upstream") == "recorder", resp.raw[:300]
    [got] = gateway.recorder.received[before:]
    assert got.values("Host") == [gateway.recorder.url.split("//")[1]]  # the gateway's own Host upstream


def test_http_1_0_may_omit_host(gateway):
    before = len(gateway.recorder.received)
    [resp] = parse_responses(gateway.send(request([], b"/v1/status?http10", b"HTTP/1.0")))
    assert resp.status == 200 and len(gateway.recorder.received[before:]) == 1


@pytest.mark.parametrize("lines", [pytest.param(REFUSED[k], id=k) for k in
                                   ("duplicate-same", "duplicate-different", "empty", "userinfo", "comma-list")])
def test_http_1_0_still_refuses_a_bad_or_repeated_host(gateway, lines):
    heads = len(gateway.recorder.heads)
    assert_invalid_host(gateway.send(request(lines, b"/v1/status", b"HTTP/1.0")))
    assert gateway.recorder.heads[heads:] == []


@pytest.fixture(scope="module")
def forward_auth(redis_server, recorder, tmp_path_factory):
    gw = start_forward_auth(tmp_path_factory.mktemp("fa-host"), redis_server.url, recorder)
    yield gw
    stop_gateway(gw)
    assert gw.proc.returncode == 0, gw.stderr.read_text()


@pytest.mark.parametrize("lines", [pytest.param(v, id=k) for k, v in REFUSED.items()])
def test_forward_auth_refuses_a_bad_host_before_redis(forward_auth, redis_server, lines):
    lookups = redis_calls(redis_server, "hgetall")
    assert_invalid_host(forward_auth.send(request(lines, b"/envoy/v1/tasks")))
    assert redis_calls(redis_server, "hgetall") == lookups


def test_forward_auth_with_a_valid_host_still_verifies_the_key(forward_auth, redis_server):
    lookups = redis_calls(redis_server, "hgetall")
    [resp] = parse_responses(forward_auth.send(request([ACCEPTED["name-port"]], b"/envoy/v1/tasks")))
    assert (resp.status, resp.json()["error"]["code"]) == (401, "invalid_api_key")
    assert redis_calls(redis_server, "hgetall") == lookups + 1  # the control: this one did reach Redis
