"""A real OpenID provider for the tests: gateway/data/devidp/provider.mjs (oidc-provider from npm)
under node, installed and started by gateway/devidp.py (as `gateway dev` starts it), with the
test-only /__test/* endpoints on. ``rotate()`` restarts it on the same port with a new signing key.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from joserfc.jwk import RSAKey

from gateway import devidp
from tests.support import ROOT, free_port

OIDC_DIR = ROOT / "gateway" / "data" / "devidp"
AUDIENCE = "https://admin-api.test"
CLIENT = {"client_id": "admin-api", "client_secret": "admin-api-secret-0123456789",
          "redirect_uri": "http://127.0.0.1:8081/auth/callback"}
SCOPES = "openid email org"
# Two orgs; in each an admin and a viewer, and in org-a a person without a role.
USERS = {
    "alice": {"email": "alice@a.example", "org_id": "org-a", "roles": ["admin"], "password": "alice-pw"},
    "victor": {"email": "victor@a.example", "org_id": "org-a", "roles": ["viewer"], "password": "victor-pw"},
    "nora": {"email": "nora@a.example", "org_id": "org-a", "roles": [], "password": "nora-pw"},
    "bob": {"email": "bob@b.example", "org_id": "org-b", "roles": ["admin"], "password": "bob-pw"},
    "beth": {"email": "beth@b.example", "org_id": "org-b", "roles": ["viewer"], "password": "beth-pw"},
}


def password(user: str) -> str:
    return USERS[user]["password"]


def install_dir() -> Path:
    """node_modules for gateway/data/devidp/package-lock.json, installed once (gateway/devidp.py)."""
    return devidp.install_dir()


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
        # The admin API that signs people in listens here (its redirect_uri is registered with the client).
        self.admin_port = free_port()
        self.public_url = f"http://127.0.0.1:{self.admin_port}"
        self.client = {**CLIENT, "redirect_uri": self.public_url + "/auth/callback",
                       "post_logout_redirect_uri": self.public_url + "/"}
        self.users = json.loads(json.dumps(USERS))
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        config = {"port": self.port, "issuer": self.issuer, "audience": self.audience, "client": self.client,
                  "users": self.users, "jwks": {"keys": [k.as_dict(private=True) for k in self.keys]},
                  "test_endpoints": True}
        self.log = tempfile.TemporaryFile()
        try:
            self.proc = devidp.start(config, log=self.log)
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from None

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

    def _post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.issuer + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)

    def next_id_token(self, header: dict | None = None, tamper: bool = False, alg: str | None = None,
                      key: dict | None = None, **override) -> None:
        """The NEXT token response carries a changed ID token (see provider.mjs, /__test/next-id-token)."""
        self._post("/__test/next-id-token", {"override": override, "header": header, "tamper": tamper, "alg": alg,
                                             "key": key})

    def set_user(self, user: str, record: dict | None) -> None:
        """Replace (None: remove) a user at the running provider (and for its restarts)."""
        if record is None:
            self.users.pop(user, None)
        else:
            self.users[user] = record
        self._post("/__test/users", {user: record})

    def last_token_request(self) -> dict:
        with urllib.request.urlopen(self.issuer + "/__test/last-token-request", timeout=5) as r:
            return json.load(r)

    def signin_settings(self, **extra) -> dict:
        """The admin API settings that sign people in with this provider (page sign-in)."""
        return {**self.settings(), "oidc_client_id": self.client["client_id"], "public_url": self.public_url,
                "oidc_scopes": SCOPES, "cookie_insecure": True, "signin_rate": 0, **extra}  # many sign-ins per test

    def signin_args(self, **extra) -> list[str]:
        """The same as `gateway admin` flags (the secret goes in GATEWAY_OIDC_CLIENT_SECRET: signin_env)."""
        args: list[str] = []
        for name, value in self.signin_settings(**extra).items():
            args += ["--" + name.replace("_", "-"), str(value).lower() if isinstance(value, bool) else str(value)]
        return args

    def signin_env(self) -> dict:
        return {"GATEWAY_OIDC_CLIENT_SECRET": self.client["client_secret"]}

    def token(self, user: str, aud: str | None = None, header: dict | None = None, **override) -> str:
        """An access token (JWT) the provider signs for ``user``; ``override`` replaces claims (None
        removes one), ``header`` adds header fields."""
        return self._post("/__test/token", {"sub": user, "aud": aud, "override": override, "header": header})["access_token"]

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


LOGIN_FORM = re.compile(r'<form method="post" action="([^"]+)"')


async def start_sign_in(http, admin_url: str, return_to: str = "/", prompt: str | None = None) -> tuple[str, str]:
    """GET /auth/login with ``http`` (an aiohttp ClientSession with a cookie jar): the
    provider's authorization URL the admin API redirects to, and the URL of its login form
    (``prompt="login"``: the form even while the provider remembers a sign-in)."""
    params = {"return_to": return_to, **({"prompt": prompt} if prompt else {})}
    async with http.get(admin_url + "/auth/login", params=params, allow_redirects=False) as r:
        assert r.status == 302, (r.status, await r.text())
        authorize = r.headers["Location"]
    async with http.get(authorize, allow_redirects=True) as r:
        text = await r.text()
        assert r.status == 200, (r.status, text)
        match = LOGIN_FORM.search(text)
        assert match, text
        return authorize, urllib.parse.urljoin(str(r.url), match.group(1))


async def submit_login(http, form_url: str, user: str, password: str) -> str:
    """Post the provider's login form; follow its redirects up to (not into) the admin API's
    /auth/callback, and return that callback URL."""
    async with http.post(form_url, data={"login": user, "password": password}, allow_redirects=False) as r:
        location = r.headers.get("Location")
        assert r.status in (302, 303), (r.status, await r.text())
    url = urllib.parse.urljoin(form_url, location)
    for _ in range(10):
        if "/auth/callback" in urllib.parse.urlsplit(url).path:
            return url
        async with http.get(url, allow_redirects=False) as r:
            assert r.status in (302, 303), (r.status, await r.text())
            url = urllib.parse.urljoin(url, r.headers["Location"])
    raise AssertionError("the provider never redirected to /auth/callback")


async def sign_in(http, admin_url: str, user: str, password: str | None = None, return_to: str = "/",
                  prompt: str | None = None) -> str:
    """A whole sign-in over HTTP, as a browser does it: /auth/login, the provider's login form,
    /auth/callback. Returns the session cookie's value (also kept in ``http``'s cookie jar, which
    must accept cookies of IP hosts: aiohttp.CookieJar(unsafe=True))."""
    _, form = await start_sign_in(http, admin_url, return_to, prompt)
    callback = await submit_login(http, form, user, password if password is not None else USERS[user]["password"])
    async with http.get(callback, allow_redirects=False) as r:
        assert r.status == 303, (r.status, await r.text())
        for cookie in r.cookies.values():
            if cookie.key.endswith("gw_session") and cookie.value:
                return cookie.value
    raise AssertionError("no session cookie after /auth/callback")
