"""Refused people leave security events: service refusals, stale revisions, API permission refusals, bad API
credentials, sign-in lockouts and refused pages; one event per refusal, and the refusal still changed nothing."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.authtoken.models import Token

from approvals import services
from approvals.audit.choices import SecurityEventKind
from approvals.audit.models import DecisionRecord, SecurityEvent
from approvals.choices import ChangeStatus
from approvals.models import Approval, ChangeRequest
from ota_project.errors import Conflict, NotPermitted
from ota_project.roles import Role
from tests.web.helpers import page_client

pytestmark = pytest.mark.django_db

K = SecurityEventKind
PASSWORD = "correct-horse-battery-staple"


def _snapshot(change: ChangeRequest) -> tuple:
    change.refresh_from_db()
    return (change.status, change.revision, change.title, change.updated_at, change.approvals.count())


def test_a_service_refusal_is_one_event_named_by_the_service_not_also_by_the_api(
    client_for, submitted_change, requester, cab_member
):
    before = _snapshot(submitted_change)
    records = DecisionRecord.objects.count()
    url = f"/api/v1/changes/{submitted_change.pk}/approve/"
    assert client_for(requester).post(url, {"revision": 1}, format="json").status_code == 403
    assert client_for(requester).post(url, {"revision": 1}, format="json").status_code == 403
    (event,) = SecurityEvent.objects.all()
    assert (event.kind, event.source, event.actor_id, event.actor_name) == (
        K.ACTION_UNAUTHORISED,
        "approvals.approval_decide",
        requester.pk,
        requester.username,
    )
    assert (event.count, event.subject) == (2, f"change:{submitted_change.pk}")
    assert "author" in event.message
    assert _snapshot(submitted_change) == before
    assert DecisionRecord.objects.count() == records


def test_refusals_outside_the_api_are_recorded_by_the_service(submitted_change, cab_member):
    before = _snapshot(submitted_change)
    with pytest.raises(NotPermitted):
        services.change_update(actor=cab_member, change=submitted_change, title="Hijacked")
    (event,) = SecurityEvent.objects.all()
    assert (event.kind, event.source, event.actor_id) == (
        K.ACTION_UNAUTHORISED,
        "approvals.change_update",
        cab_member.pk,
    )
    assert _snapshot(submitted_change) == before


def test_a_decision_on_a_stale_revision_is_recorded_and_decides_nothing(
    client_for, submitted_change, requester, cab_member
):
    client_for(requester).patch(f"/api/v1/changes/{submitted_change.pk}/", {"title": "New title"}, format="json")
    before = _snapshot(submitted_change)
    response = client_for(cab_member).post(
        f"/api/v1/changes/{submitted_change.pk}/approve/", {"revision": 1}, format="json"
    )
    assert response.status_code == 409 and response.json()["error"]["code"] == "stale_revision"
    (event,) = SecurityEvent.objects.all()
    assert (event.kind, event.source, event.actor_id, event.subject) == (
        K.STALE_REVISION,
        "approvals.approval_approved",
        cab_member.pk,
        f"change:{submitted_change.pk}",
    )
    assert "revision 1" in event.message and "revision 2" in event.message
    assert _snapshot(submitted_change) == before
    assert not Approval.objects.filter(approver=cab_member).exists()


@pytest.mark.django_db(transaction=True)
def test_a_refusal_inside_a_rolled_back_service_transaction_is_still_recorded(submitted_change, cab_member):
    services.change_update(actor=submitted_change.author, change=submitted_change, title="Revised")
    with pytest.raises(Conflict):
        services.approval_grant(actor=cab_member, change=submitted_change, revision=1)
    assert SecurityEvent.objects.get().kind == K.STALE_REVISION
    assert not Approval.objects.exists()


def test_a_role_refused_at_the_api_door_is_one_event(client_for, submitted_change, cab_member):
    url = f"/api/v1/changes/{submitted_change.pk}/schedule/"
    response = client_for(cab_member).post(url, {"start": "2030-01-01T00:00:00Z"}, format="json")
    assert response.status_code == 403
    (event,) = SecurityEvent.objects.all()
    assert (event.kind, event.source, event.actor_id) == (
        K.ACTION_UNAUTHORISED,
        "api.ChangeViewSet.schedule",
        cab_member.pk,
    )
    assert event.subject == f"POST {url}"
    assert _snapshot(submitted_change)[0] == ChangeStatus.SUBMITTED


def test_anonymous_api_calls_are_401_without_event(client_for):
    assert client_for(None).get("/api/v1/changes/").status_code == 401
    assert not SecurityEvent.objects.exists()


def test_a_bad_api_token_is_recorded(api_client):
    api_client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token", REMOTE_ADDR="192.0.2.80")
    assert api_client.get("/api/v1/changes/").status_code == 401
    (event,) = SecurityEvent.objects.all()
    assert (event.kind, event.source, event.address, event.key) == (
        K.API_AUTH_FAILED,
        "api.ChangeViewSet.list",
        "192.0.2.80",
        "address:192.0.2.80",
    )


def test_a_wrong_password_for_a_token_is_recorded_and_issues_nothing(api_client, make_user):
    make_user(Role.OPERATOR, username="olga", password=PASSWORD)
    response = api_client.post("/api/v1/auth/token/", {"username": "olga", "password": "guess"}, format="json")
    assert response.status_code == 400
    (event,) = SecurityEvent.objects.all()
    assert (event.kind, event.source, event.subject) == (K.API_AUTH_FAILED, "api.TokenIssueView", "username:olga")
    assert not Token.objects.exists()


def test_a_sign_in_lockout_is_recorded(make_user, settings):
    settings.AXES_FAILURE_LIMIT = 3
    make_user(Role.OPERATOR, username="olaf", password=PASSWORD)
    client = Client(REMOTE_ADDR="192.0.2.81")
    for _ in range(2):
        assert client.post("/login/", {"username": "olaf", "password": "nope"}).status_code == 200
    assert not SecurityEvent.objects.exists()  # plain failures are django-axes' to count
    assert client.post("/login/", {"username": "olaf", "password": "nope"}).status_code == 429
    assert client.post("/login/", {"username": "olaf", "password": PASSWORD}).status_code == 429
    (event,) = SecurityEvent.objects.all()
    assert (event.kind, event.source, event.subject, event.address) == (
        K.LOGIN_LOCKED_OUT,
        "auth.login",
        "username:olaf",
        "192.0.2.81",
    )
    assert event.count >= 2  # the locking attempt and the one refused while locked
    assert "_auth_user_id" not in client.session


def test_a_refused_page_is_one_event(make_user):
    operator = make_user(Role.OPERATOR, username="olga")
    response = page_client(operator).get("/audit/")
    assert response.status_code == 403
    (event,) = SecurityEvent.objects.all()
    assert (event.kind, event.source, event.actor_id, event.subject) == (
        K.ACTION_UNAUTHORISED,
        "web.web-audit:records",
        operator.pk,
        "GET /audit/",
    )
    assert "Auditor" in event.message
