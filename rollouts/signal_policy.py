"""Pure health-gate decisions on post-update signals: one comparison (a wave's updated devices of one hardware model
against the same model on the previous release) and the wave's signal verdict. No database, no I/O: the reading of
the aggregates is rollouts.signal_gates; this module only judges numbers.

The tests (scipy, a maintained statistics library, not hand-written maths):
- means (boot time, install duration, GPS time to fix, link throughput): Welch's t-test from summary statistics
  (`scipy.stats.ttest_ind_from_stats`, equal_var=False), one-sided, against the baseline shifted by the tolerance:
  the null hypothesis is "worse by at most the tolerance", so a halt needs evidence that the regression exceeds
  the tolerance, not merely that something changed. Welch because the two sides differ in size and spread (a pilot
  of 30 units against a fleet of thousands) and only the sums are kept; the t-test is robust for means of KPIs at
  the sample sizes a gate requires (min_sample per side).
- proportions (devices with unexpected reboots, sensor calibration failures): Fisher's exact test on the 2x2 table
  (`scipy.stats.fisher_exact`, one-sided), exact at the small counts rare events give in a pilot, where a normal
  approximation is not; a halt also needs the observed rate beyond the tolerance.
Each comparison is judged at the gate's level divided by the number of comparisons of the wave (Bonferroni: a
wave judged on 6 indicators over 3 hardware models makes 18, and would otherwise halt a healthy release far more
often than the level says).
Verdicts: REGRESSION (significant and beyond tolerance: halt like a failure threshold); INCONCLUSIVE (fewer than
min_sample samples on a side, or worse than the tolerance but not significantly: hold, never promote); PASS.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from scipy import stats

from approvals.plans import HealthGate
from devices.telemetry_aggregates import MEAN, Indicator, Summary
from workflows.types import SignalVerdict


@dataclass(frozen=True)
class Comparison:
    """One (hardware model, indicator) comparison with every number it was decided on."""

    indicator: str
    hardware_model: str
    verdict: str  # a SignalVerdict other than NONE
    test: str  # "welch" | "fisher" | "" (not run: too little data)
    baseline_n: int
    candidate_n: int
    baseline: float | None  # mean, or the rate of the event (0..1)
    candidate: float | None
    change: float | None  # relative change, signed so that positive is worse (0.12 = 12 % worse)
    tolerance: float
    significance: float
    min_sample: int
    p_value: float | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _relative_worse(baseline: float, candidate: float, higher_is_worse: bool) -> float | None:
    worse_by = (candidate - baseline) if higher_is_worse else (baseline - candidate)
    if baseline == 0:
        return 0.0 if worse_by <= 0 else None  # None: worse than a zero baseline, no finite ratio
    return worse_by / abs(baseline)


def _welch_p(indicator: Indicator, gate: HealthGate, baseline: Summary, candidate: Summary) -> float:
    """One-sided p-value that the candidate is worse than the baseline by more than the tolerance (Welch)."""
    sign = 1.0 if indicator.higher_is_worse else -1.0
    mean_b, mean_c = baseline.mean or 0.0, candidate.mean or 0.0
    margin = gate.tolerance * abs(mean_b)
    std_b = math.sqrt(max(baseline.variance or 0.0, 0.0))
    std_c = math.sqrt(max(candidate.variance or 0.0, 0.0))
    # Orient so that "greater" is worse, and move the baseline by the allowed regression.
    worse, allowed = sign * mean_c, sign * mean_b + margin
    if std_b == 0 and std_c == 0:  # constant values on both sides: no spread, the difference is certain
        return 0.0 if worse > allowed else 1.0
    result = stats.ttest_ind_from_stats(
        worse, std_c, candidate.n, allowed, std_b, baseline.n, equal_var=False, alternative="greater"
    )
    return float(result.pvalue)


def _fisher_p(indicator: Indicator, baseline: Summary, candidate: Summary) -> float:
    """One-sided p-value that the candidate's event rate is worse than the baseline's (Fisher's exact test)."""
    table = [[candidate.total, candidate.n - candidate.total], [baseline.total, baseline.n - baseline.total]]
    alternative = "greater" if indicator.higher_is_worse else "less"
    return float(stats.fisher_exact(table, alternative=alternative).pvalue)


def signal_compare(
    indicator: Indicator,
    gate: HealthGate,
    *,
    hardware_model: str,
    baseline: Summary,
    candidate: Summary,
    comparisons: int = 1,
) -> Comparison:
    """Judge one indicator of one hardware model: REGRESSION, INCONCLUSIVE or PASS, with its numbers.

    `comparisons`: how many comparisons the wave's verdict makes in all; each is judged at the gate's level divided
    by it (Bonferroni), so the gate's significance level is the chance of halting a healthy wave, not of halting it
    on each of its models and indicators."""
    level = gate.level / max(1, comparisons)
    numbers: dict[str, Any] = {
        "indicator": indicator.name,
        "hardware_model": hardware_model,
        "baseline_n": baseline.n,
        "candidate_n": candidate.n,
        "baseline": baseline.mean,
        "candidate": candidate.mean,
        "tolerance": float(gate.tolerance),
        "significance": level,
        "min_sample": gate.sample,
    }
    if baseline.n < gate.sample or candidate.n < gate.sample:
        return Comparison(
            **numbers,
            verdict=SignalVerdict.INCONCLUSIVE,
            test="",
            change=None,
            p_value=None,
            reason=(
                f"{indicator.label} on {hardware_model}: too little data ({candidate.n} updated, {baseline.n} "
                f"baseline samples; {gate.sample} needed on each side)."
            ),
        )
    mean_b, mean_c = float(baseline.mean or 0.0), float(candidate.mean or 0.0)
    change = _relative_worse(mean_b, mean_c, indicator.higher_is_worse)
    beyond = change is None or change > gate.tolerance
    if indicator.kind == MEAN:
        test, p_value = "welch", _welch_p(indicator, gate, baseline, candidate)
        significant = p_value < level
    else:
        test, p_value = "fisher", _fisher_p(indicator, baseline, candidate)
        significant = p_value < level and beyond
    shown = "worse than a zero baseline" if change is None else f"{change:+.1%}"
    words = (
        f"{indicator.label} on {hardware_model}: {_value(indicator, mean_c)} after the update vs "
        f"{_value(indicator, mean_b)} before ({shown}; tolerance {gate.tolerance:.0%}; p={p_value:.3g}, "
        f"n={candidate.n}/{baseline.n})"
    )
    if significant:
        verdict, reason = SignalVerdict.REGRESSION, f"{words}: a significant regression."
    elif beyond:
        verdict, reason = SignalVerdict.INCONCLUSIVE, f"{words}: worse than the tolerance, not significantly."
    else:
        verdict, reason = SignalVerdict.PASS, f"{words}: within tolerance."
    return Comparison(**numbers, verdict=verdict, test=test, change=change, p_value=p_value, reason=reason)


def _value(indicator: Indicator, value: float) -> str:
    if indicator.kind == MEAN:
        return f"{value:.1f} {indicator.unit}".rstrip()
    return f"{value:.1%}"


def signal_verdict(comparisons: Iterable[Comparison]) -> str:
    """The wave's signal verdict: any regression halts, any doubt holds, otherwise pass (NONE when nothing gates)."""
    verdicts = {comparison.verdict for comparison in comparisons}
    if not verdicts:
        return SignalVerdict.NONE
    for verdict in (SignalVerdict.REGRESSION, SignalVerdict.INCONCLUSIVE):
        if verdict in verdicts:
            return verdict
    return SignalVerdict.PASS
