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
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gateway import config
from gateway.devguards import PORT_HELP, DevLock, check_ports, dev_ports
from gateway.ratelimit import Limit
from gateway.resources import shipped
from gateway.store import KeyStore, connect

DEMO_ORG = "demo"
DEMO_SCOPES = ("tasks:read", "reservations:read")
DEMO_NAME = "Demo key (gateway dev)"
DEMO_ACTOR = "gateway dev"  # created_by of the demo key, and revoked_by of the ones it replaced
# The demo key's own limits, small enough to see a 429 from a shell loop (the limits file's
# default plan applies to the keys made on the page that set none).
DEMO_LIMITS = (Limit("second", 5), Limit("day", 10_000))
SHIPPED_LIMITS = shipped("limits.yaml")
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


async def run_dev(*, redis_url: str | None, scopes: str, base_port: int, limits_file: str = str(SHIPPED_LIMITS)) -> int:
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
        await _run_stack(redis_url=redis_url, scopes=scopes, base_port=base_port, limits_file=limits_file)
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


async def _run_stack(*, redis_url: str, scopes: str, base_port: int, limits_file: str) -> None:
    from admin_api.app import ADMIN, make_admin_app
    from gateway.app import Gateway, make_ops_app, run_apps
    from gateway.echo import make_echo_app
    from gateway.aiohttp_runner import ListenerLimits

    token = os.environ.get("GATEWAY_OPERATOR_TOKEN") or "dev-operator-" + secrets.token_urlsafe(16)
    ports = dev_ports(base_port)
    gw_port, admin_port, up_port, ops_port, admin_ops_port, idp_port = (ports[n] for n in (
        "gateway", "admin API", "upstream", "ops", "admin ops", "sign-in provider"))
    serve = config.load(config.ServeSettings, {
        "listen": f"127.0.0.1:{gw_port}", "upstream": f"http://127.0.0.1:{up_port}",
        "redis": redis_url, "scopes": scopes, "ops_listen": f"127.0.0.1:{ops_port}", "limits_file": limits_file,
    }, environ={})
    idp = start_dev_provider(idp_port, f"http://127.0.0.1:{admin_port}")
    admin = config.load(config.AdminSettings, {
        "listen": f"127.0.0.1:{admin_port}", "redis": redis_url, "scopes": scopes,
        "operator_tokens": (token,), "ops_listen": f"127.0.0.1:{admin_ops_port}", "limits_file": limits_file,
        **idp.settings,
    }, environ={})
    gateway = Gateway(serve)
    store = KeyStore(connect(redis_url))
    try:
        key = await replace_demo_key(store, int(time.time() * 1000))
    finally:
        await store.redis.aclose()
    admin_app = make_admin_app(admin)
    try:
        await run_apps(
            [(make_echo_app(), f"127.0.0.1:{up_port}"), (gateway, serve.listen),
             (make_ops_app(gateway.state), serve.ops_listen), (admin_app, admin.listen),
             (make_ops_app(admin_app[ADMIN], checks=admin_app[ADMIN].ready_checks,
                           before_metrics=admin_app[ADMIN].update_metrics), admin.ops_listen)],
            on_started=lambda: print(_banner(key, token, redis_url, gw_port, admin_port, up_port, ops_port, idp),
                                     flush=True),
            limits=ListenerLimits.for_settings(admin),
        )
    finally:
        idp.stop()


DEV_CLIENT_ID = "gateway-dev"
# The dev provider's people: (login, role) in the demo org; passwords are made up at each start.
DEV_USERS = (("demo-admin", "admin"), ("demo-viewer", "viewer"))


@dataclass
class DevProvider:
    """The local OpenID provider of `gateway dev` (gateway/devidp.py; DEV-ONLY), or why there is none."""

    proc: subprocess.Popen | None
    settings: dict  # the admin API settings that sign people in through it (empty: sign-in off)
    passwords: dict[str, str]
    issuer: str = ""
    off_reason: str = ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def banner(self) -> str:
        if self.proc is None:
            return (f"  sign-in    off: {self.off_reason}\n"
                    f"             (on the page, use the operator token below and org {DEMO_ORG})")
        people = "\n".join(f"             {login} / {self.passwords[login]}   ({role} of org {DEMO_ORG})"
                           for login, role in DEV_USERS)
        return (f"  sign-in    {self.issuer}  (DEV-ONLY OpenID provider, made-up users; on the page choose\n"
                f"             \"Sign in with your account\" and use one of:)\n{people}")


def start_dev_provider(port: int, admin_url: str) -> DevProvider:
    """Start the dev provider on ``port`` with DEV_USERS in the demo org, its client being the
    admin API at ``admin_url``. Without node and npm (or npm's registry) sign-in is off, said
    in the banner; the rest of `gateway dev` runs as before."""
    from gateway import devidp

    issuer = f"http://127.0.0.1:{port}"
    passwords = {login: secrets.token_urlsafe(9) for login, _ in DEV_USERS}
    secret = secrets.token_urlsafe(24)
    config_json = {
        "port": port, "issuer": issuer, "audience": admin_url,
        "client": {"client_id": DEV_CLIENT_ID, "client_secret": secret,
                   "redirect_uri": admin_url + "/auth/callback", "post_logout_redirect_uri": admin_url + "/"},
        "users": {login: {"email": f"{login}@{DEMO_ORG}.example", "org_id": DEMO_ORG, "roles": [role],
                          "password": passwords[login]} for login, role in DEV_USERS},
        "jwks": {"keys": [devidp.new_signing_key("dev-1")]},
    }
    log = tempfile.TemporaryFile()
    try:
        proc = devidp.start(config_json, log=log, preexec_fn=die_with_parent)
    except (devidp.NodeMissing, subprocess.SubprocessError, RuntimeError, OSError) as exc:
        log.close()
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return DevProvider(None, {}, {}, off_reason=reason[:200])
    settings = {"oidc_issuer": issuer, "oidc_audience": admin_url, "oidc_client_id": DEV_CLIENT_ID,
                "oidc_client_secret": secret, "public_url": admin_url, "oidc_scopes": "openid email org",
                "cookie_insecure": True}
    return DevProvider(proc, settings, passwords, issuer=issuer)


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
                                actor=DEMO_ACTOR, now_ms=now_ms, limits=DEMO_LIMITS)
    for key_id in earlier:
        await store.revoke(org_id=DEMO_ORG, key_id=key_id, actor=DEMO_ACTOR, now_ms=now_ms)
    return key


def _limits(limits) -> str:
    return ", ".join(f"{limit.limit:,} a {limit.window}" for limit in limits)


def _banner(key: str, token: str, redis_url: str, gw: int, admin: int, up: int, ops: int, idp: DevProvider) -> str:
    return f"""
API-key gateway (dev) is running. Ctrl-C stops everything.

  gateway    http://127.0.0.1:{gw}    -> demo upstream http://127.0.0.1:{up} (echoes what it receives)
  admin API  http://127.0.0.1:{admin}   (OpenAPI: http://127.0.0.1:{admin}/openapi.json)
  page       http://127.0.0.1:{admin}/  (Settings -> API Keys)
  ops        http://127.0.0.1:{ops}   (/healthz /readyz /metrics; the admin API's on :{ops + 1})
  redis      {redis_url}
{idp.banner()}

Demo key for org "{DEMO_ORG}" with {", ".join(DEMO_SCOPES)}, limited to {_limits(DEMO_LIMITS)}
(shown once; the previous run's is revoked):
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
  # past the key's 5 requests a second, 429 rate_limited (with Retry-After; every answer for the
  # key carries the RateLimit-Policy and RateLimit headers: add -i to see them)
  for i in 1 2 3 4 5 6 7 8; do curl -s -o /dev/null -w '%{{http_code}} ' -H "Authorization: Bearer $KEY" \
       http://127.0.0.1:{gw}/v1/tasks; done; echo
  # the org's keys (200), with last_used_at (written about a second after a call)
  curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:{admin}/v1/orgs/{DEMO_ORG}/api-keys
  # create a key (201; its secret is in this answer only), as in the README's walkthrough
  curl -s -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
       -d '{{"name": "Zapier production", "expires_in": "90d", "scopes": ["tasks:read"]}}' \\
       http://127.0.0.1:{admin}/v1/orgs/{DEMO_ORG}/api-keys
"""
