"""Rollout plans as approved with a change: shape checks and the hash approvals bind to.

A plan is JSON on the change request. Waves run in order; each names its cohort, how long it soaks, how many
devices must finish before it is judged, the thresholds that promote or halt it, and whether a person promotes.
Plan-wide settings (all optional, filled with defaults so that what is approved is exactly what runs):
monitoring interval, per-device deadlines, retries per failure class, pacing (globally and per region),
maintenance windows in each region's local time, and blackout windows in UTC.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from approvals.audit.records import canonical_json
from ota_project.errors import InvalidInput

COHORT_KINDS = ("pilot", "percent", "count")
PROMOTION_MODES = ("auto", "manual")
ABORT_POLICIES = ("halt", "halt_and_rollback")
WAVE_KEYS = {"name", "cohort", "soak_seconds", "min_sample", "success_threshold", "failure_threshold", "promotion"}
OPTIONAL_WAVE_KEYS = {"stratify"}
MAX_WAVES = 20
PLAN_DEFAULTS: dict[str, Any] = {
    "monitor_interval_seconds": 30,
    "deadlines": {"download_seconds": 3600, "install_seconds": 1800, "confirm_seconds": 900},
    "retries": {"download": 3, "install": 1},
    "pacing": {"devices_per_minute": 0, "max_concurrent_downloads": 0, "per_region": {}},
    "maintenance_windows": {},
    "blackout_windows": [],
}
PLAN_KEYS = {"waves", "abort_policy", *PLAN_DEFAULTS}
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


def plan_normalize(plan: Any) -> dict[str, Any]:
    """Check a rollout plan strictly and return it; raises InvalidInput naming every bad field."""
    if not isinstance(plan, dict):
        raise InvalidInput("The rollout plan must be an object.", fields={"rollout_plan": ["Must be an object."]})
    errors: dict[str, Any] = {}
    for key in sorted(set(plan) - PLAN_KEYS):
        errors[key] = ["Unknown field."]
    plan = {**PLAN_DEFAULTS, **plan}
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
    if errors:
        raise InvalidInput("The rollout plan is invalid.", fields={"rollout_plan": errors})
    return plan


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
        start, end = parse_utc(span.get("start")), parse_utc(span.get("end"))
        if start is None or end is None or end <= start:
            return ["Blackout start and end are ISO times with a zone, end after start."]
    return []


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
    for key, check in (
        ("pacing", _pacing_errors),
        ("maintenance_windows", _window_errors),
        ("blackout_windows", _blackout_errors),
    ):
        problems = check(plan[key])
        if problems:
            errors[key] = problems
    return errors


def plan_hash(plan: dict[str, Any]) -> str:
    """sha256 of the plan's canonical JSON: what an approval binds to."""
    return hashlib.sha256(canonical_json(plan).encode()).hexdigest()


def default_plan() -> dict[str, Any]:
    """A sensible three-wave plan: pilot, 10% of the rest, then everyone, halting and rolling back on failure."""
    return {
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


def wave_sizes(waves: Sequence[dict[str, Any]], *, total: int, pilots: int) -> list[int]:
    """Planned device count per wave: the pilot wave takes the pilot devices, percent waves a share of what
    remains at that point, count waves a fixed number, and the last wave everything left."""
    sizes = []
    remaining = total
    for index, wave in enumerate(waves):
        cohort = wave["cohort"]
        if index == len(waves) - 1:
            size = remaining
        elif cohort["kind"] == "pilot":
            size = min(pilots, remaining)
        elif cohort["kind"] == "percent":
            size = min(remaining, math.ceil(remaining * cohort["value"] / 100))
        else:
            size = min(remaining, cohort["value"])
        sizes.append(size)
        remaining -= size
    return sizes
