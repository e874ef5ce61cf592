"""The security suite's stack: a real `gateway serve` process in front of a byte-exact recorder.

The gateway runs as a subprocess, as deployed, so its logs and memory can be inspected from
outside. Its proxy port parses HTTP with httptools (llhttp) in gateway/httpserver.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.store import KeyStore, connect
from tests.security.recorder import Received, Recorder
from tests.support import OPERATOR_TOKEN, ROOT, SCOPES, free_port
from tests.support.rawhttp import RawResponse, parse_responses

TRUSTED_PROXY = "127.0.0.2"  # connect from this address to act as a trusted proxy
SECURITY_ORG = "sec-org"


class RawClient:
    """Raw HTTP/1.1 over a fresh socket to ``self.port`` (the gateway, or nginx in front of it)."""

    port: int

    def send(self, raw: bytes, *, source: str = "127.0.0.1", timeout: float = 5.0, shutdown: bool = False) -> bytes:
        """Write ``raw`` on a fresh connection and return every byte until the gateway closes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout, source_address=(source, 0)) as s:
            s.sendall(raw)
            if shutdown:
                s.shutdown(socket.SHUT_WR)
            chunks = []
            try:
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            except (ConnectionResetError, socket.timeout):
                pass
            return b"".join(chunks)

    def exchange(self, raw: bytes, **kw) -> RawResponse:
        """Send one request (it should say Connection: close) and parse the single answer."""
        data = self.send(raw, **kw)
        responses = parse_responses(data)
        assert responses, f"no HTTP response to {raw[:200]!r}: got {data[:200]!r}"
        return responses[0]

    def request(self, method: str, target: str, headers=(), *, key: str | None = None, body: bytes = b"",
                source: str = "127.0.0.1") -> RawResponse:
        lines = [f"{method} {target} HTTP/1.1", "Host: api.example", "Connection: close"]
        if key is not None:
            lines.append(f"Authorization: Bearer {key}")
        items = headers.items() if isinstance(headers, dict) else headers
        lines += [f"{k}: {v}" for k, v in items]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        return self.exchange(raw, source=source)


@dataclass
class GatewayProcess(RawClient):
    url: str
    port: int
    ops: str
    recorder: Recorder
    proc: subprocess.Popen
    stdout: Path
    stderr: Path
    keys: dict[str, dict] = field(default_factory=dict)  # name -> {"key", "id", "scopes"}
    # The access log read so far: a module's gateway logs thousands of lines, so each read goes on from
    # where the last one stopped (the file only grows) instead of parsing it all again.
    _log: list[dict] = field(default_factory=list, repr=False)
    _log_by_id: dict[str, dict] = field(default_factory=dict, repr=False)  # request id -> its first line
    _log_read: int = 0  # bytes of stdout in _log

    def access_log(self) -> list[dict]:
        # Complete lines only: the last one may still be half written (the log is written in batches).
        with open(self.stdout, "rb") as f:
            f.seek(self._log_read)
            data = f.read()
        end = data.rfind(b"\n") + 1
        for line in data[:end].decode().split("\n"):
            if line.startswith("{"):
                entry = json.loads(line)
                self._log.append(entry)
                self._log_by_id.setdefault(entry.get("request_id"), entry)
        self._log_read += end
        return list(self._log)

    def log_entry(self, request_id: str) -> dict:
        for _ in range(100):  # the line may still be in flight
            self.access_log()
            if request_id in self._log_by_id:
                return self._log_by_id[request_id]
            time.sleep(0.01)
        raise AssertionError(f"no access log line for {request_id}")

    def all_logs(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def alive(self) -> bool:
        return self.proc.poll() is None


def create_keys(redis_url: str, specs: dict[str, tuple[str, ...]]) -> dict[str, dict]:
    async def run() -> dict[str, dict]:
        store = KeyStore(connect(redis_url))
        out = {}
        try:
            for name, scopes in specs.items():
                record, secret = await store.create(org_id=SECURITY_ORG, name=name, scopes=list(scopes),
                                                    expires_at=None, actor="test", now_ms=int(time.time() * 1000))
                out[name] = {"key": secret, "id": record.id, "scopes": scopes}
        finally:
            await store.redis.aclose()
        return out

    return asyncio.run(run())


def start_gateway(tmp: Path, redis_url: str, recorder: Recorder, *extra: str,
                  env: dict | None = None) -> GatewayProcess:
    port, ops = free_port(), free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    environ.update(env or {})
    stdout, stderr = tmp / "gateway.out", tmp / "gateway.err"
    cmd = [sys.executable, "-m", "gateway", "serve", "--listen", f"127.0.0.1:{port}",
           "--ops-listen", f"127.0.0.1:{ops}", "--upstream", recorder.url, "--redis", redis_url,
           "--scopes", str(SCOPES), "--trusted-proxies", f"{TRUSTED_PROXY}/32", "--max-body-bytes", "1048576",
           "--read-timeout", "5", *extra]
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=out, stderr=err)
    gw = GatewayProcess(f"http://127.0.0.1:{port}", port, f"http://127.0.0.1:{ops}", recorder, proc,
                        stdout, stderr)
    _wait_ready(proc, ops, stderr)
    return gw


def _wait_ready(proc: subprocess.Popen, ops: int, log: Path) -> None:
    """Until the process's ops listener answers /readyz with 200 (Redis reached, rules loaded)."""
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, f"{proc.args[3]} exited: {log.read_text()}"
        try:
            with socket.create_connection(("127.0.0.1", ops), timeout=1) as s:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{proc.args[3]} not ready: {log.read_text()}"
        time.sleep(0.05)


def stop_gateway(gw: GatewayProcess) -> None:
    stop_process(gw.proc)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class AdminProcess:
    url: str
    port: int
    ops: int
    proc: subprocess.Popen
    log: Path  # stdout and stderr


def start_admin(log: Path, redis_url: str, *extra: str, env: dict | None = None, port: int | None = None,
                **popen) -> AdminProcess:
    """A real `gateway admin` (operator token OPERATOR_TOKEN, no reloads) on free ports (or
    ``port``: one registered at the OpenID provider), ready."""
    port, ops = port or free_port(), free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    environ.update({"GATEWAY_OPERATOR_TOKEN": OPERATOR_TOKEN, **(env or {})})
    cmd = [sys.executable, "-m", "gateway", "admin", "--listen", f"127.0.0.1:{port}", "--ops-listen",
           f"127.0.0.1:{ops}", "--redis", redis_url, "--scopes", str(SCOPES), "--reload-interval", "0", *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT, **popen)
    try:
        _wait_ready(proc, ops, log)
    except BaseException:
        stop_process(proc)
        raise
    return AdminProcess(f"http://127.0.0.1:{port}", port, ops, proc, log)


@contextlib.contextmanager
def running_admin(log: Path, redis_url: str, *extra: str, **kw):
    """start_admin() for the length of a ``with`` block, stopped however the block ends."""
    admin = start_admin(log, redis_url, *extra, **kw)
    try:
        yield admin
    finally:
        stop_process(admin.proc)


@pytest.fixture(scope="module")
def admin_process(redis_server, tmp_path_factory) -> AdminProcess:
    """A real `gateway admin` process on an emptied Redis, for the tests that read what it logs.
    A handler error answers 500 in the envelope, but none may have happened at all."""
    redis_server.client.flushall()
    with running_admin(tmp_path_factory.mktemp("admin") / "admin.log", redis_server.url) as admin:
        yield admin
    text = admin.log.read_text()
    assert "Traceback" not in text and "unhandled error" not in text and "Error handling request" not in text, text


@pytest.fixture(scope="session")
def recorder():
    rec = Recorder().start()
    yield rec
    rec.stop()


KEY_SPECS = {
    "reader": ("tasks:read", "reservations:read", "properties:read"),
    "writer": ("tasks:read", "tasks:write", "reservations:read", "reservations:write"),
    "admin": ("api_keys:read", "api_keys:manage", "tasks:read"),
}


@pytest.fixture(scope="module")
def gateway(redis_server, recorder, tmp_path_factory) -> GatewayProcess:
    """A `gateway serve` process with keys for SECURITY_ORG."""
    redis_server.client.flushall()
    keys = create_keys(redis_server.url, KEY_SPECS)
    # The failure throttle is off here so that tests can send many bad keys from one address;
    # tests/security/test_credentials.py runs its own gateway with it on.
    gw = start_gateway(tmp_path_factory.mktemp("gw"), redis_server.url, recorder,
                       "--auth-failure-limit", "0")
    gw.keys = keys
    yield gw
    stop_gateway(gw)
    assert gw.proc.returncode == 0, gw.stderr.read_text()


@functools.cache
def _shipped_rules():
    from gateway.scopes import load_rules

    return load_rules(SCOPES)


def refused_by_parser(resp: RawResponse) -> bool:
    """The HTTP parser (or a head limit) refused the request before the pipeline ran
    (gateway/httpserver.py; answered with the envelope and code malformed_request,
    invalid_host, uri_too_long or headers_too_large)."""
    if resp.header("X-Request-Id") is None:
        return True
    try:
        return resp.json()["error"]["code"] in ("malformed_request", "invalid_host", "uri_too_long",
                                                 "headers_too_large")
    except (ValueError, KeyError, TypeError):
        return False


def check_forwarded_as_authorized(gw: GatewayProcess, resp: RawResponse) -> Received | None:
    """The invariant: a forwarded request reached the upstream with exactly the path that was
    authorized (the access log's canonical path, matched by the logged route); a refused one
    reached nothing. Returns what the upstream received, or None."""
    from gateway.paths import canonicalize
    from gateway.scopes import Match

    request_id = resp.header("X-Request-Id")
    assert request_id, resp.raw[:300]
    entry = gw.log_entry(request_id)
    got = gw.recorder.by_request_id(request_id)
    if resp.header("X-Upstream") != "recorder":
        assert got is None, f"refused with {resp.status} but forwarded: {got}"
        assert resp.status >= 400
        return None
    assert got is not None
    assert got.path == entry["path"], (got.request_line, entry)
    target = canonicalize(got.target)
    assert target.path == got.path  # what arrived is itself canonical: the backend cannot re-read it
    found = _shipped_rules().match(got.method if got.method != "HEAD" else "HEAD", target.segments)
    assert isinstance(found, Match) and found.rule.template == entry["route"], (found, entry)
    return got
