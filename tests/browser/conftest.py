"""Playwright fixtures: one headless Chromium for the browser tests (Debian's, never a download), a fresh page per test
against pytest-django's live server, a sign-in helper and screenshots under test-output/screenshots/."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, ViewportSize, sync_playwright

from tests.browser.support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DEFAULT_TIMEOUT_MS,
    LAPTOP,
)


@pytest.fixture(scope="package")
def playwright_instance() -> Iterator[Playwright]:
    """Playwright's driver for this package only: its event loop stays "running" in the test thread while it lives,
    which other tests' synchronous code must not see.

    While it runs, Django's ORM calls made by fixtures in this thread would be refused as "async unsafe"; the ORM is
    only used from this one thread here, so the check is lifted for the package and restored after.
    """
    before = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            yield playwright
    finally:
        if before is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = before


@pytest.fixture(scope="package")
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    """One headless Chromium for the browser tests (Debian's binary: Playwright cannot download browsers here)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make services does)")
    browser = playwright_instance.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def base_url(live_server: Any) -> str:
    """The live server's address (pytest-django; the test database is committed, so use transactional tests)."""
    return str(live_server.url)


@pytest.fixture
def new_page(browser: Browser, base_url: str) -> Iterator[Callable[..., Page]]:
    """new_page(viewport=LAPTOP, timezone_id=...) -> a page in a fresh browser context (own cookies), closed after
    the test.

    Uncaught JavaScript errors on any page fail the test: the UI's scripts must run cleanly.
    """
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def _new(viewport: ViewportSize | None = None, **options: Any) -> Page:
        # Europe/Berlin unless the test asks for another zone (timezone_id=...): never the machine's UTC.
        options.setdefault("timezone_id", "Europe/Berlin")
        context = browser.new_context(base_url=base_url, viewport=viewport or LAPTOP, **options)
        context.set_default_timeout(DEFAULT_TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        return page

    yield _new
    for context in contexts:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(new_page: Callable[..., Page]) -> Page:
    """A laptop-sized page on the live server (relative URLs work: page.goto("/login/"))."""
    return new_page()
