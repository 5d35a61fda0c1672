"""Accessibility of the main pages, checked in the browser by axe-core (axe-playwright-python bundles it): labels,
names, landmarks, focusable order and colour contrast (WCAG 2.1 A and AA rules)."""

from __future__ import annotations

import pytest
from axe_playwright_python.sync_playwright import Axe  # type: ignore[import-untyped]  # ships no types
from django.utils import timezone
from playwright.sync_api import Page

from approvals.audit.choices import AuditKind
from approvals.audit.findings import Finding, findings_sync
from approvals.audit.security import security_event
from ota_project.roles import Role
from rollouts import rollout_services as steps
from tests.browser.support import sign_in
from workflows.types import PhaseChange

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

AXE = Axe()


@pytest.fixture(autouse=True)
def _no_temporal(settings) -> None:
    """The rollout below is recorded without its workflow; no change workflow is nudged either (the Playwright loop
    runs in this thread, where the sync Temporal helpers refuse to block)."""
    settings.TEMPORAL_ENABLED = False


WCAG_AA = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}


def violations(page: Page) -> list[str]:
    """Each rule axe finds broken on the page, with the first element that breaks it."""
    results = AXE.run(page, options=WCAG_AA)
    return [
        f"{v['id']} ({v['impact']}): {v['help']} — {v['nodes'][0]['target'] if v['nodes'] else ''}"
        for v in results.response["violations"]
    ]


def _check(page: Page, path: str) -> list[str]:
    page.goto(path)
    page.wait_for_load_state("networkidle")
    return [f"{path}: {problem}" for problem in violations(page)]


def test_the_main_pages_of_every_role_pass_axe(new_page, make_user, approved_change, operator):
    rollout = steps.rollout_start(actor=operator, change=approved_change, start_workflow=False)
    steps.rollout_phase(PhaseChange(rollout.pk, "running", 0))
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    make_user(Role.CAB_MEMBER, Role.SECURITY_OFFICER, username="carl-sec")
    make_user(Role.AUDITOR, username="anna")
    # Something on every home section: a security event for the auditor's, the running rollout for the operator's.
    security_event(kind="action_forged", source="test.a11y", message="forged promote token")
    found: list[str] = []

    login = new_page()
    login.goto("/login/")
    found += violations(login)

    cab = new_page()
    sign_in(cab, "carl-sec")
    for path in ("/", "/changes/", f"/changes/{approved_change.pk}/", "/fleet/", "/rollouts/kpis/", "/audit/security/"):
        found += _check(cab, path)

    findings_sync(
        kind=AuditKind.STALE_DEVICES,
        findings=[Finding("device", "TCU-QUIET", "not_seen", "critical", "Device TCU-QUIET has not checked in.")],
        now=timezone.now(),
    )
    olga = new_page()
    sign_in(olga, operator.username)
    for path in ("/", "/rollouts/", f"/rollouts/{rollout.pk}/", "/rollouts/start/", "/audit/findings/"):
        found += _check(olga, path)

    anna = new_page()
    sign_in(anna, "anna")
    for path in ("/", "/audit/", f"/audit/changes/{approved_change.pk}/trace/"):
        found += _check(anna, path)

    assert found == []


def test_the_alert_pages_pass_axe(new_page, operator):
    from ota_project.alerts.services import raise_alert

    alert = raise_alert(
        kind="fleet.rollback_rate",
        dedup_key="fleet.rollback_rate:release:1",
        title="Fleet-wide rollback rate 30% on release 1.1.0",
        summary="Rollbacks across every rollout of 1.1.0 are over the limit.",
        link="/rollouts/",
        evidence={"finished": 40, "rolled_back": 12},
        severity="critical",
    )
    olga = new_page()
    sign_in(olga, operator.username)
    found = _check(olga, "/alerts/") + _check(olga, f"/alerts/{alert.pk}/") + _check(olga, "/alerts/?show=resolved")
    assert found == []
