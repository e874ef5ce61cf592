"""Attacks on page sign-in against a real `gateway admin` process (the confidential client), a
real oidc-provider (gateway/data/devidp/provider.mjs; its /__test/next-id-token changes the
next ID token it hands out) and real Redis. Every refusal is a page or an answer with its code;
none creates a session, none is a 500, and no code or state of a callback reaches the log."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
import urllib.parse
import urllib.request

import aiohttp
import pytest

from tests.security.conftest import running_admin
from tests.support import OPERATOR_TOKEN
from tests.support.oidc import USERS, new_key, sign_in, start_sign_in, submit_login
from tests.support.stack import request_json

BODY = {"name": "attack", "scopes": ["tasks:read"], "expires_in": "never"}
ERROR_PAGE_CSP = "default-src 'none'; style-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


@pytest.fixture(scope="module")
def admin(oidc_provider, redis_server, tmp_path_factory):
    redis_server.client.flushall()
    log = tmp_path_factory.mktemp("signin-attacks") / "admin.log"
    with running_admin(log, redis_server.url, *oidc_provider.signin_args(), "--auth-failure-limit", "0",
                       env=oidc_provider.signin_env(), port=oidc_provider.admin_port) as admin:
        admin.secrets = []  # every code, state and session id seen: none may appear in the log
        yield admin
    text = log.read_text()
    assert "Traceback" not in text and "unhandled error" not in text, text
    assert '"path": "/auth/callback"' in text or '"path":"/auth/callback"' in text  # the callbacks were logged ...
    for value in admin.secrets:
        assert value not in text, value  # ... without their query strings


def browser() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def query_of(url: str) -> dict:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


async def to_callback(http, admin, user: str = "alice", return_to: str = "/") -> str:
    """Sign in at the provider; the callback URL it sends the browser to (not yet followed)."""
    authorize, form = await start_sign_in(http, admin.url, return_to)
    url = await submit_login(http, form, user, USERS[user]["password"])
    q = query_of(url)
    admin.secrets += [v for k, v in q.items() if k in ("code", "state")]
    admin.secrets.append(query_of(authorize)["nonce"])
    return url


async def follow(http, url: str, **kw) -> tuple[int, str, aiohttp.ClientResponse]:
    async with http.get(url, allow_redirects=False, **kw) as r:
        return r.status, await r.text(), r


def session_count(redis_server) -> int:
    return len(redis_server.client.keys("gw:session:*"))


def assert_page(status: int, text: str, resp, want_status: int, code: str) -> None:
    assert status == want_status, (status, text)
    assert resp.content_type == "text/html" and code in text and 'href="/"' in text, text
    assert "<script" not in text.lower()
    assert resp.headers["Content-Security-Policy"] == ERROR_PAGE_CSP
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert not any(c.key.endswith("gw_session") and c.value for c in resp.cookies.values())


# -- state ---------------------------------------------------------------------------------

async def test_a_replayed_state_is_refused(admin, redis_server):
    async with browser() as http:
        url = await to_callback(http, admin)
        status, _, _ = await follow(http, url)
        assert status == 303
        before = session_count(redis_server)
        status, text, resp = await follow(http, url)
        assert_page(status, text, resp, 400, "sign_in_failed")
        assert "unknown, expired or already used" in text
        assert session_count(redis_server) == before


async def test_a_state_from_another_browser_is_refused(admin, redis_server):
    async with browser() as victim, browser() as attacker:
        url = await to_callback(victim, admin)
        before = session_count(redis_server)
        # The attacker's browser has no login cookie of this sign-in ...
        status, text, resp = await follow(attacker, url)
        assert_page(status, text, resp, 400, "sign_in_failed")
        assert "another browser" in text
        assert session_count(redis_server) == before
    async with browser() as victim, browser() as attacker:
        url = await to_callback(victim, admin)
        await start_sign_in(attacker, admin.url)  # ... or a login cookie of its own sign-in
        status, text, resp = await follow(attacker, url)
        assert_page(status, text, resp, 400, "sign_in_failed")
        assert "another browser" in text
        # The state was used up by that attempt: the victim's own browser cannot finish either.
        status, text, resp = await follow(victim, url)
        assert_page(status, text, resp, 400, "sign_in_failed")
        assert session_count(redis_server) == before


@pytest.mark.parametrize("state", ["", "x", "A" * 43, "A" * 44, "é" * 43, "../" * 15, "A" * 42 + "=", None])
async def test_an_unknown_or_malformed_state_is_refused(admin, state):
    async with browser() as http:
        await start_sign_in(http, admin.url)
        query = {"code": "abc"} if state is None else {"code": "abc", "state": state}
        status, text, resp = await follow(http, admin.url + "/auth/callback?" + urllib.parse.urlencode(query))
        assert_page(status, text, resp, 400, "sign_in_failed")


async def test_a_repeated_state_parameter_is_refused(admin):
    async with browser() as http:
        url = await to_callback(http, admin)
        q = query_of(url)
        forged = admin.url + "/auth/callback?" + urllib.parse.urlencode(
            [("state", q["state"]), ("state", q["state"]), ("code", q["code"])])
        status, text, resp = await follow(http, forged)
        assert_page(status, text, resp, 400, "sign_in_failed")


# -- code and PKCE -------------------------------------------------------------------------

@pytest.mark.parametrize("code", [None, "", "forged-code", "A" * 43, "<script>"])
async def test_a_missing_or_forged_code_is_refused(admin, code, redis_server):
    async with browser() as http:
        url = await to_callback(http, admin)
        q = query_of(url)
        query = {"state": q["state"]} if code is None else {"state": q["state"], "code": code}
        before = session_count(redis_server)
        status, text, resp = await follow(http, admin.url + "/auth/callback?" + urllib.parse.urlencode(query))
        assert_page(status, text, resp, 400, "sign_in_failed")
        assert session_count(redis_server) == before


async def test_a_code_replayed_in_another_sign_in_is_refused(admin, redis_server):
    async with browser() as first:
        used = query_of(await to_callback(first, admin))
        status, _, _ = await follow(first, admin.url + "/auth/callback?" + urllib.parse.urlencode(used))
        assert status == 303
    async with browser() as second:
        fresh = query_of(await to_callback(second, admin))
        before = session_count(redis_server)
        status, text, resp = await follow(second, admin.url + "/auth/callback?" + urllib.parse.urlencode(
            {"state": fresh["state"], "code": used["code"]}))
        assert_page(status, text, resp, 400, "sign_in_failed")
        assert "refused to redeem" in text
        assert session_count(redis_server) == before


def redeem_without_verifier(provider, code: str, verifier: str | None = None) -> int:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": provider.client["redirect_uri"]}
    if verifier is not None:
        form["code_verifier"] = verifier
    auth = base64.b64encode(f"{provider.client['client_id']}:{provider.client['client_secret']}".encode()).decode()
    req = urllib.request.Request(provider.issuer + "/token", data=urllib.parse.urlencode(form).encode(), method="POST",
                                 headers={"Authorization": f"Basic {auth}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code


@pytest.mark.parametrize("verifier", [None, "", "wrong-verifier-" + "a" * 40])
async def test_a_stolen_code_without_the_verifier_is_refused_by_the_provider(admin, oidc_provider, verifier):
    async with browser() as http:
        code = query_of(await to_callback(http, admin))["code"]
        assert redeem_without_verifier(oidc_provider, code, verifier) == 400


async def test_the_server_always_sends_the_pkce_verifier(admin, oidc_provider):
    async with browser() as http:
        authorize, form = await start_sign_in(http, admin.url)
        q = query_of(authorize)
        assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
        assert q["response_type"] == "code" and q["nonce"] and q["state"] and q["state"] != q["nonce"]
        admin.secrets += [q["state"], q["nonce"]]
        url = await submit_login(http, form, "alice", USERS["alice"]["password"])
        admin.secrets += list(query_of(url).values())
        assert (await follow(http, url))[0] == 303
    last = oidc_provider.last_token_request()
    assert last["grant_type"] == "authorization_code" and last["has_code_verifier"] is True


async def test_the_authorization_request_asks_for_a_fresh_challenge_each_time(admin):
    seen = set()
    for _ in range(3):
        async with browser() as http:
            async with http.get(admin.url + "/auth/login", allow_redirects=False) as r:
                q = query_of(r.headers["Location"])
        admin.secrets += [q["state"], q["nonce"]]
        seen.add((q["state"], q["nonce"], q["code_challenge"]))
    assert len({s for s, _, _ in seen}) == len({n for _, n, _ in seen}) == len({c for _, _, c in seen}) == 3


# -- the ID token --------------------------------------------------------------------------

ATTACKER_KEY = new_key("k1").as_dict(private=True)  # the provider's kid, the attacker's key
ID_TOKEN_ATTACKS = {
    "bad signature (a claim added, the signature kept)": ({"tamper": True, "extra": 1}, "signature"),
    "payload changed (other person)": ({"tamper": True, "sub": "bob"}, "signature"),
    "payload changed (other org)": ({"tamper": True, "org_id": "org-b"}, "signature"),
    "signed by another key with the provider's kid": ({"key": ATTACKER_KEY}, "signature"),
    "alg none": ({"alg": "none"}, "signature"),
    "HS256 with the client secret": ({"alg": "HS256"}, "signature"),
    "wrong aud": ({"aud": "another-client"}, "aud"),
    "aud list without this client": ({"aud": ["another-client", "third"]}, "aud"),
    "aud list naming others, no azp": ({"aud": ["admin-api", "another-client"]}, "azp"),
    "azp of another client": ({"azp": "another-client"}, "azp"),
    "wrong iss": ({"iss": "https://evil.example"}, "iss"),
    "expired": ({"exp": int(time.time()) - 3600}, "exp"),
    "no exp": ({"exp": None}, "exp"),
    "issued in the future": ({"iat": int(time.time()) + 3600}, "iat"),
    "no iat": ({"iat": None}, "iat"),
    "wrong nonce": ({"nonce": "not-this-sign-ins"}, "nonce"),
    "no nonce": ({"nonce": None}, "nonce"),
    "no sub": ({"sub": None}, "sub"),
    "access token type": ({"header": {"typ": "at+jwt"}}, "access token"),
    "no org claim": ({"org_id": None}, "org_id"),
    "malformed org claim": ({"org_id": "../../other org"}, "org_id"),
    "roles not a list": ({"roles": {"admin": True}}, "roles"),
    "sub with spaces (actor injection)": ({"sub": "alice <admin@evil>"}, "sub"),
}


@pytest.mark.parametrize("name", list(ID_TOKEN_ATTACKS))
async def test_a_bad_id_token_is_refused(admin, oidc_provider, redis_server, name):
    change, words = ID_TOKEN_ATTACKS[name]
    change = dict(change)
    async with browser() as http:
        url = await to_callback(http, admin)
        oidc_provider.next_id_token(header=change.pop("header", None), tamper=change.pop("tamper", False),
                                    alg=change.pop("alg", None), key=change.pop("key", None), **change)
        before = session_count(redis_server)
        status, text, resp = await follow(http, url)
        assert_page(status, text, resp, 400, "sign_in_failed")
        assert words in text, text
        assert session_count(redis_server) == before
        status, err, _ = await request_json(http, "GET", admin.url + "/auth/session")
        assert status == 401


async def test_a_re_signed_id_token_with_nothing_wrong_is_accepted(admin, oidc_provider):
    """The hook itself is sound: re-signed with the provider's key and unchanged, it passes."""
    async with browser() as http:
        url = await to_callback(http, admin)
        oidc_provider.next_id_token()
        status, text, _ = await follow(http, url)
        assert status == 303, text


# -- tenancy -------------------------------------------------------------------------------

@pytest.mark.parametrize("who", ["bob", "beth"])  # an admin and a viewer of org-b
async def test_a_person_of_another_org_gets_404_never_data(admin, who):
    created = None
    async with aiohttp.ClientSession() as op:
        status, created, _ = await request_json(op, "POST", admin.url + "/v1/orgs/org-a/api-keys", OPERATOR_TOKEN,
                                                json=BODY)
        assert status == 201
    async with browser() as http:
        await sign_in(http, admin.url, who)
        status, me, _ = await request_json(http, "GET", admin.url + "/auth/session")
        csrf = {"X-CSRF-Token": me["csrf_token"]}
        for method, path, body in (
                ("GET", "/v1/orgs/org-a/api-keys", None), ("GET", f"/v1/orgs/org-a/api-keys/{created['id']}", None),
                ("GET", "/v1/orgs/org-a/audit-events", None),
                ("GET", f"/v1/orgs/org-a/api-keys/{created['id']}/usage", None),
                ("POST", "/v1/orgs/org-a/api-keys", BODY),
                ("POST", f"/v1/orgs/org-a/api-keys/{created['id']}/revoke", None),
                ("POST", f"/v1/orgs/org-a/api-keys/{created['id']}/roll", {"grace_period": "now"}),
                ("PATCH", f"/v1/orgs/org-a/api-keys/{created['id']}", {"name": "x"})):
            status, err, _ = await request_json(http, method, admin.url + path, json=body, headers=csrf)
            assert status == 404 and err["error"]["code"] == "org_not_found", (path, err)
            assert created["id"] not in json.dumps(err)


# -- CSRF ----------------------------------------------------------------------------------

@pytest.fixture
async def alice(admin):
    async with browser() as http:
        sid = await sign_in(http, admin.url, "alice")
        admin.secrets.append(sid)
        status, me, _ = await request_json(http, "GET", admin.url + "/auth/session")
        assert status == 200
        http.csrf = me["csrf_token"]
        http.sid = sid
        yield http


async def test_cookie_and_get_only_reads(admin, alice):
    status, listed, _ = await request_json(alice, "GET", admin.url + "/v1/orgs/org-a/api-keys")
    assert status == 200, listed


@pytest.mark.parametrize("headers", [
    {},  # no token
    {"X-CSRF-Token": ""},
    {"X-CSRF-Token": "wrong"},
    {"X-CSRF-Token": "A" * 43},
])
@pytest.mark.parametrize("method,path,body", [
    ("POST", "/v1/orgs/org-a/api-keys", BODY),
    ("PATCH", "/v1/orgs/org-a/api-keys/key_0000000000000000000000", {"name": "x"}),
    ("POST", "/v1/orgs/org-a/api-keys/key_0000000000000000000000/revoke", None),
    ("POST", "/auth/logout", None),
])
async def test_a_change_without_the_csrf_token_is_refused(admin, alice, headers, method, path, body, redis_server):
    status, err, _ = await request_json(alice, method, admin.url + path, json=body, headers=headers)
    assert status == 403 and err["error"]["code"] == "csrf_failed", (path, err)
    assert redis_server.client.exists("gw:session:" + hashlib.sha256(alice.sid.encode()).hexdigest())


async def test_the_csrf_token_of_another_session_is_refused(admin, alice):
    async with browser() as other:
        await sign_in(other, admin.url, "alice")
        _, me, _ = await request_json(other, "GET", admin.url + "/auth/session")
        assert me["csrf_token"] != alice.csrf
    status, err, _ = await request_json(alice, "POST", admin.url + "/v1/orgs/org-a/api-keys", json=BODY,
                                        headers={"X-CSRF-Token": me["csrf_token"]})
    assert status == 403 and err["error"]["code"] == "csrf_failed"


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1", "http://localhost:1",
                                    "http://127.0.0.1:1"])
async def test_a_foreign_origin_is_refused_even_with_the_token(admin, alice, origin):
    status, err, _ = await request_json(alice, "POST", admin.url + "/v1/orgs/org-a/api-keys", json=BODY,
                                        headers={"X-CSRF-Token": alice.csrf, "Origin": origin})
    assert status == 403 and err["error"]["code"] == "csrf_failed"


async def test_the_page_origin_with_the_token_passes(admin, alice, oidc_provider):
    status, created, _ = await request_json(alice, "POST", admin.url + "/v1/orgs/org-a/api-keys", json=BODY,
                                            headers={"X-CSRF-Token": alice.csrf, "Origin": oidc_provider.public_url})
    assert status == 201, created


# -- return_to -----------------------------------------------------------------------------

@pytest.mark.parametrize("return_to,expected", [
    ("/keys?x=1", "/keys?x=1"),
    ("//evil.example", "/"), ("///evil.example", "/"), ("/\\evil.example", "/"), ("\\\\evil.example", "/"),
    ("https://evil.example/", "/"), ("http:evil.example", "/"), ("javascript:alert(1)", "/"),
    ("/%2F%2Fevil.example", "/"), ("/%2f/evil.example", "/"), ("/%5Cevil.example", "/"), ("/\t/evil.example", "/"),
    ("/\n/evil.example", "/"), (" /evil", "/"), ("evil.example", "/"), ("/\u3002evil", "/"), ("", "/"),
])
async def test_return_to_never_leaves_the_site(admin, return_to, expected):
    async with browser() as http:
        url = await to_callback(http, admin, return_to=return_to)
        status, _, resp = await follow(http, url)
        assert status == 303 and resp.headers["Location"] == expected


# -- the session cookie --------------------------------------------------------------------

async def test_a_session_cookie_the_attacker_chose_is_never_accepted(admin, redis_server):
    planted = secrets.token_urlsafe(32)
    async with browser() as http:
        http.cookie_jar.update_cookies({"gw_session": planted}, response_url=aiohttp.client.URL(admin.url))
        sid = await sign_in(http, admin.url, "alice")
        admin.secrets.append(sid)
        assert sid != planted
    async with aiohttp.ClientSession() as http:
        status, err, _ = await request_json(http, "GET", admin.url + "/auth/session",
                                            headers={"Cookie": f"gw_session={planted}"})
        assert status == 401 and err["error"]["code"] == "session_expired"
        for value in ("", "x", sid[:-1], sid + "A", sid.upper() if sid.upper() != sid else sid.lower(),
                      hashlib.sha256(sid.encode()).hexdigest()):
            status, err, _ = await request_json(http, "GET", admin.url + "/v1/orgs/org-a/api-keys",
                                                headers={"Cookie": f"gw_session={value}"})
            assert status == 401, (value, err)


async def test_a_signed_out_session_cookie_is_refused(admin, alice):
    status, _, _ = await request_json(alice, "POST", admin.url + "/auth/logout", headers={"X-CSRF-Token": alice.csrf})
    assert status == 200
    async with aiohttp.ClientSession() as http:
        for method, path in (("GET", "/auth/session"), ("GET", "/v1/orgs/org-a/api-keys"), ("POST", "/auth/logout")):
            status, body, _ = await request_json(http, method, admin.url + path, headers={
                "Cookie": f"gw_session={alice.sid}", "X-CSRF-Token": alice.csrf})
            if path == "/auth/logout":
                assert status == 200 and body == {"end_session_url": None}
            else:
                assert status == 401 and body["error"]["code"] == "session_expired"


async def test_cookie_attributes_insecure_mode(admin):
    async with browser() as http:
        async with http.get(admin.url + "/auth/login", allow_redirects=False) as r:
            login = r.headers.getall("Set-Cookie")
        url = await to_callback(http, admin)
        async with http.get(url, allow_redirects=False) as r:
            cookies = r.headers.getall("Set-Cookie")
    (login_cookie,) = login
    assert re.fullmatch(r"gw_login=[A-Za-z0-9_-]{43}; Path=/; Max-Age=600; HttpOnly; SameSite=Lax", login_cookie)
    session = next(c for c in cookies if c.startswith("gw_session="))
    assert re.fullmatch(r"gw_session=[A-Za-z0-9_-]{43}; Path=/; Max-Age=43200; HttpOnly; SameSite=Strict", session)
    cleared = next(c for c in cookies if c.startswith("gw_login="))
    assert cleared.startswith("gw_login=; Path=/; Max-Age=0")
    assert not any("Domain" in c or "Secure" in c for c in cookies + login)


async def test_cookie_attributes_secure_mode(oidc_install, redis_server, tmp_path):
    """Without --cookie-insecure: __Host- names, Secure, and the flow still works."""
    from tests.support.oidc import OidcProvider

    provider = OidcProvider(oidc_install)
    try:
        args = provider.signin_args(cookie_insecure=False)
        with running_admin(tmp_path / "admin.log", redis_server.url, *args, env=provider.signin_env(),
                           port=provider.admin_port) as secure:
            async with browser() as http:
                async with http.get(secure.url + "/auth/login", allow_redirects=False) as r:
                    (login,) = r.headers.getall("Set-Cookie")
                    authorize = r.headers["Location"]
                assert re.fullmatch(r"__Host-gw_login=([A-Za-z0-9_-]{43}); Path=/; Max-Age=600; HttpOnly; "
                                    r"SameSite=Lax; Secure", login), login
                binding = login.split(";")[0].split("=", 1)[1]
                async with http.get(authorize) as r:
                    form = urllib.parse.urljoin(str(r.url), re.search(r'action="([^"]+)"', await r.text()).group(1))
                url = await submit_login(http, form, "alice", USERS["alice"]["password"])
                async with aiohttp.ClientSession() as plain:  # the cookie by hand: the jar keeps Secure ones for https
                    async with plain.get(url, allow_redirects=False, headers={"Cookie": f"__Host-gw_login={binding}"}) as r:
                        assert r.status == 303, await r.text()
                        cookies = r.headers.getall("Set-Cookie")
                session = next(c for c in cookies if c.startswith("__Host-gw_session="))
                assert re.fullmatch(r"__Host-gw_session=[A-Za-z0-9_-]{43}; Path=/; Max-Age=43200; HttpOnly; "
                                    r"SameSite=Strict; Secure", session), session
                # The insecure name is not a session cookie here.
                sid = session.split(";")[0].split("=", 1)[1]
                async with aiohttp.ClientSession() as plain:
                    status, _, _ = await request_json(plain, "GET", secure.url + "/auth/session",
                                                      headers={"Cookie": f"gw_session={sid}"})
                    assert status == 401
                    status, me, _ = await request_json(plain, "GET", secure.url + "/auth/session",
                                                       headers={"Cookie": f"__Host-gw_session={sid}"})
                    assert status == 200 and me["actor"].startswith("user:alice"), me
    finally:
        provider.stop()


# -- what Redis holds ----------------------------------------------------------------------

def _decodings(value: bytes) -> list[bytes]:
    """``value`` read as standard or URL-safe base64, where it is that (the sealed field is)."""
    out = []
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            out.append(decode(value + b"=" * (-len(value) % 4)))
        except ValueError:  # binascii.Error: not base64 of that kind
            pass
    return out


async def test_redis_holds_neither_the_session_id_nor_a_usable_refresh_token(admin, alice, redis_server, oidc_provider):
    client = redis_server.client
    sha = hashlib.sha256(alice.sid.encode()).hexdigest()
    dump = b""
    for key in client.keys("*"):
        dump += key + b"\n"
        kind = client.type(key)
        if kind == b"hash":
            for field, value in client.hgetall(key).items():
                dump += field + b"=" + value + b"\n"
        elif kind == b"string":
            dump += client.get(key) or b""
        elif kind == b"zset":
            dump += b" ".join(m for m, _ in client.zrange(key, 0, -1, withscores=True))
    assert alice.sid.encode() not in dump
    assert sha.encode() in dump  # stored under its digest
    record = client.hgetall(f"gw:session:{sha}")
    assert set(record) >= {b"sub", b"actor", b"org_id", b"role", b"csrf", b"enc", b"created_at"}
    assert b"refresh_token" not in dump and b"id_token" not in dump
    # No value in the record works as a refresh token at the provider.
    auth = base64.b64encode(f"{oidc_provider.client['client_id']}:{oidc_provider.client['client_secret']}".encode())
    for value in record.values():
        for candidate in {value, *_decodings(value)}:
            form = urllib.parse.urlencode({"grant_type": "refresh_token",
                                           "refresh_token": candidate.decode("latin-1")}).encode()
            req = urllib.request.Request(oidc_provider.issuer + "/token", data=form, method="POST",
                                         headers={"Authorization": b"Basic " + auth})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(req, timeout=5)
            refused.value.close()
            assert refused.value.code == 400


# -- error pages ---------------------------------------------------------------------------

@pytest.mark.parametrize("description", [
    "<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "</p><a href=javascript:alert(1)>x</a>",
    "&lt;already&gt; & more", "x" * 2000,
])
async def test_error_pages_escape_what_the_provider_says(admin, description):
    async with browser() as http:
        authorize, _ = await start_sign_in(http, admin.url)
        state = query_of(authorize)["state"]
        admin.secrets.append(state)
        status, text, resp = await follow(http, admin.url + "/auth/callback?" + urllib.parse.urlencode(
            {"error": "access_denied", "error_description": description, "state": state}))
        assert_page(status, text, resp, 400, "sign_in_failed")
        assert "<img" not in text and "onerror=alert" not in text.replace("onerror=alert(1)&gt;", "") or "&lt;img" in text
        assert "javascript:" not in text.replace("href=javascript:alert(1)&gt;", "")
        if description.startswith("<script>"):
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
        assert len(text) < 3000  # shortened


async def test_failed_callbacks_count_against_the_client_address(oidc_provider, redis_server, tmp_path):
    with running_admin(tmp_path / "admin.log", redis_server.url, *oidc_provider.signin_args(), "--auth-failure-limit",
                       "3", env=oidc_provider.signin_env()) as throttled:
        async with browser() as http:
            for _ in range(3):
                status, _, _ = await follow(http, throttled.url + "/auth/callback?state=" + "A" * 43 + "&code=x")
                assert status == 400
            status, text, resp = await follow(http, throttled.url + "/auth/callback?state=" + "A" * 43 + "&code=x")
            assert status == 429 and "too_many_failed_attempts" in text and "Retry-After" in resp.headers
            async with http.get(throttled.url + "/auth/login", allow_redirects=False) as r:
                assert r.status == 429
            # Operator tokens still work (a credential, decided by the existing throttle rules).
            status, _, _ = await request_json(http, "GET", throttled.url + "/v1/me", OPERATOR_TOKEN)
            assert status in (200, 429)


# -- review: the classes around the flow ----------------------------------------------------

@pytest.mark.parametrize("state", [None, "A" * 43, "unbound"])
async def test_a_crafted_error_link_cannot_put_its_text_on_the_page(admin, state):
    """The provider's words appear only for a sign-in this browser started; a link someone else
    made (no state, an unknown one, or one started in another browser) shows the generic refusal."""
    phish = "Your account is locked. Call +1 555 0100 to unlock it."
    async with browser() as victim:
        if state == "unbound":
            async with browser() as attacker:
                authorize, _ = await start_sign_in(attacker, admin.url)
                state = query_of(authorize)["state"]
                admin.secrets.append(state)
        query = {"error": "access_denied", "error_description": phish, **({"state": state} if state else {})}
        status, text, resp = await follow(victim, admin.url + "/auth/callback?" + urllib.parse.urlencode(query))
        assert_page(status, text, resp, 400, "sign_in_failed")
        assert phish not in text and "555" not in text


async def test_sign_out_without_a_session_is_for_the_page_only(admin, alice):
    """A cross-site form cannot sign someone out: without a session the cookie is cleared only
    for a request that carries X-CSRF-Token (which a form cannot send)."""
    async with browser() as http:
        async with http.post(admin.url + "/auth/logout", headers={"Origin": "https://evil.example"}) as r:
            assert r.status == 403 and (await r.json())["error"]["code"] == "csrf_failed"
            assert "Set-Cookie" not in r.headers
        async with http.post(admin.url + "/auth/logout", headers={"X-CSRF-Token": "anything"}) as r:
            assert r.status == 200 and (await r.json()) == {"end_session_url": None}
    # A signed-in browser's session is untouched by a form post carrying its cookie but no token.
    async with alice.post(admin.url + "/auth/logout") as r:
        assert r.status == 403 and "Set-Cookie" not in r.headers
    assert (await request_json(alice, "GET", admin.url + "/auth/session"))[0] == 200


async def test_a_new_sign_in_ends_the_browsers_previous_session(admin, redis_server):
    async with browser() as http:
        first = await sign_in(http, admin.url, "alice")
        second = await sign_in(http, admin.url, "alice", prompt="login")  # signing in again in the same browser
        admin.secrets += [first, second]
        assert first != second
        assert not redis_server.client.exists("gw:session:" + hashlib.sha256(first.encode()).hexdigest())
        assert (await request_json(http, "GET", admin.url + "/auth/session"))[0] == 200  # the new one works
    async with aiohttp.ClientSession() as other:  # the first cookie, replayed elsewhere: gone
        async with other.get(admin.url + "/auth/session", headers={"Cookie": f"gw_session={first}"}) as r:
            assert r.status == 401


async def test_the_live_sessions_index_is_pruned_without_scrapes(admin, redis_server):
    redis_server.client.zadd("gw:sessions", {"stale-" + secrets.token_hex(4): 1})  # ended long ago
    async with browser() as http:
        admin.secrets.append(await sign_in(http, admin.url, "alice"))
    assert not [m for m in redis_server.client.zrange("gw:sessions", 0, -1) if m.startswith(b"stale-")]


async def test_sign_ins_started_from_one_address_are_limited(oidc_provider, redis_server, tmp_path):
    """Each started sign-in holds a record in Redis for 10 minutes: one address cannot fill Redis."""
    with running_admin(tmp_path / "admin.log", redis_server.url, *oidc_provider.signin_args(signin_rate=3),
                       "--auth-failure-limit", "0", env=oidc_provider.signin_env()) as limited:
        before = len(redis_server.client.keys("gw:login:*"))
        async with browser() as http:
            for _ in range(3):
                async with http.get(limited.url + "/auth/login", allow_redirects=False) as r:
                    assert r.status == 302
            status, text, resp = await follow(http, limited.url + "/auth/login?return_to=/" + "a" * 400)
            assert_page(status, text, resp, 429, "too_many_sign_ins")
            assert int(resp.headers["Retry-After"]) >= 1
        assert len(redis_server.client.keys("gw:login:*")) - before == 3
        async with aiohttp.ClientSession() as http:  # keys and tokens are not sign-ins: still served
            status, _, _ = await request_json(http, "GET", limited.url + "/v1/me", OPERATOR_TOKEN)
            assert status == 200
