"""The change page offers an action exactly when its service would accept it, for every role and status.

Each row renders the change page as one person and then asks the service itself (inside a savepoint that is
rolled back): the button is there iff the service accepts; when the service refuses, nothing changed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.utils import timezone

from approvals import services
from approvals.audit.models import DecisionRecord
from approvals.models import Approval, ChangeRequest
from approvals.models import TestEvidence as EvidenceFile
from ota_project.errors import DomainError
from ota_project.roles import Role
from rollouts import rollout_services
from rollouts.models import Rollout
from tests.web.helpers import html_of, page_client

pytestmark = pytest.mark.django_db

ROLES = ("author", "other_requester", "cab", "security", "operator", "auditor")
STATES = (
    "draft",
    "submitted",
    "changes_requested",
    "changes_requested_edited",
    "approved",
    "scheduled",
    "implementing",
    "completed",
    "cancelled",
)


def _comment(decide: Callable[..., Any]) -> Callable[[Any, ChangeRequest], Any]:
    return lambda user, change: decide(actor=user, change=change, revision=change.revision, comment="Looked at it.")


SERVICES: dict[str, Callable[[Any, ChangeRequest], Any]] = {
    "edit": lambda user, change: services.change_update(actor=user, change=change, title="Modem reconnect fix, v2"),
    "submit": lambda user, change: services.change_submit(actor=user, change=change),
    "cancel": lambda user, change: services.change_cancel(actor=user, change=change, reason="No longer needed."),
    "evidence": lambda user, change: services.evidence_add(
        actor=user, change=change, upload=SimpleUploadedFile("bench-report.pdf", b"%PDF-1.7 bench")
    ),
    # A start other than the one a scheduled change already has (the same start again is a retry, a no-op).
    "schedule": lambda user, change: services.change_schedule(
        actor=user, change=change, start=change.requested_window_start + timedelta(minutes=45)
    ),
    "start_rollout": lambda user, change: rollout_services.rollout_start(
        actor=user, change=change, start_workflow=False
    ),
    "approve": _comment(services.approval_grant),
    "reject": _comment(services.approval_reject),
    "request_changes": _comment(services.approval_request_changes),
    "post_review": lambda user, change: services.change_post_implementation_review(
        actor=user, change=change, comment="Went fine."
    ),
}


def _offered(html: str, change: ChangeRequest) -> dict[str, bool]:
    """Which actions the rendered page offers (its buttons and forms)."""
    return {
        "edit": f'href="/changes/{change.pk}/edit/"' in html,
        "submit": 'id="submit-change"' in html,
        "cancel": 'id="cancel-change"' in html,
        "evidence": 'id="evidence-form"' in html,
        "schedule": 'id="schedule-form"' in html,
        "start_rollout": 'id="start-rollout"' in html,
        "approve": 'name="decision" value="approved"' in html,
        "reject": 'name="decision" value="rejected"' in html,
        "request_changes": 'name="decision" value="changes_requested"' in html,
        "post_review": 'id="post-review-form"' in html,
    }


class _Undo(Exception):
    """Rolls back an accepted service call so the next row starts from the same change."""


def _accepted(service: Callable[[Any, ChangeRequest], Any], user: Any, change: ChangeRequest) -> bool:
    try:
        with transaction.atomic():
            service(user, ChangeRequest.objects.get(pk=change.pk))
            raise _Undo
    except _Undo:
        return True
    except DomainError:
        return False


def _state(change: ChangeRequest) -> tuple:
    fresh = ChangeRequest.objects.get(pk=change.pk)
    return (
        fresh.status,
        fresh.revision,
        fresh.updated_at,
        fresh.scheduled_start,
        fresh.post_review_done_at,
        list(DecisionRecord.objects.values_list("seq", flat=True)),
        Approval.objects.filter(change=fresh).count(),
        EvidenceFile.objects.filter(change=fresh).count(),
        Rollout.objects.filter(change=fresh).count(),
    )


def _build(state: str, people: dict[str, Any], approvers: tuple[Any, Any], fields: dict[str, Any]) -> ChangeRequest:
    """A change in `state`, moved there through the services."""
    author, operator = people["author"], people["operator"]
    change = services.change_create(actor=author, **fields)
    if state == "draft":
        return change
    change = services.change_submit(actor=author, change=change)
    if state == "submitted":
        return change
    if state.startswith("changes_requested"):
        change = services.approval_request_changes(actor=approvers[0], change=change, revision=1, comment="Fix it.")
        if state == "changes_requested_edited":
            change = services.change_update(actor=author, change=change, title="Modem reconnect fix (edited)")
        return change
    services.approval_grant(actor=approvers[0], change=change, revision=1)
    change = services.approval_grant(actor=approvers[1], change=change, revision=1)
    if state == "approved":
        return change
    if state == "cancelled":
        return services.change_cancel(actor=author, change=change, reason="Superseded.")
    if state == "scheduled":
        return services.change_schedule(actor=operator, change=change, start=timezone.now() - timedelta(minutes=30))
    rollout_services.rollout_start(actor=operator, change=change, start_workflow=False)
    change = ChangeRequest.objects.get(pk=change.pk)
    if state == "completed":
        change = services.change_mark_implemented(actor=operator, change=change, outcome="completed")
    return change


@pytest.fixture
def people(make_user) -> dict[str, Any]:
    """One person per row; the author also holds the operator role, so separation of duties is what refuses them."""
    return {
        "author": make_user(Role.REQUESTER, Role.OPERATOR, username="ada-author"),
        "other_requester": make_user(Role.REQUESTER, username="rob-requester"),
        "cab": make_user(Role.CAB_MEMBER, username="cid-cab"),
        "security": make_user(Role.SECURITY_OFFICER, username="sue-security"),
        "operator": make_user(Role.OPERATOR, username="otto-operator"),
        "auditor": make_user(Role.AUDITOR, username="aud-auditor"),
    }


@pytest.mark.parametrize("state", STATES)
def test_the_change_page_offers_an_action_exactly_when_the_service_accepts_it(
    state, people, cab_member, cab_member_2, change_fields
):
    change = _build(state, people, (cab_member, cab_member_2), change_fields)
    disagreements = []
    accepted_somewhere = set()
    for role in ROLES:
        user = people[role]
        response = page_client(user).get(f"/changes/{change.pk}/")
        assert response.status_code in (200, 404)  # a draft is its author's alone
        offered = _offered(html_of(response), change) if response.status_code == 200 else dict.fromkeys(SERVICES, False)
        for action, service in SERVICES.items():
            before = _state(change)
            accepted = _accepted(service, user, change)
            if accepted:
                accepted_somewhere.add(action)
            else:
                assert _state(change) == before, f"{role} {action} on a {state} change was refused but changed it"
            if offered[action] != accepted:
                disagreements.append(f"{role} {action}: page offers {offered[action]}, service accepts {accepted}")
    assert disagreements == [], f"{state} change"
    # The table means something: someone may act in every open status (a running rollout is acted on from its
    # dashboard, not the change page).
    assert accepted_somewhere or state in ("implementing", "cancelled")


def test_the_rows_cover_the_rules_that_drifted(people, cab_member, cab_member_2, change_fields):
    """Spot checks of the table: who may do what where the page used to decide on its own."""
    approved = _build("approved", people, (cab_member, cab_member_2), change_fields)
    assert _accepted(SERVICES["schedule"], people["operator"], approved)
    assert not _accepted(SERVICES["schedule"], people["author"], approved)  # an operator, but the author
    assert _accepted(SERVICES["start_rollout"], people["operator"], approved)
    assert not _accepted(SERVICES["start_rollout"], people["author"], approved)
    sent_back = _build("changes_requested", people, (cab_member, cab_member_2), change_fields)
    html = html_of(page_client(people["author"]).get(f"/changes/{sent_back.pk}/"))
    assert 'id="submit-change"' not in html and "edit the change before resubmitting" in html
    assert not _accepted(SERVICES["submit"], people["author"], sent_back)
