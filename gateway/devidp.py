"""A local OpenID provider for development and the tests: oidc-provider (npm), a certified OpenID
Connect implementation, under node. DEV-ONLY: its users, passwords and signing key are made up
at start and it keeps nothing; `gateway dev` and the test suite run it on 127.0.0.1, never a
deployment (there, --oidc-issuer names the host product's own provider).

The script and its pinned package-lock.json ship in gateway/data/devidp/. ``install_dir`` runs
`npm ci` once per lock file into a cache folder outside the tree
(``$XDG_CACHE_HOME/api-key-gateway/oidc-<lock digest>``, else ``~/.cache/...``) and copies the
script beside its node_modules; the provider reads its whole configuration as JSON from the
OIDC_TEST_CONFIG environment variable (provider.mjs says what it holds).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from gateway.resources import shipped

SOURCE_FILES = ("provider.mjs", "package.json", "package-lock.json")


class NodeMissing(RuntimeError):
    """node or npm is not installed (scripts/install-system-deps.sh installs both)."""


def source_dir() -> Path:
    return shipped("devidp/provider.mjs").parent


def install_dir() -> Path:
    """node_modules for the shipped package-lock.json, installed once with `npm ci` (whole or
    not at all: it is installed beside and renamed into place)."""
    src = source_dir()
    npm, node = shutil.which("npm"), shutil.which("node")
    if not (npm and node):
        raise NodeMissing("node and npm are required for the local OpenID provider (scripts/install-system-deps.sh)")
    lock = (src / "package-lock.json").read_bytes()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "api-key-gateway"
    target = base / f"oidc-{hashlib.sha256(lock).hexdigest()[:16]}"
    if not (target / "node_modules" / "oidc-provider").is_dir():
        staging = base / f".staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(src / name, staging / name)
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=staging, check=True, timeout=300)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    shutil.copy(src / "provider.mjs", target / "provider.mjs")
    return target


def start(config: dict, *, log, preexec_fn=None, timeout: float = 20.0) -> subprocess.Popen:
    """Start the provider with ``config`` (port, issuer, audience, client, users, jwks, ...) and
    wait until its discovery document names its issuer; its stderr goes to ``log`` (a file)."""
    folder = install_dir()
    proc = subprocess.Popen([shutil.which("node") or "node", str(folder / "provider.mjs")], cwd=folder,
                            env={**os.environ, "OIDC_TEST_CONFIG": json.dumps(config)},
                            stdout=subprocess.DEVNULL, stderr=log, preexec_fn=preexec_fn)
    deadline = time.monotonic() + timeout
    url = config["issuer"].rstrip("/") + "/.well-known/openid-configuration"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if json.load(r).get("issuer") == config["issuer"]:
                    return proc
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
            # Not up yet. Polling a port nobody listens on yet can even connect to itself (TCP
            # simultaneous open, when the kernel picks that port as the source): it reads its own
            # request back (BadStatusLine). Another try gets another source port.
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            log.seek(0)
            raise RuntimeError("the OpenID provider did not start: " + log.read().decode(errors="replace")[-2000:])
        time.sleep(0.05)


def new_signing_key(kid: str) -> dict:
    """A fresh RS256 private JWK (the provider signs ID and access tokens with it)."""
    from joserfc.jwk import RSAKey

    key = RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"}, private=True)
    return key.as_dict(private=True)
