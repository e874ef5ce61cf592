"""A real OpenID provider for the tests: tests/oidc/provider.mjs (oidc-provider from npm) under node.

`npm ci` runs once per package-lock.json into a cache folder outside the repo
(``$XDG_CACHE_HOME/api-key-gateway/oidc-<lock digest>``, else ``~/.cache/...``); the script is
copied beside its node_modules and started on 127.0.0.1 with its configuration as JSON in
OIDC_TEST_CONFIG. ``rotate()`` restarts it on the same port with a new signing key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from joserfc.jwk import RSAKey

from tests.support import ROOT, free_port

OIDC_DIR = ROOT / "tests" / "oidc"
AUDIENCE = "https://admin-api.test"
CLIENT = {"client_id": "admin-api", "client_secret": "admin-api-secret-0123456789",
          "redirect_uri": "http://127.0.0.1:8081/auth/callback"}
# Two orgs; in each an admin and a viewer, and in org-a a person without a role.
USERS = {
    "alice": {"email": "alice@a.example", "org_id": "org-a", "roles": ["admin"]},
    "victor": {"email": "victor@a.example", "org_id": "org-a", "roles": ["viewer"]},
    "nora": {"email": "nora@a.example", "org_id": "org-a", "roles": []},
    "bob": {"email": "bob@b.example", "org_id": "org-b", "roles": ["admin"]},
    "beth": {"email": "beth@b.example", "org_id": "org-b", "roles": ["viewer"]},
}


def install_dir() -> Path:
    """node_modules for tests/oidc/package-lock.json, installed once with `npm ci`."""
    lock = (OIDC_DIR / "package-lock.json").read_bytes()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "api-key-gateway"
    target = base / f"oidc-{hashlib.sha256(lock).hexdigest()[:16]}"
    if not (target / "node_modules" / "oidc-provider").is_dir():
        npm = shutil.which("npm")
        assert npm and shutil.which("node"), "node and npm are required (scripts/install-system-deps.sh test)"
        staging = base / f".staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(OIDC_DIR / name, staging / name)
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=staging, check=True, timeout=300)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)  # whole or not at all: a half-done install is never used
    shutil.copy(OIDC_DIR / "provider.mjs", target / "provider.mjs")
    return target


def new_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"}, private=True)


class OidcProvider:
    """oidc-provider under node on 127.0.0.1: issuer, one confidential client, USERS, a signing key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.audience = AUDIENCE
        self.keys = [new_key("k1")]
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        config = {"port": self.port, "issuer": self.issuer, "audience": self.audience, "client": CLIENT,
                  "users": USERS, "jwks": {"keys": [k.as_dict(private=True) for k in self.keys]}}
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([shutil.which("node"), str(self.folder / "provider.mjs")], cwd=self.folder,
                                     env={**os.environ, "OIDC_TEST_CONFIG": json.dumps(config)},
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(self.issuer + "/.well-known/openid-configuration", timeout=2) as r:
                    assert json.load(r)["issuer"] == self.issuer
                return
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None:
                    self.log.seek(0)
                    raise AssertionError("oidc-provider exited: " + self.log.read().decode()) from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.proc is not None:
            self.log.close()
        self.proc = None

    def rotate(self, kid: str) -> None:
        """Restart with a new signing key ``kid``; the old key leaves the JWKS."""
        self.stop()
        self.keys = [new_key(kid)]
        self.start()

    def token(self, user: str, aud: str | None = None, header: dict | None = None, **override) -> str:
        """An access token (JWT) the provider signs for ``user``; ``override`` replaces claims (None
        removes one), ``header`` adds header fields."""
        body = json.dumps({"sub": user, "aud": aud, "override": override, "header": header}).encode()
        req = urllib.request.Request(self.issuer + "/__test/token", data=body, method="POST",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)["access_token"]

    def client_credentials_token(self) -> str:
        """A token from the provider's token endpoint for the client itself (no person, no org)."""
        form = urllib.parse.urlencode({"grant_type": "client_credentials", "resource": self.audience,
                                       "scope": "api_keys"}).encode()
        auth = base64.b64encode(f"{CLIENT['client_id']}:{CLIENT['client_secret']}".encode()).decode()
        req = urllib.request.Request(self.issuer + "/token", data=form, method="POST",
                                     headers={"Authorization": f"Basic {auth}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)["access_token"]

    def settings(self) -> dict:
        """The admin API settings that trust this provider."""
        return {"oidc_issuer": self.issuer, "oidc_audience": self.audience}
