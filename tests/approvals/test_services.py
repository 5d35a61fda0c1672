"""Change life cycle and separation of duties, enforced at the service whatever the entry point."""

from __future__ import annotations

import pytest

from approvals import services
from approvals.audit.models import DecisionRecord
from approvals.audit.records import chain_verify
from approvals.choices import ChangeStatus, ChangeType, RiskLevel
from approvals.models import Approval, ChangeRequest, ChangeTemplate
from approvals.selectors import change_decision_blockers, change_list_retrospective_overdue, change_policy_progress
from ota_project.errors import Conflict, InvalidInput, NotPermitted
from ota_project.roles import Role

pytestmark = pytest.mark.django_db


def _records() -> list[str]:
    return list(DecisionRecord.objects.values_list("action", flat=True))


def test_submitted_change_carries_computed_risk(submitted_change):
    assert submitted_change.status == ChangeStatus.SUBMITTED
    assert submitted_change.risk_level == RiskLevel.MODERATE
    assert submitted_change.risk_answers["safety_relevant"] is False
    assert _records() == ["change.create", "change.submit"]


def test_two_cab_members_approve_a_moderate_change(submitted_change, cab_member, cab_member_2):
    change = services.approval_grant(actor=cab_member, change=submitted_change, revision=1)
    assert change.status == ChangeStatus.IN_REVIEW
    assert change_policy_progress(change).summary() == "1 of 2 CAB"
    change = services.approval_grant(actor=cab_member_2, change=change, revision=1)
    assert change.status == ChangeStatus.APPROVED and change.approved_at is not None
    assert _records()[-2:] == ["approval.approved", "change.approve"]
    assert chain_verify().ok


def test_author_cannot_approve_own_change(make_user, change_fields):
    author = make_user(Role.REQUESTER, Role.CAB_MEMBER, username="both-hats")
    change = services.change_submit(actor=author, change=services.change_create(actor=author, **change_fields))
    before = _records()
    with pytest.raises(NotPermitted, match="author"):
        services.approval_grant(actor=author, change=change, revision=1)
    assert Approval.objects.count() == 0 and _records() == before
    assert "You are the author of this change; authors never approve their own change." in change_decision_blockers(
        author, change
    )


def test_one_person_counts_once(submitted_change, cab_member):
    services.approval_grant(actor=cab_member, change=submitted_change, revision=1)
    with pytest.raises(Conflict, match="already decided"):
        services.approval_grant(actor=cab_member, change=submitted_change, revision=1)
    submitted_change.refresh_from_db()
    assert submitted_change.status == ChangeStatus.IN_REVIEW


def test_role_outside_the_policy_cannot_approve(submitted_change, operator, auditor):
    for user in (operator, auditor):
        with pytest.raises(NotPermitted):
            services.approval_grant(actor=user, change=submitted_change, revision=1)
    assert Approval.objects.count() == 0


def test_high_risk_needs_the_security_officer(requester, change_fields, cab_member, cab_member_2, security_officer):
    change_fields["risk_answers"]["safety_relevant"] = True
    change = services.change_submit(actor=requester, change=services.change_create(actor=requester, **change_fields))
    assert change.risk_level == RiskLevel.HIGH
    services.approval_grant(actor=cab_member, change=change, revision=1)
    change = services.approval_grant(actor=cab_member_2, change=change, revision=1)
    assert change.status == ChangeStatus.IN_REVIEW
    assert "security officer pending" in change_policy_progress(change).summary()
    change = services.approval_grant(actor=security_officer, change=change, revision=1)
    assert change.status == ChangeStatus.APPROVED


def test_person_with_two_roles_fills_only_one_slot(requester, change_fields, cab_member, make_user):
    change_fields["risk_answers"]["safety_relevant"] = True
    change_fields["risk_answers"]["component"] = "application"
    change = services.change_submit(actor=requester, change=services.change_create(actor=requester, **change_fields))
    assert change.risk_level == RiskLevel.HIGH
    dual = make_user(Role.CAB_MEMBER, Role.SECURITY_OFFICER, username="dual-role")
    services.approval_grant(actor=dual, change=change, revision=1)
    change = services.approval_grant(actor=cab_member, change=change, revision=1)
    # 2 CAB + security officer needs three people; two people can never satisfy it.
    assert change.status == ChangeStatus.IN_REVIEW
    assert not change_policy_progress(change).satisfied


def test_edit_after_submission_bumps_revision_and_voids_approvals(
    submitted_change, requester, cab_member, cab_member_2
):
    services.approval_grant(actor=cab_member, change=submitted_change, revision=1)
    change = services.change_update(actor=requester, change=submitted_change, impact_analysis="Two reboots.")
    assert change.revision == 2 and change.status == ChangeStatus.SUBMITTED
    assert Approval.objects.get().voided_at is not None
    with pytest.raises(Conflict, match="revision"):
        services.approval_grant(actor=cab_member_2, change=change, revision=1)
    services.approval_grant(actor=cab_member_2, change=change, revision=2)
    change.refresh_from_db()
    assert change.status == ChangeStatus.IN_REVIEW  # the voided approval no longer counts
    assert "change.approvals_void" in _records()


def test_edit_of_approved_change_sends_it_back_to_review(submitted_change, requester, cab_member, cab_member_2):
    services.approval_grant(actor=cab_member, change=submitted_change, revision=1)
    change = services.approval_grant(actor=cab_member_2, change=submitted_change, revision=1)
    assert change.status == ChangeStatus.APPROVED
    plan = dict(change.rollout_plan, abort_policy="halt")
    change = services.change_update(actor=requester, change=change, rollout_plan=plan)
    assert change.status == ChangeStatus.SUBMITTED and change.revision == 2
    assert not change_policy_progress(change).satisfied


def test_rejection_needs_a_comment_and_is_final(submitted_change, cab_member, requester):
    with pytest.raises(InvalidInput):
        services.approval_reject(actor=cab_member, change=submitted_change, revision=1, comment="  ")
    assert Approval.objects.count() == 0
    change = services.approval_reject(actor=cab_member, change=submitted_change, revision=1, comment="No soak data.")
    assert change.status == ChangeStatus.REJECTED
    with pytest.raises(Conflict):
        services.change_update(actor=requester, change=change, title="retry")


def test_changes_requested_needs_an_edit_before_resubmission(submitted_change, cab_member, requester):
    change = services.approval_request_changes(
        actor=cab_member, change=submitted_change, revision=1, comment="Add evidence."
    )
    assert change.status == ChangeStatus.CHANGES_REQUESTED
    with pytest.raises(Conflict, match="edit"):
        services.change_submit(actor=requester, change=change)
    change = services.change_update(actor=requester, change=change, test_evidence_summary="HIL run 42 attached.")
    assert change.revision == 2 and change.status == ChangeStatus.CHANGES_REQUESTED
    change = services.change_submit(actor=requester, change=change)
    assert change.status == ChangeStatus.SUBMITTED


def test_only_the_author_edits_or_submits(submitted_change, make_user):
    other = make_user(Role.REQUESTER)
    with pytest.raises(NotPermitted):
        services.change_update(actor=other, change=submitted_change, title="hijack")
    submitted_change.refresh_from_db()
    assert submitted_change.title == "Modem reconnect fix" and submitted_change.revision == 1


def test_rollback_release_must_be_installed_on_targets(requester, change_fields, fleet):
    change_fields["target_scope"] = {"regions": ["eu-west"]}
    from tests.factories import DeviceFactory

    DeviceFactory.create(hardware_model=fleet["model"], region=fleet["region"], installed_version="0.9.0")
    change = services.change_create(actor=requester, **change_fields)
    with pytest.raises(InvalidInput) as refused:
        services.change_submit(actor=requester, change=change)
    assert "rollback_release" in refused.value.fields
    change.refresh_from_db()
    assert change.status == ChangeStatus.DRAFT and _records() == ["change.create"]


def test_release_must_support_every_targeted_model(requester, change_fields):
    change_fields["target_scope"] = {"hardware_models": ["tcu-4g-r2", "tcu-5g-r1"]}
    change = services.change_create(actor=requester, **change_fields)
    with pytest.raises(InvalidInput) as refused:
        services.change_submit(actor=requester, change=change)
    assert "tcu-5g-r1" in refused.value.fields["release"][0]


def test_invalid_shapes_are_refused_with_field_errors(requester, change_fields):
    bad = dict(change_fields, target_scope={"colours": ["red"]}, rollout_plan={"waves": []}, risk_answers={"x": 1})
    with pytest.raises(InvalidInput) as refused:
        services.change_create(actor=requester, **bad)
    assert {"target_scope", "rollout_plan", "risk_answers"} <= set(refused.value.fields)
    assert ChangeRequest.objects.count() == 0


def test_only_requesters_file_changes(cab_member, change_fields):
    with pytest.raises(NotPermitted):
        services.change_create(actor=cab_member, **change_fields)
    assert ChangeRequest.objects.count() == 0


def test_emergency_change_needs_reason_and_owes_a_retrospective(requester, change_fields, make_user, cab_member):
    with pytest.raises(InvalidInput, match="invalid"):
        services.change_create(actor=requester, change_type=ChangeType.EMERGENCY, **change_fields)
    change = services.change_create(
        actor=requester,
        change_type=ChangeType.EMERGENCY,
        emergency_reason="CVE under active exploitation",
        **change_fields,
    )
    change = services.change_submit(actor=requester, change=change)
    with pytest.raises(NotPermitted):
        services.approval_grant(actor=cab_member, change=change, revision=1)
    on_call = make_user(Role.EMERGENCY_CAB, username="ed-oncall")
    change = services.approval_grant(actor=on_call, change=change, revision=1)
    assert change.status == ChangeStatus.APPROVED
    assert change.retrospective_due_at is not None and change.retrospective_done_at is None
    assert change.approved_at is not None
    ChangeRequest.objects.filter(pk=change.pk).update(retrospective_due_at=change.approved_at.replace(year=2000))
    assert list(change_list_retrospective_overdue()) == [change]
    services.change_retrospective_complete(actor=cab_member, change=change, comment="Justified; patch verified.")
    assert list(change_list_retrospective_overdue()) == []


def test_standard_change_needs_an_active_template_within_its_risk(requester, change_fields, cab_member):
    template = ChangeTemplate.objects.create(name="Monthly patch", description="d", max_risk_level=RiskLevel.LOW)
    change = services.change_create(
        actor=requester, change_type=ChangeType.STANDARD, template=template, **change_fields
    )
    with pytest.raises(InvalidInput) as refused:
        services.change_submit(actor=requester, change=change)
    assert "risk_level" in refused.value.fields  # the scope makes it moderate, the template allows low
    template.max_risk_level = RiskLevel.MODERATE
    template.save()
    change = services.change_submit(actor=requester, change=change)
    assert services.approval_grant(actor=cab_member, change=change, revision=1).status == ChangeStatus.APPROVED


def test_schedule_by_operator_inside_window(submitted_change, cab_member, cab_member_2, operator, requester):
    services.approval_grant(actor=cab_member, change=submitted_change, revision=1)
    change = services.approval_grant(actor=cab_member_2, change=submitted_change, revision=1)
    with pytest.raises(NotPermitted):
        services.change_schedule(actor=requester, change=change, start=change.requested_window_start)
    with pytest.raises(InvalidInput):
        services.change_schedule(actor=operator, change=change, start=change.requested_window_end)
    change = services.change_schedule(actor=operator, change=change, start=change.requested_window_start)
    assert change.status == ChangeStatus.SCHEDULED
    assert _records()[-1] == "change.schedule"


def test_cancel_needs_reason(submitted_change, requester):
    with pytest.raises(InvalidInput):
        services.change_cancel(actor=requester, change=submitted_change, reason="")
    change = services.change_cancel(actor=requester, change=submitted_change, reason="Superseded by 1.1.1")
    assert change.status == ChangeStatus.CANCELLED


def test_plan_naming_an_unknown_region_is_refused(requester, change_fields):
    plan = dict(
        change_fields["rollout_plan"],
        maintenance_windows={"atlantis": [{"days": [0], "start": "01:00", "end": "03:00"}]},
    )
    with pytest.raises(InvalidInput) as refused:
        services.change_create(actor=requester, **{**change_fields, "rollout_plan": plan})
    assert "atlantis" in str(refused.value.fields)
    assert ChangeRequest.objects.count() == 0
