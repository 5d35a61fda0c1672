"""Rollout plans as approved with a change: one typed plan, one parser, and the hash approvals bind to.

A plan is JSON on the change request (and, copied at start, on the rollout). `plan_parse` is the one place that
checks it, shape and rules, and returns a `RolloutPlan`; everything past the boundary reads attributes.
`RolloutPlan.to_json()` gives back exactly the JSON stored (optional keys that were absent stay absent), so the
plan hash of a stored plan never changes.

Waves run in order; each names its cohort, how long it soaks, how many devices must finish before it is judged,
the thresholds that promote or halt it, and whether a person promotes. Plan-wide settings (all optional, filled
with defaults so that what is approved is exactly what runs): monitoring interval, per-device deadlines, retries
per failure class, pacing (globally and per region), maintenance windows in each region's local time, and
blackout windows in UTC, and health gates on post-update signals (indicator, allowed relative regression,
significance level, minimum sample per side: rollouts.signal_gates). Durations are integer seconds.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from approvals.audit.records import canonical_json
from devices.telemetry_aggregates import INDICATORS
from ota_project.errors import InvalidInput

COHORT_KINDS = ("pilot", "percent", "count")
PROMOTION_MODES = ("auto", "manual")
ABORT_POLICIES = ("halt", "halt_and_rollback")
WAVE_KEYS = {"name", "cohort", "soak_seconds", "min_sample", "success_threshold", "failure_threshold", "promotion"}
OPTIONAL_WAVE_KEYS = {"stratify"}
MAX_WAVES = 20
# Plan-wide settings a stored plan always holds (filled in at parse time, so what is approved is what runs).
PLAN_DEFAULTS: dict[str, Any] = {
    "monitor_interval_seconds": 30,
    "deadlines": {"download_seconds": 3600, "install_seconds": 1800, "confirm_seconds": 900},
    "retries": {"download": 3, "install": 1},
    "pacing": {"devices_per_minute": 0, "max_concurrent_downloads": 0, "per_region": {}},
    "maintenance_windows": {},
    "blackout_windows": [],
}
# Optional plan-wide settings: absent from a stored plan unless stated (so plans approved before them keep their hash).
# quarantine_after_failures: consecutive failed installs (failed or rolled back) after which a device is quarantined
# automatically; absent: DEFAULT_QUARANTINE_AFTER_FAILURES; 0: never automatically.
OPTIONAL_PLAN_KEYS = {"quarantine_after_failures"}
DEFAULT_QUARANTINE_AFTER_FAILURES = 3
MAX_QUARANTINE_AFTER_FAILURES = 20
PLAN_KEYS = {"waves", "abort_policy", "health_gates", *PLAN_DEFAULTS, *OPTIONAL_PLAN_KEYS}
# Optional plan-wide health gates on post-update signals (absent: no signal gates; an empty list is kept as given).
HEALTH_GATE_KEYS = {"indicator", "tolerance", "significance", "min_sample"}
HEALTH_GATE_DEFAULTS: dict[str, Any] = {"significance": 0.05, "min_sample": 20}
MAX_TOLERANCE = 10.0  # a tenfold regression allowed: beyond that a gate would judge nothing
HHMM_RE = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_fraction(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1


def _wave_errors(wave: Any, index: int, last: bool) -> dict[str, list[str]]:
    if not isinstance(wave, dict):
        return {"wave": ["Must be an object."]}
    errors: dict[str, list[str]] = {}
    for key in sorted(set(wave) - WAVE_KEYS - OPTIONAL_WAVE_KEYS):
        errors[key] = ["Unknown field."]
    if "stratify" in wave and not isinstance(wave["stratify"], bool):
        errors["stratify"] = ["true or false: hold each hardware model and region in proportion."]
    for key in sorted(WAVE_KEYS - set(wave)):
        errors[key] = ["This field is required."]
    if errors:
        return errors
    if not isinstance(wave["name"], str) or not wave["name"].strip() or len(wave["name"]) > 64:
        errors["name"] = ["A name of 1 to 64 characters."]
    cohort = wave["cohort"]
    if not isinstance(cohort, dict) or cohort.get("kind") not in COHORT_KINDS or set(cohort) - {"kind", "value"}:
        errors["cohort"] = ['{"kind": "pilot"} or {"kind": "percent"|"count", "value": N}.']
    elif cohort["kind"] == "pilot" and index != 0:
        errors["cohort"] = ["Only the first wave may be the pilot wave."]
    elif cohort["kind"] == "percent" and not (_is_int(cohort.get("value")) and 1 <= cohort["value"] <= 100):
        errors["cohort"] = ["percent: an integer share of the remaining targets from 1 to 100."]
    elif cohort["kind"] == "count" and not (_is_int(cohort.get("value")) and cohort["value"] >= 1):
        errors["cohort"] = ["count: a positive integer number of devices."]
    elif last and not (cohort["kind"] == "percent" and cohort.get("value") == 100):
        errors["cohort"] = ['The last wave must take the remaining targets: {"kind": "percent", "value": 100}.']
    if not (_is_int(wave["soak_seconds"]) and 0 <= wave["soak_seconds"] <= 30 * 86400):
        errors["soak_seconds"] = ["An integer number of seconds from 0 to 30 days."]
    if not (_is_int(wave["min_sample"]) and wave["min_sample"] >= 1):
        errors["min_sample"] = ["A positive integer number of devices."]
    for key in ("success_threshold", "failure_threshold"):
        if not _is_fraction(wave[key]):
            errors[key] = ["A fraction from 0 to 1."]
    if "success_threshold" not in errors and "failure_threshold" not in errors:
        if wave["failure_threshold"] <= 0:
            errors["failure_threshold"] = ["Must be above 0, or no failure could ever halt the rollout."]
        elif wave["success_threshold"] + wave["failure_threshold"] > 1 + 1e-9 and wave["success_threshold"] < 1:
            errors["failure_threshold"] = ["success_threshold + failure_threshold must not exceed 1."]
    if wave["promotion"] not in PROMOTION_MODES:
        errors["promotion"] = ["auto or manual."]
    return errors


def _int_in(value: Any, low: int, high: int) -> bool:
    return _is_int(value) and low <= value <= high


def _pacing_errors(pacing: Any) -> list[str]:
    if not isinstance(pacing, dict) or set(pacing) - {"devices_per_minute", "max_concurrent_downloads", "per_region"}:
        return ['{"devices_per_minute": N, "max_concurrent_downloads": N, "per_region": {"<region>": {...}}}']
    limits = [pacing.get("devices_per_minute", 0), pacing.get("max_concurrent_downloads", 0)]
    per_region = pacing.get("per_region", {})
    if not isinstance(per_region, dict):
        return ["per_region must map region codes to limits."]
    for region_limits in per_region.values():
        if not isinstance(region_limits, dict) or set(region_limits) - {
            "devices_per_minute",
            "max_concurrent_downloads",
        }:
            return ["Each region's limits: devices_per_minute and max_concurrent_downloads."]
        limits.extend(region_limits.values())
    if not all(_int_in(v, 0, 1_000_000) for v in limits):
        return ["Limits are integers from 0 (no limit) to 1,000,000."]
    return []


def _window_errors(windows: Any) -> list[str]:
    if not isinstance(windows, dict):
        return ['{"<region code or *>": [{"days": [0..6], "start": "HH:MM", "end": "HH:MM"}]} in local time.']
    for spans in windows.values():
        if not isinstance(spans, list) or not spans:
            return ["Each region needs a non-empty list of windows."]
        for span in spans:
            if (
                not isinstance(span, dict)
                or set(span) != {"days", "start", "end"}
                or not isinstance(span["days"], list)
                or not span["days"]
                or not all(_int_in(d, 0, 6) for d in span["days"])
                or not all(isinstance(span[k], str) and HHMM_RE.match(span[k]) for k in ("start", "end"))
                or span["start"] == span["end"]
            ):
                return [
                    'A window is {"days": [0..6 (Monday=0)], "start": "HH:MM", "end": "HH:MM"}; end may be past midnight.'
                ]
    return []


def parse_utc(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


def _blackout_errors(blackouts: Any) -> list[str]:
    if not isinstance(blackouts, list):
        return ['A list of {"start": ISO time with zone, "end": ..., "reason": "..."}.']
    for span in blackouts:
        if not isinstance(span, dict) or set(span) - {"start", "end", "reason"}:
            return ['Each blackout is {"start", "end", "reason"}.']
        if not isinstance(span.get("reason", ""), str):
            return ["A blackout's reason is text."]
        start, end = parse_utc(span.get("start")), parse_utc(span.get("end"))
        if start is None or end is None or end <= start:
            return ["Blackout start and end are ISO times with a zone, end after start."]
    return []


def _health_gate_errors(gates: Any) -> list[str] | dict[str, Any]:
    """Field errors of the health gates: known indicators, each once, sensible tolerance, level and sample."""
    if not isinstance(gates, list) or len(gates) > len(INDICATORS):
        return [f"A list of at most {len(INDICATORS)} gates: " + '{"indicator": ..., "tolerance": 0.1}.']
    errors: dict[str, Any] = {}
    seen: set[str] = set()
    for index, gate in enumerate(gates):
        if not isinstance(gate, dict):
            errors[str(index)] = {"gate": ["Must be an object."]}
            continue
        problems: dict[str, list[str]] = {key: ["Unknown field."] for key in sorted(set(gate) - HEALTH_GATE_KEYS)}
        indicator = gate.get("indicator")
        if not isinstance(indicator, str) or indicator not in INDICATORS:
            problems["indicator"] = ["One of " + ", ".join(INDICATORS) + "."]
        elif indicator in seen:
            problems["indicator"] = ["Each indicator is gated once."]
        else:
            seen.add(indicator)
        tolerance = gate.get("tolerance")
        if not (
            isinstance(tolerance, int | float)
            and not isinstance(tolerance, bool)
            and math.isfinite(tolerance)
            and 0 <= tolerance <= MAX_TOLERANCE
        ):
            problems["tolerance"] = [f"The allowed relative regression, from 0 to {MAX_TOLERANCE:g} (0.1 = 10 %)."]
        significance = gate.get("significance", HEALTH_GATE_DEFAULTS["significance"])
        if not (_is_fraction(significance) and 0.0001 <= significance <= 0.2):
            problems["significance"] = ["A significance level from 0.0001 to 0.2 (e.g. 0.05)."]
        if not _int_in(gate.get("min_sample", HEALTH_GATE_DEFAULTS["min_sample"]), 2, 1_000_000):
            problems["min_sample"] = ["Samples needed on each side, an integer from 2 to 1,000,000."]
        if problems:
            errors[str(index)] = problems
    return errors


def _settings_errors(plan: dict[str, Any]) -> dict[str, Any]:
    errors: dict[str, Any] = {}
    if not _int_in(plan["monitor_interval_seconds"], 1, 3600):
        errors["monitor_interval_seconds"] = ["An integer number of seconds from 1 to 3600."]
    deadlines = plan["deadlines"]
    if (
        not isinstance(deadlines, dict)
        or set(deadlines) != set(PLAN_DEFAULTS["deadlines"])
        or not all(_int_in(v, 1, 7 * 86400) for v in deadlines.values())
    ):
        errors["deadlines"] = ["download_seconds, install_seconds and confirm_seconds, each 1 s to 7 days."]
    retries = plan["retries"]
    if (
        not isinstance(retries, dict)
        or set(retries) != set(PLAN_DEFAULTS["retries"])
        or not all(_int_in(v, 0, 10) for v in retries.values())
    ):
        errors["retries"] = ["download and install retries, each 0 to 10."]
    if "quarantine_after_failures" in plan and not _int_in(
        plan["quarantine_after_failures"], 0, MAX_QUARANTINE_AFTER_FAILURES
    ):
        errors["quarantine_after_failures"] = [
            f"An integer from 0 (never) to {MAX_QUARANTINE_AFTER_FAILURES} consecutive failed installs."
        ]
    for key, check in (
        ("pacing", _pacing_errors),
        ("maintenance_windows", _window_errors),
        ("blackout_windows", _blackout_errors),
    ):
        problems = check(plan[key])
        if problems:
            errors[key] = problems
    return errors


# --- The typed plan ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cohort:
    """Which devices a wave takes: the pilot devices, a percent of the remaining targets, or a number of them."""

    kind: str  # one of COHORT_KINDS
    value: int | None = None  # percent or count; None for pilot

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind} if self.value is None else {"kind": self.kind, "value": self.value}


@dataclass(frozen=True, slots=True)
class PlanWave:
    """One wave: its cohort, soak, and the gate that promotes or halts it (thresholds are fractions 0..1)."""

    name: str
    cohort: Cohort
    soak_seconds: int
    min_sample: int
    success_threshold: float
    failure_threshold: float
    promotion: str  # one of PROMOTION_MODES
    stratify: bool | None = None  # None: not stated (and left out of the JSON), which means no

    @property
    def is_pilot(self) -> bool:
        return self.cohort.kind == "pilot"

    @property
    def promotes_automatically(self) -> bool:
        return self.promotion == "auto"

    def to_json(self) -> dict[str, Any]:
        wave: dict[str, Any] = {
            "name": self.name,
            "cohort": self.cohort.to_json(),
            "soak_seconds": self.soak_seconds,
            "min_sample": self.min_sample,
            "success_threshold": self.success_threshold,
            "failure_threshold": self.failure_threshold,
            "promotion": self.promotion,
        }
        if self.stratify is not None:
            wave["stratify"] = self.stratify
        return wave


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long a device may take per step before its deployment times out."""

    download_seconds: int
    install_seconds: int
    confirm_seconds: int

    def for_phase(self, phase: str) -> int:
        """Seconds allowed for a phase: download, install or confirm."""
        return {"download": self.download_seconds, "install": self.install_seconds, "confirm": self.confirm_seconds}[
            phase
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "download_seconds": self.download_seconds,
            "install_seconds": self.install_seconds,
            "confirm_seconds": self.confirm_seconds,
        }


@dataclass(frozen=True, slots=True)
class Retries:
    """How often a device is offered the release again after a failure of each class."""

    download: int
    install: int

    def for_failure(self, failure_class: str) -> int:
        """Retries allowed for a failure class (none for classes the plan does not name)."""
        return {"download": self.download, "install": self.install}.get(failure_class, 0)

    def to_json(self) -> dict[str, Any]:
        return {"download": self.download, "install": self.install}


@dataclass(frozen=True, slots=True)
class PacingLimits:
    """Offer rate and concurrent downloads; 0 or None (not stated, left out of the JSON) means no limit."""

    devices_per_minute: int | None = None
    max_concurrent_downloads: int | None = None

    @property
    def rate(self) -> int:
        return self.devices_per_minute or 0

    @property
    def concurrent(self) -> int:
        return self.max_concurrent_downloads or 0

    def to_json(self) -> dict[str, Any]:
        limits: dict[str, Any] = {}
        if self.devices_per_minute is not None:
            limits["devices_per_minute"] = self.devices_per_minute
        if self.max_concurrent_downloads is not None:
            limits["max_concurrent_downloads"] = self.max_concurrent_downloads
        return limits


@dataclass(frozen=True, slots=True)
class Pacing:
    """Plan-wide limits, and limits per region code (per_region None: not stated)."""

    limits: PacingLimits
    per_region: Mapping[str, PacingLimits] | None = None

    def region(self, code: str) -> PacingLimits:
        """The limits of one region (none when the plan names no limits for it)."""
        return (self.per_region or {}).get(code, PacingLimits())

    def to_json(self) -> dict[str, Any]:
        pacing = self.limits.to_json()
        if self.per_region is not None:
            pacing["per_region"] = {code: limits.to_json() for code, limits in self.per_region.items()}
        return pacing


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    """A weekly window in a region's local time: weekdays (Monday=0) and HH:MM start and end (end may be past
    midnight)."""

    days: tuple[int, ...]
    start: str
    end: str

    def to_json(self) -> dict[str, Any]:
        return {"days": list(self.days), "start": self.start, "end": self.end}


@dataclass(frozen=True, slots=True)
class Blackout:
    """A span in which no wave starts; start and end are kept as written (ISO 8601 with a zone)."""

    start: str
    end: str
    reason: str | None = None  # None: not stated

    @property
    def starts_at(self) -> datetime:
        return _utc(self.start)

    @property
    def ends_at(self) -> datetime:
        return _utc(self.end)

    def to_json(self) -> dict[str, Any]:
        span: dict[str, Any] = {"start": self.start, "end": self.end}
        if self.reason is not None:
            span["reason"] = self.reason
        return span


@dataclass(frozen=True, slots=True)
class HealthGate:
    """A health gate on one post-update indicator: the wave's updated devices against the same hardware model on the
    previous release. Halts on a significant regression beyond `tolerance` (relative: 0.1 = 10 % worse) at level
    `significance`; holds while either side has fewer than `min_sample` samples."""

    indicator: str  # a key of devices.telemetry_aggregates.INDICATORS
    tolerance: float
    significance: float | None = None  # None: not stated (HEALTH_GATE_DEFAULTS applies, left out of the JSON)
    min_sample: int | None = None

    @property
    def level(self) -> float:
        return float(self.significance if self.significance is not None else HEALTH_GATE_DEFAULTS["significance"])

    @property
    def sample(self) -> int:
        return int(self.min_sample if self.min_sample is not None else HEALTH_GATE_DEFAULTS["min_sample"])

    @property
    def label(self) -> str:
        return INDICATORS[self.indicator].label

    @property
    def tolerance_percent(self) -> str:
        """The allowed regression as people read it: 0.1 -> "10 %"."""
        return f"{self.tolerance * 100:g} %"

    def to_json(self) -> dict[str, Any]:
        gate: dict[str, Any] = {"indicator": self.indicator, "tolerance": self.tolerance}
        if self.significance is not None:
            gate["significance"] = self.significance
        if self.min_sample is not None:
            gate["min_sample"] = self.min_sample
        return gate


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """A checked rollout plan: waves in order, what a failed wave does, and the plan-wide settings."""

    waves: tuple[PlanWave, ...]
    abort_policy: str  # one of ABORT_POLICIES
    monitor_interval_seconds: int
    deadlines: Deadlines
    retries: Retries
    pacing: Pacing
    # region code (or "*" for every other region) -> its windows; empty: devices may update at any time
    maintenance_windows: Mapping[str, tuple[MaintenanceWindow, ...]]
    blackout_windows: tuple[Blackout, ...]
    quarantine_after_failures: int | None = None  # None: not stated in the plan (the default applies)

    @property
    def quarantine_threshold(self) -> int:
        """Consecutive failed installs that quarantine a device (0: never automatically)."""
        if self.quarantine_after_failures is None:
            return DEFAULT_QUARANTINE_AFTER_FAILURES
        return self.quarantine_after_failures

    health_gates: tuple[HealthGate, ...] | None = None  # None: not stated (no signal gates; left out of the JSON)

    @property
    def gates(self) -> tuple[HealthGate, ...]:
        return self.health_gates or ()

    @property
    def rolls_back(self) -> bool:
        """A failed wave rolls the updated devices back (not only halts)."""
        return self.abort_policy == "halt_and_rollback"

    @property
    def starts_with_pilot(self) -> bool:
        return self.waves[0].is_pilot

    def windows_for(self, region_code: str) -> tuple[MaintenanceWindow, ...] | None:
        """A region's maintenance windows; None when the plan has none at all (always open)."""
        if not self.maintenance_windows:
            return None
        return self.maintenance_windows.get(region_code, self.maintenance_windows.get("*", ()))

    def named_regions(self) -> set[str]:
        """Region codes the plan names in its windows or pacing."""
        return (set(self.maintenance_windows) - {"*"}) | set(self.pacing.per_region or {})

    def to_json(self) -> dict[str, Any]:
        """Exactly the JSON stored on the change (and hashed by approvals)."""
        optional = (
            {}
            if self.quarantine_after_failures is None
            else {"quarantine_after_failures": self.quarantine_after_failures}
        )
        plan = {
            "waves": [wave.to_json() for wave in self.waves],
            "abort_policy": self.abort_policy,
            "monitor_interval_seconds": self.monitor_interval_seconds,
            "deadlines": self.deadlines.to_json(),
            "retries": self.retries.to_json(),
            "pacing": self.pacing.to_json(),
            "maintenance_windows": {
                region: [window.to_json() for window in windows] for region, windows in self.maintenance_windows.items()
            },
            "blackout_windows": [blackout.to_json() for blackout in self.blackout_windows],
            **optional,
        }
        if self.health_gates is not None:
            plan["health_gates"] = [gate.to_json() for gate in self.health_gates]
        return plan


def _utc(value: str) -> datetime:
    parsed = parse_utc(value)
    if parsed is None:  # plan_parse let no such value through
        raise ValueError(f"not an ISO time with a zone: {value!r}")
    return parsed


def _check(data: object) -> dict[str, Any]:
    """Every shape and rule error of a plan at once, or the plan with its settings defaulted."""
    if not isinstance(data, dict):
        raise InvalidInput("The rollout plan must be an object.", fields={"rollout_plan": ["Must be an object."]})
    errors: dict[str, Any] = {}
    for key in sorted(set(data) - PLAN_KEYS):
        errors[key] = ["Unknown field."]
    plan = {**copy.deepcopy(PLAN_DEFAULTS), **data}
    errors.update(_settings_errors(plan))
    waves = plan.get("waves")
    if not isinstance(waves, list) or not 1 <= len(waves) <= MAX_WAVES:
        errors["waves"] = [f"A list of 1 to {MAX_WAVES} waves."]
    else:
        wave_errors = {str(i): e for i, w in enumerate(waves) if (e := _wave_errors(w, i, i == len(waves) - 1))}
        if wave_errors:
            errors["waves"] = wave_errors
        names = [w.get("name") for w in waves if isinstance(w, dict)]
        if not wave_errors and len(set(names)) != len(names):
            errors["waves"] = ["Wave names must be unique."]
    if plan.get("abort_policy") not in ABORT_POLICIES:
        errors["abort_policy"] = ["halt or halt_and_rollback."]
    if "health_gates" in plan:
        gate_errors = _health_gate_errors(plan["health_gates"])
        if gate_errors:
            errors["health_gates"] = gate_errors
    if errors:
        raise InvalidInput("The rollout plan is invalid.", fields={"rollout_plan": errors})
    return plan


def _limits(data: Mapping[str, Any]) -> PacingLimits:
    return PacingLimits(data.get("devices_per_minute"), data.get("max_concurrent_downloads"))


def plan_parse(data: object) -> RolloutPlan:
    """The one parser of rollout plans (API, forms, admin, demo and drill builders, stored rows).

    Raises InvalidInput with every bad field under `rollout_plan`, nested as the JSON is: e.g.
    `{"rollout_plan": {"waves": {"2": {"cohort": [...]}}, "deadlines": [...]}}`.
    """
    if isinstance(data, RolloutPlan):
        data = data.to_json()  # built in code (e.g. with dataclasses.replace): the same rules apply
    plan = _check(data)
    pacing = plan["pacing"]
    per_region = pacing.get("per_region")
    return RolloutPlan(
        waves=tuple(
            PlanWave(
                name=wave["name"],
                cohort=Cohort(wave["cohort"]["kind"], wave["cohort"].get("value")),
                soak_seconds=wave["soak_seconds"],
                min_sample=wave["min_sample"],
                success_threshold=wave["success_threshold"],
                failure_threshold=wave["failure_threshold"],
                promotion=wave["promotion"],
                stratify=wave.get("stratify"),
            )
            for wave in plan["waves"]
        ),
        abort_policy=plan["abort_policy"],
        monitor_interval_seconds=plan["monitor_interval_seconds"],
        deadlines=Deadlines(**plan["deadlines"]),
        retries=Retries(**plan["retries"]),
        pacing=Pacing(
            _limits(pacing),
            None if per_region is None else {code: _limits(limits) for code, limits in per_region.items()},
        ),
        maintenance_windows={
            region: tuple(MaintenanceWindow(tuple(w["days"]), w["start"], w["end"]) for w in windows)
            for region, windows in plan["maintenance_windows"].items()
        },
        blackout_windows=tuple(Blackout(b["start"], b["end"], b.get("reason")) for b in plan["blackout_windows"]),
        quarantine_after_failures=plan.get("quarantine_after_failures"),
        health_gates=None
        if "health_gates" not in plan
        else tuple(
            HealthGate(g["indicator"], g["tolerance"], g.get("significance"), g.get("min_sample"))
            for g in plan["health_gates"]
        ),
    )


def plan_hash(plan: RolloutPlan | Mapping[str, Any]) -> str:
    """sha256 of the plan's canonical JSON: what an approval binds to (a stored plan hashes as its RolloutPlan)."""

    stored = plan.to_json() if isinstance(plan, RolloutPlan) else plan
    return hashlib.sha256(canonical_json(stored).encode()).hexdigest()


def default_plan() -> RolloutPlan:
    """A sensible three-wave plan: pilot, 10% of the rest, then everyone, halting and rolling back on failure."""
    return plan_parse(
        {
            "waves": [
                {
                    "name": "pilot",
                    "cohort": {"kind": "pilot"},
                    "soak_seconds": 3600,
                    "min_sample": 5,
                    "success_threshold": 0.95,
                    "failure_threshold": 0.05,
                    "promotion": "manual",
                },
                {
                    "name": "early",
                    "cohort": {"kind": "percent", "value": 10},
                    "soak_seconds": 7200,
                    "min_sample": 20,
                    "success_threshold": 0.97,
                    "failure_threshold": 0.03,
                    "promotion": "auto",
                },
                {
                    "name": "fleet",
                    "cohort": {"kind": "percent", "value": 100},
                    "soak_seconds": 7200,
                    "min_sample": 50,
                    "success_threshold": 0.98,
                    "failure_threshold": 0.02,
                    "promotion": "auto",
                },
            ],
            "abort_policy": "halt_and_rollback",
        }
    )


def wave_sizes(waves: Sequence[PlanWave], *, total: int, pilots: int) -> list[int]:
    """Planned device count per wave: the pilot wave takes the pilot devices, percent waves a share of what
    remains at that point, count waves a fixed number, and the last wave everything left."""
    sizes = []
    remaining = total
    for index, wave in enumerate(waves):
        cohort = wave.cohort
        if index == len(waves) - 1:
            size = remaining
        elif cohort.kind == "pilot":
            size = min(pilots, remaining)
        elif cohort.kind == "percent":
            size = min(remaining, math.ceil(remaining * (cohort.value or 0) / 100))
        else:
            size = min(remaining, cohort.value or 0)
        sizes.append(size)
        remaining -= size
    return sizes
