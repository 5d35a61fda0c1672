"""Health gates on post-update signals, read from the telemetry aggregates: which wave a sample belongs to, and the
wave's signal verdict with its numbers (a few aggregate rows per tick, whatever the wave's size).

A wave's candidate side is its cohort (`wave:<pk>`): the samples devices send for their update deployments of this
wave, per hardware model. The baseline is the same hardware model on the rollout's rollback release (the release the
fleet runs before it), from every sample the fleet has sent on it. The judging is rollouts.signal_policy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from approvals.plans import HealthGate
from devices.models import Device, HardwareModel
from devices.telemetry import SampleAttribution
from devices.telemetry_aggregates import INDICATORS, Summary, cohort_summaries, release_summaries
from rollouts.choices import DeploymentKind
from rollouts.models import Deployment, Rollout, Wave
from rollouts.signal_policy import Comparison, signal_compare, signal_verdict
from workflows.types import SignalVerdict, WaveHealth

ANY_MODEL = "any model"
# The reason a workflow carries in its history is one sentence; the numbers are on the wave and in the record.
MAX_REASON = 400


def wave_cohort(wave_id: int) -> str:
    """The telemetry cohort of a wave's update deployments."""
    return f"wave:{wave_id}"


def deployment_attributions(*, device: Device, deployment_ids: Iterable[int]) -> dict[int, SampleAttribution]:
    """The device's own deployments among `deployment_ids`, each with what its samples measure: its release, and for
    an update its wave's cohort (a rollback's samples measure the old release and belong to no wave)."""
    rows = Deployment.objects.filter(device=device, pk__in=list(deployment_ids)).values_list(
        "pk", "kind", "wave_id", "release__version"
    )
    return {
        pk: SampleAttribution(version, wave_cohort(wave_id) if kind == DeploymentKind.UPDATE else "")
        for pk, kind, wave_id, version in rows
    }


@dataclass(frozen=True)
class SignalReport:
    """A wave's signal verdict, the sentence that explains it, and every comparison's numbers."""

    verdict: str
    reason: str
    baseline_release: str
    comparisons: tuple[Comparison, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "baseline_release": self.baseline_release,
            "comparisons": [comparison.to_json() for comparison in self.comparisons],
        }


def _reason(verdict: str, comparisons: tuple[Comparison, ...]) -> str:
    deciding = [comparison.reason for comparison in comparisons if comparison.verdict == verdict]
    if not deciding:
        return ""
    more = f" (and {len(deciding) - 1} more)" if len(deciding) > 1 else ""
    text = deciding[0] + more
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def wave_signals(*, rollout: Rollout, wave: Wave) -> SignalReport | None:
    """The wave's health-gate verdict from the aggregates (None when the plan names no gates); read-only."""
    gates = rollout.approved_plan.gates
    if not gates:
        return None
    return signal_report(gates, cohort=wave_cohort(wave.pk), baseline_release=rollout.rollback_release.version)


def signal_report(gates: Sequence[HealthGate], *, cohort: str, baseline_release: str) -> SignalReport:
    """Judge a cohort against the baseline release, per hardware model and gate: two or three small reads (one row
    per model and indicator on each side, whatever the number of devices) and the pure comparisons."""
    indicators = [gate.indicator for gate in gates]
    candidate = cohort_summaries(cohort, indicators)
    model_ids = sorted({model for model, _ in candidate})
    baseline = release_summaries(baseline_release, model_ids, indicators) if model_ids else {}
    # No post-update sample yet from any model: every gate is judged (inconclusive) on nothing.
    judged: list[int | None] = [*model_ids] or [None]
    names = dict(HardwareModel.objects.filter(pk__in=model_ids).values_list("pk", "name")) if model_ids else {}
    comparisons = tuple(
        signal_compare(
            INDICATORS[gate.indicator],
            gate,
            hardware_model=names.get(model, ANY_MODEL) if model is not None else ANY_MODEL,
            baseline=baseline.get((model, gate.indicator), Summary()) if model is not None else Summary(),
            candidate=candidate.get((model, gate.indicator), Summary()) if model is not None else Summary(),
            comparisons=len(judged) * len(gates),
        )
        for model in judged
        for gate in gates
    )
    verdict = signal_verdict(comparisons)
    return SignalReport(verdict, _reason(verdict, comparisons), baseline_release, comparisons)


def with_signals(health: WaveHealth, report: SignalReport | None) -> WaveHealth:
    """The wave's counts with its signal verdict, as the gate policy (workflows.policy.wave_verdict) reads them."""
    if report is None:
        return health
    return dataclasses.replace(health, signal=report.verdict, signal_reason=report.reason)


def signal_record_due(report: SignalReport | None) -> bool:
    """A signal verdict that decides (a regression halts the wave) is a decision record of its own."""
    return report is not None and report.verdict == SignalVerdict.REGRESSION
