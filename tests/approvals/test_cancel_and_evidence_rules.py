"""Cancelling and attaching evidence: one rule (`<action>_refusal`) that the service enforces and the page shows."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction

from approvals import services
from approvals.audit.models import DecisionRecord
from approvals.choices import ChangeStatus
from approvals.models import ChangeRequest
from approvals.models import TestEvidence as EvidenceFile
from approvals.selectors import ROLLOUT_RUNNING_MESSAGE
from approvals.web.change_selectors import change_actions
from ota_project.errors import Conflict, DomainError
from ota_project.roles import Role
from tests.web.helpers import html_of, page_client, text_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def implementing(approved_change, operator):
    return services.change_mark_implementing(actor=operator, change=approved_change)


def _state(change: ChangeRequest) -> tuple:
    change = ChangeRequest.objects.get(pk=change.pk)
    return (
        change.status,
        change.revision,
        change.updated_at,
        list(DecisionRecord.objects.values_list("seq", flat=True)),
        EvidenceFile.objects.count(),
    )


@pytest.mark.parametrize("who", ["author", "cab"])
def test_a_change_whose_rollout_runs_cannot_be_cancelled_and_nothing_changes(implementing, requester, cab_member, who):
    actor = {"author": requester, "cab": cab_member}[who]
    before = _state(implementing)
    with pytest.raises(Conflict) as refused:
        services.change_cancel(actor=actor, change=implementing, reason="Stop it.")
    assert refused.value.message == ROLLOUT_RUNNING_MESSAGE and refused.value.code == "rollout_running"
    assert _state(implementing) == before
    assert not DecisionRecord.objects.filter(action="change.cancel").exists()


def test_a_closed_change_cannot_be_cancelled(implementing, operator, requester):
    completed = services.change_mark_implemented(actor=operator, change=implementing, outcome="completed")
    before = _state(completed)
    with pytest.raises(Conflict, match="A change that is completed cannot be cancelled"):
        services.change_cancel(actor=requester, change=completed, reason="Too late.")
    assert _state(completed) == before


def test_evidence_cannot_be_attached_once_the_rollout_runs(implementing, requester, settings):
    before = _state(implementing)
    upload = SimpleUploadedFile("late-report.pdf", b"%PDF-1.7 late")
    with pytest.raises(Conflict, match="A change that is implementing can no longer be edited"):
        services.evidence_add(actor=requester, change=implementing, upload=upload)
    assert _state(implementing) == before
    assert not settings.EVIDENCE_ROOT.exists() or not any(settings.EVIDENCE_ROOT.rglob("*"))


def test_cancelling_an_implementing_change_over_the_api_is_a_409_with_the_reason(implementing, requester, client_for):
    before = _state(implementing)
    response = client_for(requester).post(
        f"/api/v1/changes/{implementing.pk}/cancel/", {"reason": "Stop it."}, format="json"
    )
    assert response.status_code == 409
    assert response.json() == {"error": {"code": "rollout_running", "message": ROLLOUT_RUNNING_MESSAGE, "fields": {}}}
    assert _state(implementing) == before


def test_the_page_offers_no_cancel_button_while_the_rollout_runs_and_says_why(implementing, requester, cab_member):
    for viewer in (requester, cab_member):
        response = page_client(viewer).get(f"/changes/{implementing.pk}/")
        html = html_of(response)
        assert response.status_code == 200
        assert 'id="cancel-change"' not in html and f"/changes/{implementing.pk}/cancel/" not in html
        assert f"The change cannot be cancelled. {ROLLOUT_RUNNING_MESSAGE}" in text_of(response)
    html = html_of(page_client(requester).get(f"/changes/{implementing.pk}/"))
    assert 'id="evidence-form"' not in html and 'id="evidence-refusal"' in html


def test_the_page_offers_cancelling_a_submitted_change_without_a_refusal(submitted_change, requester):
    html = html_of(page_client(requester).get(f"/changes/{submitted_change.pk}/"))
    assert 'id="cancel-change"' in html and 'id="cancel-refusal"' not in html
    assert 'id="evidence-form"' in html and 'id="evidence-refusal"' not in html


def _service_allows(service, **kwargs) -> bool:
    """Run the service and roll it back: did it accept the action?"""
    try:
        with transaction.atomic():
            service(**kwargs)
            transaction.set_rollback(True)
    except DomainError:
        return False
    return True


@pytest.mark.parametrize("status", list(ChangeStatus))
def test_the_page_offers_cancel_and_evidence_exactly_when_the_service_accepts(
    approved_change, requester, cab_member, operator, make_user, status
):
    ChangeRequest.objects.filter(pk=approved_change.pk).update(status=status)
    change = ChangeRequest.objects.get(pk=approved_change.pk)
    auditor = make_user(Role.AUDITOR, username="anna-auditor")
    for viewer in (requester, cab_member, operator, auditor):
        actions = change_actions(viewer, change)
        cancelled = _service_allows(services.change_cancel, actor=viewer, change=change, reason="Withdrawn.")
        upload = SimpleUploadedFile("report.txt", b"bench results")
        attached = _service_allows(services.evidence_add, actor=viewer, change=change, upload=upload)
        assert (actions.may_cancel, actions.may_add_evidence) == (cancelled, attached), (viewer, status)
