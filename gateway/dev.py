"""`gateway dev`: a local Redis, the gateway, the admin API and a demo upstream in one command."""

from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from gateway import config
from gateway.resources import shipped
from gateway.store import KeyStore, connect

DEMO_ORG = "demo"
DEMO_SCOPES = ("tasks:read", "reservations:read")
PR_SET_PDEATHSIG = 1
REDIS_CONF = shipped("redis.conf")  # also deploy/redis.conf (a link to it)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """Linux: SIGTERM the child when `gateway dev` dies, even by SIGKILL (nothing left running)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the finally block in run_dev still stops it
        pass


async def start_redis(data_dir: Path) -> tuple[asyncio.subprocess.Process, str]:
    """Start redis-server with the shipped config on a free port; wait until it answers."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("gateway dev: redis-server is not installed (run `make run`, which installs it, or pass --redis URL)")
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        binary, str(REDIS_CONF), "--port", str(port), "--dir", str(data_dir.resolve()),
        "--bind", "127.0.0.1", "--logfile", "redis.log",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = connect(url)
    try:
        for _ in range(100):
            try:
                if await client.ping():
                    return proc, url
            except Exception:  # noqa: BLE001 - not up yet
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    proc.terminate()
    raise SystemExit(f"gateway dev: redis-server did not start (see {data_dir}/redis.log)")


async def run_dev(*, redis_url: str | None, scopes: str, base_port: int) -> int:
    """Start Redis (unless given), then the stack; Redis stops with it, however it ends."""
    redis_proc = None
    if redis_url is None:
        redis_proc, redis_url = await start_redis(Path(".data") / "redis")
    try:
        await _run_stack(redis_url=redis_url, scopes=scopes, base_port=base_port)
    finally:
        if redis_proc is not None and redis_proc.returncode is None:
            redis_proc.terminate()
            await redis_proc.wait()
    print("gateway dev: stopped", file=sys.stderr)
    return 0


async def _run_stack(*, redis_url: str, scopes: str, base_port: int) -> None:
    from admin_api.app import ADMIN, make_admin_app
    from gateway.app import Gateway, make_ops_app, run_apps
    from gateway.echo import make_echo_app

    token = os.environ.get("GATEWAY_OPERATOR_TOKEN") or "dev-operator-" + secrets.token_urlsafe(16)
    gw_port, admin_port, up_port, ops_port = base_port, base_port + 1, base_port + 2, base_port + 10
    admin_ops_port = base_port + 11
    serve = config.load(config.ServeSettings, {
        "listen": f"127.0.0.1:{gw_port}", "upstream": f"http://127.0.0.1:{up_port}",
        "redis": redis_url, "scopes": scopes, "ops_listen": f"127.0.0.1:{ops_port}",
    }, environ={})
    admin = config.load(config.AdminSettings, {
        "listen": f"127.0.0.1:{admin_port}", "redis": redis_url, "scopes": scopes,
        "operator_tokens": (token,), "ops_listen": f"127.0.0.1:{admin_ops_port}",
    }, environ={})
    gateway = Gateway(serve)
    store = KeyStore(connect(redis_url))
    try:
        now = int(time.time() * 1000)
        _, key = await store.create(org_id=DEMO_ORG, name="Demo key (gateway dev)", scopes=DEMO_SCOPES,
                                    expires_at=None, actor="gateway dev", now_ms=now)
    finally:
        await store.redis.aclose()
    admin_app = make_admin_app(admin)
    await run_apps(
        [(make_echo_app(), f"127.0.0.1:{up_port}"), (gateway, serve.listen),
         (make_ops_app(gateway.state), serve.ops_listen), (admin_app, admin.listen),
         (make_ops_app(admin_app[ADMIN]), admin.ops_listen)],
        on_started=lambda: print(_banner(key, token, redis_url, gw_port, admin_port, up_port, ops_port), flush=True),
    )


def _banner(key: str, token: str, redis_url: str, gw: int, admin: int, up: int, ops: int) -> str:
    return f"""
API-key gateway (dev) is running. Ctrl-C stops everything.

  gateway    http://127.0.0.1:{gw}    -> demo upstream http://127.0.0.1:{up} (echoes what it receives)
  admin API  http://127.0.0.1:{admin}   (OpenAPI: http://127.0.0.1:{admin}/openapi.json)
  ops        http://127.0.0.1:{ops}   (/healthz /readyz /metrics; the admin API's on :{ops + 1})
  redis      {redis_url}

Demo key for org "{DEMO_ORG}" with {", ".join(DEMO_SCOPES)} (shown once):
  export KEY={key}
Operator token for the admin API:
  export TOKEN={token}

Try:
  # a call that works (200; the upstream echoes the identity headers the gateway injected)
  curl -s -H "Authorization: Bearer $KEY" http://127.0.0.1:{gw}/v1/tasks
  # a call outside the key's scopes (403 insufficient_scope, needs tasks:write)
  curl -s -X POST -H "Authorization: Bearer $KEY" http://127.0.0.1:{gw}/v1/tasks
  # no key (401 missing_api_key)
  curl -s http://127.0.0.1:{gw}/v1/tasks
  # a public route (200, no key needed)
  curl -s http://127.0.0.1:{gw}/v1/status
  # the org's keys, with last_used_at (written about a second after a call)
  curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:{admin}/v1/orgs/{DEMO_ORG}/api-keys
  # create a key
  curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
       -d '{{"name": "Zapier production", "expires_in": "90d", "scopes": ["tasks:read", "tasks:write"]}}' \\
       http://127.0.0.1:{admin}/v1/orgs/{DEMO_ORG}/api-keys
"""
