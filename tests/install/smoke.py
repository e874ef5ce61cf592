"""End-to-end smoke of an installed gateway: run by tests/install/run.py with the Python of a
fresh venv that holds only the wheel and its dependencies, from a folder outside the source
tree. Standard library only (the venv has no test packages).

Two stacks, each driven over real HTTP:
- `gateway dev` (its own redis-server, gateway, admin API and page, demo upstream);
- `gateway serve` + `gateway admin` + `python -m gateway.echo` against a redis-server started
  here, then `gateway serve --mode forward-auth`.
On each: create a key, a GET and a streamed 1 MB POST (and a 1 MB download) through the proxy,
revoke, and the revoked key refused; the page and its static files from the admin API.
Exit 0 when every check passed; otherwise the first failure and the processes' output.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
MB = 1024 * 1024
TOKEN = "smoke-operator-token-0123456789"


class SmokeFailed(Exception):
    pass


def check(condition: bool, what: str, detail: object = "") -> None:
    """Print ``what`` when it holds; otherwise fail with it and ``detail`` (what was seen)."""
    if not condition:
        raise SmokeFailed(f"{what}: {detail!r}"[:600] if detail != "" else what)
    print(f"  ok  {what}", flush=True)


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port below Linux's ephemeral range (32768-60999), so that no outgoing connection takes it
    before its process binds it (tests/support.free_port's rule); never the same one twice."""
    for _ in range(1000):
        port = random.randint(10000, 19999)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise SmokeFailed("no free port in 10000-19999")


def free_block(size: int, offsets: tuple[int, ...]) -> int:
    """A base port with base+offset free for every offset (for `gateway dev --port`)."""
    for _ in range(200):
        base = free_port()
        if base + max(offsets) >= 65535:
            continue
        try:
            socks = []
            for off in offsets:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + off))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise SmokeFailed("no free block of ports")


def request(port: int, method: str, path: str, *, headers: dict[str, str] | None = None,
            body: bytes | None = None, chunked: bool = False) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        if chunked and body is not None:
            def parts():
                for i in range(0, len(body), 64 * 1024):
                    yield body[i:i + 64 * 1024]
            conn.request(method, path, body=parts(), headers=headers or {}, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def wait_http(port: int, path: str, deadline: float, procs: list[subprocess.Popen]) -> None:
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise SmokeFailed(f"{p.args[0]} exited with {p.returncode} before answering on :{port}")
        try:
            status, _, _ = request(port, "GET", path)
            if status < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SmokeFailed(f"nothing answered on :{port}{path} in time")


def spawn(args: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    out = open(log, "wb")
    return subprocess.Popen(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def exercise_proxy(gw: int, key: str) -> None:
    """A GET, a streamed 1 MB POST and a 1 MB download through the proxy with ``key``."""
    status, _, body = request(gw, "GET", "/v1/tasks", headers=bearer(key))
    check(status == 200, f"GET /v1/tasks through the proxy: 200 (got {status})")
    echoed = {k.lower(): v for k, v in json.loads(body)["headers"]}
    check(echoed.get("x-org-id") == "smoke" or echoed.get("x-org-id") == "demo",
          f"the upstream saw X-Org-Id ({echoed.get('x-org-id')!r})")
    check("authorization" not in echoed, "the key was not forwarded")
    status, _, _ = request(gw, "GET", "/v1/tasks")
    check(status == 401, f"no key: 401 (got {status})")


def exercise_upload(gw: int, key: str) -> None:
    payload = os.urandom(MB)
    status, _, body = request(gw, "POST", "/v1/tasks", headers={**bearer(key), "Content-Type": "application/octet-stream"},
                              body=payload, chunked=True)
    check(status == 200, "streamed (chunked) 1 MB POST through the proxy: 200", (status, body[:300]))
    echo = json.loads(body)
    check(echo["body_bytes"] == MB and echo["body_sha256"] == hashlib.sha256(payload).hexdigest(),
          "the upstream received the 1 MB body byte for byte")
    status, _, body = request(gw, "GET", f"/v1/tasks?download={MB}", headers=bearer(key))
    check(status == 200 and len(body) == MB, f"1 MB streamed download: 200, {len(body)} bytes")


def create_key(admin: int, org: str, token: str, scopes: list[str]) -> tuple[str, str]:
    status, headers, body = request(admin, "POST", f"/v1/orgs/{org}/api-keys", headers={
        **bearer(token), "Content-Type": "application/json"},
        body=json.dumps({"name": "install smoke", "scopes": scopes, "expires_in": "30d"}).encode())
    check(status == 201 and headers.get("cache-control") == "no-store",
          "admin API creates a key: 201, no-store", (status, body[:300]))
    created = json.loads(body)
    return created["id"], created["key"]


def revoke(admin: int, org: str, token: str, key_id: str) -> None:
    status, _, body = request(admin, "POST", f"/v1/orgs/{org}/api-keys/{key_id}/revoke", headers=bearer(token))
    check(status == 200 and json.loads(body)["status"] == "revoked", f"revoke: 200 revoked (got {status})")


def exercise_page(admin: int) -> None:
    status, headers, body = request(admin, "GET", "/")
    check(status == 200 and b"<html" in body.lower() and headers["content-type"].startswith("text/html"),
          "the page: GET / is HTML")
    for name in re.findall(rb'(?:src|href)="(/static/[^"]+)"', body):
        status, headers, data = request(admin, "GET", name.decode())
        check(status == 200 and len(data) > 100, f"static file {name.decode()}: 200, {len(data)} bytes")
    status, _, body = request(admin, "GET", "/openapi.json")
    check(status == 200 and json.loads(body)["openapi"].startswith("3."), "GET /openapi.json")


def smoke_dev(work: Path) -> None:
    print("gateway dev:", flush=True)
    base = free_block(12, (0, 1, 2, 3, 10, 11))
    gw, admin = base, base + 1
    log = work / "dev.log"
    proc = spawn([str(BIN / "gateway"), "dev", "--port", str(base)], work, log, env={"GATEWAY_OPERATOR_TOKEN": TOKEN})
    try:
        deadline = time.monotonic() + 60
        while not re.search(r"export KEY=(\S+)", log.read_text(errors="replace")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SmokeFailed(f"gateway dev printed no demo key (exit {proc.poll()})")
            time.sleep(0.1)
        key = re.search(r"export KEY=(\S+)", log.read_text()).group(1)
        wait_http(gw, "/v1/status", deadline, [proc])
        wait_http(admin, "/openapi.json", deadline, [proc])
        check((work / ".data" / "redis").is_dir(), "gateway dev started its own redis-server under ./.data/redis")
        exercise_proxy(gw, key)
        key_id, secret = create_key(admin, "demo", TOKEN, ["tasks:read", "tasks:write"])
        exercise_proxy(gw, secret)
        exercise_upload(gw, secret)
        revoke(admin, "demo", TOKEN, key_id)
        status, _, body = request(gw, "GET", "/v1/tasks", headers=bearer(secret))
        check(status == 401 and b"revoked_api_key" in body, f"revoked key: 401 revoked_api_key (got {status})")
        exercise_page(admin)
        # The dev-only OpenID provider ships in the wheel (gateway/data/devidp) and starts with node.
        has_node = bool(shutil.which("node") and shutil.which("npm"))
        banner = log.read_text(errors="replace")
        check(bool(re.search(rf"sign-in +http://127\.0\.0\.1:{base + 3} ", banner)) == has_node,
              f"gateway dev: sign-in {'on' if has_node else 'off'} (node and npm {'found' if has_node else 'missing'})")
        status, _, body = request(admin, "GET", "/auth/config")
        check(status == 200 and json.loads(body)["sign_in"] is has_node, "GET /auth/config says whether sign-in is on")
    except BaseException:
        print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
        raise
    finally:
        stop([proc])


def smoke_serve(work: Path) -> None:
    print("gateway serve + gateway admin + a redis-server:", flush=True)
    redis_port, gw, fa, admin, up, ops, fa_ops, admin_ops = (free_port() for _ in range(8))
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    procs: list[subprocess.Popen] = []
    logs = []

    def run(name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        logs.append(work / f"{name}.log")
        procs.append(spawn(args, work, logs[-1], env))

    from gateway.resources import shipped

    # What an operator does with an installed gateway: start from the example rules it ships.
    shutil.copy(shipped("scopes.yaml"), work / "scopes.yaml")
    try:
        run("redis", [shutil.which("redis-server") or "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                      "--save", "", "--appendonly", "no"])
        run("echo", [sys.executable, "-m", "gateway.echo", "--listen", f"127.0.0.1:{up}"])
        common = ["--redis", redis_url]
        run("serve", [str(BIN / "gateway"), "serve", "--listen", f"127.0.0.1:{gw}", "--upstream", f"http://127.0.0.1:{up}",
                      "--ops-listen", f"127.0.0.1:{ops}", *common])
        run("forward-auth", [str(BIN / "gateway"), "serve", "--mode", "forward-auth", "--listen", f"127.0.0.1:{fa}",
                             "--ops-listen", f"127.0.0.1:{fa_ops}", *common])
        run("admin", [str(BIN / "gateway"), "admin", "--listen", f"127.0.0.1:{admin}", "--ops-listen",
                      f"127.0.0.1:{admin_ops}", *common],
            env={"GATEWAY_OPERATOR_TOKEN": TOKEN})
        deadline = time.monotonic() + 60
        for port, path in ((ops, "/readyz"), (fa_ops, "/readyz"), (admin_ops, "/healthz"), (admin, "/openapi.json"), (up, "/")):
            wait_http(port, path, deadline, procs)
        while any(request(p, "GET", "/readyz")[0] != 200 for p in (ops, fa_ops, admin_ops)):
            if time.monotonic() > deadline:
                raise SmokeFailed("the gateways never became ready")
            time.sleep(0.1)
        check(True, "gateway serve (proxy and forward-auth) and gateway admin ready (/readyz) with the shipped scopes.yaml")
        out = subprocess.run([str(BIN / "gateway"), "keys", "create", "--redis", redis_url, "--org", "smoke",
                              "--name", "cli smoke", "--scope", "tasks:read,tasks:write"],
                             cwd=work, capture_output=True, text=True, timeout=30)
        check(out.returncode == 0, "gateway keys create: exit 0", out.stderr[-500:])
        cli_key = json.loads(out.stdout)
        exercise_proxy(gw, cli_key["key"])
        exercise_upload(gw, cli_key["key"])
        key_id, secret = create_key(admin, "smoke", TOKEN, ["tasks:read"])
        exercise_proxy(gw, secret)
        nginx = {"X-Original-Method": "GET", "X-Original-URI": "/v1/tasks?page=2"}
        status, headers, _ = request(fa, "GET", "/", headers={**nginx, **bearer(secret)})
        check(status == 200 and headers.get("x-org-id") == "smoke" and headers.get("x-api-key-id") == key_id,
              f"forward-auth: 200 with the identity headers (got {status})")
        status, _, _ = request(fa, "GET", "/", headers={**nginx, "X-Original-Method": "POST", **bearer(secret)})
        check(status == 403, f"forward-auth: POST outside the key's scopes: 403 (got {status})")
        revoke(admin, "smoke", TOKEN, key_id)
        status, _, body = request(gw, "GET", "/v1/tasks", headers=bearer(secret))
        check(status == 401 and b"revoked_api_key" in body, f"proxy after revoke: 401 revoked_api_key (got {status})")
        status, _, _ = request(fa, "GET", "/", headers={**nginx, **bearer(secret)})
        check(status == 401, f"forward-auth after revoke: 401 (got {status})")
        out = subprocess.run([str(BIN / "gateway"), "keys", "revoke", "--redis", redis_url, "--org", "smoke", cli_key["id"]],
                             cwd=work, capture_output=True, text=True, timeout=30)
        check(out.returncode == 0, "gateway keys revoke: exit 0", out.stderr[-500:])
        status, _, _ = request(gw, "GET", "/v1/tasks", headers=bearer(cli_key["key"]))
        check(status == 401, f"the CLI-revoked key: 401 (got {status})")
        exercise_page(admin)
    except BaseException:
        for log in logs:
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        raise
    finally:
        stop(procs[::-1])


def run_step(work: Path, name: str, step) -> None:
    """Run one smoke step; again (up to 3 times, new ports) when a process lost its port to another.

    A port from free_port() is free when chosen, but until the process binds it any outgoing
    connection on the machine (these very processes' Redis clients, a parallel smoke) may be given
    it as its ephemeral port: a bind collision says nothing about the product.
    """
    for attempt in range(1, 4):
        where = work / f"{name}-{attempt}"
        where.mkdir()
        try:
            step(where)
            return
        except SmokeFailed:
            lost = any("address already in use" in log.read_text(errors="replace").lower()
                       for log in where.rglob("*.log"))
            if not lost or attempt == 3:
                raise
            print(f"  (a port was taken before its process bound it: {name} again with new ports)", flush=True)


def main() -> int:
    import gateway

    where = Path(gateway.__file__).resolve()
    print(f"Python {sys.version.split()[0]}, gateway from {where.parent}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gateway-smoke-") as tmp:
        work = Path(tmp)
        try:
            for name, step in (("dev", smoke_dev), ("serve", smoke_serve)):
                run_step(work, name, step)
        except SmokeFailed as exc:
            print(f"SMOKE FAILED: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
