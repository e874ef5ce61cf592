"""People sign in to the page with their own account: real Chromium, a real OpenID provider
(oidc-provider under node: its own login page) and a real `gateway admin` process that is its
confidential client (admin_api/signin.py). The page holds no token: the API's HttpOnly session
cookie, and a CSRF token in memory."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

import pytest
from playwright.async_api import expect

from tests.browser.conftest import Browser, create_through_dialog, launch, row
from tests.security.conftest import start_admin, stop_process
from tests.support import OPERATOR_TOKEN
from tests.support.oidc import USERS

SESSION_ENDED = "Your session has ended. Sign in again."


@pytest.fixture
def signin_admin(oidc_provider, redis_server, tmp_path):
    """Factory: a real `gateway admin` on the provider's registered admin port (its redirect_uri),
    signing people in with it; ``extra`` flags, e.g. a short --session-idle. One runs at a time;
    none may log a handler error."""
    running = []

    def start(*extra: str):
        for admin in running:
            stop_process(admin.proc)
        redis_server.client.flushall()
        admin = start_admin(tmp_path / f"admin-{len(running)}.log", redis_server.url, *oidc_provider.signin_args(),
                            *extra, env=oidc_provider.signin_env(), port=oidc_provider.admin_port)
        running.append(admin)
        return admin

    yield start
    for admin in running:
        stop_process(admin.proc)
        text = admin.log.read_text()
        assert "Traceback" not in text and "unhandled error" not in text, text


@pytest.fixture
async def person(signin_admin, oidc_provider):
    """A browser on the page of a fresh admin API (``person.admin``)."""
    admin = signin_admin()
    async with launch(admin.url) as b:
        b.admin = admin
        yield b


def operator_call(admin, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    import json

    req = urllib.request.Request(admin.url + path, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": f"Bearer {OPERATOR_TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def create_key(admin, org: str, name: str) -> dict:
    status, body = operator_call(admin, "POST", f"/v1/orgs/{org}/api-keys",
                                 {"name": name, "scopes": ["tasks:read"], "expires_in": "never"})
    assert status == 201, body
    return body


async def open_provider_login(b: Browser) -> None:
    page = b.page
    await page.goto(b.admin.url + "/")
    await page.get_by_role("link", name="Sign in with your account").click()
    await expect(page.locator("#login")).to_be_visible()


async def submit_login(b: Browser, user: str, password: str | None = None) -> None:
    page = b.page
    await page.locator("#login").fill(user)
    await page.locator("#password").fill(password if password is not None else USERS[user]["password"])
    await page.get_by_role("button", name="Sign in").click()


async def account_sign_in(b: Browser, user: str) -> None:
    """Through the provider's real login page, back to the page's list."""
    await open_provider_login(b)
    await submit_login(b, user)
    await b.page.get_by_role("heading", name="API Keys", exact=True).wait_for()


async def provider_logout(b: Browser, provider) -> None:
    """The provider's logout page (its confirmation, when it asks), then back on the page."""
    page = b.page
    await page.wait_for_url(re.compile("^" + re.escape(provider.issuer)))
    confirm = page.get_by_role("button", name="Yes, sign me out")
    if await confirm.count():
        await confirm.click()
    await page.wait_for_url(re.compile("^" + re.escape(b.admin.url) + "/"))


async def session_cookie(b: Browser) -> tuple[str, str]:
    cookies = [c for c in await b.page.context.cookies(b.admin.url) if c["name"].endswith("gw_session")]
    assert len(cookies) == 1, cookies
    assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict", cookies[0]
    return cookies[0]["name"], cookies[0]["value"]


def session_status(admin, cookie: tuple[str, str]) -> int:
    """GET /auth/session with only that cookie, from outside the browser."""
    req = urllib.request.Request(admin.url + "/auth/session", headers={"Cookie": f"{cookie[0]}={cookie[1]}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


async def storage_is_empty(b: Browser) -> None:
    assert await b.page.evaluate("[localStorage.length, sessionStorage.length, document.cookie]") == [0, 0, ""]


async def test_the_sign_in_view_leads_with_the_account_and_folds_the_token_form(person):
    page = person.page
    await page.goto(person.admin.url + "/")
    link = page.get_by_role("link", name="Sign in with your account")
    await expect(link).to_be_visible()
    await expect(link).to_have_attribute("href", "/auth/login?return_to=/")
    await expect(page.get_by_label("Operator token or API key")).to_be_hidden()  # folded away
    await person.shot("signin-view", page.locator("#sign-in-view"))
    await page.get_by_text("Use an operator token or API key instead").click()
    await expect(page.get_by_label("Operator token or API key")).to_be_visible()
    await page.set_viewport_size({"width": 320, "height": 640})  # nothing wider than a small phone
    assert await page.evaluate("document.documentElement.scrollWidth") <= 320


async def test_alice_signs_in_creates_sees_herself_revokes_and_signs_out(person, oidc_provider):
    page, admin = person.page, person.admin
    await account_sign_in(person, "alice")
    assert page.url == admin.url + "/"
    await expect(page.locator("#who")).to_have_text("alice@a.example · admin · organization org-a")
    await expect(page.locator("#who")).to_have_attribute("title", "Subject alice")
    await storage_is_empty(person)
    cookie = await session_cookie(person)

    await create_through_dialog(person, "Alice's integration", [("tasks", "View tasks")])
    reveal = page.get_by_role("dialog", name=re.compile("Your new API key"))
    await reveal.get_by_role("button", name="Copy").click()
    await reveal.get_by_role("button", name="I have copied it").click()
    created = row(person, "Alice's integration")
    await expect(created.locator(".created-by")).to_have_text("by alice@a.example")
    await expect(created.locator(".created-by")).to_have_attribute("title", "Subject alice")

    await created.get_by_role("button", name="Revoke Alice's integration").click()
    await page.get_by_role("dialog", name="Revoke API key?").get_by_role("button", name="Revoke key").click()
    await expect(page.locator("#notice")).to_contain_text("revoked")

    await page.get_by_role("tab", name="Activity").click()
    actors = page.locator("#activity-body .actor")
    await expect(actors).to_have_count(2)
    assert await actors.all_inner_texts() == ["alice@a.example"] * 2
    await expect(actors.first).to_have_attribute("title", "Subject alice")
    await storage_is_empty(person)

    # Sign out: the API ends the session, then the provider's own logout page, then back here.
    await page.get_by_role("button", name="Sign out").click()
    await provider_logout(person, oidc_provider)
    await expect(page).to_have_url(admin.url + "/")  # the provider's ?state= is dropped from the address bar
    await expect(page.get_by_role("link", name="Sign in with your account")).to_be_visible()
    await page.reload()
    await expect(page.get_by_role("link", name="Sign in with your account")).to_be_visible()
    await expect(page.locator("#keys-view")).to_be_hidden()
    assert session_status(admin, cookie) == 401  # the old cookie opens nothing any more


async def test_a_viewer_sees_keys_usage_and_activity_but_no_controls(person):
    create_key(person.admin, "org-a", "Nightly report")
    page = person.page
    await account_sign_in(person, "victor")
    await expect(page.locator("#who")).to_have_text("victor@a.example · viewer · organization org-a")
    await expect(row(person, "Nightly report")).to_be_visible()
    await expect(page.locator("#notice")).to_contain_text("Your role (viewer) lets you see")
    await expect(page.get_by_role("button", name="+ Create API Key")).to_have_count(0)
    await expect(page.get_by_role("button", name=re.compile("^Revoke"))).to_have_count(0)
    await row(person, "Nightly report").get_by_role("button", name="Nightly report: open details").click()
    detail = page.get_by_role("dialog", name="Nightly report")
    await expect(detail.locator("#usage-summary")).to_contain_text("requests in the last 24 hours")
    await expect(detail.locator("#key-activity li")).to_have_count(1)
    for name in ("Edit", "Roll secret", "Revoke"):
        await expect(detail.get_by_role("button", name=name, exact=True)).to_have_count(0)
    await detail.get_by_role("button", name="Close").click()
    await page.get_by_role("tab", name="Activity").click()
    await expect(page.locator("#activity-body tr")).to_have_count(1)
    await expect(page.locator("#activity-body .actor")).to_have_text("Operator")


async def test_a_person_without_a_role_gets_the_no_access_page(person):
    create_key(person.admin, "org-a", "Secret integration")
    page = person.page
    await open_provider_login(person)
    await submit_login(person, "nora")
    await expect(page.get_by_text("no_org_role")).to_be_visible()
    await expect(page.locator("body")).to_contain_text("org-a")
    await expect(page.get_by_role("link", name="Sign in with another account")).to_be_visible()
    await expect(page.get_by_text("Secret integration")).to_have_count(0)
    await person.shot("signin-no-role")
    assert [c for c in await page.context.cookies(person.admin.url) if c["name"].endswith("gw_session")] == []


async def test_a_role_removed_at_the_provider_ends_in_the_no_access_screen(signin_admin, oidc_provider):
    admin = signin_admin("--session-refresh", "1")
    async with launch(admin.url) as b:
        b.admin = admin
        page = b.page
        await account_sign_in(b, "alice")
        try:
            oidc_provider.set_user("alice", {**USERS["alice"], "roles": []})
            await page.wait_for_timeout(1100)  # past --session-refresh: the next call re-reads the roles
            await page.get_by_role("tab", name="Activity").click()
            screen = page.locator("#no-access-view")
            await expect(screen.get_by_role("heading")).to_have_text("You have no access to this organization's API keys")
            await expect(screen).to_contain_text("alice@a.example")
            await expect(screen.locator("#no-access-org")).to_have_text("org-a")
            await expect(screen).to_contain_text("admin")
            await expect(screen.get_by_role("link", name="Sign in with another account")).to_have_attribute(
                "href", "/auth/login?return_to=/&prompt=login")
            await expect(page.locator("#keys-view")).to_be_hidden()
            await b.shot("signin-no-access")
            await page.set_viewport_size({"width": 320, "height": 640})
            assert await page.evaluate("document.documentElement.scrollWidth") <= 320
            await page.set_viewport_size({"width": 1280, "height": 900})
            await screen.get_by_role("button", name="Sign out").click()
            await page.wait_for_url(re.compile(r"/$"))
            await expect(page.get_by_role("link", name="Sign in with your account")).to_be_visible()
        finally:
            oidc_provider.set_user("alice", USERS["alice"])


async def test_a_wrong_password_stays_on_the_providers_page(person, oidc_provider):
    page = person.page
    await open_provider_login(person)
    await submit_login(person, "alice", "not-the-password")
    await expect(page.get_by_text("Invalid user name or password.")).to_be_visible()
    assert page.url.startswith(oidc_provider.issuer)
    await expect(page.locator("#password")).to_be_visible()


async def test_bob_of_org_b_sees_his_orgs_keys_never_org_as(person):
    create_key(person.admin, "org-a", "Org A integration")
    create_key(person.admin, "org-b", "Org B integration")
    page = person.page
    await account_sign_in(person, "bob")
    await expect(page.locator("#who")).to_have_text("bob@b.example · admin · organization org-b")
    await expect(row(person, "Org B integration")).to_be_visible()
    await expect(page.get_by_text("Org A integration")).to_have_count(0)
    # Asked for org-a's keys with his session, the API refuses.
    answer = await page.request.get(person.admin.url + "/v1/orgs/org-a/api-keys")
    assert answer.status in (403, 404), answer.status
    assert "Org A integration" not in await answer.text()


async def test_an_idle_session_ends_and_the_page_says_so(signin_admin):
    admin = signin_admin("--session-idle", "3")
    async with launch(admin.url) as b:
        b.admin = admin
        page = b.page
        await account_sign_in(b, "alice")
        cookie = await session_cookie(b)
        message = page.locator("#sign-in-message")
        await expect(message).to_have_text(SESSION_ENDED, timeout=8_000)  # the page's idle timer notices
        await expect(page.get_by_role("link", name="Sign in with your account")).to_be_visible()
        await expect(page.locator("#keys-view")).to_be_hidden()
        assert session_status(admin, cookie) == 401


async def test_a_call_after_the_session_ended_says_so(signin_admin):
    admin = signin_admin("--session-idle", "3")
    async with launch(admin.url) as b:
        b.admin = admin
        page = b.page
        await page.clock.install()
        await account_sign_in(b, "alice")
        await page.clock.pause_at(time.time() * 1000)  # the page's idle timer is held; the API's clock is not
        await page.wait_for_timeout(3_500)
        await page.get_by_role("tab", name="Activity").click()
        await expect(page.locator("#sign-in-message")).to_have_text(SESSION_ENDED)
        await expect(page.locator("#keys-view")).to_be_hidden()


async def test_provider_down_says_so_and_an_operator_token_still_works(signin_admin, oidc_provider):
    admin = signin_admin("--session-refresh", "1", "--oidc-backoff", "1")
    create_key(admin, "org-a", "Still listed")
    async with launch(admin.url) as b:
        b.admin = admin
        page = b.page
        await account_sign_in(b, "alice")
        oidc_provider.stop()
        try:
            await page.wait_for_timeout(1100)  # past --session-refresh: the session must ask the provider
            # A call from the list: one banner saying what is wrong, not the list's own error too.
            await page.get_by_label("Status").select_option("all")
            banner = page.locator("#idp-banner")
            await expect(banner).to_contain_text("The sign-in provider cannot be reached right now")
            await expect(page.locator("#list-error")).to_be_hidden()
            await page.reload()
            await expect(banner).to_contain_text("The sign-in provider cannot be reached right now")
            await expect(banner).to_contain_text("API keys and the gateway keep working")
            await expect(page.get_by_role("link", name="Sign in with your account")).to_be_visible()
            await b.shot("signin-provider-down")
            # The rest of the page works: an operator token signs in and lists the keys.
            await page.get_by_text("Use an operator token or API key instead").click()
            await page.get_by_label("Operator token or API key").fill(OPERATOR_TOKEN)
            await page.get_by_label("Organization ID").fill("org-a")
            await page.get_by_role("button", name="Sign in", exact=True).click()
            await expect(row(b, "Still listed")).to_be_visible()
            await expect(page.locator("#who")).to_have_text("Operator · organization org-a")
        finally:
            oidc_provider.start()
        # The provider is back (restarted: it forgot alice's grant, so her session is over): Try again
        # clears the banner, and she signs in again with her account.
        await page.get_by_role("button", name="Sign out").click()
        await page.wait_for_timeout(1100)  # past --oidc-backoff: the API asks the provider again
        await page.locator("#idp-banner").get_by_role("button", name="Try again").click()
        await expect(page.locator("#idp-banner")).to_be_hidden()
        await page.get_by_role("link", name="Sign in with your account").click()
        await submit_login(b, "alice")
        await expect(page.locator("#who")).to_have_text("alice@a.example · admin · organization org-a")
        await expect(row(b, "Still listed")).to_be_visible()


async def test_signing_in_while_the_provider_is_down_says_so_and_leads_back(signin_admin, oidc_provider):
    admin = signin_admin("--oidc-backoff", "1")
    create_key(admin, "org-a", "Still listed")
    async with launch(admin.url) as b:
        b.admin = admin
        page = b.page
        oidc_provider.stop()
        try:
            await page.wait_for_timeout(1100)  # past --oidc-backoff: /auth/login asks the provider again
            await page.goto(admin.url + "/")
            await page.get_by_role("link", name="Sign in with your account").click()
            await expect(page.locator("body")).to_contain_text("idp_unavailable")
            assert page.url.startswith(admin.url + "/auth/login")
            await page.get_by_role("link", name="Back to API keys").click()
            await page.get_by_text("Use an operator token or API key instead").click()
            await page.get_by_label("Operator token or API key").fill(OPERATOR_TOKEN)
            await page.get_by_label("Organization ID").fill("org-a")
            await page.get_by_role("button", name="Sign in", exact=True).click()
            await expect(row(b, "Still listed")).to_be_visible()
        finally:
            oidc_provider.start()


async def test_a_sign_out_that_fails_keeps_the_person_signed_in_and_says_so(person, oidc_provider):
    page = person.page
    await account_sign_in(person, "alice")
    await page.route(re.compile(r"/auth/logout$"), lambda route: route.abort("internetdisconnected"))
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.locator("#list-error")).to_contain_text("Signing out failed, you are still signed in")
    await expect(page.locator("#keys-view")).to_be_visible()
    await page.unroute(re.compile(r"/auth/logout$"))
    await page.get_by_role("button", name="Sign out").click()
    await provider_logout(person, oidc_provider)
    await expect(page.get_by_role("link", name="Sign in with your account")).to_be_visible()


async def test_person_actors_read_as_their_email_with_the_subject_on_hover(person):
    await person.page.goto(person.admin.url + "/")
    parts = await person.page.evaluate("""async () => {
        const { actorParts } = await import("/static/activity.js");
        return ["user:alice <alice@a.example>", "user:bob", "operator", "key:key_abc"].map(actorParts);
    }""")
    assert parts == [
        {"label": "alice@a.example", "title": "Subject alice"}, {"label": "bob", "title": "Subject bob"},
        {"label": "Operator", "title": ""}, {"label": "Key key_abc", "title": ""},
    ]
