"""Real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright against a real stack."""

from __future__ import annotations

import contextlib
import re
import shutil
from dataclasses import dataclass, field

import pytest
from playwright.async_api import Page, async_playwright, expect

from tests.support import OPERATOR_TOKEN, ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = ROOT / "artifacts" / "screenshots"


@dataclass
class Browser:
    page: Page
    problems: list[str] = field(default_factory=list)  # console errors, CSP violations, alerts

    async def shot(self, name: str, element=None) -> None:
        """The whole page, or only ``element`` (a locator), as artifacts/screenshots/<name>.png."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = str(SCREENSHOTS / f"{name}.png")
        if element is not None:
            await element.screenshot(path=path)
        else:
            await self.page.screenshot(path=path, full_page=True)


@contextlib.asynccontextmanager
async def launch(origin: str):
    """Headless Chromium with one page on ``origin`` (clipboard allowed there); console errors, page
    errors and unexpected dialogs are collected in ``problems`` and must stay empty."""
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = await chromium.new_context(
            viewport={"width": 1280, "height": 900}, locale="en-US", timezone_id="America/New_York",
        )
        await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
        page = await context.new_page()
        page.set_default_timeout(10_000)
        b = Browser(page)

        def on_console(msg):
            # A 4xx answer is logged by Chromium as "Failed to load resource"; the page handles those.
            if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
                b.problems.append(f"console: {msg.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: b.problems.append(f"page error: {exc}"))

        async def on_dialog(dialog):
            b.problems.append(f"unexpected {dialog.type}: {dialog.message}")
            await dialog.dismiss()

        page.on("dialog", on_dialog)
        yield b
        await context.close()
        await chromium.close()
    assert b.problems == []


@pytest.fixture
async def browser(stack):
    async with launch(stack.admin) as b:
        yield b


async def sign_in(b: Browser, stack, credential: str = OPERATOR_TOKEN, org: str | None = "acme") -> None:
    page = b.page
    await sync_clock(b, stack)
    await page.goto(stack.admin + "/")
    await page.get_by_label("Operator token or API key").fill(credential)
    if org is not None:
        await page.get_by_label("Organization ID").fill(org)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("heading", name="API Keys", exact=True).wait_for()


async def sync_clock(b: Browser, stack) -> None:
    """The page's "now" (relative times, flags) is the stack's clock, which tests move by days."""
    await b.page.clock.set_fixed_time(stack.clock())


def row(b: Browser, name: str):
    return b.page.locator("#keys-body tr").filter(has=b.page.locator("td.name", has_text=name))


async def create_through_dialog(b: Browser, name: str, searches: list[tuple[str, str]], expiry: str | None = None) -> str:
    """Fill the create dialog (permissions found through the search box) and return the revealed key."""
    page = b.page
    await page.get_by_role("button", name="+ Create API Key").first.click()
    dialog = page.get_by_role("dialog", name="Create API Key")
    await expect(dialog).to_be_visible()
    await dialog.get_by_label("Name", exact=True).fill(name)
    if expiry is not None:  # else the default, 90 days
        await dialog.get_by_label("Expiry").select_option(label=expiry)
    for query, label in searches:
        await dialog.get_by_role("searchbox").fill(query)
        await dialog.get_by_label(label, exact=True).check()
    await dialog.get_by_role("button", name="Create", exact=True).click()
    reveal = page.get_by_role("dialog", name=re.compile("Your new API key"))
    await expect(reveal).to_be_visible()
    return await reveal.get_by_label("API key").input_value()
