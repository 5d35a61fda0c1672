"""Sign-in, lockout, sign-out and CSRF in a real browser."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from ota_project.roles import Role
from tests.browser.support import screenshot, sign_in, sign_out
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_sign_in_lands_on_overview_and_sign_out_ends_the_session(page: Page, make_user):
    make_user(Role.OPERATOR, username="olga")
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login/$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    screenshot(page, "sign-in")

    sign_in(page, "olga")
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Needs you now")
    expect(page.locator(".user-box")).to_contain_text("Operator")
    screenshot(page, "overview-operator")

    sign_out(page)
    expect(page.get_by_role("status")).to_have_text("You are signed out.")
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login/$"))


def test_wrong_password_is_refused_with_a_plain_message(page: Page, make_user):
    make_user(Role.OPERATOR, username="olga")
    page.goto("/login/")
    page.get_by_label("User name").fill("olga")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("That user name and password do not match.")
    expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")
    expect(page.locator(".current-user")).to_have_count(0)


def test_lockout_after_failures_refuses_the_right_password(page: Page, make_user, settings):
    settings.AXES_FAILURE_LIMIT = 3
    make_user(Role.AUDITOR, username="anna")
    for _ in range(3):
        page.goto("/login/")
        page.get_by_label("User name").fill("anna")
        page.get_by_label("Password").fill("guess")
        page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign-in locked")
    expect(page.get_by_role("alert")).to_contain_text("is locked")
    expect(page.get_by_role("alert")).to_contain_text("15 minutes")
    screenshot(page, "sign-in-locked")

    page.goto("/login/")
    page.get_by_label("User name").fill("anna")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign-in locked")
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login/$"))


def test_post_without_csrf_token_is_refused(page: Page, make_user):
    make_user(Role.REQUESTER, username="rita")
    sign_in(page, "rita")
    # A forged cross-site form carries the session cookie but no token: Django refuses it.
    response = page.request.post("/logout/", form={"next": "/"}, max_redirects=0)
    assert response.status == 403
    # A tampered token in the page's own form is refused too.
    page.goto("/logout/")
    page.locator("main input[name=csrfmiddlewaretoken]").evaluate("el => el.value = 'x'.repeat(64)")
    page.locator("main").get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("CSRF verification failed")).to_be_visible()
    # Still signed in: neither request had any effect.
    page.goto("/")
    expect(page.locator(".current-user")).to_have_text("rita")


def test_demo_sign_in_page_lists_demo_users_without_passwords(page: Page, make_user, settings):
    settings.OTA_DEMO_MODE = True
    make_user(Role.CAB_MEMBER, username="carl")
    make_user(Role.SECURITY_OFFICER, username="sam")
    page.goto("/login/")
    table = page.get_by_role("table", name="Demo users and their roles")
    expect(table.get_by_role("row", name="carl CAB member")).to_be_visible()
    expect(table.get_by_role("row", name="sam Security officer")).to_be_visible()
    expect(page.get_by_text("demo-credentials.txt")).to_be_visible()
    assert PASSWORD not in page.content()
    screenshot(page, "sign-in-demo")
