"""Health history: each gate evaluation leaves a compact sample that the dashboard charts over time."""

from __future__ import annotations

import pytest

from rollouts import rollout_services as steps
from rollouts.choices import DeploymentKind, DeploymentStatus
from rollouts.models import Deployment, HealthSample
from tests.fleet_driver import FAIL_BOOT, HAPPY, play
from tests.support.rollouts import assign_through, expect_offer
from workflows.types import PhaseChange

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_temporal(settings):
    settings.TEMPORAL_ENABLED = False


@pytest.fixture
def rollout(approved_change, operator):
    rollout = steps.rollout_start(actor=operator, change=approved_change)
    steps.rollout_phase(PhaseChange(rollout.pk, "running", 0))
    return rollout


def _offer_and_play(rollout, wave_index: int, statuses_per_device: list[tuple[str, ...]]) -> None:
    deployments = Deployment.objects.filter(rollout=rollout, wave__index=wave_index, status="pending").order_by("pk")
    for deployment, statuses in zip(list(deployments), statuses_per_device, strict=False):
        play(expect_offer(deployment.device), statuses)


def test_each_change_in_counts_adds_one_sample_with_its_failure_rate(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    steps.wave_health(rollout_id=rollout.pk, wave_index=0)
    _offer_and_play(rollout, 0, [HAPPY])
    steps.wave_health(rollout_id=rollout.pk, wave_index=0)
    _offer_and_play(rollout, 0, [FAIL_BOOT])
    steps.wave_health(rollout_id=rollout.pk, wave_index=0)

    samples = list(HealthSample.objects.filter(rollout=rollout).order_by("first_at", "pk"))
    assert [(s.kind, s.wave_index, s.counts["succeeded"], s.counts["rolled_back"]) for s in samples] == [
        ("wave", 0, 0, 0),
        ("wave", 0, 1, 0),
        ("wave", 0, 1, 1),
    ]
    assert [s.failure_rate for s in samples] == [None, 0.0, 0.5]
    assert samples[0].counts == {
        "total": 2,
        "pending": 2,
        "in_progress": 0,
        "succeeded": 0,
        "failed": 0,
        "timed_out": 0,
        "rolled_back": 0,
        "cancelled": 0,
    }


def test_repeated_evaluations_with_the_same_counts_extend_the_last_sample(rollout):
    """A retried activity or a quiet soak must not grow the table: only the last sample's time moves."""
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    for _ in range(4):
        steps.wave_health(rollout_id=rollout.pk, wave_index=0)

    sample = HealthSample.objects.get(rollout=rollout)
    assert sample.evaluations == 4
    assert sample.taken_at > sample.first_at


def test_samples_are_per_wave_and_never_per_device(rollout):
    for index in (0, 1, 2):
        assign_through(rollout, index)
        steps.wave_health(rollout_id=rollout.pk, wave_index=index)

    rows = list(HealthSample.objects.filter(rollout=rollout).values_list("wave_index", "counts__total"))
    assert sorted(rows) == [(0, 2), (1, 2), (2, 16)]  # 20 devices, 3 samples


def test_rollback_health_is_sampled_as_rollback(rollout):
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    _offer_and_play(rollout, 0, [HAPPY, HAPPY])
    steps.rollout_halt(rollout_id=rollout.pk, wave_index=0, reason="test")
    steps.rollback_assign(rollout_id=rollout.pk)
    steps.rollback_health(rollout_id=rollout.pk)
    rollback = Deployment.objects.filter(rollout=rollout, kind=DeploymentKind.ROLLBACK).first()
    assert rollback is not None
    play(expect_offer(rollback.device), HAPPY)
    steps.rollback_health(rollout_id=rollout.pk)

    samples = list(HealthSample.objects.filter(rollout=rollout, kind="rollback").order_by("first_at", "pk"))
    assert [(s.wave_index, s.counts["total"], s.counts["succeeded"]) for s in samples] == [(0, 2, 0), (0, 2, 1)]
    assert (
        Deployment.objects.filter(
            rollout=rollout, kind=DeploymentKind.ROLLBACK, status=DeploymentStatus.SUCCEEDED
        ).count()
        == 1
    )
