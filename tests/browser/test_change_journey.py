"""The journey of issue #5 in a real browser, on the real Temporal dev server and worker:

a requester files a change through the form; its author is refused when approving (the page says why); two CAB
members and the security officer approve (the default policy for a high-risk normal change); an operator starts
the rollout, pauses, resumes and promotes while the dashboard updates without reloading; an auditor verifies the
chain and downloads a signed export.
"""

from __future__ import annotations

import json
import re
import zipfile
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Page, expect

from approvals.audit.keys import audit_public_key_pem
from approvals.audit.models import DecisionRecord
from approvals.audit.verify import audit_bundle_verify
from approvals.choices import ChangeStatus
from approvals.models import Approval, ChangeRequest
from ota_project.roles import Role
from rollouts.choices import DeploymentStatus, RolloutStatus
from rollouts.models import Deployment, Rollout
from tests.browser.support import screenshot, sign_in, sign_out
from tests.fleet_driver import finished, healthy, run_until
from tests.temporal_support import running_worker

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SAFETY_QUESTION = "Does the release change a safety-relevant component (eCall, brakes/ADAS gateway, CAN write access)?"
LIVE_TIMEOUT_MS = 30_000
# Fast waves so the journey takes seconds: one-second soaks, one device is a sample, a manual gate after the pilot.
WAVE_SETTINGS = {
    1: {"soak": "1", "sample": "1", "promotion": "Manual"},
    2: {"soak": "1", "sample": "1", "promotion": "Auto"},
    3: {"soak": "1", "sample": "1", "promotion": "Auto"},
}
PLAN_SETTINGS = (
    '{"monitor_interval_seconds": 1, '
    '"deadlines": {"download_seconds": 120, "install_seconds": 120, "confirm_seconds": 120}}'
)


def _local_input(moment: datetime) -> str:
    """What a person types: the time on the browser's clock (the fixture's Europe/Berlin), 24-hour ISO order."""
    return moment.astimezone(ZoneInfo("Europe/Berlin")).strftime("%Y-%m-%d %H:%M")


def _file_change(page: Page) -> int:
    """Fill and save the new-change form, submit the draft for review; return the change's id."""
    page.get_by_role("navigation", name="Main").get_by_role("link", name="New change").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("New change request")
    page.get_by_label("Title").fill("Modem reconnect fix for tcu-4g-r2")
    page.get_by_label("Justification").fill("Units lose LTE after a tunnel handover and need a manual reset.")
    page.get_by_label("Release to roll out").select_option(label="1.1.0 (counter 1)")
    page.get_by_label("Rollback release").select_option(label="1.0.0 (counter 1)")
    page.get_by_label("tcu-4g-r2", exact=True).check()
    page.get_by_label(SAFETY_QUESTION).select_option(label="Yes")
    page.get_by_label("Which part of the unit does the release change most deeply?").select_option("application")
    page.get_by_label("Was the release tested on every targeted hardware model?").select_option(label="Yes")
    page.get_by_label("Was the rollback to the previous release tested?").select_option(label="Yes")
    page.get_by_label("Does the release fix a security vulnerability?").select_option(label="No")
    page.get_by_label("Impact analysis").fill("One reboot per unit while parked; no data loss.")
    now = datetime.now(UTC)
    page.get_by_label("Requested window start").fill(_local_input(now - timedelta(hours=1)))
    page.get_by_label("Requested window end").fill(_local_input(now + timedelta(days=7)))
    for number, values in WAVE_SETTINGS.items():
        wave = page.locator(f"#wave-{number}")
        wave.get_by_label("Soak time (seconds)").fill(values["soak"])
        wave.get_by_label("Minimum sample (devices)").fill(values["sample"])
        wave.get_by_label("Success threshold (0-1)").fill("0.9")
        wave.get_by_label("Failure threshold (0-1)").fill("0.1")
        wave.get_by_label("Promotion").select_option(label=values["promotion"])
    page.get_by_label("Other plan settings (JSON)").fill(PLAN_SETTINGS)
    # The live preview (htmx) counts the scope while the form is filled in.
    expect(page.locator("#scope-preview")).to_contain_text("20")
    screenshot(page, "journey-01-change-form")
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("status").first).to_contain_text("saved")
    saved_url = re.search(r"/changes/(\d+)/$", page.url)
    assert saved_url is not None  # the saved draft's page
    change_id = int(saved_url.group(1))
    page.get_by_role("button", name="Submit for review").click()
    expect(page.get_by_role("status").first).to_contain_text("Submitted for review")
    return change_id


def _approve(page: Page, username: str, change_id: int, comment: str) -> None:
    sign_in(page, username)
    page.goto(f"/changes/{change_id}/")
    page.locator("#decision-form").get_by_label("Comment").fill(comment)
    page.locator("#decision-form").get_by_role("button", name="Approve").click()
    expect(page.get_by_role("status").first).to_contain_text("You approved revision 1.")


def _act(page: Page, label: str, reason: str) -> None:
    """Take a rollout action through its confirmation step (reason required) and wait for the workflow's answer."""
    panel = page.locator("#rollout-actions")
    action = panel.locator("details.confirm-action").filter(has=page.get_by_text(label, exact=True))
    action.locator("summary").click()
    action.get_by_label("Reason").fill(reason)
    action.get_by_role("button", name=f"Confirm: {label}").click()
    expect(page.get_by_role("status").first).to_contain_text(f"{label} accepted by the workflow")


def _live_status(page: Page):
    return page.locator("#rollout-live")


def _mark_page(page: Page) -> None:
    """Put a marker on the window: it survives htmx swaps but not a reload."""
    page.evaluate("() => { window.__sameDocument = true; }")


def _still_same_page(page: Page) -> bool:
    return bool(page.evaluate("() => window.__sameDocument === true"))


def test_change_journey_from_request_to_audit(page: Page, make_user, fleet, temporal_settings):
    # The author also sits on the CAB: the rule, not a missing role, must stop them from approving.
    author = make_user(Role.REQUESTER, Role.CAB_MEMBER, username="rita")
    make_user(Role.CAB_MEMBER, username="carl")
    make_user(Role.CAB_MEMBER, username="cora")
    make_user(Role.SECURITY_OFFICER, username="sam")
    make_user(Role.OPERATOR, username="olga")
    make_user(Role.AUDITOR, username="anna")

    # 1. The requester files the change through the form and submits it.
    sign_in(page, "rita")
    change_id = _file_change(page)
    change = ChangeRequest.objects.get(pk=change_id)
    assert change.author_id == author.pk and change.status == ChangeStatus.SUBMITTED
    assert change.risk_level == "high"
    expect(page.locator("#policy-progress")).to_have_text("0 of 2 CAB, security officer pending")

    # 2. The author may not approve: the page says why, and a forged decision is refused with the same reason.
    refusal = page.locator("#decision-refusal")
    expect(refusal).to_contain_text("You are the author of this change")
    expect(page.locator("#decision-form")).to_have_count(0)
    screenshot(page, "journey-02-change-author-refused")
    token = page.evaluate("() => JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRFToken']")
    forged = page.request.post(
        f"/changes/{change_id}/decide/",
        form={"csrfmiddlewaretoken": token, "decision": "approved", "revision": "1", "comment": "mine"},
        headers={"Referer": page.url},
    )
    assert forged.status == 403 and "You are the author of this change" in forged.text()
    assert not Approval.objects.filter(change_id=change_id).exists()
    sign_out(page)

    # 3. Two CAB members and the security officer approve (high risk, normal change: 2 CAB + security officer).
    _approve(page, "carl", change_id, "Pilot plan and rollback are sound.")
    expect(page.locator("#policy-progress")).to_have_text("1 of 2 CAB, security officer pending")
    sign_out(page)
    _approve(page, "cora", change_id, "Agree.")
    sign_out(page)
    _approve(page, "sam", change_id, "Signed image, no new attack surface.")
    expect(page.get_by_role("status").first).to_contain_text("the change is approved")
    screenshot(page, "journey-03-change-approved")
    sign_out(page)
    assert ChangeRequest.objects.get(pk=change_id).status == ChangeStatus.APPROVED

    with running_worker():
        # 4. The operator starts the rollout from the change page.
        sign_in(page, "olga")
        page.goto(f"/changes/{change_id}/")
        page.get_by_role("link", name="Start rollout").click()
        expect(page.get_by_role("heading", level=1)).to_contain_text(f"Start the rollout of change #{change_id}")
        screenshot(page, "journey-04-start-rollout")
        page.get_by_label("I checked the release, the scope and the waves above").check()
        page.get_by_role("button", name="Start rollout").click()
        expect(page.get_by_role("status").first).to_contain_text("started")
        rollout = Rollout.objects.get(change_id=change_id)
        expect(page).to_have_url(re.compile(rf"/rollouts/{rollout.pk}/$"))

        # 5. Devices take the pilot; the dashboard reaches the manual gate by itself, without a reload.
        _mark_page(page)
        run_until(rollout.pk, healthy, lambda r: r.status == RolloutStatus.AWAITING_PROMOTION)
        expect(_live_status(page)).to_have_attribute("data-status", "awaiting_promotion", timeout=LIVE_TIMEOUT_MS)
        expect(page.locator("#rollout-actions").get_by_text("Promote", exact=True)).to_be_visible(
            timeout=LIVE_TIMEOUT_MS
        )
        assert _still_same_page(page)
        screenshot(page, "journey-05-dashboard-awaiting-promotion")

        # 6. Pause, resume, promote: each with a reason, each answered by the workflow.
        _act(page, "Pause", "Shift handover: hold the gate.")
        expect(_live_status(page)).to_have_attribute("data-status", "paused", timeout=LIVE_TIMEOUT_MS)
        # The banner about the action gives way to the state it led to, without a reload.
        expect(page.locator("#messages").get_by_role("status")).to_have_text(
            re.compile(r"^Now: Paused\b"), timeout=LIVE_TIMEOUT_MS
        )
        screenshot(page, "journey-06-dashboard-paused")
        _act(page, "Resume", "Handover done.")
        expect(_live_status(page)).to_have_attribute("data-status", "awaiting_promotion", timeout=LIVE_TIMEOUT_MS)
        _act(page, "Promote", "Pilot KPIs nominal.")

        # 7. The remaining waves run; the dashboard shows the end without a reload.
        _mark_page(page)
        rollout = run_until(rollout.pk, healthy, finished, timeout=90)
        assert rollout.status == RolloutStatus.COMPLETED
        expect(_live_status(page)).to_have_attribute("data-status", "completed", timeout=LIVE_TIMEOUT_MS)
        assert _still_same_page(page)
        screenshot(page, "journey-07-dashboard-completed")
        sign_out(page)

    assert Deployment.objects.filter(rollout=rollout, status=DeploymentStatus.SUCCEEDED).count() == 20
    assert ChangeRequest.objects.get(pk=change_id).status == ChangeStatus.COMPLETED
    decisions = {
        record.action: (record.actor_name, record.reason)
        for record in DecisionRecord.objects.filter(action__in=["rollout.pause", "rollout.resume", "rollout.promote"])
    }
    assert decisions == {
        "rollout.pause": ("olga", "Shift handover: hold the gate."),
        "rollout.resume": ("olga", "Handover done."),
        "rollout.promote": ("olga", "Pilot KPIs nominal."),
    }

    # 8. The auditor verifies the chain and downloads a signed export that checks out offline.
    sign_in(page, "anna")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit").click()
    page.get_by_role("button", name="Verify chain").click()
    expect(page.locator("#chain-status")).to_contain_text("Intact")
    screenshot(page, "journey-08-audit")
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download JSONL").click()
    download = download_info.value
    bundle = download.path().read_bytes()
    verdict = audit_bundle_verify(bundle, trusted_public_key_pem=audit_public_key_pem())
    assert verdict.ok, verdict.problems
    with zipfile.ZipFile(download.path()) as archive:
        rows = [json.loads(line) for line in archive.read("records.jsonl").decode().splitlines() if line]
    approvers = {row["actor"] for row in rows if row["action"] == "approval.approved"}
    assert approvers == {"carl", "cora", "sam"}
    assert any(row["action"] == "rollout.promote" and row["reason"] == "Pilot KPIs nominal." for row in rows)
