"""Rollout integrity: the rules hold where they are used, under races, side doors and a missing worker.

Each test reproduces one failure seen by the adversarial and chaos probes (issue #9) and shows it no longer
happens, and that a refusal leaves nothing changed but a security event.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from temporalio.testing import ActivityEnvironment

from approvals import services as change_services
from approvals.audit.choices import SecurityEventKind
from approvals.audit.models import DecisionRecord, SecurityEvent
from approvals.choices import ChangeStatus
from approvals.models import ChangeRequest
from devices.models import Device
from ota_project.errors import Conflict, InvalidInput, NotPermitted
from ota_project.roles import Role
from rollouts import rollout_services as steps
from rollouts.choices import DeploymentKind, DeploymentStatus, RolloutStatus, WaveStatus
from rollouts.demo.playback import FAIL_BOOT, HAPPY, play
from rollouts.deployment_services import Report, deployment_offer, deployment_report
from rollouts.models import Deployment, Rollout, Wave
from tests.factories import FirmwareReleaseFactory, HardwareModelFactory, UserFactory
from tests.support.rollouts import abort, assign_through, authorize, expect_offer, token_for
from workflows import activities
from workflows.types import PhaseChange, WaveRef

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_temporal(settings):
    settings.TEMPORAL_ENABLED = False


@pytest.fixture
def rollout(approved_change, operator) -> Rollout:
    return steps.rollout_start(actor=operator, change=approved_change)


def _events(kind: str) -> int:
    return sum(SecurityEvent.objects.filter(kind=kind).values_list("count", flat=True))


def _approved(requester, cab_member, cab_member_2, fields) -> ChangeRequest:
    change = change_services.change_submit(
        actor=requester, change=change_services.change_create(actor=requester, **fields)
    )
    change_services.approval_grant(actor=cab_member, change=change, revision=1)
    return change_services.approval_grant(actor=cab_member_2, change=change, revision=1)


# --- one active deployment per device ------------------------------------------------------------------------


def test_the_database_refuses_a_second_active_deployment_for_a_device(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    held = Deployment.objects.first()
    assert held is not None
    with pytest.raises(IntegrityError), transaction.atomic():
        Deployment.objects.create(
            rollout=rollout, wave=held.wave, device=held.device, release=held.release, kind=DeploymentKind.ROLLBACK
        )


def test_a_device_busy_in_another_rollout_is_skipped_with_the_reason(
    rollout, operator, requester, cab_member, cab_member_2, change_fields
):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    first = Deployment.objects.first()
    assert first is not None
    busy = Deployment.objects.get(rollout=rollout, device__tags__name="pilot", pk=first.pk)
    # A second rollout over the same devices (the first one finished, but a pilot unit is still installing).
    play(expect_offer(busy.device), ("downloading", "downloaded", "installing"))
    abort(rollout, reason="superseded")
    other = steps.rollout_start(actor=operator, change=_approved(requester, cab_member, cab_member_2, change_fields))
    steps.wave_assign(rollout_id=other.pk, wave_index=0)
    skipped = Deployment.objects.get(rollout=other, device=busy.device)
    assert skipped.status == DeploymentStatus.SKIPPED and "already holds an active deployment" in skipped.detail
    active = Deployment.objects.filter(device=busy.device, status__in=["pending", "offered", "installing"])
    assert list(active.values_list("rollout_id", flat=True)) == [rollout.pk]


@pytest.mark.django_db(transaction=True)
def test_two_operators_starting_overlapping_changes_at_once_get_exactly_one_rollout(
    requester, cab_member, cab_member_2, change_fields, make_user
):
    changes = [_approved(requester, cab_member, cab_member_2, change_fields) for _ in range(2)]
    operators = [make_user(Role.OPERATOR, username=f"olga-{n}") for n in range(2)]
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def start(operator, change) -> None:
        try:
            barrier.wait(timeout=10)
            steps.rollout_start(actor=operator, change=change)
            outcomes.append("started")
        except Conflict as exc:
            outcomes.append(exc.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=start, args=pair) for pair in zip(operators, changes, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["conflict", "started"]
    assert Rollout.objects.count() == 1
    assert _events(SecurityEventKind.START_REFUSED) == 1
    refused = ChangeRequest.objects.exclude(pk=Rollout.objects.get().change_id).get()
    assert refused.status == ChangeStatus.APPROVED  # untouched


# --- offer-time rules ------------------------------------------------------------------------------------------


def test_offer_skips_a_device_whose_hardware_model_changed_since_assignment(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    deployment = Deployment.objects.select_related("device").first()
    assert deployment is not None
    Device.objects.filter(pk=deployment.device_id).update(hardware_model=HardwareModelFactory.create(name="tcu-9g-r1"))
    assert deployment_offer(device_id=deployment.device_id) is None
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.SKIPPED
    assert "does not support the device's hardware model now" in deployment.detail


def test_offer_never_lowers_a_devices_committed_counter(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    deployment = Deployment.objects.select_related("device").first()
    assert deployment is not None
    Device.objects.filter(pk=deployment.device_id).update(installed_release_counter=9)
    assert deployment_offer(device_id=deployment.device_id) is None
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.SKIPPED and "anti-rollback" in deployment.detail
    assert Device.objects.get(pk=deployment.device_id).installed_release_counter == 9


def test_wave_assignment_skips_devices_that_no_longer_qualify(rollout):
    pilot = Device.objects.filter(tags__name="pilot").first()
    assert pilot is not None
    Device.objects.filter(pk=pilot.pk).update(installed_release_counter=9)
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    row = Deployment.objects.get(device=pilot)
    assert row.status == DeploymentStatus.SKIPPED and "committed counter 9" in row.detail


def test_a_cancelled_change_offers_nothing_any_more(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    assigned = Deployment.objects.first()
    assert assigned is not None
    device = assigned.device
    ChangeRequest.objects.filter(pk=rollout.change_id).update(status=ChangeStatus.CANCELLED)  # a side door
    assert deployment_offer(device_id=device.pk) is None
    assert Deployment.objects.get(device=device).detail == "withdrawn: the change is cancelled"


def test_cancelling_an_implementing_change_is_refused_and_its_rollout_keeps_its_state(rollout, requester):
    with pytest.raises(Conflict, match="abort the rollout"):
        change_services.change_cancel(actor=requester, change=rollout.change, reason="never mind")
    assert ChangeRequest.objects.get(pk=rollout.change_id).status == ChangeStatus.IMPLEMENTING


# --- the breaker: no worker needed to stop offering a failing release ------------------------------------------


def _pilot_judged_after_one_device(rollout: Rollout) -> None:
    plan = rollout.plan
    plan["waves"][0]["min_sample"] = 1
    Rollout.objects.filter(pk=rollout.pk).update(plan=plan)


def test_the_report_that_crosses_the_failure_threshold_stops_every_offer_at_once(rollout):
    _pilot_judged_after_one_device(rollout)
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    first, second = Deployment.objects.filter(wave__index=0).select_related("device").order_by("pk")
    play(expect_offer(first.device), FAIL_BOOT)  # 1 of 1 finished failed: over the pilot's 5%
    wave = Wave.objects.get(rollout=rollout, index=0)
    assert wave.breaker_tripped_at is not None and "crossed its failure threshold" in wave.breaker_reason
    # No workflow has run the halt: the rollout still says running, yet nothing is offered any more.
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING
    assert deployment_offer(device_id=second.device_id) is None
    assert Deployment.objects.get(pk=second.pk).status == DeploymentStatus.CANCELLED
    assert DecisionRecord.objects.filter(action="rollout.breaker_tripped").count() == 1


def test_a_device_mid_download_when_the_breaker_trips_is_told_to_drop_it(rollout):
    _pilot_judged_after_one_device(rollout)
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    first, second = Deployment.objects.filter(wave__index=0).select_related("device").order_by("pk")
    play(expect_offer(second.device), ("downloading",))
    play(expect_offer(first.device), FAIL_BOOT)
    answer = deployment_report(device=second.device, deployment_id=second.pk, report=Report(10, "downloaded"))
    assert answer.deployment.status == DeploymentStatus.CANCELLED and answer.applied


def test_failures_below_the_threshold_leave_the_breaker_closed(rollout):
    assign_through(rollout, 2)
    wave = Deployment.objects.filter(wave__index=2).select_related("device").order_by("pk")
    for deployment in list(wave[:4]):
        play(expect_offer(deployment.device), HAPPY)
    # min_sample of the last wave is not reached by one failure among five finished.
    play(expect_offer(wave[4].device), FAIL_BOOT)
    assert not Wave.objects.filter(rollout=rollout, breaker_tripped_at__isnull=False).exists()


# --- reports ---------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_fifty_copies_of_one_report_are_applied_exactly_once(approved_change, operator):
    rollout = steps.rollout_start(actor=operator, change=approved_change)
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    assigned = Deployment.objects.first()
    assert assigned is not None
    deployment = expect_offer(assigned.device)
    answers: list[bool] = []
    barrier = threading.Barrier(10)

    def send() -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(5):
                outcome = deployment_report(
                    device=deployment.device, deployment_id=deployment.pk, report=Report(1, "downloading")
                )
                answers.append(outcome.applied)
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(answers) == 50 and answers.count(True) == 1
    assert Deployment.objects.get(pk=deployment.pk).status == DeploymentStatus.DOWNLOADING


def test_a_success_after_the_deadline_is_the_devices_truth(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    assigned = Deployment.objects.first()
    assert assigned is not None
    deployment = expect_offer(assigned.device)
    play(deployment, ("downloading", "downloaded", "installing", "rebooting", "confirming"))
    Deployment.objects.filter(pk=deployment.pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
    steps.wave_health(rollout_id=rollout.pk, wave_index=0)
    assert Deployment.objects.get(pk=deployment.pk).status == DeploymentStatus.TIMED_OUT
    late = deployment_report(
        device=deployment.device,
        deployment_id=deployment.pk,
        report=Report(99, "succeeded", booted_version="1.1.0", health_passed=True),
    )
    assert late.applied and late.deployment.status == DeploymentStatus.SUCCEEDED
    assert "succeeded late" in late.deployment.detail
    assert Device.objects.get(pk=deployment.device_id).installed_version == "1.1.0"
    assert DecisionRecord.objects.filter(action="deployment.late_success", object_id=str(deployment.pk)).exists()


# --- only people move gates --------------------------------------------------------------------------------------


def test_a_wave_cannot_open_before_the_previous_one_was_promoted(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    with pytest.raises(NotPermitted, match="was not promoted"):
        steps.wave_assign(rollout_id=rollout.pk, wave_index=1)
    assert not Deployment.objects.filter(wave__index=1).exists()
    assert _events(SecurityEventKind.ACTION_FORGED) == 1


def test_projections_and_endings_need_the_database_to_back_them(rollout, operator):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    before = DecisionRecord.objects.count()
    with pytest.raises(NotPermitted):
        steps.rollout_phase(PhaseChange(rollout.pk, RolloutStatus.RUNNING, 2))
    with pytest.raises(NotPermitted):
        steps.rollout_finish(rollout_id=rollout.pk, outcome=RolloutStatus.COMPLETED, reason="forged")
    with pytest.raises(NotPermitted):
        steps.rollout_finish(rollout_id=rollout.pk, outcome=RolloutStatus.ABORTED, actor_id=operator.pk)
    with pytest.raises(NotPermitted):
        steps.rollback_assign(rollout_id=rollout.pk)
    assert DecisionRecord.objects.count() == before
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING
    assert _events(SecurityEventKind.ACTION_FORGED) == 4


def test_an_automatic_promotion_is_rechecked_in_the_database(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    with pytest.raises(NotPermitted, match="promoted only by a person"):
        steps.wave_promote(rollout_id=rollout.pk, wave_index=0)  # the pilot's gate is manual
    assign_through(rollout, 1)
    with pytest.raises(NotPermitted, match="has not passed"):
        steps.wave_promote(rollout_id=rollout.pk, wave_index=1)  # nothing finished, soak not over
    assert Wave.objects.get(rollout=rollout, index=1).status == WaveStatus.RUNNING


def test_an_activity_runs_only_for_the_rollouts_own_workflow(rollout):
    env = ActivityEnvironment()
    env.info = env.info.__class__(**{**env.info.__dict__, "workflow_id": f"rollout-{rollout.pk}-second"})
    # The check every activity runs first (the ORM wrapper around it needs a worker thread of its own).
    with pytest.raises(NotPermitted, match="is not the rollout's workflow"):
        env.run(activities._require_own_workflow, WaveRef(rollout.pk, 0))
    env.info = env.info.__class__(**{**env.info.__dict__, "workflow_id": f"rollout-{rollout.pk}"})
    env.run(activities._require_own_workflow, WaveRef(rollout.pk, 0))
    assert not Deployment.objects.exists()
    assert _events(SecurityEventKind.ACTION_FORGED) == 1


# --- human actions carry proof of the person ----------------------------------------------------------------------


def test_an_action_naming_a_real_operator_without_their_proof_is_refused(rollout, operator):
    forged = [
        "",
        "not-a-token",
        token_for(operator, rollout, "pause"),  # another action
        token_for(operator, Rollout(pk=rollout.pk + 1), "abort"),  # another rollout
        token_for(UserFactory.create(roles=[Role.OPERATOR]), rollout, "abort"),  # another person
    ]
    for token in forged:
        with pytest.raises(NotPermitted):
            steps.human_action_authorize(
                rollout_id=rollout.pk, action="abort", actor_id=operator.pk, reason="x", wave_index=-1, token=token
            )
    assert not DecisionRecord.objects.filter(action="rollout.abort").exists()
    assert _events(SecurityEventKind.ACTION_FORGED) == len(forged)


def test_a_proof_is_spent_once_and_expires(rollout, operator):
    token = token_for(operator, rollout, "pause")
    steps.human_action_authorize(
        rollout_id=rollout.pk, action="pause", actor_id=operator.pk, reason="x", wave_index=-1, token=token
    )
    with pytest.raises(NotPermitted, match="already used"):
        steps.human_action_authorize(
            rollout_id=rollout.pk, action="pause", actor_id=operator.pk, reason="x", wave_index=-1, token=token
        )
    from rollouts.action_tokens import action_token_mint

    stale = action_token_mint(
        actor_id=operator.pk,
        rollout_id=rollout.pk,
        action="resume",
        wave_index=-1,
        now=timezone.now() - timedelta(hours=1),
    )
    with pytest.raises(NotPermitted, match="expired"):
        steps.human_action_authorize(
            rollout_id=rollout.pk, action="resume", actor_id=operator.pk, reason="x", wave_index=-1, token=stale
        )
    assert DecisionRecord.objects.filter(action__in=["rollout.pause", "rollout.resume"]).count() == 1


def test_a_person_promotes_only_an_opened_wave_whose_soak_is_over(rollout, operator):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    with pytest.raises(Conflict, match="still soaking"):
        authorize(rollout, "promote", operator, wave_index=0)
    with pytest.raises(Conflict, match="has not started"):
        authorize(rollout, "promote", operator, wave_index=1)
    assert not Wave.objects.filter(rollout=rollout, status=WaveStatus.PROMOTED).exists()


def test_the_api_mints_a_proof_with_the_temporal_command(rollout, operator, client_for, requester):
    answer = client_for(operator).post(
        f"/api/v1/rollouts/{rollout.pk}/action-token/", {"action": "pause", "reason": "freeze"}, format="json"
    )
    assert answer.status_code == 201
    body = answer.json()
    assert body["workflow_id"] == f"rollout-{rollout.pk}" and body["input"]["actor_id"] == operator.pk
    assert "temporal workflow update execute" in body["command"] and body["token"] in body["command"]
    steps.human_action_authorize(
        rollout_id=rollout.pk, action="pause", actor_id=operator.pk, reason="freeze", wave_index=-1, token=body["token"]
    )
    refused = client_for(requester).post(
        f"/api/v1/rollouts/{rollout.pk}/action-token/", {"action": "pause"}, format="json"
    )
    assert refused.status_code == 403


# --- rollback plans that can roll back ---------------------------------------------------------------------------


def test_a_rollback_release_below_the_new_counter_is_refused_at_submission(requester, change_fields, fleet):
    security = FirmwareReleaseFactory.create(version="1.2.0", release_counter=2, hardware_models=[fleet["model"]])
    change = change_services.change_create(actor=requester, **{**change_fields, "release": security})
    with pytest.raises(InvalidInput) as refused:
        change_services.change_submit(actor=requester, change=change)
    assert "could never roll back" in " ".join(refused.value.fields["rollback_release"])
    assert ChangeRequest.objects.get(pk=change.pk).status == ChangeStatus.DRAFT


def test_the_old_image_re_released_in_the_new_epoch_is_a_valid_rollback(requester, change_fields, fleet):
    security = FirmwareReleaseFactory.create(version="1.2.0", release_counter=2, hardware_models=[fleet["model"]])
    rereleased = FirmwareReleaseFactory.create(
        version="1.0.1", release_counter=2, hardware_models=[fleet["model"]], artifact=fleet["old"].artifact
    )
    fields = {**change_fields, "release": security, "rollback_release": rereleased}
    change = change_services.change_submit(
        actor=requester, change=change_services.change_create(actor=requester, **fields)
    )
    assert change.status == ChangeStatus.SUBMITTED


def test_start_rechecks_that_the_change_can_still_roll_back(approved_change, operator):
    old_model_unit = Device.objects.filter(hardware_model__name="tcu-4g-r2").first()
    assert old_model_unit is not None
    Device.objects.filter(pk=old_model_unit.pk).update(installed_version="1.0.7")
    with pytest.raises(Conflict) as refused:
        steps.rollout_start(actor=operator, change=approved_change)
    assert refused.value.code == "cannot_roll_back"
    assert not Rollout.objects.exists()
    assert ChangeRequest.objects.get(pk=approved_change.pk).status == ChangeStatus.APPROVED
