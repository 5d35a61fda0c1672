"""The Security page under Audit: who may open it, counts per kind, the latest events, the kind filter."""

from __future__ import annotations

import pytest
from django.urls import reverse

from approvals.audit.choices import SecurityEventKind
from approvals.audit.models import SecurityEvent
from approvals.audit.security import security_event
from ota_project.roles import Role
from tests.web.helpers import page_client, text_of

pytestmark = pytest.mark.django_db

PAGE = reverse("web-audit:security")
READERS = (Role.AUDITOR, Role.SECURITY_OFFICER)
OTHER_ROLES = [role for role in Role.values if role not in READERS]


@pytest.fixture
def events(db):
    for _ in range(3):
        security_event(
            kind=SecurityEventKind.DEVICE_AUTH_FAILED,
            source="device_api.auth",
            message="Invalid device credentials.",
            device_serial="TCU-EVIL",
            address="203.0.113.5",
        )
    security_event(kind=SecurityEventKind.DEVICE_REPLAY, source="device_api.status", message="Seq 4 again.")


def test_anonymous_is_sent_to_sign_in(events):
    response = page_client().get(PAGE)
    assert response.status_code == 302 and response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("role", OTHER_ROLES)
def test_other_roles_get_the_refusal_page(events, make_user, role):
    response = page_client(make_user(role)).get(PAGE)
    assert response.status_code == 403
    assert "Auditor (read-only) or Security officer role" in response.content.decode()


@pytest.mark.parametrize("role", READERS)
def test_auditors_and_security_officers_see_counts_and_events(events, make_user, role):
    response = page_client(make_user(role)).get(PAGE)
    assert response.status_code == 200
    counts = {row.kind: (row.last_24h, row.last_7d) for row in response.context["summary"]}
    assert counts[SecurityEventKind.DEVICE_AUTH_FAILED] == (3, 3)
    assert counts[SecurityEventKind.LOGIN_LOCKED_OUT] == (0, 0)
    assert [e.kind for e in response.context["events"]] == ["device_replay", "device_auth_failed"]
    text = text_of(response)
    assert "Device authentication failed" in text and "TCU-EVIL" in text and "203.0.113.5" in text
    assert 'href="?kind=device_auth_failed#events-heading"' in response.content.decode()


def test_kind_filter_and_invalid_filter(events, auditor):
    client = page_client(auditor)
    only = client.get(PAGE, {"kind": "device_replay"})
    assert [e.kind for e in only.context["events"]] == ["device_replay"]
    assert "Latest events: Device report replayed" in text_of(only)
    bad = client.get(PAGE, {"kind": "nope"})
    assert bad.status_code == 200 and bad.context["page"] is None
    assert "These filters cannot be applied." in text_of(bad)


def test_empty_page_says_so(auditor):
    assert "No security events recorded." in text_of(page_client(auditor).get(PAGE))
    assert not SecurityEvent.objects.exists()


def test_nav_entry_only_for_auditors_and_security_officers(make_user):
    link = f'href="{PAGE}"'
    for role in READERS:
        assert link in page_client(make_user(role)).get("/").content.decode()
    for other_role in OTHER_ROLES:
        assert link not in page_client(make_user(other_role)).get("/").content.decode()
