"""The Settings -> API Keys page in real headless Chromium against a real admin API, gateway and Redis."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from playwright.async_api import expect

from gateway.keys import KEY_REGEX
from gateway.tasks import flush_usage
from tests.browser.conftest import row, sign_in
from tests.support import OPERATOR_TOKEN

UTC_TITLE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")


async def test_create_reveal_use_last_used_and_screenshots(stack, browser):
    page = browser.page
    await sign_in(browser, stack)
    await expect(page.get_by_role("heading", name="No API keys yet")).to_be_visible()

    await page.get_by_role("button", name="+ Create API Key").first.click()
    dialog = page.get_by_role("dialog", name="Create API Key")
    await dialog.get_by_label("Name", exact=True).fill("Zapier production")
    await expect(dialog.get_by_label("Expiry")).to_have_value("90d")  # the default; Never stays a choice
    await dialog.get_by_role("searchbox").fill("view tasks")
    await expect(dialog.locator(".perm-group li:visible")).to_have_count(1)  # the search narrows the list
    await dialog.get_by_label("View tasks", exact=True).check()
    await dialog.get_by_role("searchbox").fill("reservations:read")  # by scope, too
    await dialog.get_by_label("View reservations", exact=True).check()
    await dialog.get_by_role("searchbox").fill("")
    await expect(dialog.locator("#perm-selected")).to_contain_text("2 permissions selected")
    await browser.shot("create-dialog")
    await dialog.get_by_role("button", name="Create", exact=True).click()

    reveal = page.get_by_role("dialog", name=re.compile("Your new API key"))
    await expect(reveal).to_contain_text("will not be shown")
    key = await reveal.get_by_label("API key").input_value()
    assert KEY_REGEX.fullmatch(key)
    await reveal.get_by_role("button", name="Copy").click()
    await expect(reveal.get_by_role("status")).to_have_text("Copied to the clipboard.")
    assert await page.evaluate("navigator.clipboard.readText()") == key
    await browser.shot("reveal-dialog")
    await reveal.get_by_role("button", name="I have copied it").click()
    await expect(reveal).to_be_hidden()

    # After the dialog closes the secret is nowhere in the page, its URL or its storage.
    new_row = row(browser, "Zapier production")
    await expect(new_row).to_have_count(1)
    assert key not in await page.content()
    assert key not in await page.evaluate("document.documentElement.outerHTML + location.href")
    storage = await page.evaluate("JSON.stringify({...sessionStorage}) + JSON.stringify({...localStorage})")
    assert key not in storage and "sop_" not in storage

    # The row: masked prefix and id, created (relative, by whom), a dash for last used, 90 days, Active.
    record = (await stack.store.list("acme", limit=10, cursor=None, include_revoked=False)).records[0]
    assert record.scopes == ("tasks:read", "reservations:read") or list(record.scopes) == ["tasks:read", "reservations:read"]
    await expect(new_row.locator("td .prefix")).to_have_text(record.prefix + "…")
    await expect(new_row.locator("td .key-id")).to_have_text(record.id)
    assert len(record.prefix) < 16 and key.startswith(record.prefix)
    await expect(new_row.locator("td.last-used")).to_have_text("—0 requests")
    assert record.expires_at - record.created_at == 90 * 86400 * 1000
    await expect(new_row.locator("td.expires time")).to_have_text("in 90 days")
    await expect(new_row.locator(".badge")).to_have_text("Active")
    await expect(new_row.locator(".created-by")).to_have_text("by Operator")
    created_time = new_row.locator("td.created time")
    title = await created_time.get_attribute("title")
    assert UTC_TITLE.match(title)
    created_utc = datetime.fromtimestamp(record.created_at / 1000, timezone.utc)
    assert title == created_utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    await expect(created_time).to_have_text("just now")
    await expect(created_time).to_have_attribute("aria-label", f"just now, {title}")  # on focus too
    await browser.shot("list")

    # The key works through the gateway, only within its scopes.
    assert (await stack.call("GET", "/v1/tasks", key))[0] == 200
    assert (await stack.call("GET", "/v1/reservations", key))[0] == 200
    status, body, _ = await stack.call("POST", "/v1/tasks", key)
    assert status == 403 and body["error"]["required_scope"] == "tasks:write"

    # After the last-used flush, a reload shows when it was used.
    assert await flush_usage(stack.state.store, stack.state.usage, stack.state.metrics)
    await page.reload()
    used = row(browser, "Zapier production").locator("td.last-used time")
    await expect(used).to_be_visible()
    assert UTC_TITLE.match(await used.get_attribute("title"))


async def test_revoke_confirm_hides_until_show_revoked(stack, browser):
    await stack.create_key(name="Contractor (Q3 audit)", scopes=["properties:read"], expires_in="30d")
    stack.clock.advance(31 * 86400)
    created = await stack.create_key(name="Nightly reporting script", scopes=["reservations:read", "guests:read"])
    stack.clock.advance(3600)
    await stack.create_key(name="Still in use", scopes=["tasks:read", "tasks:write"], expires_in="1y")
    page = browser.page
    await sign_in(browser, stack)
    target = row(browser, "Nightly reporting script")
    await expect(target.locator(".badge")).to_have_text("Active")
    await target.get_by_role("button", name="Revoke").click()
    confirm = page.get_by_role("dialog", name="Revoke API key?")
    await expect(confirm).to_contain_text("Nightly reporting script")
    await expect(confirm).to_contain_text(created["prefix"])
    await confirm.get_by_role("button", name="Revoke key").click()
    await expect(confirm).to_be_hidden()
    await expect(target.locator(".badge")).to_have_text("Revoked")
    await expect(target.get_by_role("button", name="Revoke")).to_have_count(0)
    await expect(page.get_by_role("status").filter(has_text="was revoked")).to_be_visible()

    status, body, _ = await stack.call("GET", "/v1/tasks", created["key"])
    assert status == 401 and body["error"]["code"] == "revoked_api_key"

    await page.reload()
    await expect(row(browser, "Still in use")).to_have_count(1)
    await expect(row(browser, "Nightly reporting script")).to_have_count(0)
    await page.get_by_label("Status").select_option("all")
    await expect(row(browser, "Nightly reporting script").locator(".badge")).to_have_text("Revoked")
    await expect(row(browser, "Contractor (Q3 audit)").locator(".badge")).to_have_text("Expired")
    await browser.shot("list-show-revoked")
    await page.get_by_label("Status").select_option("current")
    await expect(row(browser, "Nightly reporting script")).to_have_count(0)


async def test_cancel_revoke_changes_nothing(stack, browser):
    await stack.create_key(name="Keep me")
    await sign_in(browser, stack)
    await row(browser, "Keep me").get_by_role("button", name="Revoke").click()
    confirm = browser.page.get_by_role("dialog", name="Revoke API key?")
    await confirm.get_by_role("button", name="Cancel").click()
    await expect(confirm).to_be_hidden()
    records = (await stack.store.list("acme", limit=10, cursor=None, include_revoked=True)).records
    assert [r.revoked_at for r in records] == [None]


async def test_expired_key_shows_expired_and_can_be_revoked(stack, browser):
    contractor = await stack.create_key(name="Contractor", expires_in="30d")
    await stack.create_key(name="Forever")
    stack.clock.advance(31 * 86400)
    await sign_in(browser, stack)
    expired = row(browser, "Contractor")
    await expect(expired.locator(".badge")).to_have_text("Expired")
    await expect(expired.locator("td.expires time")).to_have_text("1 day ago")
    await expect(row(browser, "Forever").locator(".badge")).to_have_text("Active")
    # An expired key can be revoked, so that it stays dead if someone edits its expiry.
    await expired.get_by_role("button", name="Revoke").click()
    confirm = browser.page.get_by_role("dialog", name="Revoke API key?")
    await confirm.get_by_role("button", name="Revoke key").click()
    await expect(confirm).to_be_hidden()
    await expect(expired.locator(".badge")).to_have_text("Revoked")
    listed = (await stack.store.list("acme", limit=10, cursor=None, include_revoked=True)).records
    assert [r.revoked_at is not None for r in listed if r.id == contractor["id"]] == [True]


async def test_hostile_name_renders_as_text(stack, browser):
    hostile = "<img src=x onerror=alert(1)>"
    await stack.create_key(name=hostile)
    await stack.create_key(name='"><script>alert(2)</script>')
    await sign_in(browser, stack)
    await expect(row(browser, '"><script>alert(2)</script>')).to_have_count(1)
    await expect(row(browser, hostile)).to_have_count(1)
    assert await browser.page.locator("#keys-body img, #keys-body script").count() == 0
    # The revoke dialog names it literally too.
    await row(browser, hostile).get_by_role("button", name="Revoke").click()
    await expect(browser.page.locator("#revoke-name")).to_have_text(hostile)
    # browser fixture: no alert() fired and no console error.


async def test_keyboard_only_create_focus_trap_and_escape(stack, browser):
    page = browser.page
    await sign_in(browser, stack)
    # Tab from the top of the page to the create button.
    await page.locator("body").focus()
    for _ in range(15):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.textContent.trim()") == "+ Create API Key":
            break
    else:
        raise AssertionError("the create button is not reachable with Tab")
    await page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Create API Key")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_label("Name", exact=True)).to_be_focused()

    # Focus stays inside the dialog, forwards and backwards.
    for key in ["Tab"] * 40 + ["Shift+Tab"] * 40:
        await page.keyboard.press(key)
        assert await page.evaluate("document.getElementById('create-dialog').contains(document.activeElement)")

    # Escape closes it and focus returns to the button that opened it.
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(page.get_by_role("button", name="+ Create API Key").first).to_be_focused()

    await page.keyboard.press("Enter")
    await expect(dialog.get_by_label("Name", exact=True)).to_be_focused()
    await page.keyboard.type("Keyboard only")
    await page.keyboard.press("Tab")  # -> Expiry
    await expect(dialog.get_by_label("Expiry")).to_be_focused()
    await page.keyboard.press("ArrowDown")  # 90 days (the default) -> 1 year
    await page.keyboard.press("Tab")  # -> search
    await expect(dialog.get_by_role("searchbox")).to_be_focused()
    await page.keyboard.type("guests")
    await page.keyboard.press("Enter")  # does not submit
    await expect(dialog).to_be_visible()
    await page.keyboard.press("Tab")  # -> select all guests
    await expect(dialog.locator(".select-all")).to_be_focused()
    await page.keyboard.press("Space")
    guests = [p for p in (await stack.admin_call("GET", "/v1/permissions?q=guests"))[1]["data"]]
    await expect(dialog.locator("#perm-selected")).to_contain_text(f"{len(guests)} permission")
    while not await page.evaluate("document.activeElement.id === 'create-submit'"):
        await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    reveal = page.get_by_role("dialog", name=re.compile("Your new API key"))
    await expect(reveal).to_be_visible()
    await expect(reveal.get_by_label("API key")).to_be_focused()
    await page.keyboard.press("Escape")  # asks first (tests/browser/test_dialogs.py); the button closes it
    await expect(reveal.get_by_role("alert")).to_contain_text("You won't see this key again")
    while not await page.evaluate("document.activeElement.id === 'reveal-done'"):
        await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    await expect(reveal).to_be_hidden()
    await expect(page.locator("#reveal-key")).to_have_value("")

    record = (await stack.store.list("acme", limit=10, cursor=None, include_revoked=False)).records[0]
    assert record.name == "Keyboard only" and sorted(record.scopes) == sorted(p["scope"] for p in guests)
    assert record.expires_at - record.created_at == 365 * 86400 * 1000


async def test_validation_errors_show_next_to_fields_and_no_double_create(stack, browser):
    page = browser.page
    await sign_in(browser, stack)
    await page.get_by_role("button", name="+ Create API Key").first.click()
    dialog = page.get_by_role("dialog", name="Create API Key")
    await dialog.get_by_role("button", name="Create", exact=True).click()
    await expect(dialog.locator("#key-name-error")).to_contain_text("Enter a name")
    await expect(dialog.locator("#perm-error")).to_have_text("Select at least one permission.")
    await expect(dialog.get_by_label("Name", exact=True)).to_have_attribute("aria-invalid", "true")

    # The API's own validation error (a bidi override in the name) appears next to the field.
    await dialog.get_by_label("Name", exact=True).fill("Invoice \u202ebot")
    await dialog.get_by_role("searchbox").fill("tasks")
    await dialog.get_by_label("View tasks", exact=True).check()
    await expect(dialog.locator("#perm-error")).to_have_text("")
    await dialog.get_by_role("button", name="Create", exact=True).click()
    await expect(dialog.locator("#key-name-error")).to_have_text("The name must not contain control characters.")
    assert (await stack.store.list("acme", limit=10, cursor=None, include_revoked=True)).records == []

    # Two submits in a row (double click, Enter + click) create one key.
    await dialog.get_by_label("Name", exact=True).fill("Exactly once")
    await page.evaluate("const f = document.getElementById('create-form'); f.requestSubmit(); f.requestSubmit();")
    await expect(page.get_by_role("dialog", name=re.compile("Your new API key"))).to_be_visible()
    records = (await stack.store.list("acme", limit=10, cursor=None, include_revoked=True)).records
    assert [r.name for r in records] == ["Exactly once"]


async def test_sign_in_errors_session_storage_and_sign_out(stack, browser):
    page = browser.page
    await page.goto(stack.admin + "/")
    await page.get_by_label("Operator token or API key").fill("sop_" + "A" * 36)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#credential-error")).to_contain_text("invalid_token")

    await page.get_by_label("Operator token or API key").fill(OPERATOR_TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#org-id-error")).to_contain_text("enter the organization ID")

    await page.get_by_label("Organization ID").fill("acme")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="API Keys", exact=True)).to_be_visible()
    session = await page.evaluate("sessionStorage.getItem('api-keys-session')")
    assert OPERATOR_TOKEN in session
    assert await page.evaluate("localStorage.length") == 0
    assert await page.context.cookies() == []
    assert OPERATOR_TOKEN not in page.url

    await page.reload()  # the session survives a reload of the tab
    await expect(page.get_by_role("heading", name="API Keys", exact=True)).to_be_visible()
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0


async def test_org_key_sign_in_grants_only_what_it_holds(stack, browser):
    admin = await stack.create_key(scopes=["api_keys:manage", "tasks:read"], name="Admin key")
    await sign_in(browser, stack, credential=admin["key"], org=None)
    await expect(browser.page.locator("#who")).to_contain_text("Organization acme")
    await browser.page.get_by_role("button", name="+ Create API Key").first.click()
    dialog = browser.page.get_by_role("dialog", name="Create API Key")
    await expect(dialog.get_by_label("View tasks", exact=True)).to_be_enabled()
    await expect(dialog.get_by_label("Manage tasks", exact=True)).to_be_disabled()
    # api_keys:manage implies api_keys:read, so a manager may grant reading.
    await expect(dialog.get_by_label("View API keys", exact=True)).to_be_enabled()
    await expect(dialog.get_by_label("Create and revoke API keys", exact=True)).to_be_enabled()

    reader = await stack.create_key(scopes=["api_keys:read"], name="Reader key")
    await browser.page.keyboard.press("Escape")
    await browser.page.get_by_role("button", name="Sign out").click()
    await sign_in(browser, stack, credential=reader["key"], org=None)
    await expect(row(browser, "Reader key")).to_be_visible()
    await expect(browser.page.locator("#notice")).to_have_text(re.compile("can view the list but not create"))
    await expect(browser.page.locator("#list-error")).to_be_hidden()
    await expect(browser.page.get_by_role("button", name="+ Create API Key")).to_have_count(0)
    await expect(browser.page.get_by_role("button", name="Revoke")).to_have_count(0)

    # A key revoked while its session is open is signed out with the API's message.
    await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{reader['id']}/revoke")
    await browser.page.get_by_label("Status").select_option("all")
    await expect(browser.page.locator("#credential-error")).to_contain_text("revoked")


async def test_many_keys_load_page_by_page_newest_first(stack, browser):
    for i in range(60):
        stack.clock.advance(1)
        await stack.store.create(org_id="acme", name=f"key {i:02d}", scopes=["tasks:read"], expires_at=None,
                                 actor="test", now_ms=int(stack.clock() * 1000))
    page = browser.page
    await sign_in(browser, stack)
    names = page.locator("#keys-body td.name")
    await expect(names.first).to_contain_text("key 59")
    await expect(names).to_have_count(25)
    for expected in (50, 60):  # scrolling to the end of the list loads the next page
        await page.get_by_role("button", name="Load more keys").scroll_into_view_if_needed()
        await expect(names).to_have_count(expected)
    shown = [text.split("\n")[0].strip() for text in await names.all_inner_texts()]
    assert [s[:6] for s in shown] == [f"key {i:02d}" for i in reversed(range(60))]
    await expect(page.get_by_role("button", name="Load more keys")).to_be_hidden()


async def test_readable_at_375_px(stack, browser):
    await stack.create_key(name="Zapier production", scopes=["tasks:read", "tasks:write"])
    await stack.create_key(name="Nightly reporting script with a long descriptive name", expires_in="90d")
    page = browser.page
    await page.set_viewport_size({"width": 375, "height": 812})
    await sign_in(browser, stack)
    await expect(row(browser, "Zapier production")).to_be_visible()
    assert await page.evaluate("document.documentElement.scrollWidth") <= 375
    await browser.shot("list-375px")
    await page.get_by_role("button", name="+ Create API Key").first.click()
    dialog = page.get_by_role("dialog", name="Create API Key")
    box = await dialog.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 375
    await browser.shot("create-dialog-375px")


async def test_empty_state_has_the_create_button(stack, browser):
    await sign_in(browser, stack)
    empty = browser.page.locator("#empty-state")
    await expect(empty).to_contain_text("No API keys yet")
    await empty.get_by_role("button", name="+ Create API Key").click()
    await expect(browser.page.get_by_role("dialog", name="Create API Key")).to_be_visible()


async def test_csp_blocks_inline_script_in_the_real_browser(stack, browser):
    await sign_in(browser, stack)
    pwned = await browser.page.evaluate("""() => {
        const s = document.createElement('script');
        s.textContent = 'window.pwned = true';
        document.body.append(s);
        const img = document.createElement('img');
        img.setAttribute('onerror', 'window.pwned = true');
        img.src = 'data:,x';
        document.body.append(img);
        return new Promise(r => setTimeout(() => r(window.pwned === true), 200));
    }""")
    assert pwned is False
    assert any("Content Security Policy" in p for p in browser.problems)
    browser.problems.clear()  # the violations above were the point of this test
