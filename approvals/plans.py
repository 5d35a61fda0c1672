"""Rollout plans as approved with a change: shape checks and the hash approvals bind to.

A plan is JSON on the change request. Waves run in order; each names its cohort, how long it soaks, how many
devices must finish before it is judged, the thresholds that promote or halt it, and whether a person promotes.
"""

from __future__ import annotations

import hashlib
from typing import Any

from approvals.records import canonical_json
from ota_project.errors import InvalidInput

COHORT_KINDS = ("pilot", "percent", "count")
PROMOTION_MODES = ("auto", "manual")
ABORT_POLICIES = ("halt", "halt_and_rollback")
WAVE_KEYS = {"name", "cohort", "soak_seconds", "min_sample", "success_threshold", "failure_threshold", "promotion"}
MAX_WAVES = 20


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_fraction(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1


def _wave_errors(wave: Any, index: int, last: bool) -> dict[str, list[str]]:
    if not isinstance(wave, dict):
        return {"wave": ["Must be an object."]}
    errors: dict[str, list[str]] = {}
    for key in sorted(set(wave) - WAVE_KEYS):
        errors[key] = ["Unknown field."]
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
    for key in sorted(set(plan) - {"waves", "abort_policy"}):
        errors[key] = ["Unknown field."]
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
