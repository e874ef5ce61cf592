"""A key's detail view, its usage chart, the roll dialog and the org's Activity view, in Chromium."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from tests.browser.conftest import row, sign_in

# The chart as drawn: per bar its data-* numbers and the drawn height of each class's rectangle.
DRAWN = """() => [...document.querySelectorAll('#usage-chart g.bar')].map((g) => ({
  start: g.dataset.start, total: Number(g.dataset.total),
  counts: Object.fromEntries(['2xx', '3xx', '4xx', '5xx', 'refused'].map((c) => [c, Number(g.getAttribute('data-' + c))])),
  heights: Object.fromEntries([...g.querySelectorAll('rect.seg')].map((r) => [r.dataset.class, r.getBoundingClientRect().height])),
}))"""
TABLE = """() => [...document.querySelectorAll('#usage-table tbody tr')].map((tr) =>
  [...tr.querySelectorAll('td')].map((td) => Number(td.textContent)))"""


async def no_sideways_scroll(page, width: int) -> None:
    assert await page.evaluate("document.documentElement.scrollWidth") <= width
    for dialog in await page.locator("dialog[open]").all():
        box = await dialog.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width
        assert await dialog.evaluate("(d) => d.scrollWidth <= d.clientWidth"), "the dialog scrolls sideways"


async def test_chart_draws_the_numbers_it_is_given_and_reads_by_keyboard(stack, browser):
    page = browser.page
    await sign_in(browser, stack)
    buckets = [
        {"start": "2026-12-01T10:00:00Z", "2xx": 6, "3xx": 0, "4xx": 2, "5xx": 0, "refused": 4},
        {"start": "2026-12-01T11:00:00Z", "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0, "refused": 0},
        {"start": "2026-12-01T12:00:00Z", "2xx": 3, "3xx": 1, "4xx": 0, "5xx": 2, "refused": 0},
    ]
    totals = {"2xx": 9, "3xx": 1, "4xx": 2, "5xx": 2, "refused": 4}
    # The page's own module draws into the detail view's chart and table (open, so that it has a size).
    await page.evaluate("""async ([buckets, totals]) => {
        const { drawUsage } = await import('/static/chart.js');
        document.getElementById('detail-dialog').showModal();
        drawUsage(document.getElementById('usage-chart'), document.getElementById('usage-table'),
                  { granularity: 'hour', buckets, totals });
    }""", [buckets, totals])
    drawn = await page.evaluate(DRAWN)
    assert [b["counts"] for b in drawn] == [{k: b[k] for k in totals} for b in buckets]
    assert [b["total"] for b in drawn] == [12, 0, 6]
    # Heights are proportional to the counts: the tallest bar's 6 2xx are twice its 3 of the last bar,
    # its 4 refused are four times the last bar's 1 3xx, and the empty hour draws nothing.
    first, empty, last = drawn
    assert empty["heights"] == {}
    unit = first["heights"]["2xx"] / 6
    for bar in (first, last):
        for cls, height in bar["heights"].items():
            assert height == pytest.approx(bar["counts"][cls] * unit, rel=0.02), (bar, cls)
    assert await page.evaluate(TABLE) == [[6, 0, 2, 0, 4, 12], [0, 0, 0, 0, 0, 0], [3, 1, 0, 2, 0, 6]]
    foot = await page.locator("#usage-table tfoot td").all_text_contents()  # behind a closed <details>
    assert foot == ["9", "1", "2", "2", "4", "18"]

    # One tab stop; the arrow keys move between bars and the tooltip follows.
    await page.locator("#usage-chart g.bar").last.focus()
    tip = page.locator("#chart-tip")
    await expect(tip).to_have_text("Dec 1, 12:00 UTC: 6 requests (3 2xx, 1 3xx, 2 5xx)")
    await page.keyboard.press("ArrowLeft")
    await expect(tip).to_have_text("Dec 1, 11:00 UTC: 0 requests")
    await page.keyboard.press("Home")
    await expect(tip).to_have_text("Dec 1, 10:00 UTC: 12 requests (6 2xx, 2 4xx, 4 Refused by the gateway)")
    assert await page.locator("#usage-chart g.bar[tabindex='0']").count() == 1
    await page.locator("#usage-chart g.bar").nth(2).hover()
    await expect(tip).to_contain_text("12:00 UTC: 6 requests")


async def test_detail_view_roll_dialog_and_activity_view(stack, browser):
    page = browser.page
    key = await stack.create_key(name="Zapier production", scopes=["tasks:read", "tasks:write"], expires_in="90d")
    stack.clock.advance(60)  # events a minute apart: newest first is one order
    old = await stack.create_key(name="Old script")
    assert (await stack.call("GET", "/v1/tasks", key["key"]))[0] == 200
    stack.clock.advance(60)
    await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{old['id']}/revoke")
    await sign_in(browser, stack)

    await row(browser, "Zapier production").get_by_role("button", name="Zapier production: open details").click()
    detail = page.get_by_role("dialog", name="Zapier production")
    await expect(detail).to_be_visible()
    fields = detail.locator("#detail-fields")
    await expect(fields).to_contain_text(key["id"])
    await expect(fields).to_contain_text("View tasks (tasks:read)")
    await expect(fields).to_contain_text("by Operator")
    await expect(detail.locator("#detail-secrets li")).to_have_count(1)
    await expect(detail.locator("#detail-secrets li").first).to_contain_text(key["prefix"] + "… current")
    await expect(detail.get_by_role("button", name="Roll secret")).to_be_visible()
    await expect(detail.get_by_role("button", name="Edit")).to_be_visible()
    # Its own activity (GET audit-events?key_id=): its create only, not the other key's events.
    await expect(detail.locator("#key-activity li")).to_have_count(1)
    await expect(detail.locator("#key-activity li")).to_have_attribute("data-action", "api_key.created")
    await expect(detail.locator("#key-activity li .actor")).to_have_text("Operator")

    # The roll dialog: 24 hours by default, and it says what happens to the old secret.
    await detail.get_by_role("button", name="Roll secret").click()
    roll = page.get_by_role("dialog", name="Roll the secret?")
    await expect(roll.get_by_label("24 hours")).to_be_checked()
    explain = roll.locator("#roll-explain")
    await expect(explain).to_contain_text(f"The old secret {key['prefix']}… keeps working for 24 hours")
    await roll.get_by_label("No time: refuse it now").check()
    await expect(explain).to_contain_text("refused by every gateway as soon as the roll is done")
    await roll.get_by_label("24 hours").check()
    await browser.shot("roll-dialog")
    await page.set_viewport_size({"width": 375, "height": 812})
    await no_sideways_scroll(page, 375)
    await browser.shot("roll-dialog-375px")
    await roll.get_by_role("button", name="Cancel").click()
    await expect(roll).to_be_hidden()
    await no_sideways_scroll(page, 375)
    await browser.shot("detail-375px")
    await page.set_viewport_size({"width": 1280, "height": 900})
    await browser.shot("detail")
    await detail.get_by_role("button", name="Close").click()
    await expect(detail).to_be_hidden()
    await expect(row(browser, "Zapier production").locator(".key-title")).to_be_focused()

    # The Activity view: the org's creates and the revoke, newest first, with who did them.
    await page.get_by_role("tab", name="Activity").click()
    rows = page.locator("#activity-body tr")
    await expect(rows).to_have_count(3)
    assert [await r.get_attribute("data-action") for r in await rows.all()] == [
        "api_key.revoked", "api_key.created", "api_key.created"]
    await expect(rows.first.locator(".action")).to_have_text("Revoked")
    await expect(rows.first).to_contain_text(old["id"])
    await expect(rows.first.locator(".actor")).to_have_text("Operator")
    await expect(page.get_by_role("tab", name="Activity")).to_have_attribute("aria-selected", "true")
    await browser.shot("activity")
    await page.set_viewport_size({"width": 375, "height": 812})
    await no_sideways_scroll(page, 375)
    await browser.shot("activity-375px")
    await page.keyboard.press("ArrowLeft")  # the tabs follow the arrow keys
    await expect(page.get_by_role("tab", name="Keys")).to_have_attribute("aria-selected", "true")
