"""Warnings before trouble: another approved, scheduled or implementing change in an overlapping window on the
same vehicles or hardware models is said on the form, the CAB page and the start page, and acknowledged at Start."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from approvals import services
from approvals.audit.models import DecisionRecord
from approvals.choices import ChangeStatus
from approvals.models import ChangeRequest
from approvals.plan_warnings import change_plan_warnings, overlap_warnings
from approvals.selectors import change_policy_progress
from devices.scope import TargetScope
from ota_project.roles import Role
from rollouts.models import Rollout
from tests.factories import DeviceFactory, FirmwareReleaseFactory, RegionFactory, UserFactory
from tests.support.html import find, find_all
from tests.web.helpers import html_of, page_client

pytestmark = pytest.mark.django_db
START_URL = "/rollouts/start/"


def _approved(requester, cab_member, cab_member_2, change_fields, **overrides):
    """Created, submitted and approved (the security officer too when the policy of a wider scope needs one)."""
    change = services.change_create(actor=requester, **{**change_fields, **overrides})
    change = services.change_submit(actor=requester, change=change)
    services.approval_grant(actor=cab_member, change=change, revision=change.revision)
    change = services.approval_grant(actor=cab_member_2, change=change, revision=change.revision)
    if change.status != ChangeStatus.APPROVED:
        officer = UserFactory.create(roles=[Role.SECURITY_OFFICER])
        change = services.approval_grant(actor=officer, change=change, revision=change.revision)
    assert change.status == ChangeStatus.APPROVED, change_policy_progress(change).summary()
    return change


def _overlaps(change: ChangeRequest) -> list[str]:
    return [w.message for w in change_plan_warnings(change) if w.code.startswith("overlap-change-")]


def test_two_approved_changes_on_the_same_vehicles_in_one_window_warn_of_each_other(
    approved_change, requester, cab_member, cab_member_2, change_fields
):
    other = _approved(requester, cab_member, cab_member_2, change_fields, title="Second fix")
    mine = {w.code: w.message for w in change_plan_warnings(approved_change)}
    message = mine[f"overlap-change-{other.pk}"]
    assert f"CR-{other.pk} (Second fix) is approved" in message and "20 of the same vehicles" in message
    assert f"overlap-change-{approved_change.pk}" in {w.code for w in change_plan_warnings(other)}


def test_no_warning_for_a_window_that_does_not_overlap(
    approved_change, requester, cab_member, cab_member_2, change_fields
):
    later = approved_change.requested_window_end + timedelta(days=1)
    _approved(
        requester,
        cab_member,
        cab_member_2,
        change_fields,
        requested_window_start=later,
        requested_window_end=later + timedelta(days=2),
    )
    assert _overlaps(approved_change) == []


def test_no_warning_for_other_models_or_for_changes_not_yet_approved(
    approved_change, requester, cab_member, cab_member_2, change_fields, fleet
):
    DeviceFactory.create(hardware_model=fleet["other_model"], region=fleet["region"], tags=["pilot"])
    release = FirmwareReleaseFactory.create(version="2.0.0", release_counter=1, hardware_models=[fleet["other_model"]])
    _approved(
        requester,
        cab_member,
        cab_member_2,
        change_fields,
        release=release,
        target_scope={"hardware_models": ["tcu-5g-r1"]},
    )
    services.change_submit(actor=requester, change=services.change_create(actor=requester, **change_fields))
    assert _overlaps(approved_change) == []


def test_same_model_but_other_vehicles_warns_of_the_model(
    approved_change, requester, cab_member, cab_member_2, change_fields, fleet
):
    elsewhere = RegionFactory.create(code="us-east", time_zone="America/New_York")
    DeviceFactory.create(hardware_model=fleet["model"], region=elsewhere, serial="TCU-SOLO-1", tags=["pilot"])
    ChangeRequest.objects.filter(pk=approved_change.pk).update(
        target_scope={"hardware_models": ["tcu-4g-r2"], "regions": ["eu-west"]}
    )
    # Warned while it is still being written: the other change is approved.
    solo = services.change_create(actor=requester, **{**change_fields, "target_scope": {"devices": ["TCU-SOLO-1"]}})
    (message,) = _overlaps(solo)
    assert f"CR-{approved_change.pk}" in message and "updates the same hardware model (tcu-4g-r2)" in message


def test_the_cab_page_shows_the_overlap(approved_change, requester, cab_member, cab_member_2, change_fields):
    other = _approved(requester, cab_member, cab_member_2, change_fields, title="Second fix")
    page = html_of(page_client(cab_member).get(f"/changes/{approved_change.pk}/"))
    codes = [item.get("data-warning") for item in find_all(find(page, id="plan-warnings"), "li")]
    assert f"overlap-change-{other.pk}" in codes


def test_the_start_needs_the_overlap_acknowledged_and_records_it(
    approved_change, requester, cab_member, cab_member_2, change_fields, operator, settings
):
    settings.TEMPORAL_ENABLED = False
    other = _approved(requester, cab_member, cab_member_2, change_fields, title="Second fix")
    code = f"overlap-change-{other.pk}"
    client = page_client(operator)
    page = html_of(client.get(f"{START_URL}?change={approved_change.pk}"))
    assert code in [item.get("data-warning") for item in find_all(find(page, id="plan-warnings"), "li")]
    others = [w.code for w in change_plan_warnings(approved_change) if w.code != code]
    refused = client.post(START_URL, {"change": approved_change.pk, "confirm": "on", "acknowledge": others})
    assert refused.status_code == 400 and not Rollout.objects.exists()
    started = client.post(START_URL, {"change": approved_change.pk, "confirm": "on", "acknowledge": [*others, code]})
    assert started.status_code == 302
    record = DecisionRecord.objects.get(action="rollout.start")
    assert record.after is not None
    (entry,) = [w for w in record.after["warnings"] if w["code"] == code]
    assert entry["acknowledged"] is True
    # The other change now sees a change rolling out on its vehicles.
    assert any("is rolling out now" in message for message in _overlaps(ChangeRequest.objects.get(pk=other.pk)))


def test_a_scope_and_window_not_yet_saved_are_checked_too(approved_change):
    now = timezone.now()
    warnings = overlap_warnings(
        TargetScope.stored({"hardware_models": ["tcu-4g-r2"]}),
        window_start=now,
        window_end=now + timedelta(days=1),
        exclude_change_id=None,
    )
    assert [w.code for w in warnings] == [f"overlap-change-{approved_change.pk}"]
    assert overlap_warnings(None, window_start=now, window_end=now + timedelta(days=1), exclude_change_id=None) == []
