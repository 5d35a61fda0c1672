"""The fleet-wide safety net end to end on the real Temporal dev server: a rollback spike of the release elsewhere
in the fleet pauses a running rollout's workflow (the database shows it paused, recorded as the safety net), and an
operator can resume it."""

from __future__ import annotations

import time

import pytest
from django.utils import timezone

from approvals.audit.models import DecisionRecord
from approvals.plans import plan_hash
from ota_project.alerts.models import Alert
from rollouts import fleet_safety, rollout_services
from rollouts.choices import DeploymentKind, DeploymentStatus, RolloutStatus
from rollouts.models import Deployment, Rollout, Wave
from tests.factories import ChangeRequestFactory, DeviceFactory
from tests.fleet_driver import healthy, run_until
from tests.temporal_support import running_worker
from tests.workflows_e2e.test_rollout_e2e import fast_plan

pytestmark = pytest.mark.django_db(transaction=True)


def _rolled_back_elsewhere(rollout: Rollout, count: int) -> None:
    """A finished rollout of the same release (another change) whose devices fell back to their old image."""
    plan = rollout.plan
    change = ChangeRequestFactory.create(release=rollout.release, rollback_release=rollout.rollback_release)
    other = Rollout.objects.create(
        change=change,
        release=rollout.release,
        rollback_release=rollout.rollback_release,
        plan=plan,
        plan_hash=plan_hash(plan),
        status=RolloutStatus.COMPLETED,
        started_by=rollout.started_by,
    )
    wave = Wave.objects.create(rollout=other, index=0, name="pilot", status="promoted")
    for _ in range(count):
        Deployment.objects.create(
            rollout=other,
            wave=wave,
            device=DeviceFactory.create(),
            release=rollout.release,
            kind=DeploymentKind.UPDATE,
            status=DeploymentStatus.ROLLED_BACK,
            finished_at=timezone.now(),
        )


def test_a_fleet_wide_rollback_spike_pauses_the_running_workflow(start, operator, settings):
    settings.OTA_FLEET_MIN_SAMPLE = 3
    settings.OTA_FLEET_ROLLBACK_RATE_LIMIT = 0.2
    plan = fast_plan()
    plan["waves"][0]["soak_seconds"] = 30  # the pilot soaks while the spike arrives
    with running_worker():
        rollout = start(plan)
        rollout = run_until(rollout.pk, healthy, lambda r: r.status == RolloutStatus.RUNNING)
        _rolled_back_elsewhere(rollout, 4)
        assert fleet_safety.fleet_safety_check(release_id=rollout.release_id) == [rollout.pk]
        rollout = run_until(rollout.pk, healthy, lambda r: r.status == RolloutStatus.PAUSED, timeout=30)
        assert rollout.status_reason.startswith("Paused by the fleet safety net: Across all rollouts of release")
        pause = DecisionRecord.objects.get(action="rollout.pause", object_id=str(rollout.pk))
        assert pause.actor is None and pause.actor_name == "system:fleet-safety"
        assert Alert.objects.get().evidence["rollouts_paused"] == [rollout.pk]
        time.sleep(2)
        assert not Deployment.objects.filter(rollout=rollout, wave__index=1).exists()
        # The spike persists; the same alert does not pause it again once a person has resumed it.
        rollout_services.rollout_act(actor=operator, rollout=rollout, action="resume", reason="checked the evidence")
        assert fleet_safety.fleet_safety_check(release_id=rollout.release_id) == []
        rollout = run_until(rollout.pk, healthy, lambda r: r.status != RolloutStatus.PAUSED, timeout=30)
    assert DecisionRecord.objects.filter(action="rollout.pause", object_id=str(rollout.pk)).count() == 1
