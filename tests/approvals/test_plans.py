"""The typed rollout plan: one parser (shape and rules, field errors), JSON and hash exactly as stored before."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from approvals.plans import (
    PLAN_DEFAULTS,
    Blackout,
    Cohort,
    PacingLimits,
    RolloutPlan,
    default_plan,
    plan_hash,
    plan_parse,
)
from ota_project.errors import InvalidInput

# Plans as their builders wrote them, and the sha256 the plan hash gave them as stored before the typed plan
# (computed with the dict-based `plan_normalize` + `plan_hash` of commit deac557). Approvals bind to these hashes:
# if one changes, every approval of a stored plan is void.
WAVE = {"soak_seconds": 60, "min_sample": 3, "success_threshold": 0.9, "failure_threshold": 0.1, "promotion": "auto"}
RICH = {
    "waves": [
        {
            "name": "pilot",
            "cohort": {"kind": "pilot"},
            "soak_seconds": 0,
            "min_sample": 1,
            "success_threshold": 1,
            "failure_threshold": 0.1,
            "promotion": "manual",
            "stratify": True,
        },
        {"name": "ten", "cohort": {"kind": "count", "value": 10}, **WAVE, "stratify": False},
        {"name": "rest", "cohort": {"kind": "percent", "value": 100}, **WAVE},
    ],
    "abort_policy": "halt",
    "pacing": {"devices_per_minute": 5, "per_region": {"eu-west": {"max_concurrent_downloads": 2}}},
    "maintenance_windows": {
        "*": [{"days": [0, 1, 2, 3, 4], "start": "22:00", "end": "04:00"}],
        "eu-west": [{"days": [5], "start": "01:00", "end": "03:30"}],
    },
    "blackout_windows": [
        {"start": "2026-12-24T00:00:00Z", "end": "2026-12-27T00:00:00+00:00", "reason": "Holidays"},
        {"start": "2027-01-01T00:00:00+01:00", "end": "2027-01-02T00:00:00+01:00"},
    ],
}
DRILL = {
    "pacing": {"devices_per_minute": 7},
    "waves": [
        {
            "name": "pilot",
            "cohort": {"kind": "pilot"},
            "min_sample": 10,
            "soak_seconds": 30,
            "success_threshold": 1.0,
            "failure_threshold": 0.1,
            "promotion": "auto",
        },
        {
            "name": "fleet",
            "cohort": {"kind": "percent", "value": 100},
            "min_sample": 5,
            "soak_seconds": 30,
            "success_threshold": 1.0,
            "failure_threshold": 0.1,
            "promotion": "auto",
        },
    ],
    "abort_policy": "halt_and_rollback",
    "monitor_interval_seconds": 1,
    "deadlines": {"download_seconds": 40, "install_seconds": 65, "confirm_seconds": 65},
    "retries": {"download": 3, "install": 1},
}
LIVE_DEMO_STORED = {
    "monitor_interval_seconds": 10,
    "deadlines": {"download_seconds": 3600, "install_seconds": 1800, "confirm_seconds": 900},
    "retries": {"download": 3, "install": 1},
    "pacing": {"devices_per_minute": 0, "max_concurrent_downloads": 0, "per_region": {}},
    "maintenance_windows": {},
    "blackout_windows": [],
    "waves": [
        {
            "name": "pilot",
            "cohort": {"kind": "pilot"},
            "soak_seconds": 60,
            "min_sample": 2,
            "success_threshold": 0.95,
            "failure_threshold": 0.05,
            "promotion": "manual",
        },
        {
            "name": "early",
            "cohort": {"kind": "percent", "value": 10},
            "soak_seconds": 60,
            "min_sample": 2,
            "success_threshold": 0.97,
            "failure_threshold": 0.03,
            "promotion": "auto",
        },
        {
            "name": "fleet",
            "cohort": {"kind": "percent", "value": 100},
            "soak_seconds": 120,
            "min_sample": 5,
            "success_threshold": 0.98,
            "failure_threshold": 0.02,
            "promotion": "auto",
        },
    ],
    "abort_policy": "halt_and_rollback",
}
HASHES_BEFORE = {
    "default": "fa8612c34b07c2ecfeac686cc5027c7359cd850bdbddee98977102bd2d9b5e11",
    "live_demo": "a5a92335a33658e4eafba0e1de0f027c0427d6bca30bc78120f01dff640dc1bf",
    "rich": "120826c6afbfbb29241dbd64030c8e8646c7af2408b788e5625764dc6d775367",
    "drill": "508b77eb5d082f112fae0423247bd1bda77bd66ef9043a538963575a6a2b1846",
}


def stored_before(plan: dict[str, Any]) -> dict[str, Any]:
    """What the dict-based normalizer stored: the plan-wide settings filled in at the top level, nothing else."""
    return {**copy.deepcopy(PLAN_DEFAULTS), **plan}


FIXTURES = {
    "default": default_plan().to_json(),
    "live_demo": LIVE_DEMO_STORED,
    "rich": RICH,
    "drill": DRILL,
}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_stored_plans_keep_their_json_and_their_hash(name):
    stored = stored_before(FIXTURES[name])
    plan = plan_parse(stored)
    assert plan.to_json() == stored
    assert plan_hash(plan) == plan_hash(stored) == HASHES_BEFORE[name]
    # A plan as its builder wrote it is stored exactly as before: defaults filled, optional keys left as written.
    assert plan_parse(FIXTURES[name]).to_json() == stored


def test_the_demo_builders_plan_is_the_one_stored_before():
    from rollouts.demo.seed import _live_demo_plan

    assert plan_hash(_live_demo_plan()) == HASHES_BEFORE["live_demo"]


def test_a_parsed_plan_reads_as_attributes():
    plan = plan_parse(RICH)
    assert [w.name for w in plan.waves] == ["pilot", "ten", "rest"]
    assert plan.waves[0].is_pilot and plan.waves[0].stratify is True and not plan.waves[0].promotes_automatically
    assert plan.waves[1].cohort == Cohort("count", 10) and plan.waves[1].stratify is False
    assert plan.waves[2].stratify is None
    assert not plan.rolls_back and plan.starts_with_pilot
    assert plan.deadlines.for_phase("confirm") == 900 and plan.retries.for_failure("boot") == 0
    assert plan.pacing.limits.rate == 5 and plan.pacing.limits.concurrent == 0
    assert plan.pacing.region("eu-west") == PacingLimits(max_concurrent_downloads=2)
    assert plan.pacing.region("apac").rate == 0
    assert [w.days for w in plan.windows_for("eu-west") or ()] == [(5,)]
    assert [w.start for w in plan.windows_for("apac") or ()] == ["22:00"]
    assert plan.named_regions() == {"eu-west"}
    assert plan.blackout_windows[0].starts_at == datetime(2026, 12, 24, tzinfo=UTC)
    assert plan.blackout_windows[1].reason is None
    assert default_plan().windows_for("eu-west") is None


def _with(path: str, value: Any) -> dict[str, Any]:
    """RICH with one value replaced (or removed, for `...`); path like `waves.1.cohort`."""
    plan: Any = copy.deepcopy(RICH)
    *parents, last = path.split(".")
    target = plan
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    key_or_index: Any = int(last) if isinstance(target, list) else last
    if value is ...:
        del target[key_or_index]
    else:
        target[key_or_index] = value
    return plan


def _field_errors(data: Any) -> Any:
    with pytest.raises(InvalidInput) as caught:
        plan_parse(data)
    return caught.value.fields["rollout_plan"]


@pytest.mark.parametrize(
    ("data", "where", "fragment"),
    [
        (_with("colour", "red"), ("colour",), "Unknown field"),
        (_with("waves", []), ("waves",), "A list of 1 to 20 waves"),
        (_with("waves.1.min_sample", ...), ("waves", "1", "min_sample"), "required"),
        (_with("waves.1.speed", 3), ("waves", "1", "speed"), "Unknown field"),
        (_with("waves.1.cohort", {"kind": "percent", "value": 101}), ("waves", "1", "cohort"), "1 to 100"),
        (_with("waves.1.cohort", {"kind": "count", "value": 0}), ("waves", "1", "cohort"), "positive"),
        (_with("waves.1.cohort", {"kind": "pilot"}), ("waves", "1", "cohort"), "Only the first wave"),
        (_with("waves.2.cohort", {"kind": "count", "value": 5}), ("waves", "2", "cohort"), "last wave"),
        (_with("waves.1.soak_seconds", -1), ("waves", "1", "soak_seconds"), "0 to 30 days"),
        (_with("waves.1.soak_seconds", 1.5), ("waves", "1", "soak_seconds"), "integer"),
        (_with("waves.1.success_threshold", 1.2), ("waves", "1", "success_threshold"), "fraction"),
        (_with("waves.1.failure_threshold", 0), ("waves", "1", "failure_threshold"), "above 0"),
        (_with("waves.1.failure_threshold", 0.5), ("waves", "1", "failure_threshold"), "must not exceed 1"),
        (_with("waves.1.promotion", "later"), ("waves", "1", "promotion"), "auto or manual"),
        (_with("waves.1.stratify", "yes"), ("waves", "1", "stratify"), "true or false"),
        (_with("waves.1.name", "pilot"), ("waves",), "unique"),
        (_with("abort_policy", "panic"), ("abort_policy",), "halt or halt_and_rollback"),
        (_with("monitor_interval_seconds", 0), ("monitor_interval_seconds",), "1 to 3600"),
        (_with("deadlines", {"download_seconds": 60}), ("deadlines",), "confirm_seconds"),
        (_with("retries", {"download": 11, "install": 0}), ("retries",), "0 to 10"),
        (_with("pacing", {"devices_per_minute": -1}), ("pacing",), "0 (no limit)"),
        (_with("maintenance_windows", {"*": []}), ("maintenance_windows",), "non-empty"),
        (
            _with("maintenance_windows", {"*": [{"days": [7], "start": "22:00", "end": "04:00"}]}),
            ("maintenance_windows",),
            "Monday=0",
        ),
        (
            _with("blackout_windows", [{"start": "2027-01-02T00:00:00Z", "end": "2027-01-01T00:00:00Z"}]),
            ("blackout_windows",),
            "end after start",
        ),
        (
            _with("blackout_windows", [{"start": "2027-01-01T00:00:00", "end": "2027-01-02T00:00:00"}]),
            ("blackout_windows",),
            "with a zone",
        ),
        (
            _with("blackout_windows", [{"start": "2027-01-01T00:00Z", "end": "2027-01-02T00:00Z", "reason": 3}]),
            ("blackout_windows",),
            "reason is text",
        ),
    ],
)
def test_each_invalid_field_is_named_where_the_form_or_api_shows_it(data, where, fragment):
    errors = _field_errors(data)
    for key in where:
        errors = errors[key]
    assert any(fragment in message for message in errors), errors


def test_a_plan_that_is_not_an_object_is_refused():
    with pytest.raises(InvalidInput) as caught:
        plan_parse([RICH])
    assert caught.value.fields == {"rollout_plan": ["Must be an object."]}


def test_every_bad_field_is_reported_at_once():
    data = _with("abort_policy", "panic")
    data["waves"][0]["promotion"] = "later"
    data["retries"] = {}
    errors = _field_errors(data)
    assert set(errors) == {"abort_policy", "waves", "retries"}
    assert set(errors["waves"]) == {"0"}


def test_a_plan_built_in_code_is_checked_by_the_same_rules():
    with pytest.raises(InvalidInput):
        plan_parse(replace(default_plan(), abort_policy="panic"))
    later = Blackout("2027-01-02T00:00:00Z", "2027-01-01T00:00:00Z")
    with pytest.raises(InvalidInput):
        plan_parse(replace(default_plan(), blackout_windows=(later,)))
    fine = replace(default_plan(), monitor_interval_seconds=5)
    assert plan_parse(fine) == fine


# --- Round trip over generated plans ---------------------------------------------------------------------------

_count = st.integers(min_value=0, max_value=1_000_000)
_limits = st.fixed_dictionaries({}, optional={"devices_per_minute": _count, "max_concurrent_downloads": _count})
_hhmm = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59))
_window = st.fixed_dictionaries(
    {"days": st.lists(st.integers(0, 6), min_size=1, max_size=7), "start": _hhmm, "end": _hhmm}
).filter(lambda w: w["start"] != w["end"])
_instant = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC))


def _blackout(start: datetime, hours: int, reason: str | None) -> dict[str, Any]:
    span = {"start": start.isoformat(), "end": (start + timedelta(hours=hours)).isoformat()}
    if reason is not None:
        span["reason"] = reason
    return span


_gate = st.fixed_dictionaries(
    {
        "soak_seconds": st.integers(0, 30 * 86400),
        "min_sample": st.integers(1, 10_000),
        "success_threshold": st.sampled_from([0.5, 0.9, 1, 1.0]),
        "failure_threshold": st.sampled_from([0.01, 0.05, 0.1]),
        "promotion": st.sampled_from(["auto", "manual"]),
    },
    optional={"stratify": st.booleans()},
)


@st.composite
def stored_plans(draw: st.DrawFn) -> dict[str, Any]:
    middle = draw(
        st.lists(
            st.one_of(
                st.fixed_dictionaries({"kind": st.just("percent"), "value": st.integers(1, 100)}),
                st.fixed_dictionaries({"kind": st.just("count"), "value": st.integers(1, 10**6)}),
            ),
            max_size=4,
        )
    )
    cohorts = ([{"kind": "pilot"}] if draw(st.booleans()) else []) + middle + [{"kind": "percent", "value": 100}]
    waves = [{"name": f"wave-{i}", "cohort": cohort, **draw(_gate)} for i, cohort in enumerate(cohorts)]
    settings_ = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "monitor_interval_seconds": st.integers(1, 3600),
                "pacing": st.builds(
                    lambda limits, per_region: {**limits, **per_region},
                    _limits,
                    st.fixed_dictionaries(
                        {}, optional={"per_region": st.dictionaries(st.sampled_from(["eu-west", "apac"]), _limits)}
                    ),
                ),
                "maintenance_windows": st.dictionaries(
                    st.sampled_from(["*", "eu-west", "apac"]), st.lists(_window, min_size=1, max_size=3)
                ),
                "blackout_windows": st.lists(
                    st.builds(
                        _blackout,
                        _instant,
                        st.integers(1, 48),
                        st.none() | st.text(st.characters(codec="utf-8"), max_size=20),
                    ),
                    max_size=3,
                ),
            },
        )
    )
    abort_policy = draw(st.sampled_from(["halt", "halt_and_rollback"]))
    return {"waves": waves, "abort_policy": abort_policy, **settings_}


@settings(max_examples=100, deadline=None)
@given(stored_plans())
def test_any_valid_plan_round_trips_to_the_json_and_hash_it_is_stored_as(data):
    plan = plan_parse(data)
    assert isinstance(plan, RolloutPlan)
    stored = stored_before(data)
    assert plan.to_json() == stored
    assert plan_hash(plan) == plan_hash(stored)
    assert plan_parse(plan.to_json()) == plan


# --- health gates ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gates", "where", "fragment"),
    [
        ({"indicator": "gps_fix_s"}, (), "A list of at most"),
        ([{"indicator": "gps_position", "tolerance": 0.1}], ("0", "indicator"), "One of boot_time_s"),
        ([{"indicator": "gps_fix_s", "tolerance": -0.1}], ("0", "tolerance"), "allowed relative regression"),
        ([{"indicator": "gps_fix_s", "tolerance": "10%"}], ("0", "tolerance"), "allowed relative regression"),
        ([{"indicator": "gps_fix_s", "tolerance": True}], ("0", "tolerance"), "allowed relative regression"),
        ([{"indicator": "gps_fix_s", "tolerance": 11}], ("0", "tolerance"), "from 0 to 10"),
        ([{"indicator": "gps_fix_s"}], ("0", "tolerance"), "allowed relative regression"),
        ([{"indicator": "gps_fix_s", "tolerance": 0.1, "significance": 0.5}], ("0", "significance"), "0.0001 to 0.2"),
        ([{"indicator": "gps_fix_s", "tolerance": 0.1, "min_sample": 1}], ("0", "min_sample"), "2 to 1,000,000"),
        ([{"indicator": "gps_fix_s", "tolerance": 0.1, "window": 3}], ("0", "window"), "Unknown field"),
        (["gps_fix_s"], ("0", "gate"), "Must be an object"),
        (
            [{"indicator": "gps_fix_s", "tolerance": 0.1}, {"indicator": "gps_fix_s", "tolerance": 0.2}],
            ("1", "indicator"),
            "gated once",
        ),
    ],
)
def test_each_invalid_health_gate_is_named(gates, where, fragment):
    errors = _field_errors({**RICH, "health_gates": gates})["health_gates"]
    for key in where:
        errors = errors[key]
    assert any(fragment in message for message in errors), errors


def test_health_gates_parse_with_their_defaults_and_keep_the_json_they_were_given():
    gates = [{"indicator": "gps_fix_s", "tolerance": 0.1}, {"indicator": "link_kbps", "tolerance": 0, "min_sample": 50}]
    plan = plan_parse({**RICH, "health_gates": gates})
    assert [(g.indicator, g.tolerance, g.level, g.sample) for g in plan.gates] == [
        ("gps_fix_s", 0.1, 0.05, 20),
        ("link_kbps", 0, 0.05, 50),
    ]
    assert plan.to_json()["health_gates"] == gates  # defaults are not written: the hash is of what was approved
    assert plan_hash(plan) == plan_hash({**plan_parse(RICH).to_json(), "health_gates": gates})
    assert "health_gates" not in plan_parse(RICH).to_json() and plan_parse(RICH).gates == ()
