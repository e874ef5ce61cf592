"""`gateway dev`: a local Redis, the gateway, the admin API and a demo upstream in one command."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

from gateway import config
from gateway.devguards import PORT_HELP, DevLock, check_ports, dev_ports
from gateway.resources import shipped
from gateway.store import KeyStore, connect

DEMO_ORG = "demo"
DEMO_SCOPES = ("tasks:read", "reservations:read")
DEMO_NAME = "Demo key (gateway dev)"
DEMO_ACTOR = "gateway dev"  # created_by of the demo key, and revoked_by of the ones it replaced
DATA_DIR = Path(".data")
PR_SET_PDEATHSIG = 1
REDIS_CONF = shipped("redis.conf")  # also deploy/redis.conf (a link to it)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_redis_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def die_with_parent() -> None:
    """Linux: SIGTERM the child when `gateway dev` dies, even by SIGKILL (nothing left running)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the finally block in run_dev still stops it
        pass


async def start_redis(data_dir: Path, lock_fd: int) -> tuple[asyncio.subprocess.Process, int]:
    """Start redis-server with the shipped config on a free port; wait until it answers.

    It inherits ``lock_fd`` (gateway/devguards.py), so the folder stays locked until it has exited.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("gateway dev: redis-server is not installed (run `make run`, which installs it, or pass --redis URL)")
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        binary, str(REDIS_CONF), "--port", str(port), "--dir", str(data_dir.resolve()),
        "--bind", "127.0.0.1", "--logfile", "redis.log",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=die_with_parent, pass_fds=(lock_fd,),
    )
    client = connect(local_redis_url(port))
    try:
        for _ in range(100):
            try:
                if await client.ping():
                    return proc, port
            except Exception:  # noqa: BLE001 - not up yet
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    proc.terminate()
    raise SystemExit(f"gateway dev: redis-server did not start (see {data_dir}/redis.log)")


async def run_dev(*, redis_url: str | None, scopes: str, base_port: int) -> int:
    """Start Redis (unless given), then the stack; Redis stops with it, however it ends.

    Nothing starts while another `gateway dev` runs in this folder (it would share
    .data/redis) or while one of the ports is taken: one line says which, and why.
    """
    ports = dev_ports(base_port)
    lock = DevLock(DATA_DIR / "dev.lock")
    redis_proc = None
    try:
        if redis_url is None:
            lock.acquire(pid=os.getpid(), **ports)
        check_ports(ports)
        if redis_url is None:
            redis_proc, redis_port = await start_redis(DATA_DIR / "redis", lock.fd)
            lock.update(redis=redis_port)
            redis_url = local_redis_url(redis_port)
        await _run_stack(redis_url=redis_url, scopes=scopes, base_port=base_port)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        # Taken between the check and the listen: still one line, not a traceback.
        raise SystemExit(f"gateway dev: {exc.strerror or exc}; {PORT_HELP}") from None
    finally:
        if redis_proc is not None and redis_proc.returncode is None:
            redis_proc.terminate()
            await redis_proc.wait()
        lock.release()
    print("gateway dev: stopped", file=sys.stderr)
    return 0


async def _run_stack(*, redis_url: str, scopes: str, base_port: int) -> None:
    from admin_api.app import ADMIN, make_admin_app
    from gateway.app import Gateway, make_ops_app, run_apps
    from gateway.echo import make_echo_app
    from gateway.aiohttp_runner import ListenerLimits

    token = os.environ.get("GATEWAY_OPERATOR_TOKEN") or "dev-operator-" + secrets.token_urlsafe(16)
    ports = dev_ports(base_port)
    gw_port, admin_port, up_port, ops_port, admin_ops_port = (ports[n] for n in (
        "gateway", "admin API", "upstream", "ops", "admin ops"))
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
        key = await replace_demo_key(store, int(time.time() * 1000))
    finally:
        await store.redis.aclose()
    admin_app = make_admin_app(admin)
    await run_apps(
        [(make_echo_app(), f"127.0.0.1:{up_port}"), (gateway, serve.listen),
         (make_ops_app(gateway.state), serve.ops_listen), (admin_app, admin.listen),
         (make_ops_app(admin_app[ADMIN], checks=admin_app[ADMIN].ready_checks,
                       before_metrics=admin_app[ADMIN].update_metrics), admin.ops_listen)],
        on_started=lambda: print(_banner(key, token, redis_url, gw_port, admin_port, up_port, ops_port), flush=True),
        limits=ListenerLimits.for_settings(admin),
    )


async def replace_demo_key(store: KeyStore, now_ms: int) -> str:
    """A new demo key, every earlier one revoked: one active demo key after any number of starts.

    An earlier key cannot be shown again (only its digest is stored), so it is replaced.
    """
    earlier, cursor = [], None
    while True:
        page = await store.list(DEMO_ORG, limit=100, cursor=cursor)
        earlier += [r.id for r in page.records if r.name == DEMO_NAME and r.created_by == DEMO_ACTOR]
        if not (cursor := page.next_cursor):
            break
    _, key = await store.create(org_id=DEMO_ORG, name=DEMO_NAME, scopes=DEMO_SCOPES, expires_at=None,
                                actor=DEMO_ACTOR, now_ms=now_ms)
    for key_id in earlier:
        await store.revoke(org_id=DEMO_ORG, key_id=key_id, actor=DEMO_ACTOR, now_ms=now_ms)
    return key


def _banner(key: str, token: str, redis_url: str, gw: int, admin: int, up: int, ops: int) -> str:
    return f"""
API-key gateway (dev) is running. Ctrl-C stops everything.

  gateway    http://127.0.0.1:{gw}    -> demo upstream http://127.0.0.1:{up} (echoes what it receives)
  admin API  http://127.0.0.1:{admin}   (OpenAPI: http://127.0.0.1:{admin}/openapi.json)
  page       http://127.0.0.1:{admin}/  (Settings -> API Keys; sign in with the operator token and org {DEMO_ORG})
  ops        http://127.0.0.1:{ops}   (/healthz /readyz /metrics; the admin API's on :{ops + 1})
  redis      {redis_url}

Demo key for org "{DEMO_ORG}" with {", ".join(DEMO_SCOPES)} (shown once; the previous run's is revoked):
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
  # the org's keys (200), with last_used_at (written about a second after a call)
  curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:{admin}/v1/orgs/{DEMO_ORG}/api-keys
  # create a key (201; its secret is in this answer only), as in the README's walkthrough
  curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
       -d '{{"name": "Zapier production", "expires_in": "90d", "scopes": ["tasks:read"]}}' \\
       http://127.0.0.1:{admin}/v1/orgs/{DEMO_ORG}/api-keys
"""
