"""A headless Chromium (Debian's package) for the page's tests, driven by Playwright; a fresh context per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT = 30_000  # ms: generous, for a busy machine; nothing here measures speed


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Chromium (Debian's chromium package)")
    driver: Playwright = sync_playwright().start()
    try:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()
    finally:
        driver.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(WAIT)
    try:
        yield context.new_page()
    finally:
        context.close()


def visit(page: Page, url: str) -> None:
    """Opens a page and waits until it has shown its answer."""
    page.goto(url)
    expect(page.locator("body")).to_have_attribute("data-state", "ready", timeout=WAIT)
