"""The Security page shows the expiry audit's open alerts (and no longer the resolved ones)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from approvals.audit.choices import AuditKind
from approvals.audit.models import AuditFinding
from ota_project.roles import Role
from tests.web.helpers import page_client, text_of

pytestmark = pytest.mark.django_db
PAGE = reverse("web-audit:security")


def test_open_expiry_alerts_are_listed_and_resolved_ones_are_not(make_user):
    now = timezone.now()
    for subject, resolved in (("timestamp", None), ("snapshot", now)):
        AuditFinding.objects.create(
            kind=AuditKind.SIGNING_EXPIRY,
            subject_type="image_metadata",
            subject=subject,
            code="expires_soon",
            severity="warning",
            message=f"{subject} metadata expires soon: check the refresh.",
            evidence={"expires_at": (now + timedelta(hours=3)).isoformat()},
            first_seen_at=now,
            last_seen_at=now,
            resolved_at=resolved,
        )
    auditor = make_user(Role.AUDITOR, username="anna-auditor")
    response = page_client(auditor).get(PAGE)
    assert response.status_code == 200
    page = text_of(response)
    assert "timestamp metadata expires soon: check the refresh." in page
    assert "snapshot metadata expires soon" not in page
    assert (now + timedelta(hours=3)).strftime("%Y-%m-%d %H:%M") in page  # the expiry from the finding's evidence


def test_without_alerts_the_page_says_nothing_is_close_to_expiry(make_user):
    response = page_client(make_user(Role.SECURITY_OFFICER, username="sam")).get(PAGE)
    assert "Nothing close to expiry." in text_of(response)
