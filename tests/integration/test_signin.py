"""Page sign-in end to end: a real `gateway admin` process (the confidential client), a real
oidc-provider (its login form driven over HTTP, tests/support/oidc.py sign_in), real Redis.
The attacks are in tests/security/test_signin_attacks.py."""

from __future__ import annotations

import contextlib
import hashlib
import json
import urllib.parse

import aiohttp
import pytest
import redis

from tests.security.conftest import running_admin
from tests.support import OPERATOR_TOKEN
from tests.support.oidc import USERS, sign_in
from tests.support.stack import request_json

BODY = {"name": "made by a signed-in person", "scopes": ["tasks:read"], "expires_in": "never"}
ALICE = "user:alice <alice@a.example>"


@contextlib.contextmanager
def signin_admin(provider, redis_server, tmp_path, *extra: str, **settings):
    log = tmp_path / "admin.log"
    with running_admin(log, redis_server.url, *provider.signin_args(**settings), *extra, "--auth-failure-limit", "0",
                       env=provider.signin_env(), port=provider.admin_port) as admin:
        yield admin
    text = log.read_text()
    assert "Traceback" not in text and "unhandled error" not in text, text


@pytest.fixture(scope="module")
def admin(oidc_provider, redis_server, tmp_path_factory):
    redis_server.client.flushall()
    with signin_admin(oidc_provider, redis_server, tmp_path_factory.mktemp("signin")) as admin:
        yield admin


@pytest.fixture
async def browser():
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        yield http


async def session_of(browser, admin) -> dict:
    status, body, _ = await request_json(browser, "GET", admin.url + "/auth/session")
    assert status == 200, body
    return body


def session_keys(redis_server) -> list[bytes]:
    return [k for k in redis_server.client.keys("gw:session:*")]


async def test_alice_signs_in_manages_keys_and_the_log_names_her(admin, browser, redis_server):
    status, config, _ = await request_json(browser, "GET", admin.url + "/auth/config")
    assert status == 200 and config["sign_in"] is True and config["issuer"].startswith("http://127.0.0.1:")
    sid = await sign_in(browser, admin.url, "alice", USERS["alice"]["password"], return_to="/?tab=keys")
    assert len(sid) == 43
    me = await session_of(browser, admin)
    assert me["actor"] == ALICE and me["subject"] == "alice" and me["email"] == "alice@a.example"
    assert me["org_id"] == "org-a" and me["role"] == "admin" and me["idle_timeout"] == 1800
    csrf = {"X-CSRF-Token": me["csrf_token"]}
    status, created, _ = await request_json(browser, "POST", admin.url + "/v1/orgs/org-a/api-keys", json=BODY,
                                            headers=csrf)
    assert status == 201, created
    assert created["created_by"] == ALICE
    key_id = created["id"]
    status, edited, resp = await request_json(browser, "PATCH", f"{admin.url}/v1/orgs/org-a/api-keys/{key_id}",
                                              json={"name": "renamed"}, headers=csrf)
    assert status == 200 and edited["name"] == "renamed", edited
    status, rolled, _ = await request_json(browser, "POST", f"{admin.url}/v1/orgs/org-a/api-keys/{key_id}/roll",
                                           json={"grace_period": "now"}, headers=csrf)
    assert status == 200, rolled
    status, revoked, _ = await request_json(browser, "POST", f"{admin.url}/v1/orgs/org-a/api-keys/{key_id}/revoke",
                                            headers=csrf)
    assert status == 200 and revoked["revoked_by"] == ALICE, revoked
    status, log, _ = await request_json(browser, "GET", admin.url + "/v1/orgs/org-a/audit-events")
    assert status == 200, log
    assert [(e["action"], e["actor"]) for e in log["data"]][:4] == [
        ("api_key.revoked", ALICE), ("api_key.rolled", ALICE), ("api_key.updated", ALICE), ("api_key.created", ALICE)]
    # /v1/me names her too; an Authorization header wins over the cookie.
    status, who, _ = await request_json(browser, "GET", admin.url + "/v1/me")
    assert status == 200 and who["actor"] == ALICE and who["can_manage"], who
    status, who, _ = await request_json(browser, "GET", admin.url + "/v1/me", OPERATOR_TOKEN)
    assert status == 200 and who["operator"], who
    # Redis holds the session under the SHA-256 of the cookie, never the cookie itself.
    sha = hashlib.sha256(sid.encode()).hexdigest()
    assert redis_server.client.exists(f"gw:session:{sha}")


async def test_sign_out_ends_the_session_and_points_at_the_provider(admin, browser, redis_server, oidc_provider):
    sid = await sign_in(browser, admin.url, "alice")
    me = await session_of(browser, admin)
    sha = hashlib.sha256(sid.encode()).hexdigest()
    status, out, resp = await request_json(browser, "POST", admin.url + "/auth/logout",
                                           headers={"X-CSRF-Token": me["csrf_token"]})
    assert status == 200, out
    url = urllib.parse.urlsplit(out["end_session_url"])
    assert f"{url.scheme}://{url.netloc}" == oidc_provider.issuer
    params = urllib.parse.parse_qs(url.query)
    assert params["post_logout_redirect_uri"] == [oidc_provider.public_url + "/"]
    assert params["client_id"] == ["admin-api"] and params["id_token_hint"][0].count(".") == 2
    assert not redis_server.client.exists(f"gw:session:{sha}")
    assert "gw_session=;" in resp.headers["Set-Cookie"] or "gw_session=\"\"" in resp.headers["Set-Cookie"]
    # The old cookie no longer works, even sent again by hand.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        status, err, _ = await request_json(other, "GET", admin.url + "/auth/session",
                                            headers={"Cookie": f"gw_session={sid}"})
        assert status == 401 and err["error"]["code"] == "session_expired"
        status, err, _ = await request_json(other, "GET", admin.url + "/v1/orgs/org-a/api-keys",
                                            headers={"Cookie": f"gw_session={sid}"})
        assert status == 401 and err["error"]["code"] == "session_expired"
    # The provider's end-session URL works: its logout page (RP-initiated logout).
    async with browser.get(out["end_session_url"], allow_redirects=False) as r:
        assert r.status in (200, 302, 303), await r.text()
    # Without a session: 200, null.
    status, out, _ = await request_json(browser, "POST", admin.url + "/auth/logout")
    assert status == 200 and out == {"end_session_url": None}


async def test_a_viewer_reads_but_cannot_write(admin, browser):
    await sign_in(browser, admin.url, "victor")
    me = await session_of(browser, admin)
    assert me["role"] == "viewer"
    status, listed, _ = await request_json(browser, "GET", admin.url + "/v1/orgs/org-a/api-keys")
    assert status == 200, listed
    status, err, _ = await request_json(browser, "POST", admin.url + "/v1/orgs/org-a/api-keys", json=BODY,
                                        headers={"X-CSRF-Token": me["csrf_token"]})
    assert status == 403 and err["error"]["code"] == "no_org_role", err


async def test_a_person_without_a_role_gets_a_403_page_and_no_session(admin, browser, redis_server):
    before = set(session_keys(redis_server))
    with pytest.raises(AssertionError) as failed:
        await sign_in(browser, admin.url, "nora")
    assert "403" in str(failed.value) and "org-a" in str(failed.value)
    assert "Sign in with another account" in str(failed.value)
    assert set(session_keys(redis_server)) == before


def _json(text: str) -> dict:
    return json.loads(text)
