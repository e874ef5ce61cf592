"""The Webhooks tab in Chromium (issue 17): add an endpoint (its secret shown once), a refused URL,
the test-send button, and the recent deliveries with their status, against a real receiver."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from tests.browser.conftest import launch, sign_in
from tests.support.webhooks import GOT, receiver_app


@pytest.fixture
async def hook_stack(make_stack):
    return await make_stack(admin_settings={"webhooks_allow_private": True, "webhooks_poll": 0.05})


async def test_add_an_endpoint_send_a_test_and_see_it_delivered(hook_stack, aiohttp_server):
    stack = hook_stack
    receiver = await aiohttp_server(receiver_app())
    await stack.create_key(name="setup")
    async with launch(stack.admin) as b:
        page = b.page
        await sign_in(b, stack)
        await page.get_by_role("tab", name="Webhooks").click()
        await expect(page.locator("#webhooks-empty")).to_be_visible()
        await page.get_by_role("button", name="+ Add endpoint").click()
        dialog = page.get_by_role("dialog", name="Add webhook endpoint")
        # A URL the policy refuses is refused on the URL field (a number form of 127.0.0.1: even here).
        await dialog.get_by_label("Endpoint URL").fill("http://2130706433/latest")
        await dialog.get_by_role("button", name="Add endpoint").click()
        await expect(page.locator("#webhook-url-error")).to_contain_text("numeric form")
        url = str(receiver.make_url("/hook"))
        await dialog.get_by_label("Endpoint URL").fill(url)
        await dialog.get_by_label("All events").uncheck()
        await dialog.get_by_label("Key revoked").check()
        await dialog.get_by_role("button", name="Add endpoint").click()
        secret = page.locator("#webhook-secret")
        await expect(secret).to_have_value(re.compile(r"^whsec_[A-Za-z0-9+/=]{40,}$"))
        shown = await secret.input_value()
        await page.keyboard.press("Escape")  # not closed before the secret was copied
        await expect(secret).to_be_visible()
        await b.shot("webhook-secret")
        await page.get_by_role("button", name="I have copied it").click()
        row = page.locator("#webhooks-body tr")
        await expect(row).to_have_count(1)
        await expect(row).to_contain_text(url)
        await expect(row).to_contain_text("Key revoked")
        assert shown not in await page.content()  # gone from the page once closed
        await page.get_by_role("button", name=f"Send a test event to {url}").click()
        await expect(page.locator("#webhooks-notice")).to_contain_text("A test event")
        delivered = page.locator("#deliveries-body tr[data-state=delivered]")
        for _ in range(50):
            if await delivered.count():
                break
            await page.get_by_role("button", name="Refresh").click()
            await page.wait_for_timeout(100)
        await expect(delivered).to_have_count(1)
        await expect(delivered).to_contain_text("HTTP 204")
        await b.shot("webhook-deliveries")
        assert [g["headers"]["webhook-id"] for g in receiver.app[GOT]] == [await delivered.get_attribute("data-event-id")]


async def test_a_reader_sees_endpoints_but_cannot_add_or_test(hook_stack):
    stack = hook_stack
    reader = await stack.create_key(name="reader", scopes=("api_keys:read",))
    await stack.admin_call("POST", "/v1/orgs/acme/webhooks", json={"url": "http://127.0.0.1:9/in", "events": ["api_key.leaked"]})
    async with launch(stack.admin) as b:
        page = b.page
        await sign_in(b, stack, credential=reader["key"], org=None)
        await page.get_by_role("tab", name="Webhooks").click()
        await expect(page.locator("#webhooks-body tr")).to_have_count(1)
        await expect(page.get_by_role("button", name="+ Add endpoint")).to_be_hidden()
        await expect(page.get_by_role("button", name=re.compile("^Send a test event"))).to_have_count(0)
        await page.get_by_role("button", name=re.compile("^Recent deliveries to")).click()
        await expect(page.locator("#deliveries-empty")).to_be_visible()
