"""A key's limits on the page (issue 16): the create dialog's Limits rows, the detail view's limits
and what their windows have used, and changing them through Edit, in Chromium."""

from __future__ import annotations

import re

from playwright.async_api import expect

from gateway.ratelimit import window_bounds
from tests.browser.conftest import launch, row, sign_in
from tests.browser.test_key_detail import no_sideways_scroll

KEYS = "/v1/orgs/acme/api-keys"


def lim(*pairs):
    return [{"window": w, "limit": n} for w, n in pairs]


async def open_create(page):
    await page.get_by_role("button", name="+ Create API Key").first.click()
    dialog = page.get_by_role("dialog", name="Create API Key")
    await expect(dialog).to_be_visible()
    await dialog.get_by_label("Name", exact=True).fill("Metered partner")
    await dialog.get_by_role("searchbox").fill("tasks")
    await dialog.get_by_label("View tasks", exact=True).check()
    return dialog


async def open_detail(page, name: str):
    await row_of(page, name).get_by_role("button", name=f"{name}: open details").click()
    detail = page.get_by_role("dialog", name=name)
    await expect(detail).to_be_visible()
    return detail


def row_of(page, name: str):
    return page.locator("#keys-body tr").filter(has=page.locator("td.name", has_text=name))


async def test_limits_are_set_in_the_create_dialog_with_messages_and_by_keyboard(stack, browser):
    page = browser.page
    await sign_in(browser, stack)
    dialog = await open_create(page)
    limits = dialog.get_by_role("group", name=re.compile("Limits"))
    await expect(limits.locator("#limit-none")).to_have_text("No limits of its own: the default applies.")
    # Keyboard: "+ Add limit" adds a row (the next free window) and focuses its number.
    await limits.get_by_role("button", name="+ Add limit").focus()
    await page.keyboard.press("Enter")
    first = limits.locator("li.limit-row").nth(0)
    await expect(first.get_by_label("Requests")).to_be_focused()
    await expect(first.get_by_label("Window")).to_have_value("second")
    await page.keyboard.type("0")
    await first.get_by_label("Window").select_option(label="per minute")
    await limits.get_by_role("button", name="+ Add limit").click()
    second = limits.locator("li.limit-row").nth(1)
    await expect(second.get_by_label("Window")).to_have_value("second")  # minute is taken
    await second.get_by_label("Window").select_option(label="per minute")
    await second.get_by_label("Requests").fill("100000")
    await dialog.get_by_role("button", name="Create", exact=True).click()
    # Nothing is sent: each row says what is wrong, and the first one at fault has the focus.
    await expect(first.locator(".field-error")).to_have_text("Enter a whole number of requests from 1 to 999,999,999,999,999.")
    await expect(first.get_by_label("Requests")).to_be_focused()
    await expect(first.get_by_label("Requests")).to_have_attribute("aria-invalid", "true")
    await expect(second.locator(".field-error")).to_have_text("There is already a limit per minute: one limit per window.")
    await browser.shot("create-limits-errors", dialog)
    await first.get_by_label("Requests").fill("600")
    await expect(first.locator(".field-error")).to_have_text("")
    await second.get_by_label("Window").select_option(label="per month (quota)")
    await expect(second.get_by_role("button", name="Remove the per month limit")).to_be_visible()
    # A third row, removed again: focus goes to the row before.
    await limits.get_by_role("button", name="+ Add limit").click()
    third = limits.locator("li.limit-row").nth(2)
    await third.get_by_role("button", name=re.compile("^Remove")).click()
    await expect(limits.locator("li.limit-row")).to_have_count(2)
    await expect(second.get_by_label("Requests")).to_be_focused()
    await browser.shot("create-limits", dialog)
    await dialog.get_by_role("button", name="Create", exact=True).click()
    reveal = page.get_by_role("dialog", name=re.compile("Your new API key"))
    await expect(reveal).to_be_visible()
    _, listed, _ = await stack.admin_call("GET", KEYS)
    assert listed["data"][0]["limits"] == lim(("minute", 600), ("month", 100_000))


async def test_the_api_s_refusal_of_limits_shows_in_the_limits_section(make_stack, tmp_path):
    # A ceiling is what the page cannot know: the API's 400 naming "limits" shows in the section.
    (tmp_path / "limits.yaml").write_text("max:\n  - {window: second, limit: 50}\n")
    stack = await make_stack(admin_settings={"limits_file": str(tmp_path / "limits.yaml")})
    async with launch(stack.admin) as browser:
        page = browser.page
        await sign_in(browser, stack)
        dialog = await open_create(page)
        await dialog.get_by_role("button", name="+ Add limit").click()
        await dialog.locator("li.limit-row").get_by_label("Requests").fill("51")
        await dialog.get_by_role("button", name="Create", exact=True).click()
        await expect(dialog.locator("#limits-error")).to_contain_text(
            "per-second limit 51 is above this gateway's maximum of 50")
        await expect(dialog.locator("li.limit-row").get_by_label("Requests")).to_be_focused()
        await expect(dialog.locator("#limits-fieldset")).to_have_attribute("aria-invalid", "true")


async def test_the_detail_view_shows_the_limits_and_the_quota_used_with_its_reset(make_stack):
    stack = await make_stack(admin_settings={"default_limits": "minute=600,month=1000000"})
    _, own, _ = await stack.admin_call("POST", KEYS, json={"name": "Metered partner", "scopes": ["tasks:read"],
                                                          "limits": lim(("second", 10), ("month", 100_000))})
    _, plain, _ = await stack.admin_call("POST", KEYS, json={"name": "Internal script", "scopes": ["tasks:read"]})
    now = int(stack.clock() * 1000)
    month_start, month_end = window_bounds("month", now)
    await stack.store.redis.set(stack.store.limits.budget_key(own["id"], "month", month_start), 25_000)
    await stack.store.redis.set(stack.store.limits.budget_key(own["id"], "second", window_bounds("second", now)[0]), 10)
    async with launch(stack.admin) as browser:
        page = browser.page
        await sign_in(browser, stack)
        detail = await open_detail(page, "Metered partner")
        await expect(detail.locator("#detail-fields")).to_contain_text("10 per second, 100,000 per month")
        usage = detail.locator("#limit-usage li")
        await expect(usage).to_have_count(2)
        month = detail.locator("#limit-usage li[data-window='month']")
        await expect(month).to_contain_text("100,000 per month (quota)")
        await expect(month).to_contain_text("25,000 used (25%)")
        bar = month.get_by_role("progressbar", name="100,000 per month (quota): 25,000 used")
        assert (await bar.evaluate("(b) => [b.max, b.value]")) == [100_000, 25_000]
        reset = month.locator("time")
        iso = await reset.get_attribute("datetime")
        assert iso is not None and abs(_ms(iso) - month_end) < 1000
        second = detail.locator("#limit-usage li[data-window='second']")
        await expect(second).to_have_class(re.compile("full"))  # all of this second's budget is out
        await expect(second).to_contain_text("Resets every second")
        await expect(detail.locator("#limits-converge")).to_be_visible()
        await browser.shot("detail-limits", detail)
        await page.set_viewport_size({"width": 320, "height": 640})
        await no_sideways_scroll(page, 320)
        await browser.shot("detail-limits-320px")
        await page.set_viewport_size({"width": 1280, "height": 900})
        await detail.get_by_role("button", name="Close").click()

        detail = await open_detail(page, "Internal script")
        await expect(detail.locator("#detail-fields")).to_contain_text("Default: 600 per minute, 1,000,000 per month")
        await expect(detail.locator("#limits-summary")).to_have_text("Default: 600 per minute, 1,000,000 per month.")
        await expect(detail.locator("#limit-usage li")).to_have_count(2)
        await expect(detail.locator("#limit-usage li[data-window='month']")).to_contain_text("0 used (0%)")
        assert plain["limits"] is None


async def test_limits_are_changed_and_cleared_through_edit(stack, browser):
    page = browser.page
    _, key, _ = await stack.admin_call("POST", KEYS, json={"name": "Metered partner", "scopes": ["tasks:read"],
                                                          "limits": lim(("minute", 600), ("month", 100_000))})
    await sign_in(browser, stack)
    detail = await open_detail(page, "Metered partner")
    await detail.get_by_role("button", name="Edit").click()
    form = page.get_by_role("dialog", name="Edit “Metered partner”")
    rows = form.locator("li.limit-row")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0).get_by_label("Requests")).to_have_value("600")
    await expect(rows.nth(1).get_by_label("Window")).to_have_value("month")
    await rows.nth(0).get_by_label("Requests").fill("60")
    await rows.nth(1).get_by_role("button", name="Remove the per month limit").click()
    await page.set_viewport_size({"width": 320, "height": 640})
    await no_sideways_scroll(page, 320)
    await rows.nth(0).scroll_into_view_if_needed()
    await browser.shot("edit-limits-320px")
    await page.set_viewport_size({"width": 1280, "height": 900})
    await form.get_by_role("button", name="Save").click()
    await expect(form).to_be_hidden()
    await expect(detail.locator("#detail-notice")).to_have_text("Saved. Limits changed.")
    await expect(detail.locator("#detail-fields")).to_contain_text("60 per minute")
    await expect(detail.locator("#limit-usage li")).to_have_count(1)  # fetched again after the edit
    _, one, _ = await stack.admin_call("GET", f"{KEYS}/{key['id']}")
    assert one["limits"] == lim(("minute", 60))
    await expect(detail.locator("#key-activity li").first).to_contain_text(
        "Limits: 600 per minute, 100,000 per month → 60 per minute")
    # Removing every row clears them: the default (none configured here) applies.
    await detail.get_by_role("button", name="Edit").click()
    await form.locator("li.limit-row").get_by_role("button", name=re.compile("^Remove")).click()
    await expect(form.get_by_role("button", name="+ Add limit")).to_be_focused()
    await form.get_by_role("button", name="Save").click()
    await expect(detail.locator("#detail-fields")).to_contain_text("None: this key's requests are not limited")
    _, one, _ = await stack.admin_call("GET", f"{KEYS}/{key['id']}")
    assert one["limits"] is None
    await expect(row(browser, "Metered partner")).to_be_visible()


def _ms(iso: str) -> int:
    import datetime as dt
    return int(dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)
