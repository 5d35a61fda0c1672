"""Change-control API contract: the flow through HTTP, a role matrix per endpoint, and bad input."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from approvals.audit.models import DecisionRecord
from approvals.choices import ChangeStatus
from approvals.models import Approval, ChangeRequest
from ota_project.roles import Role

pytestmark = pytest.mark.django_db


def _body(change_fields) -> dict:
    return {
        **{k: v for k, v in change_fields.items() if k not in ("release", "rollback_release")},
        "release": change_fields["release"].pk,
        "rollback_release": change_fields["rollback_release"].pk,
        "requested_window_start": change_fields["requested_window_start"].isoformat(),
        "requested_window_end": change_fields["requested_window_end"].isoformat(),
    }


def test_requester_files_and_two_others_approve_through_the_api(
    client_for, requester, cab_member, cab_member_2, change_fields
):
    response = client_for(requester).post("/api/v1/changes/", _body(change_fields), format="json")
    assert response.status_code == 201, response.json()
    change_id = response.json()["id"]
    assert response.json()["status"] == "draft"

    assert client_for(requester).post(f"/api/v1/changes/{change_id}/submit/").status_code == 200
    scope = client_for(cab_member).get(f"/api/v1/changes/{change_id}/scope/").json()
    assert scope["devices"] == 20 and scope["by_version"] == {"1.0.0": 20}

    refused = client_for(requester).post(f"/api/v1/changes/{change_id}/approve/", {"revision": 1}, format="json")
    assert refused.status_code == 403
    assert "author" in refused.json()["error"]["message"]

    first = client_for(cab_member).post(f"/api/v1/changes/{change_id}/approve/", {"revision": 1}, format="json")
    assert first.json()["policy"]["summary"] == "1 of 2 CAB"
    second = client_for(cab_member_2).post(
        f"/api/v1/changes/{change_id}/approve/", {"revision": 1, "comment": "ok"}, format="json"
    )
    assert second.status_code == 200 and second.json()["status"] == "approved"

    history = client_for(cab_member).get(f"/api/v1/changes/{change_id}/history/").json()["results"]
    assert [h["action"] for h in history][-1] == "change.approve"


def test_draft_is_visible_only_to_its_author(client_for, requester, make_user, change_fields):
    response = client_for(requester).post("/api/v1/changes/", _body(change_fields), format="json")
    change_id = response.json()["id"]
    other = make_user(Role.REQUESTER, username="other-requester")
    cab = make_user(Role.CAB_MEMBER, username="cab-looker")
    assert client_for(other).get(f"/api/v1/changes/{change_id}/").status_code == 404
    assert client_for(cab).get(f"/api/v1/changes/{change_id}/").status_code == 404
    assert client_for(cab).get("/api/v1/changes/").json()["count"] == 0
    assert client_for(requester).get(f"/api/v1/changes/{change_id}/").status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/changes/"),
        ("post", "/api/v1/changes/"),
        ("get", "/api/v1/changes/queue/"),
        ("get", "/api/v1/changes/{id}/"),
        ("patch", "/api/v1/changes/{id}/"),
        ("post", "/api/v1/changes/{id}/approve/"),
        ("post", "/api/v1/changes/{id}/schedule/"),
        ("get", "/api/v1/changes/{id}/policy/"),
        ("get", "/api/v1/approval-policies/"),
        ("get", "/api/v1/risk/questions/"),
        ("post", "/api/v1/scope/preview/"),
    ],
)
def test_anonymous_gets_401_and_users_without_a_role_403(client_for, submitted_change, make_user, method, path):
    url = path.format(id=submitted_change.pk)
    assert getattr(client_for(None), method)(url, {}, format="json").status_code == 401
    assert getattr(client_for(make_user()), method)(url, {}, format="json").status_code == 403


@pytest.mark.parametrize(
    ("role", "path", "expected"),
    [
        (Role.AUDITOR, "approve", 403),
        (Role.OPERATOR, "approve", 403),
        (Role.REQUESTER, "approve", 403),
        (Role.AUDITOR, "submit", 403),
        (Role.CAB_MEMBER, "schedule", 403),
        (Role.AUDITOR, "cancel", 403),
    ],
)
def test_wrong_role_is_refused_and_nothing_changes(client_for, submitted_change, make_user, role, path, expected):
    before = DecisionRecord.objects.count()
    user = make_user(role)
    body = {
        "approve": {"revision": 1},
        "submit": {},
        "schedule": {"start": submitted_change.requested_window_start.isoformat()},
        "cancel": {"reason": "not needed"},
    }[path]
    response = client_for(user).post(f"/api/v1/changes/{submitted_change.pk}/{path}/", body, format="json")
    assert response.status_code == expected
    submitted_change.refresh_from_db()
    assert submitted_change.status == ChangeStatus.SUBMITTED
    assert DecisionRecord.objects.count() == before and Approval.objects.count() == 0


def test_unknown_change_is_404(client_for, cab_member):
    assert client_for(cab_member).get("/api/v1/changes/999999/").status_code == 404
    assert client_for(cab_member).get("/api/v1/changes/not-a-number/").status_code == 404


def test_bad_input_gets_400_with_field_errors_and_writes_nothing(client_for, requester, change_fields):
    client = client_for(requester)
    cases = [
        {**_body(change_fields), "colour": "red"},
        {**_body(change_fields), "release": "abc"},
        {**_body(change_fields), "release": 999999},
        {**_body(change_fields), "requested_window_start": "yesterday"},
        {**_body(change_fields), "target_scope": {"hardware_models": ["no-such-model"]}},
        {**_body(change_fields), "rollout_plan": {"waves": [{"name": "x"}], "abort_policy": "halt"}},
        {**_body(change_fields), "risk_answers": {"safety_relevant": "maybe"}},
        {k: v for k, v in _body(change_fields).items() if k != "title"},
    ]
    for body in cases:
        response = client.post("/api/v1/changes/", body, format="json")
        assert response.status_code == 400, (body, response.content)
        assert response.json()["error"]["fields"], response.json()
    malformed = client.generic("POST", "/api/v1/changes/", "{not json", content_type="application/json")
    assert malformed.status_code == 400 and "error" in malformed.json()
    assert ChangeRequest.objects.count() == 0


def test_stale_revision_is_409(client_for, submitted_change, requester, cab_member):
    client_for(requester).patch(f"/api/v1/changes/{submitted_change.pk}/", {"title": "New title"}, format="json")
    response = client_for(cab_member).post(
        f"/api/v1/changes/{submitted_change.pk}/approve/", {"revision": 1}, format="json"
    )
    assert response.status_code == 409 and response.json()["error"]["code"] == "stale_revision"


def test_reject_without_comment_is_400(client_for, submitted_change, cab_member):
    response = client_for(cab_member).post(
        f"/api/v1/changes/{submitted_change.pk}/reject/", {"revision": 1}, format="json"
    )
    assert response.status_code == 400 and "comment" in response.json()["error"]["fields"]


def test_evidence_upload_and_download(client_for, requester, cab_member, change_fields):
    change_id = client_for(requester).post("/api/v1/changes/", _body(change_fields), format="json").json()["id"]
    upload = SimpleUploadedFile("hil-report.pdf", b"%PDF-1.7 evidence", content_type="application/pdf")
    response = client_for(requester).post(
        f"/api/v1/changes/{change_id}/evidence/", {"file": upload}, format="multipart"
    )
    assert response.status_code == 201, response.content
    evidence_id = response.json()["id"]
    bad = SimpleUploadedFile("..hidden-report", b"x")
    assert (
        client_for(requester)
        .post(f"/api/v1/changes/{change_id}/evidence/", {"file": bad}, format="multipart")
        .status_code
        == 400
    )
    client_for(requester).post(f"/api/v1/changes/{change_id}/submit/")
    download = client_for(cab_member).get(f"/api/v1/changes/{change_id}/evidence/{evidence_id}/")
    assert download.status_code == 200 and b"".join(download.streaming_content) == b"%PDF-1.7 evidence"


def test_scope_and_risk_preview(client_for, requester, fleet):
    scope = {"hardware_models": ["tcu-4g-r2"]}
    summary = client_for(requester).post("/api/v1/scope/preview/", {"target_scope": scope}, format="json").json()
    assert summary["devices"] == 20 and summary["fleet_share_percent"] == 20.0
    answers = {
        "safety_relevant": True,
        "component": "application",
        "tested_on_all_models": True,
        "rollback_tested": True,
        "security_fix": False,
    }
    risk = client_for(requester).post(
        "/api/v1/risk/preview/", {"target_scope": scope, "risk_answers": answers}, format="json"
    )
    assert risk.status_code == 200 and risk.json()["level"] == "high"
    bad = client_for(requester).post("/api/v1/scope/preview/", {"target_scope": {"tags": "pilot"}}, format="json")
    assert bad.status_code == 400


def test_cab_queue_lists_pending_changes_highest_risk_first(client_for, requester, cab_member, change_fields):
    from approvals import services

    low = services.change_submit(actor=requester, change=services.change_create(actor=requester, **change_fields))
    risky = dict(change_fields, risk_answers={**change_fields["risk_answers"], "safety_relevant": True}, title="Risky")
    high = services.change_submit(actor=requester, change=services.change_create(actor=requester, **risky))
    queue = client_for(cab_member).get("/api/v1/changes/queue/").json()["results"]
    assert [c["id"] for c in queue] == [high.pk, low.pk]
    assert json.dumps(queue[0]["policy"])  # progress is part of every queue row


def test_me_names_the_signed_in_user_by_id_and_role(client_for, make_user):
    person = make_user(Role.OPERATOR, Role.AUDITOR, username="omar")
    body = client_for(person).get("/api/v1/me/").json()
    assert body == {"id": person.pk, "username": "omar", "roles": ["auditor", "operator"]}
