"""The shared layout in a real browser: role-aware navigation, keyboard use, local times, tablet width."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.template import Context, Template
from playwright.sync_api import Page, expect

from ota_project.roles import Role
from tests.browser.support import TABLET, screenshot, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _nav(page: Page):
    return page.get_by_role("navigation", name="Main")


def test_navigation_differs_per_role(new_page, make_user):
    make_user(Role.OPERATOR, username="olga")
    make_user(Role.AUDITOR, username="anna")
    make_user(Role.REQUESTER, username="rita")

    operator = new_page()
    sign_in(operator, "olga")
    expect(_nav(operator).get_by_role("link", name="Rollouts")).to_be_visible()
    expect(_nav(operator).get_by_role("link", name="Audit")).to_have_count(0)

    auditor = new_page()
    sign_in(auditor, "anna")
    expect(_nav(auditor).get_by_role("link", name="Audit")).to_be_visible()
    expect(_nav(auditor).get_by_role("link", name="Rollouts")).to_be_visible()  # read-only, like the changes
    expect(_nav(auditor).get_by_role("link", name="Changes")).to_be_visible()
    expect(_nav(auditor).get_by_role("link", name="CAB queue")).to_have_count(0)
    screenshot(auditor, "overview-auditor")

    requester = new_page()
    sign_in(requester, "rita")
    expect(_nav(requester).get_by_role("link", name="My changes")).to_be_visible()
    expect(_nav(requester).get_by_role("link", name="New change")).to_be_visible()
    expect(_nav(requester).get_by_role("link", name="CAB queue")).to_have_count(0)
    expect(_nav(requester).get_by_role("link", name="Overview")).to_have_attribute("aria-current", "page")


def test_skip_link_is_the_first_tab_stop_and_jumps_to_main(page: Page, make_user):
    make_user(Role.CAB_MEMBER, username="carl")
    sign_in(page, "carl")
    page.keyboard.press("Tab")
    focused = page.evaluate("() => [document.activeElement.className, document.activeElement.textContent]")
    assert focused == ["skip-link", "Skip to main content"]
    box = page.locator(".skip-link").bounding_box()
    assert box is not None and box["y"] >= 0  # visible once focused
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "main"


def test_sign_in_works_with_the_keyboard_alone(page: Page, make_user):
    make_user(Role.OPERATOR, username="olga")
    page.goto("/login/")
    page.keyboard.type("olga")  # the user name field has the focus on arrival
    page.keyboard.press("Tab")
    page.keyboard.type("correct-horse-battery-staple")
    page.keyboard.press("Enter")
    expect(page.locator(".current-user")).to_have_text("olga")


def test_times_are_shown_in_the_viewers_zone_also_after_htmx_swaps(page: Page, make_user):
    make_user(Role.AUDITOR, username="anna")
    sign_in(page, "anna")  # the browser context runs in Europe/Berlin
    # A fragment as an htmx swap brings it: rendered by the real {% when %} tag, inserted after the page loaded.
    fragment = Template('{% load ota_ui %}<p id="swapped">{% when at %}</p>').render(
        Context({"at": datetime(2025, 1, 15, 12, 0, tzinfo=UTC)})
    )
    page.evaluate(
        """(fragment) => {
            document.getElementById('main').insertAdjacentHTML('beforeend', fragment);
            document.body.dispatchEvent(new CustomEvent('htmx:afterSwap', {bubbles: true, detail: {}}));
        }""",
        fragment,
    )
    time = page.locator("#swapped time")
    expect(time).to_contain_text("13:00")
    expect(time).not_to_contain_text("12:00")
    expect(time).to_have_attribute("title", "2025-01-15 12:00 UTC")


def test_layout_fits_a_tablet_without_sideways_scrolling(new_page, make_user):
    make_user(Role.REQUESTER, Role.CAB_MEMBER, Role.OPERATOR, Role.AUDITOR, username="multi")
    page = new_page(viewport=TABLET)
    sign_in(page, "multi")
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    expect(_nav(page).get_by_role("link", name="Audit")).to_be_visible()
    screenshot(page, "overview-tablet")


def test_missing_role_page_names_the_role(page: Page, make_user):
    make_user(Role.AUDITOR, username="anna")
    sign_in(page, "anna")
    response = page.goto("/no-such-page/")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", level=1)).to_have_text("Not found")
