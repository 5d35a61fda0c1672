"""The transition tables and the one guarded helper per model: allowed moves happen, refused moves change
nothing, a row already in the target status is left alone (retried steps), and a concurrent change wins cleanly."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from rollouts import rollout_services as steps
from rollouts.choices import (
    DEPLOYMENT_ACTIVE,
    DEPLOYMENT_PROGRESS,
    DEPLOYMENT_TERMINAL,
    DEPLOYMENT_TRANSITIONS,
    DEPLOYMENT_UNSTARTED,
    ROLLOUT_TRANSITIONS,
    WAVE_ACTIVE,
    WAVE_TERMINAL,
    WAVE_TRANSITIONS,
    DeploymentStatus,
    RolloutStatus,
    WaveStatus,
)
from rollouts.demo.playback import play
from rollouts.deployment_services import deployment_offer
from rollouts.models import Deployment, Rollout, Wave
from rollouts.transitions import deployment_transition, transition_sources, wave_transition

D = DeploymentStatus
W = WaveStatus


@pytest.fixture(autouse=True)
def _no_temporal(settings):
    settings.TEMPORAL_ENABLED = False


@pytest.fixture
def rollout(approved_change, operator) -> Rollout:
    return steps.rollout_start(actor=operator, change=approved_change)


@pytest.fixture
def wave0(rollout) -> Wave:
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    return Wave.objects.get(rollout=rollout, index=0)


def _snapshot(deployment_ids) -> list[tuple]:
    return list(
        Deployment.objects.filter(pk__in=deployment_ids)
        .order_by("pk")
        .values_list("pk", "status", "finished_at", "updated_at", "detail", "failure_class")
    )


def _confirming(deployment: Deployment) -> Deployment:
    """Drive a deployment the real way, through the device services, up to confirming its boot."""
    offered = deployment_offer(device_id=deployment.device_id)
    assert offered is not None and offered.pk == deployment.pk
    play(offered, ("downloading", "downloaded", "installing", "rebooting", "confirming"))
    offered.refresh_from_db()
    assert offered.status == D.CONFIRMING
    return offered


# --- the tables -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "statuses"),
    [(DEPLOYMENT_TRANSITIONS, D.values), (WAVE_TRANSITIONS, W.values), (ROLLOUT_TRANSITIONS, RolloutStatus.values)],
)
def test_every_status_has_a_row_and_only_known_targets_and_no_status_moves_to_itself(table, statuses):
    assert set(table) == set(statuses)
    for status, targets in table.items():
        assert targets <= set(statuses)
        assert status not in targets


def test_deployment_table_follows_the_life_cycle():
    # Forwards along the progress order, never backwards (a retried failure goes back to pending only).
    for earlier, later in zip(DEPLOYMENT_PROGRESS, DEPLOYMENT_PROGRESS[1:], strict=False):
        assert later in DEPLOYMENT_TRANSITIONS[earlier]
        assert earlier not in DEPLOYMENT_TRANSITIONS[later] or earlier == D.PENDING
    # Success only after confirming (or late, after the server gave up); withdrawal only before installing.
    assert transition_sources(DEPLOYMENT_TRANSITIONS, D.SUCCEEDED) == {D.CONFIRMING, D.TIMED_OUT, D.CANCELLED}
    assert transition_sources(DEPLOYMENT_TRANSITIONS, D.CANCELLED) == DEPLOYMENT_UNSTARTED
    assert transition_sources(DEPLOYMENT_TRANSITIONS, D.SKIPPED) == DEPLOYMENT_UNSTARTED
    assert transition_sources(DEPLOYMENT_TRANSITIONS, D.TIMED_OUT) == DEPLOYMENT_ACTIVE
    # Ended deployments stay ended, except a late confirmed success.
    for status in DEPLOYMENT_TERMINAL - {D.TIMED_OUT, D.CANCELLED}:
        assert DEPLOYMENT_TRANSITIONS[status] == frozenset()


def test_wave_table_follows_the_life_cycle():
    assert transition_sources(WAVE_TRANSITIONS, W.RUNNING) == {W.PENDING, W.WAITING_WINDOW}
    assert transition_sources(WAVE_TRANSITIONS, W.PROMOTED) == WAVE_ACTIVE
    assert all(WAVE_TRANSITIONS[status] == frozenset() for status in WAVE_TERMINAL)


def test_an_unknown_status_is_a_programming_error():
    with pytest.raises(ValueError, match="not a status"):
        transition_sources(DEPLOYMENT_TRANSITIONS, "exploded")


# --- deployment_transition ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_allowed_deployment_move_happens_and_is_counted(wave0):
    pending = list(wave0.deployments.filter(status=D.PENDING).values_list("pk", flat=True))
    now = timezone.now()
    moved = deployment_transition(deployments=pending, to=D.CANCELLED, now=now, reason="rollout halted")
    assert moved == len(pending) > 0
    rows = Deployment.objects.filter(pk__in=pending)
    assert set(rows.values_list("status", "finished_at", "updated_at", "detail")) == {
        (D.CANCELLED, now, now, "rollout halted")
    }


@pytest.mark.django_db
def test_a_refused_deployment_move_changes_nothing(wave0):
    deployment = wave0.deployments.filter(status=D.PENDING).select_related("device").first()
    ids = [deployment.pk]
    before = _snapshot(ids)
    # Success only from confirming; in progress cannot be withdrawn.
    assert deployment_transition(deployments=ids, to=D.SUCCEEDED, now=timezone.now()) == 0
    assert _snapshot(ids) == before
    confirming = _confirming(deployment)
    before = _snapshot(ids)
    assert deployment_transition(deployments=ids, to=D.CANCELLED, now=timezone.now(), reason="nope") == 0
    assert deployment_transition(deployments=ids, to=D.OFFERED, now=timezone.now()) == 0  # never backwards
    assert _snapshot(ids) == before and confirming.status == D.CONFIRMING


@pytest.mark.django_db
def test_a_deployment_already_in_the_target_status_is_left_alone(wave0):
    """A retried step (Temporal retries activities) moves nothing and rewrites no timestamps or reasons."""
    ids = list(wave0.deployments.filter(status=D.PENDING).values_list("pk", flat=True))
    first = timezone.now()
    assert deployment_transition(deployments=ids, to=D.CANCELLED, now=first, reason="rollout halted") == len(ids)
    before = _snapshot(ids)
    later = first + timedelta(minutes=5)
    assert deployment_transition(deployments=ids, to=D.CANCELLED, now=later, reason="again") == 0
    assert _snapshot(ids) == before


@pytest.mark.django_db
def test_a_mixed_set_moves_only_the_rows_the_table_allows(wave0):
    pending = list(wave0.deployments.filter(status=D.PENDING).select_related("device")[:2])
    assert len(pending) == 2
    _confirming(pending[0])
    ids = [d.pk for d in pending]
    assert (
        deployment_transition(deployments=Deployment.objects.filter(pk__in=ids), to=D.SKIPPED, now=timezone.now()) == 1
    )
    assert dict(Deployment.objects.filter(pk__in=ids).values_list("pk", "status")) == {
        pending[0].pk: D.CONFIRMING,
        pending[1].pk: D.SKIPPED,
    }


@pytest.mark.django_db(transaction=True)
def test_a_deadline_expiry_loses_cleanly_to_a_success_committed_while_it_waited(wave0):
    """Two transactions race on one confirming deployment: the device's success takes the row lock first; the
    deadline's time-out waits for it, re-reads the row, finds `succeeded` (not a status it may leave) and moves
    nothing."""
    deployment = _confirming(wave0.deployments.filter(status=D.PENDING).select_related("device").first())
    success_moved = threading.Event()
    counts: dict[str, int] = {}
    waited: list[float] = []

    def device_confirms() -> None:
        try:
            with transaction.atomic():
                counts["success"] = deployment_transition(
                    deployments=[deployment.pk], to=D.SUCCEEDED, now=timezone.now()
                )
                success_moved.set()
                time.sleep(0.5)  # hold the row lock while the expiry runs into it
        finally:
            success_moved.set()
            connection.close()

    def deadline_expires() -> None:
        try:
            success_moved.wait(timeout=10)
            started = time.monotonic()
            with transaction.atomic():
                counts["timed_out"] = deployment_transition(
                    deployments=[deployment.pk], to=D.TIMED_OUT, now=timezone.now(), failure_class="confirm"
                )
            waited.append(time.monotonic() - started)
        finally:
            connection.close()

    threads = [threading.Thread(target=device_confirms), threading.Thread(target=deadline_expires)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert counts == {"success": 1, "timed_out": 0}
    assert waited and waited[0] > 0.2  # it really ran into the other transaction's lock
    deployment.refresh_from_db()
    assert deployment.status == D.SUCCEEDED and deployment.failure_class == ""


# --- wave_transition ---------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_wave_moves_follow_the_table(rollout):
    waves = Wave.objects.filter(rollout=rollout).order_by("index")
    first, second = waves[0], waves[1]
    now = timezone.now()
    # A wave that never opened cannot be promoted or pass.
    assert wave_transition(waves=[second.pk], to=W.PROMOTED, verdict_at=now) == 0
    assert wave_transition(waves=[second.pk], to=W.PASSED, verdict_at=now) == 0
    assert wave_transition(waves=[first.pk], to=W.RUNNING, started_at=now, assigned_devices=3) == 1
    assert wave_transition(waves=[first.pk], to=W.PASSED, verdict_at=now) == 1
    assert wave_transition(waves=[first.pk], to=W.PROMOTED, verdict_at=now) == 1
    # Promoted is final: a later halt or gate leaves it (and its verdict time) alone.
    later = now + timedelta(minutes=1)
    assert wave_transition(waves=[first.pk], to=W.FAILED, verdict_at=later) == 0
    assert wave_transition(waves=[first.pk], to=W.PROMOTED, verdict_at=later) == 0
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, first.verdict_at, first.assigned_devices) == (W.PROMOTED, now, 3)
    assert (second.status, second.verdict_at) == (W.PENDING, None)


@pytest.mark.django_db
def test_a_failed_wave_is_never_promoted_and_a_retried_halt_keeps_the_first_verdict_time(wave0):
    now = timezone.now()
    assert wave_transition(waves=[wave0.pk], to=W.FAILED, verdict_at=now) == 1
    assert wave_transition(waves=[wave0.pk], to=W.FAILED, verdict_at=now + timedelta(minutes=1)) == 0
    assert wave_transition(waves=[wave0.pk], to=W.PROMOTED, verdict_at=now + timedelta(minutes=1)) == 0
    wave0.refresh_from_db()
    assert (wave0.status, wave0.verdict_at) == (W.FAILED, now)
