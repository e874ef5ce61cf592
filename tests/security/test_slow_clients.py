"""Slow and idle clients on the aiohttp listeners: the admin API's port and the ops listeners.

Real processes over real sockets, with low timeouts (--head-timeout 2, --body-timeout 2) so the
tests take seconds. A connection must deliver a complete request head within --head-timeout of
connect or of its last response (dribbling included), a body within --body-timeout, and idle
connections past --max-connections / --ops-max-connections are closed first, so they cannot
lock the operator out even when the process is short of file descriptors.
"""

from __future__ import annotations

import resource
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support import OPERATOR_TOKEN
from tests.security.conftest import parse_responses, running_admin, start_gateway, stop_gateway

TIMEOUT = 2.0
MAX_CONNECTIONS = 10
FD_LIMIT = 96  # far fewer descriptors than the idle connections opened below


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


@pytest.fixture(scope="module")
def admin(redis_server, tmp_path_factory):
    """`gateway admin` with low timeouts and a low descriptor limit; (admin port, ops port)."""
    with running_admin(tmp_path_factory.mktemp("slow-admin") / "admin.log", redis_server.url,
                       "--head-timeout", str(TIMEOUT), "--body-timeout", str(TIMEOUT),
                       "--max-connections", str(MAX_CONNECTIONS), preexec_fn=_low_fd_limit) as admin:
        yield admin.port, admin.ops
    assert admin.proc.returncode == 0, admin.log.read_text()


@pytest.fixture(scope="module")
def gateway_ops(redis_server, recorder, tmp_path_factory):
    """The ops port of a `gateway serve` with --head-timeout 2 and --ops-max-connections 10."""
    gw = start_gateway(tmp_path_factory.mktemp("slow-gw"), redis_server.url, recorder,
                       "--head-timeout", str(TIMEOUT), "--ops-max-connections", str(MAX_CONNECTIONS))
    yield int(gw.ops.rsplit(":", 1)[1])
    stop_gateway(gw)


def _answers(port: int, raw: bytes, prefix: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(raw)
            return s.recv(64).startswith(prefix)
    except OSError:
        return False


def seconds_until_closed(port: int, dribble: bytes = b"", every: float = 0.4, first: bytes = b"",
                         limit: float = 15.0) -> tuple[float, bytes]:
    """Connect, send ``first``, then ``dribble`` a byte every ``every`` s; (seconds until the
    server closed, what it sent). Fails if it is still open after ``limit`` s."""
    started = time.monotonic()
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=every) as s:
        if first:
            s.sendall(first)
        i = 0
        while time.monotonic() - started < limit:
            try:
                chunk = s.recv(65536)
                if not chunk:
                    return time.monotonic() - started, got
                got += chunk
            except socket.timeout:
                pass
            except ConnectionResetError:
                return time.monotonic() - started, got
            if i < len(dribble):
                try:
                    s.sendall(dribble[i:i + 1])
                except (BrokenPipeError, ConnectionResetError):
                    return time.monotonic() - started, got
                i += 1
    raise AssertionError(f"still open after {limit} s (sent {i} bytes)")


HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 64 + b"\r\n\r\n"


def _closed_in_time(elapsed: float) -> None:
    assert TIMEOUT - 0.5 <= elapsed <= TIMEOUT + 2.5, elapsed


def test_idle_and_dribbling_connections_are_closed_on_every_listener(admin, gateway_ops):
    admin_port, admin_ops = admin
    cases = [(port, dribble) for port in (admin_port, admin_ops, gateway_ops) for dribble in (b"", HEAD)]
    with ThreadPoolExecutor(len(cases)) as pool:  # all at once: one timeout's wait for all of them
        results = list(pool.map(lambda c: seconds_until_closed(c[0], c[1]), cases))
    for (port, _), (elapsed, got) in zip(cases, results, strict=True):
        _closed_in_time(elapsed)
        assert not got.startswith(b"HTTP/1.1 200"), (port, got)  # the dribbled head never completed


def test_a_keep_alive_connection_is_closed_when_idle_after_its_response(admin, gateway_ops):
    ports = [admin[0], admin[1], gateway_ops]
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    admin_req = b"GET /v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + OPERATOR_TOKEN.encode() + b"\r\n\r\n"
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda p: seconds_until_closed(p, first=admin_req if p == admin[0] else request),
                                ports))
    for elapsed, got in results:
        _closed_in_time(elapsed)
        assert parse_responses(got)[0].status == 200


def test_a_dribbled_body_gets_408_and_the_connection_closes(admin):
    body = b'{"name": "slow", "scopes": ["tasks:read"]}'
    head = (b"POST /v1/orgs/acme/api-keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + OPERATOR_TOKEN.encode() + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    elapsed, got = seconds_until_closed(admin[0], dribble=body, first=head)
    _closed_in_time(elapsed)
    resp = parse_responses(got)[0]
    assert resp.status == 408 and resp.json()["error"]["code"] == "request_timeout"


@pytest.mark.parametrize("which", ["admin", "admin ops", "gateway ops"])
def test_many_idle_connections_do_not_lock_the_operator_out(admin, gateway_ops, which):
    port = {"admin": admin[0], "admin ops": admin[1], "gateway ops": gateway_ops}[which]
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(FD_LIMIT + 20)]
    try:
        if which == "admin":
            request = (b"GET /v1/me HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer "
                       + OPERATOR_TOKEN.encode() + b"\r\n\r\n")
        else:
            request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        started = time.monotonic()
        assert _answers(port, request, b"HTTP/1.1 200")
        assert time.monotonic() - started < TIMEOUT - 0.5  # not merely after the idle ones timed out
        # The idle ones were closed to make room (the oldest first), all but the limit.
        closed = 0
        for s in idle:
            s.settimeout(0.2)
            try:
                closed += s.recv(1) == b""
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed += 1
        assert closed >= len(idle) - MAX_CONNECTIONS
    finally:
        for s in idle:
            s.close()
