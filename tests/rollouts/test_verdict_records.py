"""Gate verdicts and human actions are decisions recorded exactly once, however often their step runs.

Each test calls a workflow step's service the way Temporal would run it again: an activity retried after its
transaction committed (the worker died before reporting), or re-run by the next run after continue-as-new.
"""

from __future__ import annotations

import pytest
from django.db.models import Count

from approvals import services as change_services
from approvals.audit.models import DecisionRecord
from approvals.audit.records import chain_verify
from ota_project.alerts.models import Alert
from ota_project.errors import NotPermitted
from ota_project.roles import Role
from rollouts import rollout_services as steps
from rollouts.choices import DeploymentKind, DeploymentStatus, RolloutStatus
from rollouts.demo.playback import FAIL_BOOT, HAPPY
from rollouts.deployment_services import Report, deployment_report
from rollouts.models import ActionTokenUse, Deployment, Rollout
from rollouts.step_keys import human_action_step_key
from tests.factories import UserFactory
from tests.support.records import after_state
from tests.support.rollouts import end_soak, expect_offer, promote, token_for
from workflows.types import PhaseChange, WaveHealth

pytestmark = pytest.mark.django_db

_WAVE = {"soak_seconds": 60, "min_sample": 1, "success_threshold": 0.9, "failure_threshold": 0.1}
PLAN = {
    "waves": [
        {"name": "pilot", "cohort": {"kind": "pilot"}, "promotion": "auto", **_WAVE},
        {"name": "fleet", "cohort": {"kind": "percent", "value": 100}, "promotion": "manual", **_WAVE},
    ],
    "abort_policy": "halt_and_rollback",
    "monitor_interval_seconds": 1,
    "deadlines": {"download_seconds": 600, "install_seconds": 600, "confirm_seconds": 600},
}


@pytest.fixture(autouse=True)
def _no_temporal(settings):
    settings.TEMPORAL_ENABLED = False


@pytest.fixture
def rollout(requester, change_fields, cab_member, cab_member_2, operator) -> Rollout:
    change = change_services.change_create(actor=requester, **{**change_fields, "rollout_plan": PLAN})
    change = change_services.change_submit(actor=requester, change=change)
    change_services.approval_grant(actor=cab_member, change=change, revision=1)
    change = change_services.approval_grant(actor=cab_member_2, change=change, revision=1)
    return steps.rollout_start(actor=operator, change=change)


def _drive(deployment: Deployment, *statuses: str) -> Deployment:
    for seq, status in enumerate(statuses, start=deployment.last_seq + 1):
        report = (
            Report(seq, status, booted_version=deployment.release.version, health_passed=True)
            if status == "succeeded"
            else Report(seq, status)
        )
        deployment = deployment_report(device=deployment.device, deployment_id=deployment.pk, report=report).deployment
    return deployment


def _pilots(rollout: Rollout) -> list[Deployment]:
    return list(Deployment.objects.filter(rollout=rollout, wave__index=0).order_by("pk"))


def _records(rollout: Rollout, action: str) -> list[DecisionRecord]:
    return list(DecisionRecord.objects.filter(object_type="rollout", object_id=str(rollout.pk), action=action))


def _no_step_key_twice() -> None:
    twice = DecisionRecord.objects.exclude(step_key=None).values("step_key").annotate(n=Count("pk")).filter(n__gt=1)
    assert not twice.exists()
    verdict = chain_verify()
    assert verdict.ok, verdict.problems


def test_an_automatic_promotion_is_one_record_however_often_its_step_runs(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    for deployment in _pilots(rollout):
        _drive(expect_offer(deployment.device), *HAPPY)
    end_soak(rollout, 0)

    assert steps.wave_promote(rollout_id=rollout.pk, wave_index=0) is True
    assert steps.wave_promote(rollout_id=rollout.pk, wave_index=0) is False  # the activity, retried

    [record] = _records(rollout, "rollout.promote_auto")
    assert record.step_key == f"rollout-{rollout.pk}/wave-0/promote"
    assert record.after is not None
    assert record.actor_name == "system:temporal" and record.after["counts"]["succeeded"] == 2
    _no_step_key_twice()


@pytest.mark.parametrize("action", ["pause", "resume", "abort", "rollback", "promote"])
def test_a_human_action_whose_authorization_is_retried_is_recorded_once(rollout, operator, action):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    end_soak(rollout, 0)
    wave_index = 0
    request = {
        "rollout_id": rollout.pk,
        "action": action,
        "actor_id": operator.pk,
        "reason": "maintenance window",
        "wave_index": wave_index,
        "token": token_for(operator, rollout, action, wave_index),
        "update_id": "update-7f3a",
    }

    steps.human_action_authorize(**request)
    steps.human_action_authorize(**request)  # the worker died after the commit; Temporal runs the activity again
    steps.human_action_authorize(**request)

    [record] = _records(rollout, f"rollout.{action}")
    assert record.actor_id == operator.pk and record.reason == "maintenance window"
    assert record.step_key == f"rollout-{rollout.pk}/wave-0/{action}/update-update-7f3a"
    assert ActionTokenUse.objects.filter(rollout=rollout, action=action).count() == 1
    _no_step_key_twice()


def test_every_update_is_its_own_decision(rollout, operator):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    for number, action in enumerate(["pause", "resume", "pause", "resume"]):
        steps.human_action_authorize(
            rollout_id=rollout.pk,
            action=action,
            actor_id=operator.pk,
            reason="",
            wave_index=0,
            token=token_for(operator, rollout, action, 0),
            update_id=f"update-{number}",
        )
    assert len(_records(rollout, "rollout.pause")) == 2 and len(_records(rollout, "rollout.resume")) == 2
    _no_step_key_twice()


def test_another_persons_action_under_a_recorded_update_id_is_refused(rollout, operator):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    other = UserFactory.create(roles=[Role.OPERATOR])
    steps.human_action_authorize(
        rollout_id=rollout.pk,
        action="pause",
        actor_id=operator.pk,
        reason="",
        wave_index=0,
        token=token_for(operator, rollout, "pause", 0),
        update_id="update-1",
    )
    with pytest.raises(NotPermitted):
        steps.human_action_authorize(
            rollout_id=rollout.pk,
            action="pause",
            actor_id=other.pk,
            reason="",
            wave_index=0,
            token=token_for(other, rollout, "pause", 0),
            update_id="update-1",
        )
    [record] = _records(rollout, "rollout.pause")
    assert record.actor_id == operator.pk
    assert not ActionTokenUse.objects.filter(actor=other).exists()


def test_a_recorded_update_id_does_not_excuse_a_forged_proof(rollout, operator):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    request = {
        "rollout_id": rollout.pk,
        "action": "pause",
        "actor_id": operator.pk,
        "reason": "",
        "wave_index": 0,
        "update_id": "update-1",
    }
    steps.human_action_authorize(**request, token=token_for(operator, rollout, "pause", 0))
    with pytest.raises(NotPermitted):
        steps.human_action_authorize(**request, token="forged.token")
    # A fresh, valid but unspent proof is not the one that was recorded either.
    with pytest.raises(NotPermitted):
        steps.human_action_authorize(**request, token=token_for(operator, rollout, "pause", 0))
    assert len(_records(rollout, "rollout.pause")) == 1


def test_rerunning_the_rollback_assignment_after_continue_as_new_records_nothing(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    done, installing = _pilots(rollout)
    _drive(expect_offer(done.device), *HAPPY)
    installing = _drive(expect_offer(installing.device), "downloading", "downloaded", "installing")
    steps.rollout_halt(rollout_id=rollout.pk, wave_index=0, reason="failure threshold crossed")

    assert steps.rollback_assign(rollout_id=rollout.pk) == 1
    _drive(installing, "rebooting", "confirming", "succeeded")  # finished since: owed a rollback too
    # The next run (after continue-as-new) resumes the saga and asks again; so does a retried activity.
    assert steps.rollback_assign(rollout_id=rollout.pk) == 2
    assert steps.rollback_assign(rollout_id=rollout.pk) == 2

    [record] = _records(rollout, "rollout.rollback_assign")
    assert record.after == {"devices": 1} and record.step_key == f"rollout-{rollout.pk}/rollback/assign"
    assert len(_records(rollout, "rollout.rolling_back")) == 1
    assert Deployment.objects.filter(rollout=rollout, kind=DeploymentKind.ROLLBACK).count() == 2
    _no_step_key_twice()


def test_a_hold_is_recorded_once_per_wave_and_reason_not_per_projection(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    health = WaveHealth(total=2, pending=1, succeeded=1)
    held = PhaseChange(
        rollout.pk, RolloutStatus.AWAITING_PROMOTION, 0, gate="inconclusive", reason="1 of 2", health=health
    )
    steps.rollout_phase(held)
    steps.rollout_phase(held)  # retried projection
    steps.rollout_phase(PhaseChange(rollout.pk, RolloutStatus.PAUSED, 0, gate="inconclusive", reason="paused"))
    steps.rollout_phase(held)  # resumed at the same gate, and re-projected by the next run after continue-as-new

    [hold] = _records(rollout, "rollout.hold")
    assert hold.after is not None
    assert hold.after == {"wave": 0, "gate": "inconclusive", "counts": hold.after["counts"]}
    assert hold.after["counts"]["succeeded"] == 1 and hold.reason == "1 of 2"

    # A hold on the next wave is another decision (a person promotes the inconclusive pilot first).
    promote(rollout, 0)
    steps.wave_assign(rollout_id=rollout.pk, wave_index=1)
    end_soak(rollout, 1)
    gate = PhaseChange(rollout.pk, RolloutStatus.AWAITING_PROMOTION, 1, gate="promotion", reason="passed")
    steps.rollout_phase(gate)
    steps.rollout_phase(gate)

    holds = _records(rollout, "rollout.hold")
    assert [(after_state(r)["wave"], after_state(r)["gate"]) for r in holds] == [(0, "inconclusive"), (1, "promotion")]
    _no_step_key_twice()
    # The inconclusive hold needs a person: one alert for it however often it was projected; a manual gate is the
    # plan's own stop and raises none.
    [alert] = Alert.objects.all()
    assert (alert.kind, alert.severity, alert.occurrences) == ("rollout.held", "warning", 1)
    assert alert.link == f"/rollouts/{rollout.pk}/" and alert.evidence["wave"] == 1
    assert alert.title.startswith(f"Rollout {rollout.pk} (change #{rollout.change_id}) held at wave 1")


def test_a_halt_and_its_breaker_are_recorded_once_each(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    offered = [expect_offer(deployment.device) for deployment in _pilots(rollout)]
    for deployment in offered:  # the first failure trips the breaker (the device API's path), the second adds to it
        _drive(deployment, *FAIL_BOOT)

    for _ in range(3):  # monitoring ticks and retried health steps
        steps.wave_health(rollout_id=rollout.pk, wave_index=0)
    for _ in range(2):  # the halt step, retried
        steps.rollout_halt(rollout_id=rollout.pk, wave_index=0, reason="Wave pilot failed.")

    assert len(_records(rollout, "rollout.breaker_tripped")) == 1
    [halt] = _records(rollout, "rollout.halt")
    assert halt.step_key == f"rollout-{rollout.pk}/wave-0/halt" and halt.reason == "Wave pilot failed."
    assert len(_records(rollout, "rollout.stop_offering")) == 1
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.HALTED
    assert not Deployment.objects.filter(rollout=rollout, status=DeploymentStatus.PENDING, wave__index=0).exists()
    _no_step_key_twice()
    # The halt raised one critical alert for the on-call operator, not one per retried step.
    [alert] = Alert.objects.all()
    assert (alert.kind, alert.severity, alert.occurrences) == ("rollout.halted", "critical", 1)
    assert alert.link == f"/rollouts/{rollout.pk}/" and "Wave pilot failed." in alert.summary


def test_a_step_key_fits_its_column_however_long_the_update_id():
    long_id = "x" * 5000
    key = human_action_step_key(12, 3, "pause", long_id)
    assert key is not None and len(key) <= 200 and key.startswith("rollout-12/wave-3/pause/update-sha256-")
    assert key == human_action_step_key(12, 3, "pause", long_id)  # deterministic
    assert key != human_action_step_key(12, 3, "pause", long_id + "y")
    assert human_action_step_key(12, 3, "pause", "") is None  # histories from before update ids were sent


def test_a_halt_a_person_decided_raises_no_alert(rollout, operator):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    steps.human_action_authorize(
        rollout_id=rollout.pk,
        action="abort",
        actor_id=operator.pk,
        reason="wrong window",
        wave_index=0,
        token=token_for(operator, rollout, "abort", 0),
        update_id="update-abort",
    )
    steps.rollout_halt(rollout_id=rollout.pk, wave_index=0, reason="aborted by an operator")
    assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.HALTED
    assert not Alert.objects.exists()  # the person who aborted is on it already
