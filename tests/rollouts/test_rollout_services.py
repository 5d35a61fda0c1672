"""Rollout steps at the service layer: who may start, cohorts, deadlines, halt, rollback, device reports."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from approvals.audit.models import DecisionRecord
from approvals.choices import ChangeStatus
from approvals.models import ChangeRequest
from devices.models import Device
from ota_project.errors import Conflict, InvalidInput, NotPermitted
from rollouts import rollout_services as steps
from rollouts.choices import DeploymentKind, DeploymentStatus, RolloutStatus, WaveStatus
from rollouts.demo.playback import HAPPY
from rollouts.deployment_services import Report, deployment_offer, deployment_report
from rollouts.models import Deployment, Rollout, Wave
from tests.support.rollouts import assign_through, authorize, expect_offer
from workflows.types import PhaseChange

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_temporal(settings):
    settings.TEMPORAL_ENABLED = False


@pytest.fixture
def rollout(approved_change, operator):
    return steps.rollout_start(actor=operator, change=approved_change)


def _drive(deployment: Deployment, *statuses: str) -> Deployment:
    device = deployment.device
    for seq, status in enumerate(statuses, start=deployment.last_seq + 1):
        report = (
            Report(seq, status, booted_version=deployment.release.version, health_passed=True)
            if status == "succeeded"
            else Report(seq, status)
        )
        deployment = deployment_report(device=device, deployment_id=deployment.pk, report=report).deployment
    return deployment


def test_operator_starts_an_approved_change_and_plans_waves(rollout, approved_change):
    assert rollout.status == RolloutStatus.SCHEDULED
    assert [w.planned_devices for w in rollout.waves.order_by("index")] == [2, 2, 16]  # pilot, 10%, rest
    approved_change.refresh_from_db()
    assert approved_change.status == ChangeStatus.IMPLEMENTING
    assert DecisionRecord.objects.filter(action="rollout.start").exists()


def test_author_and_non_operators_cannot_start(approved_change, requester, cab_member, make_user):
    both = approved_change.author
    both.groups.add(Group.objects.get(name="operator"))
    both = get_user_model().objects.get(pk=both.pk)  # fresh instance: roles are cached per instance
    for user in (both, cab_member):
        with pytest.raises(NotPermitted):
            steps.rollout_start(actor=user, change=approved_change)
    assert not Rollout.objects.exists()


def test_unapproved_change_is_refused(submitted_change, operator):
    with pytest.raises(Conflict, match="approved"):
        steps.rollout_start(actor=operator, change=submitted_change)
    assert not Rollout.objects.exists()


def test_start_outside_the_requested_window_is_refused(approved_change, operator):
    ChangeRequest.objects.filter(pk=approved_change.pk).update(
        requested_window_start=timezone.now() + timedelta(days=1),
        requested_window_end=timezone.now() + timedelta(days=2),
    )
    with pytest.raises(Conflict, match="window"):
        steps.rollout_start(actor=operator, change=ChangeRequest.objects.get(pk=approved_change.pk))
    assert not Rollout.objects.exists()


def test_overlapping_active_rollout_is_a_conflict(
    rollout, requester, change_fields, cab_member, cab_member_2, operator
):
    from approvals import services

    other = services.change_submit(actor=requester, change=services.change_create(actor=requester, **change_fields))
    services.approval_grant(actor=cab_member, change=other, revision=1)
    other = services.approval_grant(actor=cab_member_2, change=other, revision=1)
    with pytest.raises(Conflict, match=f"rollout-{rollout.pk}"):
        steps.rollout_start(actor=operator, change=other)


def test_wave_assignment_is_idempotent_and_pilots_first(rollout):
    first = steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    assert first.assigned == 2
    assert steps.wave_assign(rollout_id=rollout.pk, wave_index=0) == first  # a retry returns the same opening
    pilots = Deployment.objects.filter(wave__index=0)
    assert all(d.device.tags.filter(name="pilot").exists() for d in pilots)
    assign_through(rollout, 2)
    assert Deployment.objects.count() == 20
    assert Deployment.objects.values("device").distinct().count() == 20


def test_missed_deadline_times_out_and_counts_as_failure(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    Deployment.objects.update(deadline_at=timezone.now() - timedelta(seconds=1))
    health = steps.wave_health(rollout_id=rollout.pk, wave_index=0)
    assert (health.timed_out, health.failures, health.unfinished) == (2, 2, 0)
    assert set(Deployment.objects.values_list("failure_class", flat=True)) == {"download"}


def test_device_reports_are_idempotent_and_never_go_backwards(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    assigned = Deployment.objects.first()
    assert assigned is not None
    device = assigned.device
    offered = expect_offer(device)
    assert offered.status == DeploymentStatus.OFFERED
    deployment = _drive(offered, "downloading", "downloaded", "installing")
    assert deployment.status == DeploymentStatus.INSTALLING
    # A replayed and an older, out-of-order report change nothing.
    same = deployment_report(
        device=device, deployment_id=deployment.pk, report=Report(deployment.last_seq, "downloading")
    )
    assert same.deployment.status == DeploymentStatus.INSTALLING and not same.applied
    late = deployment_report(
        device=device, deployment_id=deployment.pk, report=Report(deployment.last_seq + 1, "downloading")
    )
    assert late.deployment.status == DeploymentStatus.INSTALLING
    with pytest.raises(Conflict):
        deployment_report(
            device=device,
            deployment_id=deployment.pk,
            report=Report(99, "succeeded", booted_version="1.1.0", health_passed=True),
        )
    deployment = _drive(Deployment.objects.get(pk=deployment.pk), "rebooting", "confirming")
    with pytest.raises(InvalidInput):
        deployment_report(
            device=device,
            deployment_id=deployment.pk,
            report=Report(200, "succeeded", booted_version="1.0.0", health_passed=True),
        )
    deployment = _drive(Deployment.objects.get(pk=deployment.pk), "succeeded")
    assert deployment.status == DeploymentStatus.SUCCEEDED
    device.refresh_from_db()
    assert (device.installed_version, device.installed_release_counter) == ("1.1.0", 1)


def test_another_devices_deployment_is_refused(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    deployment = Deployment.objects.first()
    assert deployment is not None
    stranger = Device.objects.exclude(pk=deployment.device_id).first()
    assert stranger is not None
    with pytest.raises(InvalidInput):
        deployment_report(device=stranger, deployment_id=deployment.pk, report=Report(1, "downloading"))
    deployment.refresh_from_db()
    assert deployment.status == DeploymentStatus.PENDING


def test_halt_stops_offering_and_rollback_targets_devices_that_took_the_image(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    first, second = Deployment.objects.order_by("pk")
    _drive(expect_offer(first.device), *HAPPY)
    cancelled = steps.rollout_halt(rollout_id=rollout.pk, wave_index=0, reason="failure threshold crossed")
    assert cancelled == 1 and deployment_offer(device_id=second.device_id) is None
    assert steps.rollback_assign(rollout_id=rollout.pk) == 1
    rollback = Deployment.objects.get(kind=DeploymentKind.ROLLBACK)
    assert rollback.device_id == first.device_id and rollback.release.version == "1.0.0"
    offered = expect_offer(first.device)
    assert offered.pk == rollback.pk
    _drive(offered, *HAPPY)
    assert steps.rollback_health(rollout_id=rollout.pk).succeeded == 1
    steps.rollout_finish(rollout_id=rollout.pk, outcome=RolloutStatus.ROLLED_BACK, reason="restored")
    first.device.refresh_from_db()
    assert first.device.installed_version == "1.0.0"
    assert ChangeRequest.objects.get(pk=rollout.change_id).status == ChangeStatus.ROLLED_BACK


def test_a_wave_a_person_rolled_back_while_it_was_healthy_is_stopped_not_failed(rollout, operator):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    first, _ = Deployment.objects.order_by("pk")
    _drive(expect_offer(first.device), *HAPPY)
    authorize(rollout, "rollback", operator, reason="wrong customer batch")
    steps.rollout_halt(rollout_id=rollout.pk, wave_index=0, reason="Rolling back: wrong customer batch")
    assert Wave.objects.get(rollout=rollout, index=0).status == WaveStatus.STOPPED
    assert steps.rollback_assign(rollout_id=rollout.pk) == 1  # the person's recorded decision allows it


def test_a_wave_that_crossed_its_failure_threshold_is_failed_even_when_a_person_rolls_back(rollout, operator):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    for deployment in Deployment.objects.order_by("pk"):  # every device of the pilot fails: past any sample
        _drive(expect_offer(deployment.device), "downloading", "downloaded", "installing")
        _drive(Deployment.objects.get(pk=deployment.pk), "failed")
    authorize(rollout, "rollback", operator, reason="pilot bricks modems")
    steps.rollout_halt(rollout_id=rollout.pk, wave_index=0, reason="Rolling back: pilot bricks modems")
    assert Wave.objects.get(rollout=rollout, index=0).status == WaveStatus.FAILED


def test_halt_cancels_a_downloaded_image_before_it_is_installed(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    first, _ = Deployment.objects.order_by("pk")
    _drive(expect_offer(first.device), "downloading", "downloaded")
    assert steps.rollout_halt(rollout_id=rollout.pk, wave_index=0, reason="failure threshold crossed") == 2
    first.refresh_from_db()
    assert first.status == DeploymentStatus.CANCELLED
    # The device asks before it installs: its report is not applied, and no rollback is owed to it.
    assert _drive(first, "installing").status == DeploymentStatus.CANCELLED
    assert steps.rollback_assign(rollout_id=rollout.pk) == 0


def test_completion_cancels_undelivered_work_and_stragglers_time_out_later(rollout):
    assign_through(rollout, 2)
    installing, waiting = Deployment.objects.filter(wave__index=2).order_by("pk")[:2]
    _drive(expect_offer(installing.device), "downloading", "downloaded", "installing")
    steps.rollout_finish(rollout_id=rollout.pk, outcome=RolloutStatus.COMPLETED, reason="enough evidence")
    waiting.refresh_from_db()
    assert (waiting.status, waiting.detail) == (DeploymentStatus.CANCELLED, "rollout completed")
    assert Deployment.objects.get(pk=installing.pk).status == DeploymentStatus.INSTALLING  # may still finish
    assert steps.finished_rollouts_expire_deadlines() == 0  # its install deadline has not passed
    later = timezone.now() + timedelta(days=1)
    assert steps.finished_rollouts_expire_deadlines(now=later) == 1
    expired = Deployment.objects.get(pk=installing.pk)
    assert (expired.status, expired.failure_class) == (DeploymentStatus.TIMED_OUT, "install")
    assert steps.finished_rollouts_expire_deadlines(now=later) == 0  # idempotent


def test_deadline_sweep_leaves_running_rollouts_to_their_workflow(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    assert steps.finished_rollouts_expire_deadlines(now=timezone.now() + timedelta(days=1)) == 0
    assert not Deployment.objects.filter(status=DeploymentStatus.TIMED_OUT).exists()


def test_the_deadline_sweep_is_scheduled_for_celery_beat():
    from ota_project.celery import app
    from rollouts.tasks import finished_rollouts_expire_deadlines_task

    entry = app.conf.beat_schedule["finished-rollouts-expire-deadlines"]
    assert entry["task"] == finished_rollouts_expire_deadlines_task.name


def test_human_action_is_reauthorized_against_the_database(rollout, requester, operator, make_user):
    with pytest.raises(NotPermitted):
        authorize(rollout, "promote", requester, wave_index=0, reason="")
    assert not DecisionRecord.objects.filter(action="rollout.promote").exists()  # a refusal records nothing
    authorize(rollout, "abort", operator, reason="bad telemetry")
    record = DecisionRecord.objects.get(action="rollout.abort")
    assert (record.actor_name, record.reason) == (operator.username, "bad telemetry")


def test_pause_blocks_offers(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    steps.rollout_phase(PhaseChange(rollout.pk, RolloutStatus.PAUSED, 0))
    assigned = Deployment.objects.first()
    assert assigned is not None
    assert deployment_offer(device_id=assigned.device_id) is None
    steps.rollout_phase(PhaseChange(rollout.pk, RolloutStatus.RUNNING, 0))
    assert deployment_offer(device_id=assigned.device_id) is not None


def test_maintenance_window_waits_for_the_region(rollout):
    now = timezone.now().astimezone(ZoneInfo("Europe/Paris"))
    closed_hour = (now.hour + 3) % 24
    plan = dict(
        rollout.plan,
        maintenance_windows={
            "*": [{"days": list(range(7)), "start": f"{closed_hour:02d}:00", "end": f"{(closed_hour + 1) % 24:02d}:00"}]
        },
    )
    Rollout.objects.filter(pk=rollout.pk).update(plan=plan)
    seconds, reason = steps.wave_window_wait(rollout_id=rollout.pk, wave_index=0)
    assert 3600 < seconds <= 3 * 3600 + 1 and "maintenance window" in reason


def test_failures_the_plan_retries_are_offered_again(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    assigned = Deployment.objects.first()
    assert assigned is not None
    device = assigned.device
    deployment = expect_offer(device)
    retried = deployment_report(
        device=device, deployment_id=deployment.pk, report=Report(1, "failed", failure_class="download")
    ).deployment
    assert retried.status == DeploymentStatus.PENDING
    assert retried.not_before is not None and retried.not_before > timezone.now()
    assert deployment_offer(device_id=device.pk) is None  # backoff first
    later = timezone.now() + timedelta(minutes=5)
    for attempt in range(2, 5):  # the plan retries downloads 3 times: attempts 1..4 are offered, 4 fails for good
        again = expect_offer(device, now=later)
        assert again.attempts == attempt
        result = deployment_report(
            device=device, deployment_id=again.pk, report=Report(attempt * 10, "failed", failure_class="download")
        ).deployment
        later += timedelta(minutes=10)
    assert result.status == DeploymentStatus.FAILED
