"""What the page says about the signed-in key, how it recovers from a failed load, its labels and icon."""

from __future__ import annotations

import re

from playwright.async_api import Route, expect

from tests.browser.conftest import row, sign_in


async def test_a_key_without_api_keys_scopes_gets_one_clear_message(stack, browser):
    plain = await stack.create_key(name="Zapier production", scopes=["tasks:read"])
    page = browser.page
    await page.goto(stack.admin + "/")
    await page.get_by_label("Operator token or API key").fill(plain["key"])
    await page.get_by_role("button", name="Sign in").click()
    error = page.locator("#credential-error")
    await expect(error).to_have_text(re.compile(
        r"^This API key cannot view or manage API keys: it needs the api_keys:read or api_keys:manage permission\."))
    # Only that: no list, no red list banner, no "can view the list" note, nothing kept.
    await expect(page.locator("#keys-view")).to_be_hidden()
    await expect(page.get_by_text("can view the list")).to_have_count(0)
    await expect(page.get_by_text("lacks")).to_have_count(0)
    assert await page.evaluate("sessionStorage.length") == 0
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()

    # A session such a key got from an older page (a tab open across an upgrade) ends the same way.
    await page.evaluate("(key) => sessionStorage.setItem('api-keys-session', JSON.stringify({credential: key, orgId: 'acme'}))",
                        plain["key"])
    await page.reload()
    await expect(error).to_contain_text("cannot view or manage API keys")
    await expect(page.locator("#keys-view")).to_be_hidden()
    assert await page.evaluate("sessionStorage.length") == 0


async def test_retry_reloads_the_list_after_a_network_error(stack, browser):
    await stack.create_key(name="Zapier production")
    page = browser.page
    list_url = re.compile(r"/v1/orgs/acme/api-keys\?")
    failed = []

    async def offline(route: Route) -> None:
        failed.append(route.request.url)
        await route.abort("internetdisconnected")  # what the browser sees when the network is gone

    await page.route(list_url, offline)
    await sign_in(browser, stack)
    banner = page.get_by_role("alert")
    await expect(banner).to_contain_text("The admin API cannot be reached")
    await expect(row(browser, "Zapier production")).to_have_count(0)
    await expect(page.locator("#empty-state")).to_be_hidden()  # not "No API keys yet": we do not know
    assert len(failed) == 1
    await browser.shot("list-error-retry")

    await page.unroute(list_url)
    await banner.get_by_role("button", name="Retry").click()
    await expect(row(browser, "Zapier production")).to_have_count(1)
    await expect(page.locator("#list-error")).to_be_hidden()
    await expect(page.locator("#list-count")).to_have_text("1 key")


async def test_permission_groups_read_in_sentence_case_with_acronyms(stack, browser):
    page = browser.page
    await sign_in(browser, stack)
    await page.get_by_role("button", name="+ Create API Key").first.click()
    dialog = page.get_by_role("dialog", name="Create API Key")
    heads = dialog.locator(".perm-group > label")
    await expect(heads.first).to_be_visible()
    shown = [t.strip() for t in await heads.all_inner_texts()]  # as rendered, CSS included
    assert "API keys" in shown and "Tasks" in shown, shown
    await expect(dialog.get_by_label("Select all API keys permissions")).to_be_visible()

    # The naming rule itself, run in the page's own module.
    labels = await page.evaluate("""async () => {
        const { groupLabel } = await import("/static/permissions.js");
        return ["api_keys", "webhook_urls", "user_ids", "http_logs", "guest_messages", "URL_rules"].map(groupLabel);
    }""")
    assert labels == ["API keys", "Webhook URLs", "User IDs", "HTTP logs", "Guest messages", "URL rules"]


async def test_the_page_has_an_icon_and_no_failed_request(stack, browser):
    page = browser.page
    failures = []
    page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("requestfailed", lambda r: failures.append(f"failed {r.url}"))
    page.on("console", lambda m: failures.append(f"console {m.text}") if m.type == "error" else None)
    # An org exists from its first key on (an org without keys answers 404 org_not_found).
    await stack.create_key(name="icon test key")
    await sign_in(browser, stack)
    listed = page.get_by_text("icon test key")
    await expect(listed).to_be_visible()  # the list has loaded: a reload cuts off no request
    await page.reload()
    await expect(listed).to_be_visible()

    # The icon the page links to loads as an image under the page's own CSP (img-src 'self').
    size = await page.evaluate("""() => new Promise((resolve, reject) => {
        const link = document.querySelector("link[rel=icon]");
        const img = new Image();
        img.onload = () => resolve([img.naturalWidth, img.naturalHeight]);
        img.onerror = () => reject(new Error("the icon did not load"));
        img.src = link.href;
    })""")
    assert size[0] > 0 and size[1] > 0
    for path in ("/favicon.ico", "/static/favicon.svg"):
        answer = await page.request.get(stack.admin + path)
        assert answer.status == 200 and answer.headers["content-type"].startswith("image/svg+xml"), path
    assert failures == []
