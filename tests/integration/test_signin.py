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
    assert status == 200 and who["actor"] == ALICE and who["can_manage"] and who["grants_any"], who
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
    # Without a session: 200, null, for the page (it sends its token; a cross-site form cannot).
    status, out, _ = await request_json(browser, "POST", admin.url + "/auth/logout", headers={"X-CSRF-Token": "x"})
    assert status == 200 and out == {"end_session_url": None}
    status, out, _ = await request_json(browser, "POST", admin.url + "/auth/logout")
    assert status == 403 and out["error"]["code"] == "csrf_failed"


async def test_a_viewer_reads_but_cannot_write(admin, browser):
    await sign_in(browser, admin.url, "victor")
    me = await session_of(browser, admin)
    assert me["role"] == "viewer"
    status, listed, _ = await request_json(browser, "GET", admin.url + "/v1/orgs/org-a/api-keys")
    assert status == 200, listed
    status, err, _ = await request_json(browser, "POST", admin.url + "/v1/orgs/org-a/api-keys", json=BODY,
                                        headers={"X-CSRF-Token": me["csrf_token"]})
    assert status == 403 and err["error"]["code"] == "insufficient_role", err


async def test_a_person_without_a_role_gets_a_403_page_and_no_session(admin, browser, redis_server):
    before = set(session_keys(redis_server))
    with pytest.raises(AssertionError) as failed:
        await sign_in(browser, admin.url, "nora")
    assert "403" in str(failed.value) and "org-a" in str(failed.value)
    assert "Sign in with another account" in str(failed.value)
    assert set(session_keys(redis_server)) == before


def _json(text: str) -> dict:
    return json.loads(text)


async def ops_get(http, admin, path: str) -> tuple[int, str]:
    async with http.get(f"http://127.0.0.1:{admin.ops}{path}") as r:
        return r.status, await r.text()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{") and line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


async def test_metrics_count_sign_ins_failures_and_live_sessions(admin, browser):
    _, before = await ops_get(browser, admin, "/metrics")
    await sign_in(browser, admin.url, "alice")
    async with browser.get(admin.url + "/auth/callback?state=" + "x" * 43 + "&code=c") as r:
        assert r.status == 400
    _, after = await ops_get(browser, admin, "/metrics")
    assert metric(after, "gateway_admin_signins_total") == metric(before, "gateway_admin_signins_total") + 1
    name = 'gateway_admin_signin_failures_total{reason="state_unknown"}'
    assert metric(after, name) == metric(before, name) + 1
    assert metric(after, "gateway_admin_sessions_live") >= 1
    # The label set is bounded: every reason is there from the start, nothing else.
    reasons = {line.split('"')[1] for line in after.splitlines() if line.startswith("gateway_admin_signin_failures_total{")}
    from admin_api.signin import REASONS
    assert reasons == set(REASONS)
    status, ready = await ops_get(browser, admin, "/readyz")
    assert status == 200 and json.loads(ready)["checks"]["oidc_provider"] is True


@pytest.fixture(scope="module")
def short_admin(oidc_provider, redis_server, tmp_path_factory, admin):
    """Another admin process on the same registered port, with short sessions (the first one is stopped)."""
    from tests.security.conftest import stop_process

    stop_process(admin.proc)
    with signin_admin(oidc_provider, redis_server, tmp_path_factory.mktemp("short"), session_idle=2,
                      session_lifetime=4, session_refresh=1) as short:
        yield short


async def test_an_idle_session_ends(short_admin, browser):
    import asyncio

    await sign_in(browser, short_admin.url, "alice")
    await session_of(browser, short_admin)
    await asyncio.sleep(2.3)
    status, err, _ = await request_json(browser, "GET", short_admin.url + "/auth/session")
    assert status == 401 and err["error"]["code"] == "session_expired"


async def test_a_used_session_ends_at_its_lifetime(short_admin, browser):
    import asyncio
    import time

    await sign_in(browser, short_admin.url, "alice")
    started = time.monotonic()
    me = await session_of(browser, short_admin)
    while time.monotonic() - started < 3.5:  # in use all along: the idle timeout never strikes
        await session_of(browser, short_admin)
        await asyncio.sleep(0.5)
    await asyncio.sleep(max(0.0, 4.3 - (time.monotonic() - started)))
    status, err, _ = await request_json(browser, "GET", short_admin.url + "/auth/session")
    assert status == 401 and err["error"]["code"] == "session_expired", me


async def test_role_changes_apply_at_the_next_refresh(short_admin, browser, oidc_provider, redis_server):
    import asyncio

    victor = dict(USERS["victor"])
    try:
        await sign_in(browser, short_admin.url, "victor")
        me = await session_of(browser, short_admin)
        csrf = {"X-CSRF-Token": me["csrf_token"]}
        status, err, _ = await request_json(browser, "POST", short_admin.url + "/v1/orgs/org-a/api-keys", json=BODY,
                                            headers=csrf)
        assert status == 403 and err["error"]["code"] == "insufficient_role"
        oidc_provider.set_user("victor", {**victor, "roles": ["admin"]})
        await asyncio.sleep(1.1)  # --session-refresh 1: the bound on role changes
        status, created, _ = await request_json(browser, "POST", short_admin.url + "/v1/orgs/org-a/api-keys",
                                                json=BODY, headers=csrf)
        assert status == 201 and created["created_by"] == "user:victor <victor@a.example>", created
        assert (await session_of(browser, short_admin))["role"] == "admin"
        # Moved to another org at the provider: the session's org follows.
        oidc_provider.set_user("victor", {**victor, "org_id": "org-b", "roles": ["viewer"]})
        await asyncio.sleep(1.1)
        me = await session_of(browser, short_admin)
        assert me["org_id"] == "org-b" and me["role"] == "viewer", me
        status, err, _ = await request_json(browser, "GET", short_admin.url + "/v1/orgs/org-a/api-keys")
        assert status == 404 and err["error"]["code"] == "org_not_found"
        # The role removed: 403 no_org_role, then the session is gone.
        oidc_provider.set_user("victor", {**victor, "roles": []})
        await asyncio.sleep(1.1)
        status, err, _ = await request_json(browser, "GET", short_admin.url + "/v1/orgs/org-b/api-keys")
        assert status == 403 and err["error"]["code"] == "no_org_role", err
        status, err, _ = await request_json(browser, "GET", short_admin.url + "/auth/session")
        assert status == 401 and err["error"]["code"] == "session_expired"
    finally:
        oidc_provider.set_user("victor", victor)


async def test_two_admin_processes_refresh_one_session_once(short_admin, browser, oidc_provider, redis_server, tmp_path):
    """The provider rotates refresh tokens and refuses a used one: two processes refreshing the
    same session at once must not both redeem it (the session would end). One claims the
    refresh in Redis, the other waits for its result."""
    import asyncio

    from tests.support import free_port

    port = free_port()
    with running_admin(tmp_path / "second.log", redis_server.url, *oidc_provider.signin_args(
            session_idle=30, session_lifetime=60, session_refresh=1), "--auth-failure-limit", "0",
            env=oidc_provider.signin_env(), port=port) as second:
        await sign_in(browser, short_admin.url, "alice")
        for _ in range(2):  # within short_admin's 4 s lifetime
            await asyncio.sleep(1.1)  # due for refresh on both
            answers = await asyncio.gather(*(request_json(browser, "GET", url + "/auth/session")
                                             for url in (short_admin.url, second.url) * 2))
            assert [status for status, _, _ in answers] == [200] * 4, answers
        assert "Traceback" not in second.log.read_text()


async def test_a_sign_out_counts_only_once_a_replica_has_it(master_and_replica, oidc_install, browser, tmp_path):
    """A failover promotes the replica: a sign-out it has not confirmed answers 503 (the person
    signs out again), never 200 with the session still alive on what would be promoted."""
    import asyncio
    import signal

    from tests.support import wait_for
    from tests.support.oidc import OidcProvider

    master, replica = master_and_replica
    await wait_for(lambda: replica.client.info("replication")["master_link_status"] == "up", timeout=10)
    provider = OidcProvider(oidc_install)  # its own, with its own registered admin port
    with contextlib.ExitStack() as stack:
        stack.callback(provider.stop)
        on_master = stack.enter_context(signin_admin(provider, master, tmp_path))
        sid = await sign_in(browser, on_master.url, "alice")
        me = await session_of(browser, on_master)
        key = b"gw:session:" + hashlib.sha256(sid.encode()).hexdigest().encode()
        await wait_for(lambda: replica.client.exists(key) == 1, timeout=5)
        replica.proc.send_signal(signal.SIGSTOP)  # replication stalls
        try:
            status, err, _ = await request_json(browser, "POST", on_master.url + "/auth/logout",
                                                headers={"X-CSRF-Token": me["csrf_token"]})
            assert status == 503 and err["error"]["code"] == "store_unavailable", err
            assert "no replica confirmed it" in err["error"]["message"]
        finally:
            replica.proc.send_signal(signal.SIGCONT)
        await wait_for(lambda: replica.client.exists(key) == 0, timeout=5)  # the delete arrives
        await asyncio.sleep(0)
        status, err, _ = await request_json(browser, "GET", on_master.url + "/auth/session")
        assert status == 401 and err["error"]["code"] == "session_expired"


async def test_a_person_removed_at_the_provider_is_signed_out_at_the_refresh(short_admin, browser, oidc_provider):
    import asyncio

    bob = dict(USERS["bob"])
    try:
        await sign_in(browser, short_admin.url, "bob")
        oidc_provider.set_user("bob", None)
        await asyncio.sleep(1.1)
        status, err, _ = await request_json(browser, "GET", short_admin.url + "/v1/orgs/org-b/api-keys")
        assert status == 401 and err["error"]["code"] == "session_expired", err
    finally:
        oidc_provider.set_user("bob", bob)


async def test_jwks_rotation_between_sign_ins_and_the_provider_down(redis_server, oidc_install, tmp_path, browser):
    import asyncio

    from tests.support.oidc import OidcProvider

    provider = OidcProvider(oidc_install)  # its own: this test restarts and stops it
    try:
        with signin_admin(provider, redis_server, tmp_path, "--oidc-jwks-min-refetch", "0", session_refresh=1,
                          oidc_backoff=1) as admin:
            await sign_in(browser, admin.url, "alice")
            provider.rotate("k2")  # the next ID token is signed with a key the admin API has not seen
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
                await sign_in(other, admin.url, "bob")
                assert (await session_of(other, admin))["actor"] == "user:bob <bob@b.example>"
                await asyncio.sleep(1.1)
                # Down: sign-in is a 503 page, a session due for refresh 503, /readyz names the check;
                # operator tokens and API keys still work.
                provider.stop()
                async with other.get(admin.url + "/auth/login", allow_redirects=False) as r:
                    page = await r.text()
                    assert r.status == 503 and r.content_type == "text/html", page
                    assert "idp_unavailable" in page and 'href="/"' in page
                status, err, _ = await request_json(other, "GET", admin.url + "/v1/orgs/org-b/api-keys")
                assert status == 503 and err["error"]["code"] == "idp_unavailable", err
                status, err, _ = await request_json(other, "GET", admin.url + "/auth/session")
                assert status == 503 and err["error"]["code"] == "idp_unavailable", err
                status, ready = await ops_get(other, admin, "/readyz")
                assert status == 503 and json.loads(ready)["checks"]["oidc_provider"] is False, ready
                async with other.post(admin.url + "/v1/orgs/org-b/api-keys", json=BODY,
                                      headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as r:
                    key = await r.json()
                    assert r.status == 201, key
                status, listed, _ = await request_json(other, "GET", admin.url + "/v1/orgs/org-b/api-keys", key["key"])
                assert status == 403 or status == 200, listed  # the key's own scopes decide, never the provider
                status, me, _ = await request_json(other, "GET", admin.url + "/v1/me", key["key"])
                assert status == 200, me
    finally:
        provider.stop()


async def test_redis_down_during_sign_in_is_an_html_page(oidc_install, tmp_path, browser):
    """/auth/login and /auth/callback are browser navigations: a Redis fault answers the 503 as a
    page (as every sign-in error), nothing is signed in, and the admin process keeps serving."""
    from tests.support import RedisServer
    from tests.support.oidc import OidcProvider, start_sign_in, submit_login

    provider = OidcProvider(oidc_install)
    (tmp_path / "redis").mkdir()
    redis = RedisServer(tmp_path / "redis")
    try:
        with signin_admin(provider, redis, tmp_path) as admin:
            _, form = await start_sign_in(browser, admin.url)  # the login record is in Redis
            callback = await submit_login(browser, form, "alice", USERS["alice"]["password"])
            redis.stop()
            for url in (admin.url + "/auth/login", callback):
                async with browser.get(url, allow_redirects=False) as r:
                    page = await r.text()
                    assert r.status == 503 and r.content_type == "text/html", (url, r.status, page)
                    assert "store_unavailable" in page and "Sign-in is unavailable" in page
                    assert not any(c.key.endswith("gw_session") and c.value for c in r.cookies.values())
            async with browser.get(admin.url + "/auth/config") as r:
                assert r.status == 200
    finally:
        provider.stop()
        if redis.proc.poll() is None:
            redis.stop()


async def test_a_refresh_claim_is_released_only_by_its_owner(redis_server):
    """A process whose claim expired mid-refresh must not release the claim another process
    took since (compare-and-delete)."""
    from gateway.store import KeyStore, connect

    client = connect(redis_server.url)
    try:
        sessions, sha = KeyStore(client).sessions, "c" * 64
        assert await sessions.claim_refresh(sha, "first", 10_000)
        assert not await sessions.claim_refresh(sha, "second", 10_000)
        await sessions.release_refresh(sha, "second")  # not its claim: nothing released
        assert not await sessions.claim_refresh(sha, "second", 10_000)
        await sessions.release_refresh(sha, "first")
        assert await sessions.claim_refresh(sha, "second", 10_000)
        assert 9_000 < redis_server.client.pttl(f"gw:session:{sha}:refreshing") <= 10_000
    finally:
        await client.aclose()
