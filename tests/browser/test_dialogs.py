"""The dialogs on small and short screens, and the reveal dialog's refusal to drop the secret unasked."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect

from gateway.keys import KEY_REGEX
from tests.browser.conftest import create_through_dialog, sign_in

# Every element of the dialog whose box leaves the dialog's box, and every box that scrolls sideways.
OVERFLOW = """(dialog) => {
  const box = dialog.getBoundingClientRect();
  const out = [];
  if (dialog.scrollWidth > dialog.clientWidth) out.push(`dialog scrolls sideways: ${dialog.scrollWidth} > ${dialog.clientWidth}`);
  for (const el of dialog.querySelectorAll("*")) {
    const r = el.getBoundingClientRect();
    if ((r.width === 0 && r.height === 0) || getComputedStyle(el).clipPath !== "none") continue;  // not drawn
    const name = el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + (el.className ? "." + el.className : "");
    if (r.left < box.left - 0.5 || r.right > box.right + 0.5) out.push(`${name} spans ${r.left}-${r.right} outside ${box.left}-${box.right}`);
    if (el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX !== "visible") out.push(`${name} hides ${el.scrollWidth - el.clientWidth}px`);
  }
  return out;
}"""


async def in_view(page: Page, locator) -> None:
    """The element is inside the viewport and nothing covers its centre."""
    await expect(locator).to_be_visible()
    size = page.viewport_size
    box = await locator.bounding_box()
    assert box["y"] >= 0 and box["y"] + box["height"] <= size["height"], (box, size)
    assert box["x"] >= 0 and box["x"] + box["width"] <= size["width"], (box, size)
    hit = await locator.evaluate("""(el) => {
      const r = el.getBoundingClientRect();
      return el.contains(document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2));
    }""")
    assert hit, "something covers it"


@pytest.mark.parametrize("width", [375, 320])
async def test_create_and_reveal_dialogs_fit_narrow_screens(stack, browser, width):
    page = browser.page
    await page.set_viewport_size({"width": width, "height": 700})
    await sign_in(browser, stack)
    await page.get_by_role("button", name="+ Create API Key").first.click()
    dialog = page.get_by_role("dialog", name="Create API Key")
    await expect(dialog.locator(".perm-group").first).to_be_visible()
    await dialog.get_by_label("Name", exact=True).fill("Zapier production")
    await dialog.get_by_label("View reservations", exact=True).check()
    box = await dialog.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= width
    assert await dialog.evaluate(OVERFLOW) == []
    await browser.shot(f"create-dialog-{width}px")

    await dialog.get_by_role("button", name="Create", exact=True).click()
    reveal = page.get_by_role("dialog", name=re.compile("Your new API key"))
    await expect(reveal).to_be_visible()
    field = reveal.get_by_label("API key")
    key = await field.input_value()
    assert KEY_REGEX.fullmatch(key) and len(key) == 40
    assert await reveal.evaluate(OVERFLOW) == []
    # All 40 characters are on screen: the box grew to the wrapped text and hides none of it.
    sizes = await field.evaluate("(el) => [el.scrollWidth, el.clientWidth, el.scrollHeight, el.clientHeight]")
    assert sizes[0] <= sizes[1] and sizes[2] <= sizes[3], sizes
    await in_view(page, field)
    assert await page.evaluate("document.documentElement.scrollWidth") <= width
    await browser.shot(f"reveal-dialog-{width}px")


async def test_create_buttons_stay_in_view_after_errors_at_1280x800(stack, browser, redis_server):
    page = browser.page
    await page.set_viewport_size({"width": 1280, "height": 800})
    await sign_in(browser, stack)
    await page.get_by_role("button", name="+ Create API Key").first.click()
    dialog = page.get_by_role("dialog", name="Create API Key")
    await expect(dialog.locator(".perm-group").first).to_be_visible()
    create = dialog.get_by_role("button", name="Create", exact=True)
    cancel = dialog.get_by_role("button", name="Cancel")

    await create.click()  # nothing filled in: both fields complain
    await expect(dialog.locator("#perm-error")).to_have_text("Select at least one permission.")
    await expect(dialog.get_by_label("Name", exact=True)).to_be_focused()
    await in_view(page, create)
    await in_view(page, cancel)
    await browser.shot("create-dialog-1280x800-invalid")

    await dialog.get_by_label("Name", exact=True).fill("During the outage")
    await dialog.get_by_label("View tasks", exact=True).check()
    body = dialog.locator(".dialog-body")
    await body.evaluate("(el) => { el.scrollTop = el.scrollHeight; }")  # scrolled down to the permissions
    assert await body.evaluate("(el) => el.scrollTop") > 0  # the body does scroll at this size
    # A real store fault: Redis starts asking for a password and drops the admin API's connections.
    redis_server.client.config_set("requirepass", "now-locked")
    redis_server.client.client_kill_filter(_type="normal", skipme=True)
    try:
        await create.click()
        await expect(dialog.locator("#create-error")).to_contain_text("store_unavailable")
    finally:
        redis_server.client.execute_command("AUTH", "now-locked")
        redis_server.client.config_set("requirepass", "")
    await in_view(page, dialog.locator("#create-error"))
    await in_view(page, create)
    await in_view(page, cancel)
    await browser.shot("create-dialog-1280x800-503")

    await create.click()  # Redis is back: the same dialog creates the key
    await expect(page.get_by_role("dialog", name=re.compile("Your new API key"))).to_be_visible()


async def test_escape_on_the_reveal_dialog_asks_and_keeps_the_key(stack, browser):
    page = browser.page
    await sign_in(browser, stack)
    key = await create_through_dialog(browser, "Zapier production", [("tasks", "View tasks")])
    reveal = page.get_by_role("dialog", name=re.compile("Your new API key"))
    field = reveal.get_by_label("API key")
    await expect(reveal.get_by_role("alert")).to_have_count(0)

    for _ in range(3):  # however often: Escape never discards the key
        await page.keyboard.press("Escape")
        await expect(reveal.get_by_role("alert")).to_contain_text("You won't see this key again")
        await expect(reveal).to_be_visible()
        await expect(field).to_have_value(key)
    await browser.shot("reveal-dialog-escape")
    await field.click()  # a click (user activation) in between changes nothing either
    await page.keyboard.press("Escape")
    await expect(reveal).to_be_visible()
    await expect(field).to_have_value(key)
    # A close the page did not ask for (a browser may force one after repeated close requests)
    # brings the dialog back with the key still in it.
    await page.evaluate("document.getElementById('reveal-dialog').close()")
    await expect(reveal).to_be_visible()
    await expect(field).to_have_value(key)
    assert await page.evaluate("document.getElementById('reveal-dialog').matches(':modal')")

    await reveal.get_by_role("button", name="I have copied it").click()  # the explicit confirmation closes it
    await expect(reveal).to_be_hidden()
    await expect(page.locator("#reveal-key")).to_have_value("")
    assert key not in await page.content()

    # The next key's dialog starts without the warning.
    await create_through_dialog(browser, "Second key", [("guests", "View guests")])
    await expect(reveal.get_by_role("alert")).to_have_count(0)
