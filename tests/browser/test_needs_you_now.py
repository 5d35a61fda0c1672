"""In the browser: the "needs you now" home of each role (and that it follows the state live), the Timers card on the
change page, times on the viewer's clock with UTC on hover, the 24-hour zoned input round trip, the KPI empty state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Page, expect

from approvals import services as change_services
from approvals.models import ChangeRequest
from approvals.selectors import change_review_due_at
from ota_project.roles import Role
from rollouts import rollout_services as steps
from rollouts.web import home_views
from tests.browser.support import screenshot, sign_in
from workflows.types import PhaseChange

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _no_temporal(settings, monkeypatch) -> None:
    """Rollouts are recorded through the services without a workflow; the home polls every second here."""
    settings.TEMPORAL_ENABLED = False
    monkeypatch.setattr(home_views, "HOME_POLL_SECONDS", 1)


def _section(page: Page, name: str):
    return page.get_by_test_id(f"home-{name}")


def test_each_role_sees_what_waits_for_them_and_the_home_follows_the_state(
    new_page, submitted_change, cab_member, cab_member_2, operator, auditor
):
    cab = new_page()
    sign_in(cab, cab_member.username)  # signing in lands on the home
    expect(cab.get_by_role("heading", level=1)).to_have_text("Needs you now")
    decisions = _section(cab, "cab")
    expect(decisions.get_by_role("link", name=f"CR-{submitted_change.pk} {submitted_change.title}")).to_be_visible()
    expect(decisions.locator("time")).to_have_count(1)  # the review deadline
    expect(cab.get_by_test_id("home-operator")).to_have_count(0)  # no role, no section
    screenshot(cab, "home-cab-member")

    olga = new_page()
    sign_in(olga, operator.username)
    expect(_section(olga, "operator")).to_contain_text("No rollout waits for an operator.")
    expect(olga.get_by_test_id("home-cab")).to_have_count(0)

    anna = new_page()
    sign_in(anna, auditor.username)
    expect(_section(anna, "oversight")).to_contain_text("No security event in the last 24 hours.")

    # The CAB decides: the change leaves the first member's home; once approved it is the operator's to start.
    cab.get_by_role("link", name=f"CR-{submitted_change.pk} {submitted_change.title}").click()
    cab.locator("#decision-form").get_by_label("Comment").fill("Looks right.")
    cab.locator("#decision-form").get_by_role("button", name="Approve").click()
    expect(cab.get_by_role("status").first).to_contain_text("You approved revision 1.")
    cab.goto("/")
    expect(_section(cab, "cab")).to_contain_text("No decision waits for you.")
    change_services.approval_grant(actor=cab_member_2, change=submitted_change, revision=1)

    # The operator's open home moves on by itself (htmx), without a reload.
    olga.evaluate("() => { window.__sameDocument = true; }")
    starting = _section(olga, "operator")
    expect(starting).to_contain_text(f"CR-{submitted_change.pk}", timeout=10_000)
    expect(starting).to_contain_text("window open, not started")
    approved = ChangeRequest.objects.get(pk=submitted_change.pk)
    rollout = steps.rollout_start(actor=operator, change=approved, start_workflow=False)
    steps.rollout_phase(PhaseChange(rollout.pk, "running", 0))
    steps.rollout_halt(rollout_id=rollout.pk, wave_index=0, reason="pilot failure rate 50%")
    halted = _section(olga, "operator").locator('li[data-kind="halted"]')
    expect(halted).to_contain_text(f"Rollout {rollout.pk}", timeout=10_000)
    expect(halted).to_contain_text("Halted")
    assert olga.evaluate("() => window.__sameDocument === true"), "the home refreshed in place"
    screenshot(olga, "home-operator-halted")

    # The refused action of an attacker shows on the auditor's home.
    from approvals.audit.security import security_event

    security_event(kind="action_forged", source="test.browser", message="forged promote token")
    expect(_section(anna, "oversight")).to_contain_text("Forged or unverifiable action: 1 refusal", timeout=10_000)


def test_timers_card_shows_the_review_deadline_on_the_viewers_clock_with_utc_on_hover(
    new_page, submitted_change, cab_member
):
    page = new_page(timezone_id="Asia/Tokyo")
    sign_in(page, cab_member.username)
    page.goto(f"/changes/{submitted_change.pk}/")
    card = page.locator("#timers")
    expect(card.get_by_role("heading", name="Timers")).to_be_visible()
    due = change_review_due_at(ChangeRequest.objects.get(pk=submitted_change.pk))
    assert due is not None
    moment = card.locator("#review-due time")
    tokyo = due.astimezone(ZoneInfo("Asia/Tokyo")).strftime("%Y-%m-%d %H:%M")
    expect(moment).to_have_text(f"{tokyo} JST")
    expect(moment).to_have_attribute("title", due.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    screenshot(page, "change-timers-card-tokyo")


def test_window_typed_on_a_new_york_clock_round_trips_through_utc(new_page, requester, change_fields):
    change = change_services.change_create(actor=requester, **change_fields)
    page = new_page(timezone_id="America/New_York")
    sign_in(page, requester.username)
    page.goto(f"/changes/{change.pk}/edit/")
    start = page.get_by_label("Requested window start")
    expect(page.locator("#id_requested_window_start_zone")).to_contain_text("America/New_York (UTC-")
    stored = change.requested_window_start.astimezone(ZoneInfo("America/New_York"))
    # To the second when the stored time has seconds, so an untouched field reads back unchanged.
    expect(start).to_have_value(stored.strftime("%Y-%m-%d %H:%M:%S" if stored.second else "%Y-%m-%d %H:%M"))

    # Not the 24-hour ISO shape: a field error that says what to type, and nothing saved.
    start.fill("12/20/2026 9:30 PM")
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator(".field-error").first).to_contain_text("YYYY-MM-DD HH:MM")
    assert ChangeRequest.objects.get(pk=change.pk).requested_window_start == change.requested_window_start

    typed = (datetime.now(UTC) + timedelta(days=2)).astimezone(ZoneInfo("America/New_York"))
    typed = typed.replace(hour=21, minute=30, second=0, microsecond=0)
    page.get_by_label("Requested window start").fill(typed.strftime("%Y-%m-%d %H:%M"))
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("status").first).to_contain_text("Changes saved.")
    saved = ChangeRequest.objects.get(pk=change.pk).requested_window_start
    assert saved == typed.astimezone(UTC)  # stored in UTC
    shown = page.locator("#requested-window time").first
    expect(shown).to_have_text(f"{typed:%Y-%m-%d %H:%M} {typed.tzname()}")
    expect(shown).to_have_attribute("title", saved.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"))


def test_kpis_without_data_say_so(new_page, make_user):
    make_user(Role.AUDITOR, username="anna")
    page = new_page()
    sign_in(page, "anna")
    page.goto("/rollouts/kpis/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Rollout KPIs")
    expect(page.get_by_text("No deployment finished in these periods")).to_be_visible()
    expect(page.get_by_text("No recovery in these periods")).to_be_visible()
    expect(page.locator("figure.chart svg")).to_have_count(0)
