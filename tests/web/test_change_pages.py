"""Change request pages: the CAB queue, the change page and its actions, the requester's forms (who sees what)."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import StreamingHttpResponse
from django.test import Client
from django.utils import timezone

from approvals import services
from approvals.audit.models import DecisionRecord
from approvals.choices import ChangeStatus
from approvals.models import Approval, ChangeRequest
from approvals.models import TestEvidence as EvidenceFile
from approvals.plans import Blackout, default_plan, plan_parse, wave_sizes
from approvals.selectors import plan_wave_preview
from devices.scope import scope_parse
from ota_project.roles import Role
from tests.change_fixtures import SAFE_ANSWERS
from tests.factories import DeviceFactory
from tests.support.html import Element, find, find_all, row_cells, visible_text
from tests.web.helpers import html_of, messages_of, page_client, text_of

pytestmark = pytest.mark.django_db

QUEUE = "/changes/"
NEW = "/changes/new/"
PREVIEW = "/changes/preview/"


def _records() -> int:
    return DecisionRecord.objects.count()


def _detail(change) -> str:
    return f"/changes/{change.pk}/"


def _file(requester, change_fields, **overrides) -> ChangeRequest:
    return services.change_create(actor=requester, **{**change_fields, **overrides})


def _submitted(requester, change_fields, **overrides) -> ChangeRequest:
    return services.change_submit(actor=requester, change=_file(requester, change_fields, **overrides))


# --- CAB queue ------------------------------------------------------------------------------------------------


def test_queue_sends_anonymous_visitors_to_sign_in(client):
    response = client.get(QUEUE)
    assert response.status_code == 302 and response["Location"] == "/login/?next=/changes/"


@pytest.mark.parametrize(
    ("role", "status"),
    [
        (Role.REQUESTER, 200),
        (Role.CAB_MEMBER, 200),
        (Role.EMERGENCY_CAB, 200),
        (Role.SECURITY_OFFICER, 200),
        (Role.OPERATOR, 200),
        (Role.AUDITOR, 200),
    ],
)
def test_queue_access_per_role(make_user, role, status):
    response = page_client(make_user(role)).get(QUEUE)
    assert response.status_code == status


def test_queue_without_a_role_is_refused(make_user):
    response = page_client(make_user()).get(QUEUE)
    assert response.status_code == 403
    assert "You need the" in text_of(response) and "role to see this page" in text_of(response)


@pytest.mark.parametrize("role", [Role.AUDITOR, Role.OPERATOR])
def test_readers_see_every_change_in_every_status_but_no_one_elses_drafts(
    make_user, role, requester, cab_member, change_fields
):
    pending = _submitted(requester, change_fields, title="Pending review")
    decided = _submitted(requester, change_fields, title="Sent back")
    services.approval_request_changes(actor=cab_member, change=decided, revision=1, comment="Add test evidence.")
    _file(requester, change_fields, title="Still a draft")

    reader = page_client(make_user(role))
    response = reader.get(QUEUE)

    html = html_of(response)
    assert response.status_code == 200 and find_all(html, "h1")[0].text() == "Change requests"
    assert sorted(re.findall(r'<tr data-change="(\d+)">', html)) == sorted([str(pending.pk), str(decided.pk)])
    assert "Still a draft" not in html
    assert "read-only" in text_of(response) and 'name="mine"' not in html
    sent_back = reader.get(QUEUE + "?status=changes_requested")
    assert re.findall(r'<tr data-change="(\d+)">', html_of(sent_back)) == [str(decided.pk)]


def test_queue_sorts_by_risk_then_window_and_says_policy_progress(requester, cab_member, change_fields):
    now = timezone.now()
    moderate_late = _submitted(
        requester, change_fields, title="Moderate late", requested_window_start=now + timedelta(hours=5)
    )
    moderate_soon = _submitted(
        requester, change_fields, title="Moderate soon", requested_window_start=now + timedelta(hours=1)
    )
    high = _submitted(
        requester,
        change_fields,
        title="High risk",
        risk_answers={**SAFE_ANSWERS, "safety_relevant": True},
        requested_window_start=now + timedelta(hours=9),
    )
    services.approval_grant(actor=cab_member, change=moderate_late, revision=1)
    _file(requester, change_fields, title="Still a draft")

    response = page_client(cab_member).get(QUEUE)

    html = html_of(response)
    assert response.status_code == 200
    rows = re.findall(r'<tr data-change="(\d+)">', html)
    assert rows == [str(high.pk), str(moderate_soon.pk), str(moderate_late.pk)]
    assert "Still a draft" not in html
    text = text_of(response)
    assert "0 of 2 CAB, security officer pending" in text
    assert "1 of 2 CAB" in text
    assert "rita-requester" in text and "1.1.0" in text
    assert "20" in [cell.text() for cell in find_all(html, "td", class_="num")], "scope size of 20 devices"


def test_queue_highlights_emergency_changes(requester, make_user, change_fields):
    reviewer = make_user(Role.EMERGENCY_CAB)
    _submitted(requester, change_fields, change_type="emergency", emergency_reason="Modems drop off the network.")
    html = html_of(page_client(reviewer).get(QUEUE))
    (badge,) = [badge for badge in find_all(html, "span", class_="badge") if badge.text() == "Emergency"]
    assert "badge-emergency" in badge.classes and badge.parent is not None and badge.parent.tag == "strong"


def test_queue_filters_by_type_risk_status_and_mine(make_user, requester, cab_member, change_fields):
    both = make_user(Role.REQUESTER, Role.CAB_MEMBER, username="hat-trick")
    own = _submitted(both, change_fields, title="My own")
    high = _submitted(requester, change_fields, title="Risky", risk_answers={**SAFE_ANSWERS, "safety_relevant": True})
    cancelled = services.change_cancel(
        actor=requester, change=_file(requester, change_fields, title="Gone"), reason="x"
    )
    client = page_client(both)

    def listed(query: str) -> set[int]:
        return {int(pk) for pk in re.findall(r'<tr data-change="(\d+)">', html_of(client.get(QUEUE + query)))}

    assert listed("") == {own.pk, high.pk}
    assert listed("?risk_level=high") == {high.pk}
    assert listed("?change_type=emergency") == set()
    assert listed("?mine=1") == {own.pk}
    assert listed("?status=cancelled") == {cancelled.pk}
    assert listed("?mine=1&status=cancelled") == set()


def test_requester_sees_only_their_own_changes_in_every_status(requester, make_user, change_fields):
    other = make_user(Role.REQUESTER, username="other-requester")
    draft = _file(requester, change_fields, title="My draft")
    submitted = _submitted(requester, change_fields, title="My submitted")
    theirs = _submitted(other, change_fields, title="Their change")
    response = page_client(requester).get(QUEUE)
    html = html_of(response)
    assert set(map(int, re.findall(r'<tr data-change="(\d+)">', html))) == {draft.pk, submitted.pk}
    assert "Their change" not in html and theirs.pk
    assert "<h1>My change requests</h1>" in html


def test_queue_empty_states(cab_member, requester, fleet):
    assert "Nothing is waiting for review." in text_of(page_client(cab_member).get(QUEUE))
    assert "You have not filed any change requests yet." in text_of(page_client(requester).get(QUEUE))
    assert "No change requests match these filters." in text_of(
        page_client(cab_member).get(QUEUE + "?risk_level=critical")
    )


# --- Change page ----------------------------------------------------------------------------------------------


def test_change_page_sends_anonymous_visitors_to_sign_in(client, submitted_change):
    response = client.get(_detail(submitted_change))
    assert response.status_code == 302 and response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("role", list(Role.values))
def test_every_role_reads_a_submitted_change(make_user, submitted_change, role):
    response = page_client(make_user(role)).get(_detail(submitted_change))
    assert response.status_code == 200
    assert html_of(response).count("<h1>") == 1


def test_drafts_are_visible_only_to_their_author(requester, cab_member, make_user, change_fields):
    draft = _file(requester, change_fields)
    assert page_client(requester).get(_detail(draft)).status_code == 200
    assert page_client(cab_member).get(_detail(draft)).status_code == 404
    assert page_client(make_user()).get(_detail(draft)).status_code == 403


def test_change_page_shows_release_scope_risk_waves_and_timeline(cab_member, submitted_change, fleet):
    response = page_client(cab_member).get(_detail(submitted_change))
    text = text_of(response)
    html = html_of(response)
    release = fleet["new"]
    assert release.artifact.sha256 in html
    assert "1.1.0 (release counter 1)" in text and "tcu-4g-r2" in text
    assert release.source_revision in text and "ci-builder-7" in text
    assert "1.0.0 on 20 devices" in text  # what it replaces
    assert re.search(r'id="scope-devices">20<', html)
    assert "20.0% of the active fleet" in text
    assert "Devices by hardware model" in text and "Devices by region" in text
    # Risk: the answers, the score and the level.
    assert "Level Moderate with a score of 3" in text
    assert "Share of the active fleet targeted (%) (computed) 20.0 3" in text
    # Waves: 2 pilots, 10% of the 18 others rounded up, then the rest.
    wave_rows = re.findall(r'<th scope="row">\d\. (\w+)</th>\s*<td>[^<]*</td>\s*<td class="num">(\d+)</td>', html)
    assert wave_rows == [("pilot", "2"), ("early", "2"), ("fleet", "16")]
    assert "Policy progress: 0 of 2 CAB" in text
    assert "change.create" in text and "change.submit" in text
    assert "No scheduled or running change targets these devices" in text


def test_reviewer_sees_decision_buttons_and_author_sees_why_not(requester, cab_member, submitted_change):
    html = html_of(page_client(cab_member).get(_detail(submitted_change)))
    for label in ("Approve", "Reject", "Request changes"):
        assert f">{label}</button>" in html
    author_page = page_client(requester).get(_detail(submitted_change))
    assert ">Approve</button>" not in html_of(author_page)
    assert "You are the author of this change" in text_of(author_page)


def test_page_explains_refusals_in_words(operator, cab_member, approved_change, make_user, change_fields):
    other = make_user(Role.REQUESTER, username="other-author")
    high = _submitted(other, change_fields, risk_answers={**SAFE_ANSWERS, "safety_relevant": True})
    emergency_only = make_user(Role.EMERGENCY_CAB)
    text = text_of(page_client(emergency_only).get(_detail(high)))
    assert "You cannot approve: Your role is not needed by the policy for a high-risk normal change" in text
    assert ">Reject</button>" in html_of(page_client(emergency_only).get(_detail(high)))
    operator_page = page_client(operator).get(_detail(high))
    assert "Your roles (operator) do not take part in change decisions" in text_of(operator_page)
    assert "Your role is not needed" not in text_of(operator_page)
    assert ">Reject</button>" not in html_of(operator_page)
    auditor_page = page_client(make_user(Role.AUDITOR)).get(_detail(high))
    assert "Your roles (auditor) do not take part in change decisions" in text_of(auditor_page)
    assert ">Approve</button>" not in html_of(auditor_page)
    services.approval_grant(actor=cab_member, change=high, revision=1)
    assert "You already approved revision 1" in text_of(page_client(cab_member).get(_detail(high)))
    assert "The change is not in review; it is approved." in text_of(
        page_client(cab_member).get(_detail(approved_change))
    )


def test_operator_gets_a_start_rollout_link_on_an_approved_change(approved_change, operator, cab_member):
    link = f'href="/rollouts/start/?change={approved_change.pk}"'
    assert link in html_of(page_client(operator).get(_detail(approved_change)))
    assert link not in html_of(page_client(cab_member).get(_detail(approved_change)))


def test_status_filter_reads_any_status_on_my_changes(requester, cab_member, fleet):
    assert '<option value="" selected>Any status</option>' in html_of(page_client(requester).get(QUEUE))
    assert '<option value="" selected>Awaiting review</option>' in html_of(page_client(cab_member).get(QUEUE))


# --- Decisions ------------------------------------------------------------------------------------------------


def test_two_cab_members_approve_through_the_page(submitted_change, cab_member, cab_member_2):
    url = f"/changes/{submitted_change.pk}/decide/"
    response = page_client(cab_member).post(url, {"revision": 1, "decision": "approved", "comment": "LGTM"})
    assert response.status_code == 302 and response["Location"] == _detail(submitted_change)
    assert "You approved revision 1." in messages_of(response)
    response = page_client(cab_member_2).post(url, {"revision": 1, "decision": "approved"}, follow=True)
    submitted_change.refresh_from_db()
    assert submitted_change.status == ChangeStatus.APPROVED
    assert "The policy is satisfied: the change is approved." in text_of(response)
    assert Approval.objects.filter(change=submitted_change, comment="LGTM").exists()


def test_author_is_refused_when_approving_and_nothing_changes(make_user, change_fields):
    author = make_user(Role.REQUESTER, Role.CAB_MEMBER, username="two-hats")
    change = _submitted(author, change_fields)
    before = _records()
    response = page_client(author).post(f"/changes/{change.pk}/decide/", {"revision": 1, "decision": "approved"})
    assert response.status_code == 403
    assert "You are the author of this change; authors never approve their own change." in text_of(response)
    change.refresh_from_db()
    assert change.status == ChangeStatus.SUBMITTED and not Approval.objects.exists() and _records() == before


def test_stale_revision_is_refused(submitted_change, requester, cab_member):
    services.change_update(actor=requester, change=submitted_change, impact_analysis="Two reboots.")
    before = _records()
    response = page_client(cab_member).post(
        f"/changes/{submitted_change.pk}/decide/", {"revision": 1, "decision": "approved"}
    )
    assert response.status_code == 409
    assert "You reviewed revision 1, but the change is now at revision 2" in text_of(response)
    assert not Approval.objects.exists() and _records() == before


def test_reject_needs_a_comment_then_rejects(submitted_change, cab_member):
    url = f"/changes/{submitted_change.pk}/decide/"
    before = _records()
    response = page_client(cab_member).post(url, {"revision": 1, "decision": "rejected", "comment": " "})
    assert response.status_code == 400
    assert "A rejection or a request for changes needs a comment." in text_of(response)
    submitted_change.refresh_from_db()
    assert submitted_change.status == ChangeStatus.SUBMITTED and _records() == before
    response = page_client(cab_member).post(
        url, {"revision": 1, "decision": "rejected", "comment": "No rollback test."}
    )
    submitted_change.refresh_from_db()
    assert response.status_code == 302 and submitted_change.status == ChangeStatus.REJECTED


def test_request_changes_sends_the_change_back(submitted_change, cab_member, requester):
    response = page_client(cab_member).post(
        f"/changes/{submitted_change.pk}/decide/",
        {"revision": 1, "decision": "changes_requested", "comment": "Add the bench report."},
    )
    submitted_change.refresh_from_db()
    assert response.status_code == 302 and submitted_change.status == ChangeStatus.CHANGES_REQUESTED
    assert "Add the bench report." in text_of(page_client(requester).get(_detail(submitted_change)))


def test_decision_form_rejects_an_unknown_decision(submitted_change, cab_member):
    before = _records()
    response = page_client(cab_member).post(f"/changes/{submitted_change.pk}/decide/", {"revision": 1, "decision": "x"})
    assert response.status_code == 400 and _records() == before and not Approval.objects.exists()


# --- Submit, cancel, schedule, evidence ----------------------------------------------------------------------


def test_author_submits_a_draft(requester, cab_member, change_fields):
    draft = _file(requester, change_fields)
    response = page_client(requester).post(f"/changes/{draft.pk}/submit/")
    draft.refresh_from_db()
    assert response.status_code == 302 and draft.status == ChangeStatus.SUBMITTED
    assert f"CR-{draft.pk}" in text_of(page_client(cab_member).get(QUEUE))


def test_submitting_an_unready_draft_lists_the_problems_and_changes_nothing(requester, change_fields):
    draft = _file(requester, change_fields, risk_answers={})
    before = _records()
    response = page_client(requester).post(f"/changes/{draft.pk}/submit/")
    assert response.status_code == 400
    assert "The change is not ready for review." in text_of(response) and "Unanswered" in text_of(response)
    draft.refresh_from_db()
    assert draft.status == ChangeStatus.DRAFT and _records() == before


def test_cancel_needs_a_reason_and_only_author_or_cab(submitted_change, requester, operator, make_user):
    url = f"/changes/{submitted_change.pk}/cancel/"
    assert page_client(operator).post(url, {"cancel-reason": "no"}).status_code == 403
    other = make_user(Role.REQUESTER, username="not-the-author")
    before = _records()
    response = page_client(other).post(url, {"cancel-reason": "mine now"})
    assert response.status_code == 403 and "Only the author or a CAB member may cancel" in text_of(response)
    response = page_client(requester).post(url, {"cancel-reason": ""})
    assert response.status_code == 400
    submitted_change.refresh_from_db()
    assert submitted_change.status == ChangeStatus.SUBMITTED and _records() == before
    response = page_client(requester).post(url, {"cancel-reason": "Superseded by 1.1.1."})
    submitted_change.refresh_from_db()
    assert response.status_code == 302 and submitted_change.status == ChangeStatus.CANCELLED


def test_operator_schedules_inside_the_window(approved_change, operator):
    url = f"/changes/{approved_change.pk}/schedule/"
    outside = (approved_change.requested_window_end + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    before = _records()
    response = page_client(operator).post(url, {"schedule-start": outside})
    assert response.status_code == 400 and "The start must fall inside the requested window." in text_of(response)
    approved_change.refresh_from_db()
    assert approved_change.status == ChangeStatus.APPROVED and _records() == before
    inside = (timezone.now() + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S")
    response = page_client(operator).post(url, {"schedule-start": inside})
    approved_change.refresh_from_db()
    assert response.status_code == 302 and approved_change.status == ChangeStatus.SCHEDULED


def test_schedule_is_refused_to_other_roles(approved_change, cab_member):
    response = page_client(cab_member).post(
        f"/changes/{approved_change.pk}/schedule/", {"schedule-start": "2030-01-01T00:00"}
    )
    approved_change.refresh_from_db()
    assert response.status_code == 403 and approved_change.status == ChangeStatus.APPROVED


def test_evidence_upload_after_submission_bumps_revision_and_is_downloadable(submitted_change, requester, cab_member):
    services.approval_grant(actor=cab_member, change=submitted_change, revision=1)
    page = text_of(page_client(requester).get(_detail(submitted_change)))
    assert "Adding evidence after submission makes revision 2" in page
    upload = SimpleUploadedFile("bench-report.txt", b"all green\n")
    response = page_client(requester).post(f"/changes/{submitted_change.pk}/evidence/", {"file": upload})
    assert response.status_code == 302
    submitted_change.refresh_from_db()
    assert submitted_change.revision == 2 and Approval.objects.get().voided_at is not None
    html = html_of(page_client(cab_member).get(_detail(submitted_change)))
    link = re.search(r'<a href="([^"]+)" download>bench-report.txt</a>', html)
    assert link is not None
    download = page_client(cab_member).get(link.group(1))
    assert isinstance(download, StreamingHttpResponse)  # the evidence file is streamed
    assert download.status_code == 200 and download.getvalue() == b"all green\n"


def test_bad_evidence_file_name_is_refused_and_nothing_changes(submitted_change, requester):
    before = _records()
    upload = SimpleUploadedFile("bench report (final).txt", b"x")
    response = page_client(requester).post(f"/changes/{submitted_change.pk}/evidence/", {"file": upload})
    assert response.status_code == 400 and "Invalid file name." in text_of(response)
    submitted_change.refresh_from_db()
    assert submitted_change.revision == 1 and not EvidenceFile.objects.exists() and _records() == before


def test_conflicts_list_overlapping_scheduled_changes_and_blackouts(
    requester, operator, cab_member, cab_member_2, change_fields
):
    other = _submitted(requester, change_fields, title="Earlier change")
    for reviewer in (cab_member, cab_member_2):
        services.approval_grant(actor=reviewer, change=other, revision=1)
    services.change_schedule(actor=operator, change=other, start=timezone.now())
    soon = timezone.now() + timedelta(days=1)
    freeze = Blackout(soon.isoformat(), (soon + timedelta(hours=6)).isoformat(), "Holiday freeze")
    plan = replace(default_plan(), blackout_windows=(freeze,))
    change = _submitted(requester, change_fields, rollout_plan=plan)
    text = text_of(page_client(cab_member).get(_detail(change)))
    assert f"CR-{other.pk} Earlier change" in text and "overlaps this window" in text
    assert "Holiday freeze" in text


def test_emergency_retrospective_is_recorded_by_a_reviewer(requester, make_user, cab_member, change_fields):
    reviewer = make_user(Role.EMERGENCY_CAB, username="erin-ecab")
    change = _submitted(requester, change_fields, change_type="emergency", emergency_reason="Modems drop off.")
    services.approval_grant(actor=reviewer, change=change, revision=1)
    url = f"/changes/{change.pk}/retrospective/"
    assert "Retrospective review (emergency change)" in text_of(page_client(cab_member).get(_detail(change)))
    before = _records()
    assert page_client(cab_member).post(url, {"retrospective-comment": ""}).status_code == 400
    assert _records() == before
    response = page_client(cab_member).post(url, {"retrospective-comment": "Justified; the fix held."})
    change.refresh_from_db()
    assert response.status_code == 302 and change.retrospective_done_at is not None
    assert "Retrospective review (emergency change)" not in text_of(page_client(cab_member).get(_detail(change)))


# --- Requester forms -----------------------------------------------------------------------------------------


def _form_data(fleet: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    now = timezone.now()
    data: dict[str, Any] = {
        "title": "Modem reconnect fix",
        "change_type": "normal",
        "template": "",
        "emergency_reason": "",
        "justification": "Units lose LTE after tunnel handover.",
        "release": fleet["new"].pk,
        "rollback_release": fleet["old"].pk,
        "scope_hardware_models": ["tcu-4g-r2"],
        "scope_devices": "",
        "impact_analysis": "One reboot per unit.",
        "test_evidence_summary": "",
        "requested_window_start": (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
        "requested_window_end": (now + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M"),
        "risk_safety_relevant": "false",
        "risk_component": "application",
        "risk_tested_on_all_models": "true",
        "risk_rollback_tested": "true",
        "risk_security_fix": "false",
        "abort_policy": "halt_and_rollback",
        "plan_settings": '{"monitor_interval_seconds": 30}',
        "waves-TOTAL_FORMS": "2",
        "waves-INITIAL_FORMS": "0",
        "waves-0-name": "pilot",
        "waves-0-cohort_kind": "pilot",
        "waves-0-soak_seconds": "3600",
        "waves-0-min_sample": "2",
        "waves-0-success_threshold": "0.95",
        "waves-0-failure_threshold": "0.05",
        "waves-0-promotion": "manual",
        "waves-1-name": "fleet",
        "waves-1-cohort_kind": "percent",
        "waves-1-cohort_value": "100",
        "waves-1-soak_seconds": "7200",
        "waves-1-min_sample": "5",
        "waves-1-success_threshold": "0.98",
        "waves-1-failure_threshold": "0.02",
        "waves-1-promotion": "auto",
    }
    data.update(overrides)
    return data


def test_create_page_access_per_role(client, make_user, fleet):
    assert client.get(NEW)["Location"] == "/login/?next=/changes/new/"
    for role in (Role.CAB_MEMBER, Role.SECURITY_OFFICER, Role.OPERATOR, Role.AUDITOR):
        assert page_client(make_user(role)).get(NEW).status_code == 403
    response = page_client(make_user(Role.REQUESTER)).get(NEW)
    html = html_of(response)
    assert response.status_code == 200 and html.count("<h1>") == 1
    for label in ("Title", "Release to roll out", "Rollback release", "Hardware models", "Requested window start"):
        assert f">{label} " in html or f">{label}<" in html, label
    assert 'hx-post="/changes/preview/"' in html


def test_requester_files_a_draft_through_the_form(requester, fleet):
    response = page_client(requester).post(NEW, _form_data(fleet))
    change = ChangeRequest.objects.get()
    assert response.status_code == 302 and response["Location"] == _detail(change)
    assert change.status == ChangeStatus.DRAFT and change.author == requester
    assert change.target_scope == {"hardware_models": ["tcu-4g-r2"]}
    assert change.risk_answers == SAFE_ANSWERS and change.risk_level == "moderate"
    assert change.plan is not None
    assert [w.name for w in change.plan.waves] == ["pilot", "fleet"]
    assert change.plan.deadlines == default_plan().deadlines


def test_service_field_errors_land_on_the_form_and_nothing_is_written(requester, fleet):
    before = _records()
    data = _form_data(
        fleet,
        rollback_release=fleet["new"].pk,
        **{"waves-1-cohort_value": "50"},
    )
    response = page_client(requester).post(NEW, data)
    text = text_of(response)
    assert response.status_code == 400
    assert "The rollback release must differ from the release being rolled out." in text
    assert "The last wave must take the remaining targets" in text
    assert not ChangeRequest.objects.exists() and _records() == before


def test_plan_settings_errors_from_the_parser_land_on_the_settings_field(requester, fleet):
    before = _records()
    settings = '{"monitor_interval_seconds": 0, "colour": "red"}'
    response = page_client(requester).post(NEW, _form_data(fleet, plan_settings=settings))
    assert response.status_code == 400
    html = html_of(response)
    assert re.search(r'id_plan_settings_error_\d">monitor interval seconds: An integer number of seconds', html)
    assert re.search(r'id_plan_settings_error_\d">colour: Unknown field', html)
    assert not ChangeRequest.objects.exists() and _records() == before


def _field_errors(html: str, field_id: str) -> list[str]:
    """The error lines shown under one field of the change form."""
    errors = find_all(html, "p", class_="field-error")
    return [error.text() for error in errors if error.attrs.get("id", "").startswith(f"{field_id}_error_")]


def test_a_bad_wave_cohort_is_shown_next_to_that_waves_cohort(requester, fleet):
    response = page_client(requester).post(NEW, _form_data(fleet, **{"waves-1-cohort_value": "50"}))
    assert response.status_code == 400
    html = html_of(response)
    (error,) = _field_errors(html, "id_waves-1-cohort_kind")
    assert error.startswith("The last wave must take the remaining targets")
    assert _field_errors(html, "id_waves-0-cohort_kind") == [] and _field_errors(html, "id_plan_settings") == []
    assert not ChangeRequest.objects.exists()


def test_wave_errors_skip_removed_waves(requester, fleet):
    """The plan's second wave is the third form when the requester removed the second."""
    data = _form_data(fleet, **{"waves-TOTAL_FORMS": "3"})
    for key in [k for k in data if k.startswith("waves-1-")]:
        data[key.replace("waves-1-", "waves-2-")] = data.pop(key)
    data.update({f"waves-1-{k}": data[f"waves-2-{k}"] for k in ("soak_seconds", "min_sample", "promotion")})
    data.update({"waves-1-name": "gone", "waves-1-cohort_kind": "count", "waves-1-cohort_value": "3"})
    data.update({"waves-1-success_threshold": "0.9", "waves-1-failure_threshold": "0.1", "waves-1-DELETE": "on"})
    data["waves-2-failure_threshold"] = "0.5"  # 0.98 + 0.5 > 1
    response = page_client(requester).post(NEW, data)
    assert response.status_code == 400
    html = html_of(response)
    assert _field_errors(html, "id_waves-2-failure_threshold") == [
        "success_threshold + failure_threshold must not exceed 1."
    ]
    assert _field_errors(html, "id_waves-1-failure_threshold") == []
    assert not ChangeRequest.objects.exists()


def test_a_bad_blackout_is_shown_next_to_the_settings_field(requester, fleet):
    settings = '{"blackout_windows": [{"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}]}'
    response = page_client(requester).post(NEW, _form_data(fleet, plan_settings=settings))
    assert response.status_code == 400
    assert _field_errors(html_of(response), "id_plan_settings") == [
        "blackout windows: Blackout start and end are ISO times with a zone, end after start."
    ]
    assert not ChangeRequest.objects.exists()


def test_an_unknown_region_in_the_settings_is_shown_next_to_the_settings_field(requester, fleet):
    settings = '{"maintenance_windows": {"mars-1": [{"days": [0], "start": "01:00", "end": "04:00"}]}}'
    response = page_client(requester).post(NEW, _form_data(fleet, plan_settings=settings))
    assert response.status_code == 400
    assert _field_errors(html_of(response), "id_plan_settings") == ["regions: Unknown region codes: mars-1."]
    assert not ChangeRequest.objects.exists()


def test_plan_wide_and_scope_wide_errors_are_shown_at_their_sections_top(requester, fleet):
    data = _form_data(fleet, scope_hardware_models=[], **{"waves-1-name": "pilot"})
    response = page_client(requester).post(NEW, data)
    assert response.status_code == 400
    sections = {}  # legend -> the errors at the top of that fieldset
    for fieldset in find_all(html_of(response), "fieldset"):
        children = [child for child in fieldset.children if isinstance(child, Element)]
        if children and children[0].tag == "legend":
            errors = [child.text() for child in children if child.tag == "p" and "field-error" in child.classes]
            sections[children[0].text()] = errors
    assert sections["Target scope"] == [
        "The scope is empty: name hardware models, regions, vehicle types, tags or devices."
    ]
    assert sections["Rollout plan"] == ["Wave names must be unique."]
    assert not ChangeRequest.objects.exists()


def test_form_shape_errors_are_shown_per_field(requester, fleet):
    response = page_client(requester).post(NEW, _form_data(fleet, title="", plan_settings="{not json"))
    assert response.status_code == 400
    assert re.search(r'id_title_error_1">This field is required', html_of(response))
    assert "Not valid JSON" in text_of(response)
    assert not ChangeRequest.objects.exists()


def test_add_wave_redisplays_the_form_with_one_more_wave(requester, fleet):
    response = page_client(requester).post(NEW, {**_form_data(fleet), "add_wave": "1"})
    html = html_of(response)
    assert response.status_code == 200 and not ChangeRequest.objects.exists()
    assert 'name="waves-TOTAL_FORMS" value="3"' in html
    assert re.search(r'name="waves-2-name"[^>]*value="fleet"', html)
    assert re.search(r'name="waves-1-name"[^>]*value="wave-2"', html)
    assert re.search(r'name="waves-1-cohort_value"[^>]*value="25"', html)


def test_removed_waves_are_left_out_of_the_plan(requester, fleet):
    data = _form_data(fleet, **{"waves-TOTAL_FORMS": "3"})
    for key in [k for k in data if k.startswith("waves-1-")]:
        data[key.replace("waves-1-", "waves-2-")] = data.pop(key)
    data.update({"waves-1-name": "middle", "waves-1-cohort_kind": "count", "waves-1-cohort_value": "3"})
    data.update({f"waves-1-{k}": data[f"waves-2-{k}"] for k in ("soak_seconds", "min_sample", "promotion")})
    data.update({"waves-1-success_threshold": "0.9", "waves-1-failure_threshold": "0.1", "waves-1-DELETE": "on"})
    response = page_client(requester).post(NEW, data)
    assert response.status_code == 302
    plan = ChangeRequest.objects.get().plan
    assert plan is not None
    assert [w.name for w in plan.waves] == ["pilot", "fleet"]


def test_live_preview_counts_devices_risk_and_waves(requester, fleet):
    response = page_client(requester).post(PREVIEW, _form_data(fleet))
    text = text_of(response)
    assert response.status_code == 200
    assert "20 active devices (20.0% of the active fleet)" in text and "tcu-4g-r2 20" in text
    assert "Risk level Moderate (score 3)" in text
    assert re.findall(r"<li>(\w+): <strong>(\d+)</strong>", html_of(response)) == [("pilot", "2"), ("fleet", "18")]
    assert html_of(response).count('hx-swap-oob="innerHTML"') == 2
    # Two pilot devices are 2% of the fleet; a safety-relevant change scores 4 (moderate) and a rule raises it.
    pilots_only = _form_data(fleet, scope_hardware_models=[], scope_tags=["pilot"], risk_safety_relevant="true")
    text = text_of(page_client(requester).post(PREVIEW, pilots_only))
    assert "2 active devices" in text
    assert "Risk level High (score 4; the score alone gives moderate)" in text
    assert "Raised by: Safety-relevant changes are at least high." in text


def test_live_preview_reports_problems_instead_of_numbers(requester, fleet):
    response = page_client(requester).post(PREVIEW, _form_data(fleet, scope_hardware_models=[], scope_devices="NOPE-1"))
    assert response.status_code == 200 and "Unknown: NOPE-1" in text_of(response)
    assert Client().post(PREVIEW, {}).status_code == 302


def test_preview_is_for_requesters(cab_member, fleet):
    assert page_client(cab_member).post(PREVIEW, _form_data(fleet)).status_code == 403


def test_edit_page_only_for_the_author(submitted_change, requester, make_user, cab_member):
    url = f"/changes/{submitted_change.pk}/edit/"
    other = make_user(Role.REQUESTER, username="someone-else")
    response = page_client(other).get(url)
    assert response.status_code == 403 and "Only the author of this change may edit it" in text_of(response)
    assert page_client(cab_member).get(url).status_code == 403
    response = page_client(requester).get(url)
    assert response.status_code == 200
    assert "Saving an edit makes revision 2" in text_of(response)


def test_untouched_edit_changes_nothing(submitted_change, requester, cab_member):
    services.approval_grant(actor=cab_member, change=submitted_change, revision=1)
    url = f"/changes/{submitted_change.pk}/edit/"
    html = html_of(page_client(requester).get(url))
    data = _form_values(html)
    before = _records()
    response = page_client(requester).post(url, data)
    submitted_change.refresh_from_db()
    assert response.status_code == 302, text_of(response)[:3000]
    assert "Nothing changed." in messages_of(response)
    assert submitted_change.revision == 1 and _records() == before
    assert Approval.objects.get().voided_at is None


def test_edit_after_submission_bumps_revision_and_voids_approvals(submitted_change, requester, cab_member):
    services.approval_grant(actor=cab_member, change=submitted_change, revision=1)
    url = f"/changes/{submitted_change.pk}/edit/"
    data = _form_values(html_of(page_client(requester).get(url)))
    data["impact_analysis"] = "Two reboots per unit."
    response = page_client(requester).post(url, data)
    submitted_change.refresh_from_db()
    assert response.status_code == 302
    assert submitted_change.revision == 2 and submitted_change.impact_analysis == "Two reboots per unit."
    assert Approval.objects.get().voided_at is not None
    assert any("Saved as revision 2" in m for m in messages_of(response))


def test_untouched_edit_of_a_plan_stating_no_stratification_changes_nothing(requester, cab_member, change_fields):
    plan = default_plan()
    plan = replace(plan, waves=tuple(replace(wave, stratify=False) for wave in plan.waves))
    change = _submitted(requester, change_fields, rollout_plan=plan)
    services.approval_grant(actor=cab_member, change=change, revision=1)
    url = f"/changes/{change.pk}/edit/"
    data = _form_values(html_of(page_client(requester).get(url)))
    before = _records()
    response = page_client(requester).post(url, data)
    change.refresh_from_db()
    assert response.status_code == 302 and "Nothing changed." in messages_of(response)
    assert change.revision == 1 and _records() == before and change.rollout_plan == plan.to_json()


def test_editing_one_wave_sends_the_new_plan(submitted_change, requester):
    url = f"/changes/{submitted_change.pk}/edit/"
    data = _form_values(html_of(page_client(requester).get(url)))
    data["waves-1-soak_seconds"] = "60"
    response = page_client(requester).post(url, data)
    submitted_change.refresh_from_db()
    assert response.status_code == 302 and submitted_change.revision == 2
    assert [wave.soak_seconds for wave in submitted_change.plan.waves] == [3600, 60, 7200]
    assert submitted_change.plan.deadlines == default_plan().deadlines


def test_edit_page_previews_the_stored_change(submitted_change, requester):
    response = page_client(requester).get(f"/changes/{submitted_change.pk}/edit/")
    waves = re.findall(r"<li>(\w+): <strong>(\d+)</strong>", html_of(response))
    assert waves == [("pilot", "2"), ("early", "2"), ("fleet", "16")]
    assert "20 active devices" in text_of(response) and "Risk level Moderate (score 3)" in text_of(response)


def test_finished_changes_cannot_be_edited(submitted_change, requester, cab_member):
    services.approval_reject(actor=cab_member, change=submitted_change, revision=1, comment="no")
    response = page_client(requester).get(f"/changes/{submitted_change.pk}/edit/")
    assert response.status_code == 302 and "can no longer be edited" in " ".join(messages_of(response))


def _form_values(html: str) -> dict[str, Any]:
    """The values a browser would post for the change form as rendered."""
    form_match = re.search(r'<form method="post" id="change-form".*?</form>', html, re.S)
    assert form_match is not None
    form = form_match.group(0)
    data: dict[str, Any] = {}
    for tag in re.findall(r"<input[^>]*>", form):
        name = re.search(r'name="([^"]+)"', tag)
        if not name:
            continue
        kind = re.search(r'type="([^"]+)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if kind and kind.group(1) in ("checkbox", "radio"):
            if "checked" in tag:
                data.setdefault(name.group(1), []).append(value.group(1) if value else "on")
            continue
        if kind and kind.group(1) == "submit":
            continue
        data[name.group(1)] = _unescape(value.group(1)) if value else ""
    for name, body in re.findall(r'<textarea[^>]*name="([^"]+)"[^>]*>(.*?)</textarea>', form, re.S):
        data[name] = _unescape(body.lstrip("\n"))
    for name, body in re.findall(r'<select[^>]*name="([^"]+)"[^>]*>(.*?)</select>', form, re.S):
        chosen = re.findall(r'<option value="([^"]*)"[^>]*selected', body)
        data[name] = chosen[0] if chosen else ""
    return data


def _unescape(value: str) -> str:
    import html

    return html.unescape(value)


# --- One sizing rule for waves --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cohorts",
    [
        [wave.cohort.to_json() for wave in default_plan().waves],
        [{"kind": "count", "value": 7}, {"kind": "percent", "value": 100}],
        [
            {"kind": "pilot"},
            {"kind": "percent", "value": 33},
            {"kind": "count", "value": 500},
            {"kind": "percent", "value": 100},
        ],
    ],
)
def test_wave_preview_sizes_waves_like_the_rollout_does(fleet, cohorts):
    DeviceFactory.create_batch(3, hardware_model=fleet["model"], region=fleet["region"], tags=["pilot", "bench"])
    gate = {"soak_seconds": 0, "min_sample": 1, "success_threshold": 0.9, "failure_threshold": 0.1}
    waves = [{"name": f"w{i}", "promotion": "auto", "cohort": cohort, **gate} for i, cohort in enumerate(cohorts)]
    plan = plan_parse({"waves": waves, "abort_policy": "halt"})
    scope = scope_parse({"hardware_models": ["tcu-4g-r2"]})
    preview = [w.devices for w in plan_wave_preview(plan, scope)]
    assert preview == wave_sizes(plan.waves, total=23, pilots=5)
    assert sum(preview) == 23


def test_plan_settings_with_a_duplicated_key_are_refused_naming_it(requester, fleet):
    settings = '{"monitor_interval_seconds": 30, "monitor_interval_seconds": 60}'
    response = page_client(requester).post(NEW, _form_data(fleet, plan_settings=settings))
    assert response.status_code == 400
    assert 'the key "monitor_interval_seconds" appears more than once' in html_of(response).replace("&quot;", '"')
    assert not ChangeRequest.objects.exists()


def test_change_page_shows_what_each_revision_changed_field_by_field_and_wave_by_wave(
    submitted_change, requester, cab_member, change_fields
):
    plan = default_plan().to_json()
    plan["waves"][0]["min_sample"] = 2
    services.change_update(
        actor=requester,
        change=submitted_change,
        impact_analysis="Two reboots.",
        rollout_plan=plan,
        target_scope={"hardware_models": ["tcu-4g-r2"], "tags": ["pilot"]},
    )
    html = html_of(page_client(cab_member).get(_detail(submitted_change)))
    (table,) = find_all(html, "table", **{"data-revision": "2"})

    def rows(*headers: str) -> list[list[str]]:
        return [row_cells(table, header) for header in headers]

    assert rows("Impact analysis", "Plan, wave 1 (pilot): min_sample", "Target scope: tags", "Devices in scope") == [
        ["One reboot per unit, during parking.", "Two reboots."],
        ["5", "2"],
        ["—", '["pilot"]'],
        ["20", "2"],
    ]
    # The page shows what the decision record holds.
    record = DecisionRecord.objects.get(action="change.edit")
    assert record.before is not None and record.after is not None
    assert record.before["rollout_plan"]["waves"][0]["min_sample"] == 5
    assert record.after["rollout_plan"]["waves"][0]["min_sample"] == 2


def test_queue_search_finds_by_number_title_words_release_and_author(requester, cab_member, change_fields):
    reconnect = _submitted(requester, change_fields, title="Modem reconnect fix")
    gps = _submitted(requester, change_fields, title="GPS cold start")
    client = page_client(cab_member)

    def found(q: str) -> list[str]:
        return re.findall(r'<tr data-change="(\d+)">', html_of(client.get(QUEUE, {"q": q})))

    assert found("reconnect modem") == [str(reconnect.pk)]
    assert found(f"CR-{gps.pk}") == [str(gps.pk)]
    assert sorted(found("rita 1.1.0")) == sorted([str(reconnect.pk), str(gps.pk)])
    assert found("nothing-like-this") == []
    html = html_of(client.get(QUEUE))
    assert "There is no bulk approve, on purpose" in visible_text(html)


def test_live_preview_warns_of_an_approved_change_on_the_same_vehicles_in_the_window(requester, fleet, approved_change):
    html = html_of(page_client(requester).post(PREVIEW, _form_data(fleet)))
    codes = [item.get("data-warning") for item in find_all(find(html, id="plan-warnings"), "li")]
    assert f"overlap-change-{approved_change.pk}" in codes


GATES = [{"indicator": "gps_fix_s", "tolerance": 0.1, "min_sample": 30}, {"indicator": "link_kbps", "tolerance": 0.05}]


def test_cab_page_shows_the_plans_health_gates(requester, cab_member, change_fields):
    plan = {**default_plan().to_json(), "health_gates": GATES}
    change = services.change_create(actor=requester, **{**change_fields, "rollout_plan": plan})
    change = services.change_submit(actor=requester, change=change)
    html = html_of(page_client(cab_member).get(_detail(change)))
    [table] = find_all(html, "table", data_testid="plan-health-gates")
    assert row_cells(table, "GPS time to fix gps_fix_s") == ["10 %", "0.05", "30"]
    assert row_cells(table, "Link throughput link_kbps") == ["5 %", "0.05", "20"]


def test_a_plan_without_gates_says_so_on_the_cab_page(cab_member, submitted_change):
    assert "No health gates: waves are judged on install outcomes only" in text_of(
        page_client(cab_member).get(_detail(submitted_change))
    )


def test_change_form_preview_shows_the_gates_and_refuses_unknown_ones(requester, fleet):
    good = _form_data(fleet, plan_settings='{"health_gates": [{"indicator": "gps_fix_s", "tolerance": 0.1}]}')
    text = text_of(page_client(requester).post(PREVIEW, good))
    assert "Health gates of the plan" in text and "GPS time to fix gps_fix_s 10 % 0.05 20" in text
    bad = _form_data(fleet, plan_settings='{"health_gates": [{"indicator": "gps_position", "tolerance": 0.1}]}')
    text = text_of(page_client(requester).post(PREVIEW, bad))
    assert "One of boot_time_s" in text and "Health gates of the plan" not in text
