"""The list that tells you what to do: flags, copyable ids, status filter, search and sort (Chromium)."""

from __future__ import annotations

from playwright.async_api import expect

from gateway.tasks import flush_usage
from tests.browser.conftest import row, sign_in

DAY = 86400


async def names(page) -> list[str]:
    return [t.strip() for t in await page.locator("#keys-body td.name .key-title").all_inner_texts()]


async def test_flags_filter_search_sort_and_copy_id(stack, browser):
    page = browser.page
    # Day 0: "Idle" is used once; day 5: "Soon" expires in 30 days; day 25: "Fresh" and "Gone".
    idle = await stack.create_key(name="Idle integration", expires_in="1y")
    assert (await stack.call("GET", "/v1/tasks", idle["key"]))[0] == 200
    assert await flush_usage(stack.state.store, stack.state.usage, stack.state.metrics)
    stack.clock.advance(5 * DAY)
    soon = await stack.create_key(name="Soon expiring", expires_in="30d")
    stack.clock.advance(20 * DAY)
    fresh = await stack.create_key(name="alpha fresh")
    gone = await stack.create_key(name="Gone")
    await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{gone['id']}/revoke")
    stack.clock.advance(5 * DAY + 60)  # day 30: Soon expires in 5 days, Idle unused for 30 days

    await sign_in(browser, stack)
    await expect(row(browser, "Soon expiring").locator(".flag.expiring")).to_have_text("Expires in 5 days")
    await expect(row(browser, "Idle integration").locator(".flag.idle")).to_have_text("Not used for 30 days")
    await expect(row(browser, "Idle integration").locator(".request-count")).to_have_text("1 request")
    await expect(row(browser, "alpha fresh").locator(".flag")).to_have_count(0)
    await expect(row(browser, "Gone")).to_have_count(0)  # revoked keys are filtered out by default
    # All keys are loaded (one page): the page says the filter covers all of them.
    await expect(page.locator("#list-scope")).to_contain_text("apply to all")
    await expect(page.get_by_role("button", name="Load all keys")).to_be_hidden()
    await browser.shot("list-flags")

    # Default order: created, newest first (the API's order), said by aria-sort.
    created = page.locator("#keys-table th[data-sort=created]")
    await expect(created).to_have_attribute("aria-sort", "descending")
    assert await names(page) == ["alpha fresh", "Soon expiring", "Idle integration"]
    # Sort by name with the keyboard: focus the header button, Enter; again for descending.
    await page.get_by_role("button", name="Name", exact=True).focus()
    await page.keyboard.press("Enter")
    name_th = page.locator("#keys-table th[data-sort=name]")
    await expect(name_th).to_have_attribute("aria-sort", "ascending")
    await expect(created).to_have_attribute("aria-sort", "none")
    assert await names(page) == ["alpha fresh", "Idle integration", "Soon expiring"]
    await expect(page.get_by_role("button", name="Name", exact=True)).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(name_th).to_have_attribute("aria-sort", "descending")
    assert await names(page) == ["Soon expiring", "Idle integration", "alpha fresh"]
    # Expiry, soonest first; a key that never expires last.
    await page.get_by_role("button", name="Expires", exact=True).click()
    await expect(page.locator("#keys-table th[data-sort=expires]")).to_have_attribute("aria-sort", "ascending")
    assert await names(page) == ["Soon expiring", "Idle integration", "alpha fresh"]
    # Last used, most recent first; never used after used.
    await page.get_by_role("button", name="Last used", exact=True).click()
    assert (await names(page))[0] == "Idle integration"

    # Search by name, then by prefix.
    await page.get_by_label("Search keys").fill("FRESH")
    assert await names(page) == ["alpha fresh"]
    await expect(page.locator("#list-count")).to_have_text("1 of 3 keys loaded match")
    await page.get_by_label("Search keys").fill(soon["prefix"])
    assert await names(page) == ["Soon expiring"]
    await page.get_by_label("Search keys").fill("no such key")
    await expect(page.locator("#keys-table")).to_be_hidden()
    await expect(page.locator("#list-count")).to_contain_text("No loaded key matches")
    await page.get_by_label("Search keys").fill("")

    # Status filter: revoked asks the API for revoked keys; expired shows none yet.
    await page.get_by_label("Status").select_option("revoked")
    await expect(row(browser, "Gone").locator(".badge")).to_have_text("Revoked")
    assert await names(page) == ["Gone"]
    await page.get_by_label("Status").select_option("expired")
    await expect(page.locator("#keys-body tr")).to_have_count(0)
    await page.get_by_label("Status").select_option("active")
    await expect(page.locator("#keys-body tr")).to_have_count(3)

    # Copy the id: the clipboard holds it, the button and a live region confirm.
    button = row(browser, "alpha fresh").get_by_role("button", name="Copy the ID of alpha fresh")
    await button.click()
    await expect(button).to_have_text("Copied")
    await expect(page.locator("#copy-announce")).to_have_text(f"Key ID {fresh['id']} copied to the clipboard.")
    assert await page.evaluate("navigator.clipboard.readText()") == fresh["id"]


async def test_filter_is_truthful_about_unloaded_pages(stack, browser):
    for i in range(30):
        stack.clock.advance(1)
        await stack.store.create(org_id="acme", name=f"key {i:02d}", scopes=["tasks:read"], expires_at=None,
                                 actor="test", now_ms=int(stack.clock() * 1000))
    page = browser.page
    await sign_in(browser, stack)
    await expect(page.locator("#keys-body tr")).to_have_count(25)
    note = page.locator("#list-scope")
    await expect(note).to_contain_text("apply to the 25 keys loaded so far; more keys exist")
    await expect(page.locator("#keys-body td.name", has_text="key 00")).to_have_count(0)  # not loaded yet
    await page.get_by_role("button", name="Load all keys").click()
    await expect(note).to_contain_text("apply to all")
    await expect(page.get_by_role("button", name="Load all keys")).to_be_hidden()
    await page.get_by_label("Search keys").fill("key 00")
    await expect(page.locator("#keys-body tr")).to_have_count(1)
    await expect(page.locator("#list-count")).to_have_text("1 of 30 keys loaded match")
