"""Trace pages: one change end to end and one vehicle's software register; access, content and filters."""

from __future__ import annotations

import pytest
from django.urls import reverse

from approvals import services as change_services
from approvals.audit.models import DecisionRecord
from devices import services as device_services
from devices.models import Device
from ota_project.roles import Role
from rollouts import rollout_services as steps
from rollouts.choices import DeploymentStatus, RolloutStatus
from rollouts.models import Deployment
from tests.factories import DeviceFactory
from tests.support.html import badges, visible_text
from tests.web.helpers import page_client
from workflows.types import PhaseChange

pytestmark = pytest.mark.django_db


def _trace_url(change) -> str:
    return reverse("web-trace:change-trace", args=[change.pk])


def _register_url(serial: str) -> str:
    return reverse("web-trace:vehicle-register", args=[serial])


# --- Access ----------------------------------------------------------------------------------------------------


def test_anonymous_is_sent_to_sign_in(rolled_out):
    device = rolled_out["succeeded"].device
    for url in (_trace_url(rolled_out["change"]), _register_url(device.serial), reverse("web-trace:vehicle-lookup")):
        response = page_client().get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/login/?next=")


def test_user_without_a_role_gets_403(rolled_out, nobody):
    assert page_client(nobody).get(_trace_url(rolled_out["change"])).status_code == 403
    assert page_client(nobody).get(_register_url(rolled_out["succeeded"].device.serial)).status_code == 403


@pytest.mark.parametrize("role", list(Role.values))
def test_every_role_reads_the_trace_and_the_register(rolled_out, make_user, role):
    client = page_client(make_user(role))
    assert client.get(_trace_url(rolled_out["change"])).status_code == 200
    assert client.get(_register_url(rolled_out["succeeded"].device.serial)).status_code == 200


def test_someone_elses_draft_and_unknown_ids_are_404(requester, change_fields, cab_member, make_user):
    draft = change_services.change_create(actor=requester, **change_fields)
    assert page_client(requester).get(_trace_url(draft)).status_code == 200
    assert page_client(cab_member).get(_trace_url(draft)).status_code == 404
    assert page_client(cab_member).get("/audit/changes/999999/trace/").status_code == 404
    assert page_client(cab_member).get(f"/audit/changes/{10**30}/trace/").status_code == 404
    assert page_client(cab_member).get(_register_url("NO-SUCH-UNIT")).status_code == 404


# --- Trace content ---------------------------------------------------------------------------------------------


def test_trace_shows_every_stage_in_time_order(rolled_out, auditor):
    change = rolled_out["change"]
    response = page_client(auditor).get(_trace_url(change))
    body = response.content.decode()
    stages = ["1. Request", "2. Risk", "3. Approvals", "4. Rollout waves", "5. Per-device outcomes"]
    positions = [body.index(stage) for stage in stages]
    assert positions == sorted(positions)
    trace = response.context["trace"]
    # Request: creation and submission, with links to their records for an auditor.
    assert [r.action for r in trace.request_records][:2] == ["change.create", "change.submit"]
    create = trace.request_records[0]
    assert f'href="{reverse("web-audit:record", args=[create.seq])}"' in body
    # Risk: level, score and the record that assessed it.
    assert trace.risk_record == create
    assert f"score {change.risk_score}" in body
    # Approvals: two, bound to revision 1 and the release hash, both counting.
    assert [(step.approval.approver.username, step.counts, step.binding_current) for step in trace.approvals] == [
        ("carl-cab", True, True),
        ("cora-cab", True, True),
    ]
    assert change.release.artifact.sha256[:8] in body
    assert trace.approve_record is not None and trace.approve_record.action == "change.approve"
    # Waves: the pilot failed (halted) with its health, the halt recorded with its reason.
    pilot = trace.waves[0]
    assert (pilot.wave.status, pilot.health["succeeded"], pilot.failures) == ("failed", 1, 1)
    # The report that crossed the failure threshold tripped the wave's breaker before the workflow halted it.
    assert [r.action for r in pilot.records] == ["rollout.wave_assign", "rollout.breaker_tripped"]
    assert "pilot failure rate 50% over the 5% threshold" in body
    # Waves are counted from 1 and durations said in words, as on the dashboard and the start page.
    text = visible_text(body)
    assert "Wave 1: pilot" in text and "Wave 0" not in text
    assert ">1 — pilot</option>" in body
    assert "rollout.halt" in [r.action for r in trace.rollout_events]
    # Timeline: every record about the change, approvals and rollout, in chain order.
    seqs = [entry.record.seq for entry in trace.timeline]
    assert seqs == sorted(seqs)
    assert {entry.stage for entry in trace.timeline} == {"Request", "Approval", "Rollout"}


def test_trace_records_are_numbered_but_not_linked_for_other_roles(rolled_out, operator):
    body = page_client(operator).get(_trace_url(rolled_out["change"])).content.decode()
    assert "/audit/records/" not in body
    assert "record #" in body
    assert "auditors and security officers can open them" in body


def test_outcome_counts_and_filters(rolled_out, cab_member):
    url = _trace_url(rolled_out["change"])
    client = page_client(cab_member)
    response = client.get(url)
    counts = {group["kind"]: dict(group["statuses"]) for group in response.context["trace"].outcome_counts}
    assert counts == {"update": {"succeeded": 1, "failed": 1}}
    assert response.context["outcomes"].paginator.count == 2
    failed = client.get(url, {"status": "failed"})
    assert [d.pk for d in failed.context["outcomes"].object_list] == [rolled_out["failed"].pk]
    assert _register_url(rolled_out["failed"].device.serial) in failed.content.decode()
    by_serial = client.get(url, {"serial": rolled_out["succeeded"].device.serial})
    assert [d.pk for d in by_serial.context["outcomes"].object_list] == [rolled_out["succeeded"].pk]
    assert client.get(url, {"wave": "0"}).context["outcomes"].paginator.count == 2
    none = client.get(url, {"kind": "rollback"})
    assert "No device matches these filters." in none.content.decode()


def test_bad_outcome_filters_are_form_errors(rolled_out, cab_member):
    response = page_client(cab_member).get(_trace_url(rolled_out["change"]), {"status": "melted", "wave": "7"})
    assert response.status_code == 200
    assert response.context["outcomes"] is None
    assert set(response.context["form"].errors) == {"status", "wave"}
    assert "These filters cannot be applied." in response.content.decode()


def test_trace_of_a_change_not_rolled_out_says_so(submitted_change, cab_member):
    body = page_client(cab_member).get(_trace_url(submitted_change)).content.decode()
    assert "This change has not been rolled out" in body
    assert "No reviewer has decided on this change yet." in body
    assert "No device has received this change." in body


def test_voided_approval_is_shown_as_not_counting(approved_change, requester, auditor):
    change_services.change_update(actor=requester, change=approved_change, impact_analysis="Two reboots per unit.")
    trace = page_client(auditor).get(_trace_url(approved_change)).context["trace"]
    assert [step.counts for step in trace.approvals] == [False, False]
    assert [step.binding_current for step in trace.approvals] == [False, False]


# --- Vehicle register ------------------------------------------------------------------------------------------


def test_register_shows_versions_before_and_after_each_update_and_the_rollback(rolled_back, auditor):
    device = rolled_back["succeeded"].device
    response = page_client(auditor).get(_register_url(device.serial))
    register = response.context["register"]
    deployments = [e for e in register.entries if e.deployment is not None]
    assert [(e.kind, e.version_before, e.version_after, e.outcome) for e in deployments] == [
        ("update", "1.0.0", "1.1.0", DeploymentStatus.SUCCEEDED),
        ("rollback", "1.1.0", "1.0.0", DeploymentStatus.SUCCEEDED),
    ]
    # Both "before" versions are the ones stored when the deployments were created, with their counters: the
    # update and its rollback stay in one security epoch (a rollback never lowers the counter).
    assert [(e.before_source, e.counter_before, e.counter_after) for e in deployments] == [
        ("stored", 1, 1),
        ("stored", 1, 1),
    ]
    assert (register.deployments_total, register.rollbacks, register.derived, register.assumed) == (2, 1, 0, 0)
    body = response.content.decode()
    assert _trace_url(rolled_back["change"]) in body
    assert ("Rollback", "rolled_back") in badges(body)  # the rollback entry is marked as one
    text = visible_text(body)
    assert "1.0.0 (#1)" in text and "1.1.0 (#1)" in text  # versions with their release counters
    assert "assumed-note" not in body and "derived-note" not in body


def test_register_shows_the_stored_version_not_a_reconstruction(approved_change, operator, auditor, settings):
    settings.TEMPORAL_ENABLED = False
    rollout = steps.rollout_start(actor=operator, change=approved_change)
    steps.rollout_phase(PhaseChange(rollout.pk, RolloutStatus.RUNNING, 0))
    pilot = Device.objects.filter(tags__name="pilot").order_by("serial").first()
    assert pilot is not None
    # The unit was re-flashed to a hotfix outside any deployment; the inventory knows, its history does not.
    Device.objects.filter(pk=pilot.pk).update(installed_version="1.0.1", installed_release_counter=1)
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    response = page_client(auditor).get(_register_url(pilot.serial))
    (entry,) = response.context["register"].entries
    assert (entry.title, entry.version_before, entry.counter_before, entry.before_source) == (
        "Update to 1.1.0",
        "1.0.1",
        1,
        "stored",
    )
    assert entry.version_after == "" and entry.outcome == DeploymentStatus.PENDING
    body = response.content.decode()
    assert "1.0.1 (#1)" in visible_text(body)
    assert "in progress" in body and "assumed-note" not in body


def test_register_falls_back_to_the_assumed_version_for_an_old_row(rolled_out, auditor):
    failed = rolled_out["failed"]
    # A deployment created before deployments stored what they replaced.
    Deployment.objects.filter(pk=failed.pk).update(from_version="", from_release_counter=None)
    response = page_client(auditor).get(_register_url(failed.device.serial))
    register = response.context["register"]
    (entry,) = [e for e in register.entries if e.deployment is not None]
    assert (entry.version_before, entry.version_after, entry.before_source) == ("1.0.0", "1.0.0", "assumed")
    assert (entry.counter_before, entry.counter_after) == (None, None)
    assert (register.assumed, register.derived) == (1, 0)
    body = response.content.decode()
    assert 'href="#assumed-note" aria-label="assumed, see note"' in body
    assert 'id="assumed-note"' in body and "assumed to be the change's rollback release" in body


def test_register_mixes_old_rows_from_history_with_stored_ones(rolled_back, auditor):
    device = rolled_back["succeeded"].device
    # The update row predates stored versions; the rollback row has its own.
    Deployment.objects.filter(pk=rolled_back["succeeded"].pk).update(from_version="", from_release_counter=None)
    register = page_client(auditor).get(_register_url(device.serial)).context["register"]
    update, rollback = [e for e in register.entries if e.deployment is not None]
    assert (update.version_before, update.before_source) == ("1.0.0", "assumed")
    assert (rollback.version_before, rollback.counter_before, rollback.before_source) == ("1.1.0", 1, "stored")
    # Both old: the rollback's "before" is derived from the update that succeeded before it.
    Deployment.objects.filter(pk=rolled_back["rollback"].pk).update(from_version="", from_release_counter=None)
    response = page_client(auditor).get(_register_url(device.serial))
    update, rollback = [e for e in response.context["register"].entries if e.deployment is not None]
    assert (update.before_source, rollback.version_before, rollback.before_source) == ("assumed", "1.1.0", "history")
    body = response.content.decode()
    assert 'id="derived-note"' in body and 'id="assumed-note"' in body


def test_register_shows_a_failed_update_left_the_version_unchanged(rolled_out, operator):
    device = rolled_out["failed"].device
    register = page_client(operator).get(_register_url(device.serial)).context["register"]
    (entry,) = [e for e in register.entries if e.deployment is not None]
    assert (entry.version_before, entry.version_after, entry.outcome) == ("1.0.0", "1.0.0", "failed")
    assert entry.deployment.failure_class == "boot"


def test_register_uses_the_inventory_history_and_status_changes(fleet, operator, auditor):
    device = device_services.device_create(
        actor=operator,
        serial="REG-0001",
        hardware_model=fleet["model"],
        region=fleet["region"],
        vehicle_type="bus",
        installed_version="0.9.0",
    )
    device_services.device_update(
        actor=operator,
        device=device,
        changes={"installed_version": "1.0.0", "installed_release_counter": 1},
        reason="re-flashed at depot",
    )
    device_services.device_quarantine(actor=operator, device=device, reason="tamper alarm")
    response = page_client(auditor).get(_register_url(device.serial))
    entries = response.context["register"].entries
    assert [(e.title, e.version_before, e.version_after) for e in entries] == [
        ("Added to the inventory", "", "0.9.0"),
        ("Inventory corrected", "0.9.0", "1.0.0"),
        ("Status: active → quarantined (quarantine)", "", ""),
    ]
    body = response.content.decode()
    assert "re-flashed at depot" in body and "tamper alarm" in body
    record = DecisionRecord.objects.get(action="devices.device.create", object_id="REG-0001")
    assert reverse("web-audit:record", args=[record.seq]) in body


def test_register_of_a_device_without_history(fleet, cab_member):
    device = Device.objects.order_by("serial").first()
    assert device is not None
    body = page_client(cab_member).get(_register_url(device.serial)).content.decode()
    assert "No software change is recorded for this device" in body


# --- Vehicle lookup --------------------------------------------------------------------------------------------


def test_lookup_jumps_to_the_register_by_serial_or_vin(fleet, auditor):
    device = DeviceFactory.create(
        serial="VAN-0042", hardware_model=fleet["model"], region=fleet["region"], vin="1HGCM82633A004352"
    )
    client = page_client(auditor)
    lookup = reverse("web-trace:vehicle-lookup")
    for query in ("VAN-0042", "1hgcm82633a004352"):
        response = client.get(lookup, {"serial": query})
        assert response.status_code == 302
        assert response["Location"] == _register_url(device.serial)


def test_lookup_lists_candidates_or_says_nothing_matched(fleet, auditor):
    DeviceFactory.create(serial="BUS-0001", hardware_model=fleet["model"], region=fleet["region"])
    DeviceFactory.create(serial="BUS-0002", hardware_model=fleet["model"], region=fleet["region"])
    client = page_client(auditor)
    lookup = reverse("web-trace:vehicle-lookup")
    several = client.get(lookup, {"serial": "BUS-"})
    assert several.status_code == 200
    assert [d.serial for d in several.context["candidates"]] == ["BUS-0001", "BUS-0002"]
    missing = client.get(lookup, {"serial": "NOPE-1"})
    assert "No device has the serial or VIN" in missing.content.decode()
    blank = client.get(lookup, {"serial": "  "})
    assert "This field is required." in blank.content.decode()
