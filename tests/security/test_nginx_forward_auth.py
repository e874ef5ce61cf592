"""A real nginx with the shipped deploy/nginx/forward-auth.conf, asking a real `gateway serve
--mode forward-auth` about each request, in front of the byte-exact recording upstream.

Only the upstream addresses and the listen port of the shipped file are changed. Every request
the upstream receives must carry a signature (GATEWAY_SIGNING_SECRETS) that verifies for the
method and raw target it arrived with, and match the gateway's access-log line for its
request id; every refused one must reach nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from gateway.keys import generate_key
from gateway.paths import canonicalize
from gateway.scopes import Match, load_rules
from gateway_verify import verify_request
from tests.support import ROOT, SCOPES, free_port
from tests.security.conftest import (
    KEY_SPECS, SECURITY_ORG, GatewayProcess, RawClient, RawResponse, create_keys, stop_gateway,
)
from tests.security.recorder import Received
from tests.security.test_path_confusion import (
    FORBIDDEN_FOR_READER, MUST_REFUSE, RESOLVED, SHAPES, key_in_path_targets, key_may_reach,
)

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SHIPPED = ROOT / "deploy" / "nginx" / "forward-auth.conf"
SECRET = "nginx-2025:forward-auth-signing-secret-0123456789abcdef"
RULES = load_rules(SCOPES)



def render(conf: str, *, listen: int, auth_port: int, backend_port: int) -> str:
    """The shipped config with only its upstream servers and its listen port replaced."""
    def servers(name: str, port: int, text: str) -> str:
        block = re.compile(r"(upstream " + name + r" \{)(.*?)(\})", re.S)
        assert len(block.findall(text)) == 1, name
        return block.sub(lambda m: m[1] + re.sub(r"\n\s*server [^;]+;", "", m[2]).replace(
            "\n", f"\n    server 127.0.0.1:{port};\n", 1) + m[3], text)

    conf = servers("gateway_auth", auth_port, conf)
    conf = servers("backend", backend_port, conf)
    conf, n = re.subn(r"\n    listen 8080;", f"\n    listen 127.0.0.1:{listen};", conf)
    assert n == 1
    return conf


def render_log(conf: str, log_dir: Path) -> str:
    """...and its access log moved into the test's folder."""
    conf, n = re.subn(r"access_log /var/log/nginx/access\.log ", f"access_log {log_dir}/server-access.log ", conf)
    assert n == 1
    return conf


@dataclass
class Nginx(RawClient):
    port: int
    proc: subprocess.Popen
    dir: Path

    def error_log(self) -> str:
        return (self.dir / "error.log").read_text("latin-1")


def start_nginx(tmp: Path, *, auth_port: int, backend_port: int) -> Nginx:
    assert Path(NGINX).exists(), "nginx is required (make test installs it)"
    port = free_port()
    (tmp / "forward-auth.conf").write_text(render_log(render(SHIPPED.read_text(), listen=port, auth_port=auth_port,
                                                             backend_port=backend_port), tmp))
    temp = "\n".join(f"    {kind}_temp_path {tmp}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # One process, as the user running the tests (no user switch, no privileges needed).
    (tmp / "nginx.conf").write_text(f"""daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {tmp}/access.log;
{temp}
    include {tmp}/forward-auth.conf;
}}
""")
    with open(tmp / "nginx.stderr", "wb") as err:
        proc = subprocess.Popen([NGINX, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(tmp / "nginx.conf")],
                                stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 10
    while True:
        assert proc.poll() is None, f"nginx exited: {(tmp / 'nginx.stderr').read_text()}{(tmp / 'error.log').read_text()}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return Nginx(port, proc, tmp)
        except OSError:
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.02)


def stop_nginx(nginx: Nginx) -> None:
    if nginx.proc.poll() is None:
        nginx.proc.send_signal(signal.SIGQUIT)  # graceful
        try:
            nginx.proc.wait(10)
        except subprocess.TimeoutExpired:
            nginx.proc.kill()
            nginx.proc.wait()


def start_forward_auth(tmp: Path, redis_url: str, recorder, *extra: str, ready: bool = True) -> GatewayProcess:
    """`gateway serve --mode forward-auth` (no --upstream), trusting nginx's 127.0.0.1, signing on."""
    port, ops = free_port(), free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    environ["GATEWAY_SIGNING_SECRETS"] = SECRET
    stdout, stderr = tmp / "gateway.out", tmp / "gateway.err"
    cmd = [sys.executable, "-m", "gateway", "serve", "--mode", "forward-auth", "--listen", f"127.0.0.1:{port}",
           "--ops-listen", f"127.0.0.1:{ops}", "--redis", redis_url, "--scopes", str(SCOPES),
           "--trusted-proxies", "127.0.0.1/32", *extra]
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=out, stderr=err)
    gw = GatewayProcess(f"http://127.0.0.1:{port}", port, f"http://127.0.0.1:{ops}", recorder, proc, stdout, stderr)
    probe = b"GET /readyz" if ready else b"GET /healthz"
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, f"gateway exited: {stderr.read_text()}"
        try:
            with socket.create_connection(("127.0.0.1", ops), timeout=1) as s:
                s.sendall(probe + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return gw
        except OSError:
            pass
        assert time.monotonic() < deadline, f"gateway not ready: {stderr.read_text()}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def gateway(redis_server, recorder, tmp_path_factory) -> GatewayProcess:
    redis_server.client.flushall()
    keys = create_keys(redis_server.url, KEY_SPECS)
    gw = start_forward_auth(tmp_path_factory.mktemp("fa"), redis_server.url, recorder, "--auth-failure-limit", "3")
    gw.keys = keys
    yield gw
    stop_gateway(gw)
    assert gw.proc.returncode == 0, gw.stderr.read_text()


@pytest.fixture(scope="module")
def edge(gateway, recorder, tmp_path_factory) -> Nginx:
    nginx = start_nginx(tmp_path_factory.mktemp("nginx"), auth_port=gateway.port, backend_port=recorder.port)
    yield nginx
    stop_nginx(nginx)


def through(edge: Nginx, gw: GatewayProcess, raw: bytes, *, source: str = "127.0.0.1") -> tuple[RawResponse, Received | None]:
    """One request through nginx; checks the invariant; returns the answer and what the upstream got."""
    before = len(gw.recorder.received)
    resp = edge.exchange(raw, source=source)
    new = gw.recorder.received[before:]
    if resp.header("X-Upstream") != "recorder":
        assert new == [], f"refused with {resp.status} but forwarded: {new}"
        assert resp.status >= 400, resp.raw[:300]
        return resp, None
    assert len(new) == 1, new
    got = new[0]
    request_id = got.header("X-Request-Id")
    assert request_id and resp.header("X-Request-Id") == request_id
    entry = gw.log_entry(request_id)
    # What arrived is what the gateway authorized: method, path and rule from its log line; the
    # whole raw target (query included) from the signature over what it authorized.
    assert entry["status"] == 200 and entry["outcome"] == "ok", entry
    assert (got.method, got.path) == (entry["method"], entry["path"]), (got.request_line, entry)
    target = canonicalize(got.target)
    assert target.path == got.path
    found = RULES.match(got.method, target.segments)
    assert isinstance(found, Match) and found.rule.template == entry["route"], (found, entry)
    identity = verify_request(got.method, got.target, got.headers, SECRET)
    assert identity.request_id == request_id
    assert (identity.org_id or None, identity.key_id or None) == (entry["org_id"], entry["key_id"])
    return resp, got


def raw_request(method: bytes, target: bytes, key: str | None, *headers: bytes) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: api.example", b"Connection: close", *headers]
    if key is not None:
        lines.append(b"Authorization: Bearer " + key.encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


def error_of(resp: RawResponse, status: int, code: str) -> dict:
    assert resp.status == status, resp.raw[:400]
    assert resp.header("Content-Type").startswith("application/json")
    error = resp.json()["error"]
    assert error["code"] == code, error
    assert error["request_id"] == resp.header("X-Request-Id")
    assert [k.lower() for k, _ in resp.headers].count("x-request-id") == 1
    return error


# --- allowed requests ---------------------------------------------------------------------------


def test_a_valid_key_reaches_the_backend_with_the_gateways_identity(edge, gateway):
    spec = gateway.keys["reader"]
    resp, got = through(edge, gateway, raw_request(b"GET", b"/v1/tasks/42?expand=owner", spec["key"]))
    assert resp.status == 200 and got.target == "/v1/tasks/42?expand=owner"
    assert got.header("X-Org-Id") == SECURITY_ORG
    assert got.header("X-Api-Key-Id") == spec["id"]
    assert got.header("X-Api-Key-Scopes") == " ".join(spec["scopes"])
    assert got.header("X-Forwarded-For") == "127.0.0.1"
    assert got.header("Authorization") is None  # the key never reaches the backend


def test_a_key_in_x_api_key_is_not_forwarded_either(edge, gateway):
    key = gateway.keys["reader"]["key"]
    resp, got = through(edge, gateway, raw_request(b"GET", b"/v1/tasks", None, b"X-API-Key: " + key.encode()))
    assert resp.status == 200
    assert got.values("X-Api-Key") == [] and key not in json.dumps(got.headers)


def test_a_public_route_passes_without_a_key_or_identity(edge, gateway):
    resp, got = through(edge, gateway, raw_request(b"GET", b"/v1/status", None, b"X-Org-Id: evil"))
    assert resp.status == 200
    assert got.values("X-Org-Id") == [] and got.values("X-Api-Key-Id") == [] and got.values("X-Api-Key-Scopes") == []


def test_spoofed_identity_headers_are_replaced_or_removed(edge, gateway):
    spec = gateway.keys["reader"]
    spoofs = [
        b"X-Org-Id: evil", b"x-org-id: evil2", b"X-ORG-ID: evil3", b"X_Org_Id: evil4", b"X-Org_Id: evil5",
        b"X-Api-Key-Id: key_evil", b"X-API-KEY-SCOPES: api_keys:manage", b"X_Api_Key_Scopes: api_keys:manage",
        b"X-Request-Id: req_forged", b"X-Gateway-Signature: v1=" + b"0" * 64, b"X-Gateway-Signature-Key-Id: evil",
        b"X-Gateway-Timestamp: 1", b"X-Gateway-Error: {}", b"X_Gateway_Signature: v1=" + b"1" * 64,
        # (method-override headers are refused by the check: test_override_headers_never_reach_...)
        b"Forwarded: for=6.6.6.6", b"X-Real-IP: 6.6.6.6", b"X-Forwarded-For: 6.6.6.6",
        b"Connection: close, X-Org-Id, X-Api-Key-Scopes",  # hop-by-hop tricks cannot remove what is injected
    ]
    resp, got = through(edge, gateway, raw_request(b"GET", b"/v1/tasks", spec["key"], *spoofs))
    assert resp.status == 200
    assert got.values("X-Org-Id") == [SECURITY_ORG]
    assert got.values("X-Api-Key-Id") == [spec["id"]]
    assert got.values("X-Api-Key-Scopes") == [" ".join(spec["scopes"])]
    assert got.values("X-Request-Id") == [resp.header("X-Request-Id")] != ["req_forged"]
    assert got.values("X-Gateway-Signature-Key-Id") == ["nginx-2025"]
    folded = [k.lower().replace("_", "-") for k, _ in got.headers]
    for name in ("x-org-id", "x-api-key-id", "x-api-key-scopes", "x-request-id", "x-gateway-signature"):
        assert folded.count(name) == 1, (name, got.headers)
    assert "x-gateway-error" not in folded
    assert not any("_" in k for k, _ in got.headers), got.headers  # nginx drops names with "_"
    for name in ("Forwarded", "X-Real-IP"):
        assert got.values(name) == [], name
    assert got.values("X-Forwarded-For") == ["127.0.0.1"]


def test_a_client_cannot_choose_what_gets_authorized(edge, gateway):
    key = gateway.keys["reader"]["key"]
    for spoof in ([b"X-Original-URI: /v1/status", b"X-Original-Method: GET"],
                  [b"X-Forwarded-Uri: /v1/status", b"X-Forwarded-Method: GET"]):
        resp, _ = through(edge, gateway, raw_request(b"GET", b"/v1/guests", key, *spoof))
        error_of(resp, 403, "insufficient_scope")
        resp, got = through(edge, gateway, raw_request(b"GET", b"/v1/tasks", key, *spoof))
        assert resp.status == 200 and got.target == "/v1/tasks"


def test_spoofs_on_a_public_route_are_removed(edge, gateway):
    resp, got = through(edge, gateway, raw_request(
        b"GET", b"/v1/status", None, b"X-Org-Id: evil", b"X-Api-Key-Id: key_evil", b"X-Api-Key-Scopes: all",
        b"X-Gateway-Signature: v1=" + b"0" * 64))
    assert resp.status == 200
    assert [k.lower() for k, _ in got.headers if k.lower() in ("x-org-id", "x-api-key-id", "x-api-key-scopes")] == []
    assert got.values("X-Gateway-Signature") != ["v1=" + "0" * 64]


def test_the_method_forwarded_is_the_method_authorized(edge, gateway):
    writer = gateway.keys["writer"]
    resp, got = through(edge, gateway, raw_request(b"PATCH", b"/v1/tasks/42", writer["key"],
                                                    b"Content-Length: 2", b"Content-Type: application/json") + b"{}")
    assert resp.status == 200 and got.method == "PATCH" and got.body == b"{}"
    resp, got = through(edge, gateway, raw_request(b"HEAD", b"/v1/tasks/42", writer["key"]))
    assert resp.status == 200 and got.method == "HEAD"


# --- refusals: our JSON error and status, through nginx ----------------------------------------


def test_a_bad_key_gets_our_json_401(edge, gateway):
    resp, _ = through(edge, gateway, raw_request(b"GET", b"/v1/tasks", "sop_" + "A" * 36), source="127.0.0.11")
    error_of(resp, 401, "invalid_api_key")
    assert [k.lower() for k, _ in resp.headers].count("www-authenticate") == 1
    assert resp.header("WWW-Authenticate").startswith('Bearer realm="api", error="invalid_token"')
    assert resp.header("Cache-Control") == "no-store"
    assert gateway.log_entry(resp.header("X-Request-Id"))["outcome"] == "invalid_api_key"


def test_a_missing_key_gets_401_missing_api_key(edge, gateway):
    resp, _ = through(edge, gateway, raw_request(b"POST", b"/v1/tasks", None))
    error_of(resp, 401, "missing_api_key")
    assert resp.header("WWW-Authenticate") == 'Bearer realm="api"'


def test_insufficient_scope_gets_403_with_the_scope(edge, gateway):
    resp, _ = through(edge, gateway, raw_request(b"POST", b"/v1/tasks", gateway.keys["reader"]["key"]))
    assert error_of(resp, 403, "insufficient_scope")["required_scope"] == "tasks:write"
    assert 'error="insufficient_scope"' in resp.header("WWW-Authenticate")


def test_no_route_gets_404_and_a_wrong_method_405_with_allow(edge, gateway):
    key = gateway.keys["reader"]["key"]
    resp, _ = through(edge, gateway, raw_request(b"GET", b"/v1/nowhere", key))
    error_of(resp, 404, "route_not_found")
    resp, _ = through(edge, gateway, raw_request(b"PUT", b"/v1/tasks", key))
    error_of(resp, 405, "method_not_allowed")
    assert set(resp.header("Allow").split(", ")) >= {"GET", "POST"}


def test_a_target_the_edge_would_forward_differently_gets_400_invalid_path(edge, gateway):
    key = gateway.keys["reader"]["key"]
    for target in (b"/v1/%74asks", b"/v1/tasks/..%2fguests", b"/v1//tasks", b"/v1/tasks;x=1"):
        resp, _ = through(edge, gateway, raw_request(b"GET", target, key))
        error_of(resp, 400, "invalid_path")


def _check_request(convention: str, target: str, key: str | None) -> bytes:
    """The check request nginx, Traefik or Envoy sends the forward-auth gateway for ``target``."""
    if convention == "envoy":
        return raw_request(b"GET", b"/envoy" + target.encode(), key)
    names = (b"X-Original-Method", b"X-Original-URI") if convention == "nginx" else \
        (b"X-Forwarded-Method", b"X-Forwarded-Uri")
    return raw_request(b"GET", b"/auth", key, names[0] + b": GET", names[1] + b": " + target.encode())


@pytest.mark.parametrize("convention", ["nginx", "traefik", "envoy"])
def test_a_key_in_the_path_is_refused_in_forward_auth_and_never_logged(gateway, convention):
    key = gateway.keys["reader"]["key"]
    for target in key_in_path_targets(key):
        for header_key in (None, gateway.keys["writer"]["key"]):
            before = len(gateway.recorder.received)
            resp = gateway.exchange(_check_request(convention, target, header_key))
            error_of(resp, 400, "api_key_in_path")
            assert key[4:].encode() not in resp.raw and gateway.recorder.received[before:] == []
            entry = gateway.log_entry(resp.header("X-Request-Id"))
            assert entry["outcome"] == "api_key_in_path" and key[4:] not in str(entry), entry
    time.sleep(0.2)  # access-log lines are written in batches
    assert key[4:] not in gateway.all_logs()


def test_a_key_in_the_path_never_reaches_the_backend_behind_nginx(edge, gateway):
    key = generate_key()  # not one of gateway.keys: nginx's own access log records request lines
    for target in key_in_path_targets(key):
        resp, got = through(edge, gateway, raw_request(b"GET", target.encode(), gateway.keys["reader"]["key"]))
        assert got is None
        error_of(resp, 400, "api_key_in_path")
    time.sleep(0.2)
    assert key[4:] not in gateway.all_logs()


@pytest.mark.parametrize("header, code", [
    (b"X-Original-URL: /v1/admin", "path_override_refused"),
    (b"X-Rewrite-URL: /v1/admin", "path_override_refused"),
    (b"X-Forwarded-Prefix: /internal", "path_override_refused"),
    (b"X-Envoy-Original-Path: /v1/admin", "path_override_refused"),
    (b"Base-Url: http://evil.example/", "path_override_refused"),
    (b"X-HTTP-Method-Override: DELETE", "method_override_refused"),
    (b"X-Method-Override: DELETE", "method_override_refused"),
])
def test_override_headers_never_reach_the_backend_behind_nginx(edge, gateway, header, code):
    # nginx forwards the client's headers itself: the check refuses them, whatever nginx's config.
    resp, got = through(edge, gateway, raw_request(b"GET", b"/v1/tasks", gateway.keys["reader"]["key"], header))
    assert got is None
    error_of(resp, 400, code)


def test_nginx_access_log_never_holds_a_key_from_the_path_or_the_query(edge, gateway):
    # A generated key (nginx's error log quotes the request line of each refused request, see
    # docs/forward-auth.md; the module's real keys must stay out of every log: test_nginx_logged_no_key).
    key = generate_key()
    targets = [*key_in_path_targets(key), f"/v1/tasks?api_key={key}", f"/v1/tasks?x=1&token={key}",
               f"/v1/tasks?k={quote(key, safe='')}"]
    for target in targets:
        resp, got = through(edge, gateway, raw_request(b"GET", target.encode(), gateway.keys["reader"]["key"]))
        assert got is None and resp.status == 400, (target, resp.status)
    resp, _ = through(edge, gateway, raw_request(b"GET", b"/v1/tasks/42", gateway.keys["reader"]["key"]))
    assert resp.status == 200
    log = edge.dir / "server-access.log"
    deadline = time.monotonic() + 5
    while resp.header("X-Request-Id") not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    text = log.read_text()
    assert '"GET /v1/tasks/42"' in text  # the log still says what was asked
    assert text.count("[redacted]") >= len(key_in_path_targets(key)) - 1, text[-2000:]
    assert key[4:] not in text and key[4:20] not in text and quote(key[4:20]) not in text, text[-2000:]


def test_failed_attempts_are_throttled_per_client_behind_nginx(edge, gateway):
    bad = raw_request(b"GET", b"/v1/tasks", "sop_" + "B" * 36)
    for _ in range(3):
        resp, _ = through(edge, gateway, bad, source="127.0.0.21")
        error_of(resp, 401, "invalid_api_key")
    resp, _ = through(edge, gateway, bad, source="127.0.0.21")
    error_of(resp, 429, "too_many_failed_attempts")
    assert int(resp.header("Retry-After")) >= 1
    resp, _ = through(edge, gateway, bad, source="127.0.0.22")  # another client: not locked out
    error_of(resp, 401, "invalid_api_key")
    # ... and a working key from the throttled address still passes once this process knows it.
    resp, _ = through(edge, gateway, raw_request(b"GET", b"/v1/tasks", gateway.keys["reader"]["key"]), source="127.0.0.23")
    assert resp.status == 200


def test_the_check_location_cannot_be_called_from_outside(edge, gateway):
    resp, got = through(edge, gateway, raw_request(b"GET", b"/_gateway_auth", gateway.keys["reader"]["key"],
                                                    b"X-Original-Method: GET", b"X-Original-URI: /v1/tasks"))
    assert resp.status == 404 and got is None


def test_redis_down_is_our_503_and_a_dead_gateway_too(redis_server, recorder, tmp_path_factory):
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    gw = start_forward_auth(tmp_path_factory.mktemp("fa-noredis"), dead_redis, recorder, ready=False)
    nginx = start_nginx(tmp_path_factory.mktemp("nginx-noredis"), auth_port=gw.port, backend_port=recorder.port)
    gone = start_nginx(tmp_path_factory.mktemp("nginx-nogw"), auth_port=free_port(), backend_port=recorder.port)
    try:
        before = len(recorder.received)
        resp = nginx.exchange(raw_request(b"GET", b"/v1/tasks", generate_key()))
        error_of(resp, 503, "auth_unavailable")
        assert resp.header("Retry-After") == "1"
        resp = gone.exchange(raw_request(b"GET", b"/v1/tasks", "sop_" + "D" * 36))
        assert resp.status == 503 and resp.json()["error"]["code"] == "auth_unavailable"
        assert resp.header("Retry-After") == "1" and resp.header("Content-Type").startswith("application/json")
        assert recorder.received[before:] == []
    finally:
        stop_nginx(nginx)
        stop_nginx(gone)
        stop_gateway(gw)


# --- path confusion through nginx ----------------------------------------------------------------

ALL_TARGETS = [t for targets in MUST_REFUSE.values() for t in targets] + [t for t, _, _ in RESOLVED]
# Unambiguous targets already in canonical form: nginx forwards them byte for byte.
FORWARDED_AS_SENT = [b"/v1/tasks/...", b"/v1/tasks/.hidden", b"/v1/tasks/%252e%252e", b"/v1/tasks/%252f",
                     b"/v1/tasks/a%20b", b"/v1/tasks/a+b", b"/v1/status?/../tasks", b"/v1/status?%2f..%2ftasks",
                     b"/v1/tasks?/../../guests", b"/v1/reservations/upcomingX", b"/v1/tasks/caf%C3%A9"]


@pytest.mark.parametrize("target", [pytest.param(t, id=repr(t[:48])) for t in ALL_TARGETS])
def test_every_confusing_target_reaches_the_backend_only_as_authorized(edge, gateway, target):
    resp, got = through(edge, gateway, raw_request(b"GET", target, gateway.keys["reader"]["key"]))
    if got is not None:
        assert key_may_reach(gateway.keys["reader"]["scopes"], got.method, got.path), got.request_line


@pytest.mark.parametrize("target", FORWARDED_AS_SENT)
def test_canonical_targets_are_forwarded_byte_for_byte(edge, gateway, target):
    resp, got = through(edge, gateway, raw_request(b"GET", target, gateway.keys["reader"]["key"]))
    assert resp.status == 200 and got.target.encode("latin-1") == target


@pytest.mark.parametrize("tail", FORBIDDEN_FOR_READER)
def test_confusion_never_reaches_a_route_the_key_lacks(edge, gateway, tail):
    for shape in SHAPES:
        target = shape.replace("{t}", tail).replace("{T}", tail.upper()).encode()
        resp, got = through(edge, gateway, raw_request(b"GET", target, gateway.keys["reader"]["key"]))
        if got is not None:  # e.g. absolute-form: nginx forwards (and asks about) its path only
            assert key_may_reach(gateway.keys["reader"]["scopes"], got.method, got.path), got.request_line


@pytest.mark.parametrize("key_name, method", [("admin", b"GET"), ("reader", b"DELETE"), ("reader", b"POST")])
def test_every_variant_with_a_key_or_method_lacking_scope(edge, gateway, key_name, method):
    spec = gateway.keys[key_name]
    for target in ALL_TARGETS:
        resp, got = through(edge, gateway, raw_request(method, target, spec["key"]))
        if got is not None:
            assert got.method == method.decode() and key_may_reach(spec["scopes"], got.method, got.path)


def test_nginx_logged_no_key(edge, gateway):
    """The keys sent above appear in neither nginx's logs nor the gateway's."""
    logs = edge.error_log() + (edge.dir / "access.log").read_text("latin-1") + gateway.all_logs()
    for spec in gateway.keys.values():
        assert spec["key"] not in logs


def test_a_limited_keys_budget_headers_reach_the_client_through_nginx(redis_server, recorder, tmp_path):
    """The shipped config copies RateLimit-Policy / RateLimit onto the backend's answers and the
    429, and the 429 reaches nothing."""
    keys = create_keys(redis_server.url, {"limited": ("tasks:read",)})
    gw = start_forward_auth(tmp_path, redis_server.url, recorder, "--default-limits", "hour=3")
    (tmp_path / "nginx").mkdir()
    nginx = start_nginx(tmp_path / "nginx", auth_port=gw.port, backend_port=recorder.port)
    try:
        answers = [through(nginx, gw, raw_request(b"GET", b"/v1/tasks", keys["limited"]["key"]))[0] for _ in range(4)]
        for i, resp in enumerate(answers[:3]):
            assert resp.status == 200 and resp.header("X-Upstream") == "recorder"
            assert resp.header("RateLimit-Policy") == '"per-hour";q=3;w=3600'
            assert resp.header("RateLimit").startswith(f'"per-hour";r={2 - i};t=')
        error = error_of(answers[3], 429, "rate_limited")
        assert (error["window"], error["limit"]) == ("hour", 3)
        assert answers[3].header("Retry-After") and answers[3].header("RateLimit").startswith('"per-hour";r=0;')
    finally:
        stop_nginx(nginx)
        stop_gateway(gw)
