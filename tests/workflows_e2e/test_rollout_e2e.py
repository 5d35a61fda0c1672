"""Rollouts end to end on the real Temporal dev server: the real workflow, the real activities, PostgreSQL,
devices driven through the device services."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth.models import Group

from approvals.audit.models import DecisionRecord
from approvals.audit.records import chain_verify
from approvals.choices import ChangeStatus
from approvals.models import ChangeRequest
from devices.models import Device
from ota_project.errors import Conflict, NotPermitted
from ota_project.net import free_port
from rollouts import rollout_services
from rollouts.choices import DeploymentKind, DeploymentStatus, RolloutStatus
from rollouts.models import Deployment, Rollout
from tests.fleet_driver import FAIL_BOOT, HAPPY, finished, healthy, run_until
from tests.temporal_support import in_temporal_loop, running_worker, subprocess_env, worker_process
from workflows.client import TemporalUnavailable, temporal_client
from workflows.search_attributes import OTA_CHANGE_ID, OTA_PAUSED, OTA_PHASE

pytestmark = pytest.mark.django_db(transaction=True)


def fast_plan(*, pilot_promotion: str = "auto", abort_policy: str = "halt_and_rollback", download: int = 60) -> dict:
    wave = {"soak_seconds": 1, "min_sample": 1, "success_threshold": 0.9, "failure_threshold": 0.1}
    return {
        "waves": [
            {"name": "pilot", "cohort": {"kind": "pilot"}, "promotion": pilot_promotion, **wave},
            {"name": "fleet", "cohort": {"kind": "percent", "value": 100}, "promotion": "auto", **wave},
        ],
        "abort_policy": abort_policy,
        "monitor_interval_seconds": 1,
        "deadlines": {"download_seconds": download, "install_seconds": 60, "confirm_seconds": 60},
    }


def _search_attributes(workflow_id: str, *, phase: str = "", seconds: float = 10.0):
    """What operators filter on in the Temporal UI, as the server holds it now; with `phase`, once it shows it.

    The workflow writes the database projection first and upserts its search attributes in the workflow task that
    follows, so the server shows the phase a moment after the database does.
    """

    async def describe():
        return (await (await temporal_client()).get_workflow_handle(workflow_id).describe()).typed_search_attributes

    deadline = time.monotonic() + seconds
    while True:
        attributes = in_temporal_loop(describe())
        if not phase or attributes.get(OTA_PHASE) == phase or time.monotonic() > deadline:
            return attributes
        time.sleep(0.2)


def _listed_by_final_phase(rollout: Rollout, phase: str, seconds: float = 10.0) -> list[str]:
    """The workflow ids the Temporal visibility API lists for `OtaPhase=phase` of this change (what an operator's
    `temporal workflow list --query ...` answers), once the final phase has reached it."""

    async def listed():
        query = f'OtaPhase="{phase}" AND OtaChangeId={rollout.change_id}'
        return [execution.id async for execution in (await temporal_client()).list_workflows(query)]

    deadline = time.monotonic() + seconds
    while True:
        ids = in_temporal_loop(listed())
        if ids or time.monotonic() > deadline:
            return ids
        time.sleep(0.2)


def _shows_final_phase(rollout: Rollout, phase: str) -> None:
    attributes = _search_attributes(rollout.workflow_id, phase=phase)
    assert (attributes.get(OTA_PHASE), attributes.get(OTA_PAUSED)) == (phase, False)
    assert _listed_by_final_phase(rollout, phase) == [rollout.workflow_id]


def _no_duplicates(rollout: Rollout) -> None:
    per_device = (
        Deployment.objects.filter(rollout=rollout, kind=DeploymentKind.UPDATE).values("device").distinct().count()
    )
    assert per_device == Deployment.objects.filter(rollout=rollout, kind=DeploymentKind.UPDATE).count()


def test_healthy_rollout_completes_every_wave(start):
    with running_worker():
        rollout = run_until(start(fast_plan()).pk, healthy, finished)
        # The final phase reaches the search attributes in the workflow task after the projection: the worker that
        # runs it must still be up.
        _shows_final_phase(rollout, "completed")
    assert rollout.status == RolloutStatus.COMPLETED
    assert Device.objects.filter(hardware_model__name="tcu-4g-r2", installed_version="1.1.0").count() == 20
    assert Deployment.objects.filter(rollout=rollout, status=DeploymentStatus.SUCCEEDED).count() == 20
    _no_duplicates(rollout)
    assert ChangeRequest.objects.get(pk=rollout.change_id).status == ChangeStatus.COMPLETED
    assert chain_verify().ok


def test_failing_pilot_halts_and_rolls_back_before_the_fleet_sees_it(start):
    seen: list[int] = []

    def half_bad(deployment: Deployment) -> tuple[str, ...]:
        if deployment.kind == DeploymentKind.ROLLBACK:
            return HAPPY
        seen.append(deployment.device_id)
        return HAPPY if len(seen) == 1 else FAIL_BOOT

    with running_worker():
        rollout = run_until(start(fast_plan()).pk, half_bad, finished)
        _shows_final_phase(rollout, "rolled_back")
    assert rollout.status == RolloutStatus.ROLLED_BACK
    assert not Deployment.objects.filter(rollout=rollout, wave__index=1).exists()  # the fleet wave never started
    rollback = Deployment.objects.get(rollout=rollout, kind=DeploymentKind.ROLLBACK)
    assert rollback.status == DeploymentStatus.SUCCEEDED and rollback.device_id == seen[0]
    assert not Device.objects.filter(installed_version="1.1.0").exists()
    assert ChangeRequest.objects.get(pk=rollout.change_id).status == ChangeStatus.ROLLED_BACK
    assert DecisionRecord.objects.filter(action="rollout.halt").exists()


def test_manual_gate_waits_for_a_permitted_operator(start, operator, requester):
    with running_worker():
        rollout = run_until(
            start(fast_plan(pilot_promotion="manual")).pk,
            healthy,
            lambda r: r.status == RolloutStatus.AWAITING_PROMOTION,
        )
        assert rollout.gate == "promotion" and not Deployment.objects.filter(rollout=rollout, wave__index=1).exists()
        attributes = _search_attributes(rollout.workflow_id, phase="awaiting_promotion")
        assert attributes[OTA_PHASE] == "awaiting_promotion" and attributes[OTA_CHANGE_ID] == rollout.change_id
        requester.groups.add(Group.objects.get(name="operator"))  # the author holding the operator role
        from django.contrib.auth import get_user_model

        author = get_user_model().objects.get(pk=requester.pk)
        with pytest.raises(NotPermitted):
            rollout_services.rollout_act(actor=author, rollout=rollout, action="promote", wave_index=0)
        with pytest.raises(Conflict):
            rollout_services.rollout_act(actor=operator, rollout=rollout, action="promote", wave_index=1, reason="x")
        status = rollout_services.rollout_act(
            actor=operator, rollout=rollout, action="promote", wave_index=0, reason="pilot fine"
        )
        assert status.wave_index in (0, 1)
        rollout = run_until(rollout.pk, healthy, finished)
    assert rollout.status == RolloutStatus.COMPLETED
    record = DecisionRecord.objects.get(action="rollout.promote")
    assert (record.actor_name, record.reason) == (operator.username, "pilot fine")


def test_pause_stops_new_waves_and_resume_continues(start, operator):
    plan = fast_plan()
    plan["waves"][0]["soak_seconds"] = 4
    with running_worker():
        rollout = start(plan)
        pilot_done = lambda r: Deployment.objects.filter(rollout=r, wave__index=0, status="succeeded").count() == 2  # noqa: E731
        rollout = run_until(rollout.pk, healthy, pilot_done)
        rollout_services.rollout_act(actor=operator, rollout=rollout, action="pause", reason="shift change")
        rollout = run_until(rollout.pk, healthy, lambda r: r.status == RolloutStatus.PAUSED)
        time.sleep(6)  # the pilot's soak ends and it passes meanwhile, but no new wave starts while paused
        assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.PAUSED
        assert not Deployment.objects.filter(rollout=rollout, wave__index=1).exists()
        rollout_services.rollout_act(actor=operator, rollout=rollout, action="resume", reason="back")
        rollout = run_until(rollout.pk, healthy, finished)
    assert rollout.status == RolloutStatus.COMPLETED


def test_missed_deadlines_time_out_and_halt(start, operator):
    with running_worker():
        rollout = run_until(
            start(fast_plan(abort_policy="halt", download=2)).pk,
            lambda d: None,
            lambda r: r.status == RolloutStatus.HALTED,
            timeout=60,
        )
        # The first missed deadline crosses the failure threshold (min_sample 1); the halt cancels what is left.
        outcomes = set(Deployment.objects.filter(rollout=rollout).values_list("status", flat=True))
        assert DeploymentStatus.TIMED_OUT in outcomes and outcomes <= {
            DeploymentStatus.TIMED_OUT,
            DeploymentStatus.CANCELLED,
        }
        rollout_services.rollout_act(actor=operator, rollout=rollout, action="abort", reason="devices unreachable")
        rollout = run_until(rollout.pk, lambda d: None, finished)
        _shows_final_phase(rollout, "aborted")
    assert rollout.status == RolloutStatus.ABORTED
    assert ChangeRequest.objects.get(pk=rollout.change_id).status == ChangeStatus.CANCELLED


def test_worker_killed_mid_wave_loses_and_duplicates_nothing(start, settings):
    env = subprocess_env(settings)
    with worker_process(env) as worker:
        rollout = start(fast_plan(pilot_promotion="manual"))
        run_until(rollout.pk, healthy, lambda r: r.status == RolloutStatus.AWAITING_PROMOTION)
        worker.kill()
    with worker_process(env):
        from django.contrib.auth import get_user_model

        operator = get_user_model().objects.get(username="olga-operator")
        rollout_services.rollout_act(actor=operator, rollout=rollout, action="promote", wave_index=0, reason="go")
        rollout = run_until(rollout.pk, healthy, finished, timeout=90)
    assert rollout.status == RolloutStatus.COMPLETED
    _no_duplicates(rollout)
    assert Deployment.objects.filter(rollout=rollout, status=DeploymentStatus.SUCCEEDED).count() == 20


def test_dev_server_restart_mid_rollout_loses_nothing(start, operator, temporal_dev_server, client_for):
    with running_worker():
        rollout = run_until(
            start(fast_plan(pilot_promotion="manual")).pk,
            healthy,
            lambda r: r.status == RolloutStatus.AWAITING_PROMOTION,
        )
        live = client_for(operator).get(f"/api/v1/rollouts/{rollout.pk}/workflow-status/")
        assert live.status_code == 200 and live.json()["gate"] == "promotion"
    temporal_dev_server.restart()  # same database file: the workflow's history survives
    with running_worker():
        rollout_services.rollout_act(actor=operator, rollout=rollout, action="promote", wave_index=0, reason="go")
        rollout = run_until(rollout.pk, healthy, finished, timeout=90)
    assert rollout.status == RolloutStatus.COMPLETED
    _no_duplicates(rollout)


def test_rollout_recorded_while_temporal_was_down_is_started_later(start, settings):
    reachable = settings.TEMPORAL_ADDRESS
    settings.TEMPORAL_ADDRESS = f"127.0.0.1:{free_port()}"  # nothing listens: the start after commit fails
    with pytest.raises(TemporalUnavailable, match="is recorded, but its workflow could not be started yet"):
        start(fast_plan())
    rollout = Rollout.objects.get()
    assert rollout.status == RolloutStatus.SCHEDULED
    with pytest.raises(TemporalUnavailable):
        rollout_services.rollout_workflows_ensure(older_than_seconds=0)  # still down: nothing to report as started

    settings.TEMPORAL_ADDRESS = reachable
    assert rollout_services.rollout_workflows_ensure(older_than_seconds=3600) == []  # too young to be retried yet
    with running_worker():
        assert rollout_services.rollout_workflows_ensure(older_than_seconds=0) == [rollout.pk]
        rollout = run_until(rollout.pk, healthy, finished)
        assert rollout_services.rollout_workflows_ensure(older_than_seconds=0) == []
    assert rollout.status == RolloutStatus.COMPLETED
    _no_duplicates(rollout)
