"""Roll, edit and the usage chart end to end: the page in Chromium, the real admin API, the real gateway.

Requests go through the stack's gateway (its usage flusher runs every 50 ms here, so the history
reaches Redis without a long wait) and are read back from what the page drew.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from playwright.async_api import expect

from tests.browser.conftest import create_through_dialog, row, sign_in, sync_clock
from tests.browser.test_key_detail import DRAWN, TABLE, no_sideways_scroll
from tests.support import eventually

HOUR = 3600
SECRET = re.compile(r"sop_[0-9A-Za-z]{36}")


@pytest.fixture
async def stack(make_stack):
    # The gateway flushes usage (last-used and the hourly history) every 50 ms, not once an hour.
    return await make_stack(flush_interval=0.05)


async def open_detail(b, name: str):
    await row(b, name).get_by_role("button", name=f"{name}: open details").click()
    detail = b.page.get_by_role("dialog", name=name, exact=True)
    await expect(detail).to_be_visible()
    return detail


def upstream_key_id(body) -> str:
    return next(v for k, v in body["headers"] if k.lower() == "x-api-key-id")


async def roll_through_page(b, detail, grace_label: str):
    """Roll from the detail view; return the reveal dialog and the new secret it shows."""
    await detail.get_by_role("button", name="Roll secret").click()
    roll = b.page.get_by_role("dialog", name="Roll the secret?")
    await roll.get_by_label(grace_label).check()
    await roll.get_by_role("button", name="Roll secret").click()
    reveal = b.page.get_by_role("dialog", name=re.compile("New secret for"))
    await expect(reveal).to_be_visible()
    await expect(roll).to_be_hidden()
    return reveal, await reveal.get_by_label("API key").input_value()


async def test_roll_with_24h_grace_both_secrets_work_and_the_page_says_until_when(stack, browser):
    page = browser.page
    key = await stack.create_key(name="Zapier production", scopes=["tasks:read"])
    status, body, _ = await stack.call("GET", "/v1/tasks", key["key"])  # cached by the gateway now
    assert status == 200 and upstream_key_id(body) == key["id"]
    await sign_in(browser, stack)
    detail = await open_detail(browser, "Zapier production")

    reveal, new = await roll_through_page(browser, detail, "24 hours")
    assert SECRET.fullmatch(new) and new != key["key"]
    await expect(reveal.get_by_role("heading")).to_have_text("New secret for “Zapier production”")
    # Same reveal as create's: Escape does not drop the secret, it asks for the confirmation.
    await page.keyboard.press("Escape")
    await expect(reveal.get_by_role("alert")).to_contain_text("You won't see this key again")
    await expect(reveal).to_be_visible()
    await browser.shot("roll-reveal")

    # Both secrets work through the gateway, as the same key at the upstream.
    for secret in (key["key"], new):
        status, body, _ = await stack.call("GET", "/v1/tasks", secret)
        assert status == 200, body
        assert upstream_key_id(body) == key["id"]

    await reveal.get_by_role("button", name="I have copied it").click()
    await expect(reveal).to_be_hidden()
    await expect(page.locator("#reveal-key")).to_have_value("")  # the secret left the page (on the close event)
    await expect(detail.get_by_role("button", name="Roll secret")).to_be_focused()
    await expect(detail.locator("#detail-notice")).to_have_text("Rolled. The previous secret expires in 24 h.")
    secrets = detail.locator("#detail-secrets li")
    await expect(secrets).to_have_count(2)
    await expect(secrets.nth(0)).to_contain_text(new[:10] + "… current")
    await expect(secrets.nth(1)).to_contain_text(key["prefix"] + "… previous")
    await expect(secrets.nth(1)).to_contain_text("previous secret expires in 24 h")
    await expect(detail.locator("#detail-flags")).to_have_text("Previous secret expires in 24 h")
    await expect(detail.locator("#detail-fields")).to_contain_text("Rolled")
    await detail.get_by_role("button", name="Close").click()
    listed = row(browser, "Zapier production")
    await expect(listed.locator(".flag.rolled")).to_have_text("Previous secret expires in 24 h")
    await expect(listed.locator(".prefix")).to_have_text(new[:10] + "…")

    # An hour later (the stack's clock and the page's), the list counts down.
    stack.clock.advance(HOUR)
    await sync_clock(browser, stack)
    await page.reload()
    await expect(row(browser, "Zapier production").locator(".flag.rolled")).to_have_text("Previous secret expires in 23 h")


async def test_roll_now_refuses_the_old_secret_once_the_new_one_is_shown(stack, browser):
    page = browser.page
    key = await stack.create_key(name="Leaked script", scopes=["tasks:read"])
    assert (await stack.call("GET", "/v1/tasks", key["key"]))[0] == 200  # in the gateway's cache
    await sign_in(browser, stack)
    detail = await open_detail(browser, "Leaked script")
    reveal, new = await roll_through_page(browser, detail, "No time: refuse it now")
    # Right after the dialog shows the new secret, the old one is refused by the gateway.
    status, body, _ = await stack.call("GET", "/v1/tasks", key["key"])
    assert status == 401 and body["error"]["code"] == "rolled_api_key", body
    status, body, _ = await stack.call("GET", "/v1/tasks", new)
    assert status == 200 and upstream_key_id(body) == key["id"]
    await reveal.get_by_role("button", name="I have copied it").click()
    await expect(detail.locator("#detail-notice")).to_have_text("Rolled. The previous secret is refused from now on.")
    await expect(detail.locator("#detail-secrets li")).to_have_count(1)
    await expect(detail.locator("#detail-flags .flag")).to_have_count(0)
    await detail.get_by_role("button", name="Close").click()
    await expect(row(browser, "Leaked script").locator(".flag")).to_have_count(0)
    await expect(page.locator("#keys-body tr")).to_have_count(1)


async def test_edit_through_the_page_with_if_match_and_a_real_412(stack, browser):
    page = browser.page
    key = await stack.create_key(name="Reports", scopes=["tasks:read"], expires_in="1y")
    await sign_in(browser, stack)
    detail = await open_detail(browser, "Reports")
    await detail.get_by_role("button", name="Edit").click()
    form = page.locator("#create-dialog")  # its title names the key as loaded: it changes on a reload
    await expect(form.get_by_role("heading")).to_have_text("Edit “Reports”")
    await expect(form.get_by_label("Name", exact=True)).to_have_value("Reports")
    await expect(form.get_by_label("View tasks", exact=True)).to_be_checked()

    async def make_changes():
        await form.get_by_label("Name", exact=True).fill("Nightly reports")
        await form.get_by_label("View tasks", exact=True).uncheck()
        await form.get_by_label("Manage tasks", exact=True).check()
        await form.get_by_label("Expiry").select_option(label="30 days")

    await make_changes()
    # Someone else edits the key through the API between the page's load and its save.
    status, body, _ = await stack.admin_call("PATCH", f"/v1/orgs/acme/api-keys/{key['id']}",
                                             json={"name": "Renamed elsewhere"})
    assert status == 200 and body["version"] == key["version"] + 1, body
    await form.get_by_role("button", name="Save").click()
    await expect(form.locator("#create-error")).to_contain_text("Someone else changed this key")
    # The form and the detail view behind it show the key as it is now.
    await expect(form.get_by_label("Name", exact=True)).to_have_value("Renamed elsewhere")
    await expect(form.get_by_role("heading")).to_have_text("Edit “Renamed elsewhere”")
    await expect(form.get_by_label("View tasks", exact=True)).to_be_checked()
    await expect(page.locator("#detail-title")).to_have_text("Renamed elsewhere")
    status, body, _ = await stack.admin_call("GET", f"/v1/orgs/acme/api-keys/{key['id']}")
    assert body["name"] == "Renamed elsewhere" and body["scopes"] == ["tasks:read"]  # the 412 changed nothing

    await make_changes()
    await form.get_by_role("button", name="Save").click()
    await expect(form).to_be_hidden()
    detail = page.get_by_role("dialog", name="Nightly reports", exact=True)
    await expect(detail.locator("#detail-notice")).to_have_text("Saved. Name, Permissions, Expiry changed.")
    await expect(detail.locator("#detail-fields")).to_contain_text("Manage tasks (tasks:write)")
    status, body, _ = await stack.admin_call("GET", f"/v1/orgs/acme/api-keys/{key['id']}")
    assert (body["name"], body["scopes"], body["version"]) == ("Nightly reports", ["tasks:write"], key["version"] + 2)
    expires = body["expires_at"]
    await expect(detail.locator("#detail-fields time").filter(has_text="in 30 days")).to_have_attribute("datetime", expires)
    # The removed permission is refused by the gateway by the time the page shows the save.
    status, body, _ = await stack.call("GET", "/v1/tasks", key["key"])
    assert status == 403 and body["error"]["code"] == "insufficient_scope"
    await detail.get_by_role("button", name="Close").click()
    await expect(row(browser, "Nightly reports").locator(".scopes")).to_have_text("Manage tasks")


# What the chart test sends, per hour: (method, path, status the client gets, outcome class).
FIRST_HOUR = [("GET", "/v1/tasks", 200, "2xx")] * 2 + [("GET", "/v1/tasks?status=404", 404, "4xx")]
SECOND_HOUR = ([("GET", "/v1/tasks", 200, "2xx")] * 3 + [("GET", "/v1/tasks?status=404", 404, "4xx")]
               + [("POST", "/v1/tasks", 403, "refused")] * 3 + [("GET", "/v1/tasks?status=500", 500, "5xx")]
               + [("GET", "/v1/tasks?status=302", 302, "3xx")])
CLASSES = ["2xx", "3xx", "4xx", "5xx", "refused"]


def counted(requests) -> dict[str, int]:
    return {c: sum(1 for r in requests if r[3] == c) for c in CLASSES}


async def test_chart_draws_the_requests_made_through_the_gateway(stack, browser):
    page = browser.page
    key = await stack.create_key(name="Billing sync", scopes=["tasks:read"])
    first_hour = stack.clock() // HOUR * HOUR

    async def send(requests):
        for method, path, expected, _ in requests:
            status, body, _ = await stack.call(method, path, key["key"], allow_redirects=False)
            assert status == expected, (method, path, body)

    await send(FIRST_HOUR)
    stack.clock.advance(HOUR)
    await send(SECOND_HOUR)
    want = {"first": counted(FIRST_HOUR), "second": counted(SECOND_HOUR)}
    totals = {c: want["first"][c] + want["second"][c] for c in CLASSES}
    assert totals == {"2xx": 5, "3xx": 1, "4xx": 2, "5xx": 1, "refused": 3}

    async def flushed():  # the gateway's flusher wrote the history (every 50 ms here)
        status, body, _ = await stack.admin_call("GET", f"/v1/orgs/acme/api-keys/{key['id']}/usage")
        return status == 200 and body["totals"] == totals

    await eventually(flushed)
    await sign_in(browser, stack)
    detail = await open_detail(browser, "Billing sync")
    await expect(detail.locator("#usage-summary")).to_have_text("12 requests in the last 24 hours, per hour (UTC).")
    await expect(detail.locator("#usage-chart g.bar")).not_to_have_count(0)

    drawn = await page.evaluate(DRAWN)
    assert 24 <= len(drawn) <= 25  # the last 24 hours, hour by hour
    used = [b for b in drawn if b["total"]]
    assert [b["start"] for b in used] == [hour_iso(first_hour), hour_iso(first_hour + HOUR)]
    first, second = used
    assert first["counts"] == want["first"] and first["total"] == 3
    assert second["counts"] == want["second"] and second["total"] == 9
    # Heights relative to each other: one request is the same height in every bar and class.
    unit = second["heights"]["2xx"] / 3
    for bar in used:
        assert set(bar["heights"]) == {c for c in CLASSES if bar["counts"][c]}
        for cls, height in bar["heights"].items():
            assert height == pytest.approx(bar["counts"][cls] * unit, rel=0.02), (bar, cls)
    assert sum(b["heights"].get("2xx", 0) for b in used) == pytest.approx(5 * unit, rel=0.02)
    assert all(b["heights"] == {} for b in drawn if not b["total"])

    table = await page.evaluate(TABLE)
    assert len(table) == len(drawn)
    rows = [r for r in table if r[-1]]
    assert rows == [[want["first"][c] for c in CLASSES] + [3], [want["second"][c] for c in CLASSES] + [9]]
    foot = await page.locator("#usage-table tfoot td").all_text_contents()
    assert foot == [str(totals[c]) for c in CLASSES] + ["12"]
    await expect(detail.locator("#detail-fields .request-count")).to_have_text("12 requests")

    # The busiest bar's tooltip, in the screenshots too.
    await detail.locator("#usage-chart g.bar").last.hover()
    await expect(page.locator("#chart-tip")).to_have_text(
        f"{tip_hour(first_hour + HOUR)}: 9 requests (3 2xx, 1 3xx, 1 4xx, 1 5xx, 3 Refused by the gateway)")
    await browser.shot("detail-chart")
    await browser.shot("chart", detail.locator("#usage-chart"))
    await page.set_viewport_size({"width": 375, "height": 812})
    await no_sideways_scroll(page, 375)
    await detail.locator("#usage-chart").scroll_into_view_if_needed()
    await detail.locator("#usage-chart g.bar").last.hover()
    # The tooltip fits the chart, as wide as its text needs (not squeezed against the right edge).
    tip, chart = await page.locator("#chart-tip").bounding_box(), await detail.locator("#usage-chart").bounding_box()
    assert chart["x"] <= tip["x"] and tip["x"] + tip["width"] <= chart["x"] + chart["width"] + 0.5
    assert tip["width"] >= min(chart["width"] * 0.9, 250), tip
    await browser.shot("detail-chart-375px")
    await browser.shot("chart-375px", detail.locator("#usage-chart"))


def tip_hour(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%b %-d, %H:00 UTC")  # "Dec 1, 23:00 UTC"


def hour_iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")  # as the chart writes it


async def test_activity_shows_create_edit_roll_revoke_with_actor_and_changes(stack, browser):
    page = browser.page
    await sign_in(browser, stack)
    secret = await create_through_dialog(browser, "Deploy bot", [("view", "View tasks")], expiry="30 days")
    await page.get_by_role("dialog", name=re.compile("Your new API key")).get_by_role("button", name="I have copied it").click()
    prefix = secret[:10]
    detail = await open_detail(browser, "Deploy bot")
    # Edit: the name and a permission more.
    await detail.get_by_role("button", name="Edit").click()
    form = page.get_by_role("dialog", name="Edit “Deploy bot”")
    await form.get_by_label("Name", exact=True).fill("Deploy bot v2")
    await form.get_by_label("Manage tasks", exact=True).check()
    await form.get_by_role("button", name="Save").click()
    await expect(form).to_be_hidden()
    detail = page.get_by_role("dialog", name="Deploy bot v2", exact=True)
    reveal, new = await roll_through_page(browser, detail, "1 hour")
    await reveal.get_by_role("button", name="I have copied it").click()
    await detail.get_by_role("button", name="Revoke").click()
    await page.get_by_role("dialog", name="Revoke API key?").get_by_role("button", name="Revoke key").click()
    await expect(detail.locator("#detail-status")).to_have_text("Revoked")

    # The key's own activity, in its detail view: newest first, who and what changed.
    items = detail.locator("#key-activity > li")
    await expect(items).to_have_count(4)
    assert [await i.get_attribute("data-action") for i in await items.all()] == [
        "api_key.revoked", "api_key.rolled", "api_key.updated", "api_key.created"]
    for item in await items.all():
        await expect(item.locator(".actor")).to_have_text("Operator")
    await expect(items.nth(2)).to_contain_text("Name: “Deploy bot” → “Deploy bot v2”")
    await expect(items.nth(2)).to_contain_text("Permissions: added tasks:write")
    await expect(items.nth(1)).to_contain_text(f"Secret: {prefix}… → {new[:10]}…")
    await expect(items.nth(1)).to_contain_text("Previous secret works until")
    await detail.get_by_role("button", name="Close").click()

    # The org's Activity view: the same four events.
    await page.get_by_role("tab", name="Activity").click()
    rows = page.locator("#activity-body tr")
    await expect(rows).to_have_count(4)
    assert [await r.get_attribute("data-action") for r in await rows.all()] == [
        "api_key.revoked", "api_key.rolled", "api_key.updated", "api_key.created"]
    assert [t.strip() for t in await rows.locator(".action").all_inner_texts()] == [
        "Revoked", "Rolled the secret", "Edited", "Created"]
    assert await rows.locator(".actor").all_inner_texts() == ["Operator"] * 4
    await expect(rows.nth(2)).to_contain_text("Name: “Deploy bot” → “Deploy bot v2”")
    await expect(rows.nth(2)).to_contain_text("Permissions: added tasks:write")
    await expect(rows.nth(1)).to_contain_text(f"Secret: {prefix}… → {new[:10]}…")
    for r in await rows.all():
        assert secret not in await r.inner_text() and new not in await r.inner_text()
    await browser.shot("activity-lifecycle")
    await page.set_viewport_size({"width": 375, "height": 812})
    await no_sideways_scroll(page, 375)
    # Narrow: the key's name and its id are one value beside the label, the id whole, under the name.
    name_box = await rows.first.locator(".key-title").bounding_box()
    id_box = await rows.first.locator("code").bounding_box()
    assert id_box["x"] == pytest.approx(name_box["x"], abs=1) and id_box["y"] > name_box["y"]
    assert id_box["height"] < 2 * name_box["height"], "the key id wraps inside itself"
    await browser.shot("activity-lifecycle-375px")
