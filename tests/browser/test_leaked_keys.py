"""A key a secret scanner reported (issue 17), in Chromium: revoked with the reason and a link to
where it was found; flagged (the org's leak_action) with a Leaked badge while it stays active."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from gateway.orgsettings import OrgSettings
from tests.browser.conftest import row, sign_in
from tests.support.secret_scanning import KeyServer, Signer, report, send

FOUND = "https://github.com/octo/repo/blob/abc123/settings.py"


@pytest.fixture
async def signer(aiohttp_server):
    server = await KeyServer().start(aiohttp_server)
    s = Signer("k1")
    server.published.append(s)
    s.url = server.url
    return s


@pytest.fixture
async def stack(make_stack, signer):  # the browser fixture's stack, taking reports signed by ``signer``
    return await make_stack(admin_settings={"secret_scanning_keys_url": signer.url})


async def test_a_leaked_key_shows_as_revoked_with_where_it_was_found(stack, browser, signer):
    page = browser.page
    leaked = await stack.create_key(name="CI deploy")
    status, body, _ = await send(stack, report(leaked["key"], url=FOUND), signer)
    assert status == 200 and body[0]["label"] == "true_positive"
    await sign_in(browser, stack)
    await page.get_by_label("Status").select_option("revoked")
    cell = row(browser, "CI deploy")
    await expect(cell.locator(".badge.revoked")).to_have_text("Revoked")
    await expect(cell.locator(".leak")).to_have_text(f"Revoked: leaked (found at {FOUND})")
    link = cell.locator(".leak a")
    await expect(link).to_have_attribute("href", FOUND)
    await expect(link).to_have_attribute("rel", "noopener noreferrer")
    await browser.shot("leaked-revoked", cell)
    await cell.get_by_role("button", name="CI deploy: open details").click()
    detail = page.get_by_role("dialog", name="CI deploy")
    await expect(detail.locator("#detail-fields")).to_contain_text(f"Revoked: leaked (found at {FOUND})")
    await expect(detail.get_by_text("Reported leaked")).to_be_visible()  # its activity event
    await expect(detail).to_contain_text("by GitHub secret scanning")


async def test_a_flagged_key_stays_active_with_a_leaked_badge_and_a_script_url_is_no_link(stack, browser, signer):
    page = browser.page
    await stack.store.orgs.put("acme", OrgSettings(leak_action="flag"))
    flagged = await stack.create_key(name="Zapier")
    assert (await send(stack, report(flagged["key"], url="javascript:alert(1)", source="gist"), signer))[0] == 200
    await sign_in(browser, stack)
    cell = row(browser, "Zapier")
    await expect(cell.locator(".badge.active")).to_have_text("Active")
    await expect(cell.locator(".badge.leaked")).to_have_text("Leaked")
    await expect(cell.locator(".leak")).to_contain_text("found at javascript:alert(1)")
    await expect(cell.locator(".leak a")).to_have_count(0)  # SECURITY: only http(s) becomes a link
    await browser.shot("leaked-flagged", cell)
    assert page.url.startswith(stack.admin)


async def test_the_leak_note_follows_the_keys_state_not_the_action_asked(stack, browser, signer):
    # A mark asking for revoke whose revoke has not happened yet (the mark is written first) is no
    # "left active" flag; a flagged key revoked later reads Revoked: leaked.
    from gateway.model import Leak
    pending = await stack.create_key(name="Pending")
    record = await stack.store.get(pending["id"])
    now = int(stack.clock() * 1000)
    await stack.store.leaks.mark([record], {record.id: Leak(FOUND, "content", now, "github", "revoke")},
                                 "secret_scanning:github")
    await stack.store.orgs.put("acme", OrgSettings(leak_action="flag"))
    later = await stack.create_key(name="Flagged then revoked")
    assert (await send(stack, report(later["key"], url=FOUND), signer))[0] == 200
    assert (await stack.admin_call("POST", f"/v1/orgs/acme/api-keys/{later['id']}/revoke"))[0] == 200
    await sign_in(browser, stack)
    cell = row(browser, "Pending")
    await expect(cell.locator(".badge.active")).to_have_text("Active")
    await expect(cell.locator(".badge.leaked")).to_have_text("Leaked: revoke pending")
    await expect(cell.locator(".badge.leaked")).to_have_attribute(
        "title", "Reported public by github; its revocation has not completed yet")
    await browser.page.get_by_label("Status").select_option("revoked")
    cell = row(browser, "Flagged then revoked")
    await expect(cell.locator(".badge.revoked")).to_have_text("Revoked")
    await expect(cell.locator(".leak")).to_have_text(f"Revoked: leaked (found at {FOUND})")
    await expect(cell.locator(".badge.leaked")).to_have_count(0)


async def test_a_settings_change_shows_in_the_activity_view(stack, browser, signer):
    page = browser.page
    await stack.create_key(name="Any")
    assert (await stack.admin_call("PATCH", "/v1/orgs/acme/settings", json={"leak_action": "flag"}))[0] == 200
    await sign_in(browser, stack)
    await page.get_by_role("tab", name="Activity").click()
    first = page.locator("#activity-body tr").first
    await expect(first).to_have_attribute("data-action", "org.settings_updated")
    await expect(first.locator(".action")).to_have_text("Changed the org's settings")
    await expect(first.locator(".key-ref")).to_have_text("Org settings")
    await expect(first.locator(".changes")).to_have_text("Leak action: revoke → flag, leave active")
    await expect(first.locator(".actor")).to_have_text("Operator")
