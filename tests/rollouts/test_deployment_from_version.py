"""Deployments store the software their device ran when they were created: update waves and rollbacks, both paths."""

from __future__ import annotations

import pytest

from devices.models import Device
from ota_project.roles import Role
from rollouts import rollout_services as steps
from rollouts.choices import DeploymentKind, RolloutStatus
from rollouts.demo.playback import HAPPY
from rollouts.deployment_services import Report, deployment_offer, deployment_report
from rollouts.models import Deployment
from tests.factories import UserFactory
from tests.support.rollouts import assign_through, authorize
from workflows.types import PhaseChange

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_temporal(settings):
    settings.TEMPORAL_ENABLED = False


@pytest.fixture
def rollout(approved_change, operator):
    rollout = steps.rollout_start(actor=operator, change=approved_change)
    steps.rollout_phase(PhaseChange(rollout.pk, RolloutStatus.RUNNING, 0))
    return rollout


def _drive(deployment: Deployment, *statuses: str) -> Deployment:
    """Offer the deployment to its device and report these statuses as the device would."""
    offered = deployment_offer(device_id=deployment.device_id)
    assert offered is not None and offered.pk == deployment.pk
    for seq, status in enumerate(statuses, start=offered.last_seq + 1):
        report = (
            Report(seq, status, booted_version=offered.release.version, health_passed=True)
            if status == "succeeded"
            else Report(seq, status)
        )
        offered = deployment_report(device=offered.device, deployment_id=offered.pk, report=report).deployment
    return offered


def _mixed_inventory(fleet) -> dict[int, tuple[str, int]]:
    """Give every target device its own installed version and counter; returns device id -> (version, counter)."""
    expected = {}
    for n, device in enumerate(Device.objects.filter(hardware_model=fleet["model"])):
        version, counter = f"1.0.{n}", 1 + n % 3
        Device.objects.filter(pk=device.pk).update(installed_version=version, installed_release_counter=counter)
        expected[device.pk] = (version, counter)
    return expected


def _stored(rollout, kind: str = DeploymentKind.UPDATE) -> dict[int, tuple[str, int | None]]:
    return {
        device_id: (version, counter)
        for device_id, version, counter in Deployment.objects.filter(rollout=rollout, kind=kind).values_list(
            "device_id", "from_version", "from_release_counter"
        )
    }


def test_wave_assignment_stores_each_devices_installed_version_through_copy(rollout, fleet):
    expected = _mixed_inventory(fleet)
    assign_through(rollout, 2)
    stored = _stored(rollout)
    assert len(stored) == 20
    assert stored == {device_id: expected[device_id] for device_id in stored}


def test_stored_version_is_the_one_at_creation_and_never_changes(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    first, second = Deployment.objects.filter(rollout=rollout).select_related("device", "release").order_by("pk")
    _drive(first, *HAPPY)
    first.device.refresh_from_db()
    assert (first.device.installed_version, first.device.installed_release_counter) == ("1.1.0", 1)
    # The inventory of a device not yet updated changes after assignment (a depot re-flash, say).
    Device.objects.filter(pk=second.device_id).update(installed_version="1.0.9", installed_release_counter=1)
    assert steps.wave_assign(rollout_id=rollout.pk, wave_index=0).assigned == 2  # a retry inserts nothing
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.from_version, first.from_release_counter) == ("1.0.0", 1)
    assert (second.from_version, second.from_release_counter) == ("1.0.0", 1)


def test_later_wave_stores_what_devices_run_when_that_wave_is_assigned(rollout, fleet):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    unassigned = Device.objects.filter(hardware_model=fleet["model"]).exclude(deployments__rollout=rollout)
    moved = list(unassigned.values_list("pk", flat=True)[:5])
    Device.objects.filter(pk__in=moved).update(installed_version="1.0.5", installed_release_counter=1)
    assign_through(rollout, 2)
    stored = _stored(rollout)
    assert {stored[pk] for pk in moved} == {("1.0.5", 1)}
    assert {value for pk, value in stored.items() if pk not in moved} == {("1.0.0", 1)}


def test_rollback_deployment_stores_the_version_the_device_runs_when_rolling_back(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    first, second = Deployment.objects.filter(rollout=rollout).select_related("device", "release").order_by("pk")
    _drive(first, *HAPPY)  # took 1.1.0 and confirmed it
    _drive(second, "downloading", "downloaded", "installing")  # flashing, the inventory still says 1.0.0
    steps.rollout_halt(rollout_id=rollout.pk, wave_index=0, reason="failure threshold crossed")
    authorize(rollout, "rollback", UserFactory.create(roles=[Role.OPERATOR]), reason="boot loops")
    # One active deployment per device: the device still flashing gets its rollback once its update is over.
    assert steps.rollback_assign(rollout_id=rollout.pk) == 1
    assert steps.rollback_health(rollout_id=rollout.pk).pending == 2  # its own rollback, and one still installing
    second = deployment_report(
        device=second.device, deployment_id=second.pk, report=Report(10, "failed", failure_class="install")
    ).deployment
    assert steps.rollback_health(rollout_id=rollout.pk).total == 2
    rollbacks = _stored(rollout, DeploymentKind.ROLLBACK)
    assert rollbacks == {first.device_id: ("1.1.0", 1), second.device_id: ("1.0.0", 1)}
    # The update rows keep what the devices ran before the update.
    assert _stored(rollout) == {first.device_id: ("1.0.0", 1), second.device_id: ("1.0.0", 1)}
    # Retrying the step adds nothing and rewrites nothing.
    Device.objects.filter(pk=first.device_id).update(installed_version="9.9.9", installed_release_counter=9)
    assert steps.rollback_assign(rollout_id=rollout.pk) == 2
    assert _stored(rollout, DeploymentKind.ROLLBACK) == rollbacks
