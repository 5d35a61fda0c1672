"""The findings page: open findings of the recurring audits, filterable, linking to what they are about."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from approvals.audit.choices import AuditKind
from approvals.audit.findings import Finding, findings_sync
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_findings_are_listed_critical_first_with_links_and_filters(operator, auditor, requester):
    device = DeviceFactory.create()
    now = timezone.now()
    findings_sync(
        kind=AuditKind.STALE_DEVICES,
        findings=[Finding("device", device.serial, "not_seen", "warning", f"Device {device.serial} went quiet.")],
        now=now,
    )
    findings_sync(
        kind=AuditKind.OVERDUE_REVIEWS,
        findings=[Finding("change", "42", "review_overdue", "critical", "Change 42: review overdue.")],
        now=now,
    )
    findings_sync(
        kind=AuditKind.TELEMETRY_GAPS,
        findings=[Finding("device", device.serial, "no_telemetry_since_update", "warning", "Silent.", {"rollout": 77})],
        now=now,
    )
    findings_sync(
        kind=AuditKind.CERTIFICATES,
        findings=[Finding("server_certificate", "server", "expires_soon", "warning", "Server certificate expires.")],
        now=now - timedelta(days=1),
    )
    findings_sync(kind=AuditKind.CERTIFICATES, findings=[], now=now)  # resolved

    page = signed_in(operator).get("/audit/findings/")
    body = page.content.decode()
    assert page.status_code == 200
    assert body.index("Change 42: review overdue.") < body.index(f"Device {device.serial} went quiet.")
    assert f'href="/fleet/devices/{device.serial}/"' in body and 'href="/changes/42/"' in body
    assert "Server certificate expires." not in body  # resolved: not in the open list
    assert 'data-testid="open-stale_devices">1<' in body
    assert 'href="/rollouts/77/">rollout 77</a>' in body

    only_stale = signed_in(auditor).get("/audit/findings/", {"kind": "stale_devices"}).content.decode()
    assert "went quiet" in only_stale and "review overdue" not in only_stale
    resolved = signed_in(auditor).get("/audit/findings/", {"state": "resolved"}).content.decode()
    assert "Server certificate expires." in resolved and "went quiet" not in resolved

    assert signed_in(operator).get("/audit/findings/", {"kind": "everything"}).status_code == 400
    assert Client().get("/audit/findings/").status_code == 302  # anonymous: to the sign-in page
    assert signed_in(requester).get("/audit/findings/").status_code == 403
