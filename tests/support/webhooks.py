"""Webhook receivers for the tests: the independent verifier (tests/support/webhook_verifier: the
npm standardwebhooks package under node, installed with `npm ci` once per lock file into the cache
folder, as gateway/devidp.py installs oidc-provider) and aiohttp receivers on real sockets
(recording, failing, slow, redirecting)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

from aiohttp import web

from tests.support import free_port

VERIFIER_DIR = Path(__file__).resolve().parent / "webhook_verifier"


def verifier_install() -> Path:
    """node_modules for webhook_verifier/package-lock.json (npm ci once, beside and renamed in)."""
    npm = shutil.which("npm")
    assert npm and shutil.which("node"), "node and npm are required (scripts/install-system-deps.sh)"
    lock = (VERIFIER_DIR / "package-lock.json").read_bytes()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "api-key-gateway"
    target = base / f"webhook-verifier-{hashlib.sha256(lock).hexdigest()[:16]}"
    if not (target / "node_modules" / "standardwebhooks").is_dir():
        staging = base / f".staging-wh-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(VERIFIER_DIR / name, staging / name)
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=staging, check=True, timeout=300)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    shutil.copy(VERIFIER_DIR / "verifier.js", target / "verifier.js")
    return target


class Verifier:
    """The node receiver: ``url`` receives deliveries; ``set_secret`` and ``received`` drive it."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.proc = subprocess.Popen([shutil.which("node") or "node", str(folder / "verifier.js")], cwd=folder,
                                     env={**os.environ, "PORT": str(self.port)}, stdout=subprocess.PIPE)
        assert self.proc.stdout.readline() == b"listening\n"

    def _call(self, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method="POST" if data else "GET")
        with urllib.request.urlopen(req, timeout=5) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def set_secret(self, secret: str) -> None:
        self._call("/__secret", {"secret": secret})

    def received(self) -> list[dict]:
        return self._call("/__received")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
        self.proc.stdout.close()


GOT = web.AppKey("got", list)


def outbox_handled(client) -> bool:
    """The admin API's webhook dispatcher has read and handled every outbox entry (a sync redis
    client): an endpoint created after this hears of no earlier event."""
    if not client.exists("gw:events"):
        return True
    groups = client.xinfo_groups("gw:events")
    return bool(groups) and all(g["pending"] == 0 and g["lag"] == 0 for g in groups)


def receiver_app(status: int = 204, delay: float = 0.0, hold: asyncio.Event | None = None,
                 headers: dict | None = None, body: bytes = b"") -> web.Application:
    """An aiohttp receiver that records each request (headers, body, path) in app[GOT] and answers
    ``status`` after ``delay`` seconds (or once ``hold`` is set)."""
    app = web.Application()
    app[GOT] = []

    async def handle(request: web.Request) -> web.Response:
        app[GOT].append({"headers": dict(request.headers), "body": await request.read(), "path": request.path})
        if hold is not None:
            await hold.wait()
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=status, headers=headers or {}, body=body)

    app.router.add_route("*", "/{tail:.*}", handle)
    return app
