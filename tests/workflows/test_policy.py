"""The pure rollout policy: wave verdicts, who may act when, and the monitoring cadence."""

from __future__ import annotations

from typing import Any

import pytest

from tests.workflows.fakes import counts
from tests.workflows.support import wave
from workflows import policy
from workflows.types import Gate, Phase, SignalVerdict, Update, Verdict, WaveHealth

WAVE = wave("early", min_sample=10, success=0.9, failure=0.2)


def verdict(health: WaveHealth, *, soak_done: bool, plan=WAVE) -> str:
    return policy.wave_verdict(health, plan, soak_done=soak_done)


# --- wave_verdict ---------------------------------------------------------------------------------------------------


def test_an_empty_wave_passes_at_once():
    assert verdict(WaveHealth(), soak_done=False) == Verdict.PASS


def test_failure_threshold_fails_mid_soak_once_the_minimum_sample_finished():
    assert verdict(counts(100, succeeded=8, failed=2), soak_done=False) == Verdict.FAIL  # 2/10 = threshold


def test_failures_below_the_minimum_sample_do_not_fail_yet():
    assert verdict(counts(100, succeeded=4, failed=5), soak_done=False) == Verdict.CONTINUE  # 9 finished < 10


def test_timeouts_and_device_rollbacks_count_as_failures():
    health = WaveHealth(total=100, in_progress=88, succeeded=9, timed_out=2, rolled_back=1)
    assert verdict(health, soak_done=False) == Verdict.FAIL  # 3/12 >= 0.2


def test_below_the_failure_threshold_the_soak_continues():
    assert verdict(counts(100, succeeded=90, failed=1), soak_done=False) == Verdict.CONTINUE


def test_a_wave_smaller_than_the_minimum_sample_fails_when_all_its_devices_failed():
    assert verdict(counts(3, failed=3), soak_done=False) == Verdict.FAIL


def test_a_wave_smaller_than_the_minimum_sample_is_inconclusive_even_when_all_succeeded():
    assert verdict(counts(3, succeeded=3), soak_done=True) == Verdict.INCONCLUSIVE


def test_too_few_finished_devices_at_soak_end_is_inconclusive():
    assert verdict(counts(100, succeeded=9), soak_done=True) == Verdict.INCONCLUSIVE


def test_enough_successes_at_soak_end_pass_even_with_stragglers():
    assert verdict(counts(100, succeeded=90, failed=1), soak_done=True) == Verdict.PASS  # 90/100 = threshold


def test_a_threshold_met_exactly_despite_float_rounding_passes():
    plan = wave("w", min_sample=5, success=0.95, failure=0.05)
    assert verdict(counts(20, succeeded=19), soak_done=True, plan=plan) == Verdict.PASS


def test_unfinished_devices_after_soak_end_keep_the_wave_running_until_their_deadlines():
    assert verdict(counts(100, succeeded=80, failed=5), soak_done=True) == Verdict.CONTINUE


def test_all_finished_below_the_success_threshold_is_inconclusive():
    plan = wave("w", min_sample=10, success=0.95, failure=0.5)
    assert verdict(counts(100, succeeded=80, failed=20), soak_done=True, plan=plan) == Verdict.INCONCLUSIVE


def test_cancelled_devices_are_no_evidence_of_success():
    health = counts(100, succeeded=85, cancelled=15)
    assert verdict(health, soak_done=True) == Verdict.INCONCLUSIVE


# --- human_action_refusal -------------------------------------------------------------------------------------------


def refusal(action: str, **overrides) -> str:
    arguments: dict[str, Any] = {  # keyword arguments of several types, any of them overridden
        "actor_id": 11,
        "actor_roles": ["operator"],
        "author_id": 7,
        "phase": Phase.AWAITING_PROMOTION,
        "gate": Gate.PROMOTION,
        "gated_wave": 1,
        "requested_wave": 1,
    }
    arguments.update(overrides)
    return policy.human_action_refusal(action, **arguments)


@pytest.mark.parametrize("action", policy.HUMAN_ACTIONS)
def test_only_operators_may_act(action):
    assert refusal(action, actor_roles=["cab_member", "auditor"]) == f"Only an operator may {action} a rollout."


@pytest.mark.parametrize("action", policy.HUMAN_ACTIONS)
def test_the_author_of_the_change_may_not_act_on_its_rollout(action):
    assert "author" in refusal(action, actor_id=7)


@pytest.mark.parametrize("action", policy.HUMAN_ACTIONS)
@pytest.mark.parametrize("phase", sorted(policy.FINISHED_PHASES))
def test_nothing_can_be_done_after_the_rollout_finished(action, phase):
    assert refusal(action, phase=phase, gate=Gate.NONE) == f"The rollout is already {phase}; nothing more can be done."


def test_unknown_actions_are_refused():
    assert refusal("deploy").startswith("Unknown action 'deploy'")


@pytest.mark.parametrize("gate", [Gate.PROMOTION, Gate.INCONCLUSIVE])
def test_an_operator_may_promote_the_gated_wave(gate):
    assert refusal(Update.PROMOTE, gate=gate) == ""


def test_promote_names_exactly_the_gated_wave():
    assert (
        refusal(Update.PROMOTE, requested_wave=2)
        == "Wave 2 (wave_index 1) is waiting for promotion, not wave 3 (wave_index 2)."
    )


@pytest.mark.parametrize("gate", [Gate.NONE, Gate.HALTED])
def test_promote_needs_an_open_promotion_gate(gate):
    phase = Phase.HALTED if gate == Gate.HALTED else Phase.RUNNING
    assert refusal(Update.PROMOTE, phase=phase, gate=gate) == "No wave is waiting for promotion."


def test_promote_is_refused_while_paused():
    assert refusal(Update.PROMOTE, phase=Phase.PAUSED) == "The rollout is paused; resume it before promoting."


@pytest.mark.parametrize(
    "phase",
    [Phase.SCHEDULED, Phase.RUNNING, Phase.AWAITING_PROMOTION, Phase.PAUSED, Phase.HALTED, Phase.ROLLING_BACK],
)
def test_abort_is_allowed_in_every_unfinished_phase(phase):
    assert refusal(Update.ABORT, phase=phase) == ""


def test_rollback_is_allowed_until_it_has_begun():
    assert refusal(Update.ROLLBACK, phase=Phase.HALTED, gate=Gate.HALTED) == ""
    assert refusal(Update.ROLLBACK, phase=Phase.ROLLING_BACK, gate=Gate.NONE) == "The rollout is already rolling back."


@pytest.mark.parametrize("phase", [Phase.RUNNING, Phase.AWAITING_PROMOTION])
def test_pause_is_allowed_while_running_or_awaiting_promotion(phase):
    assert refusal(Update.PAUSE, phase=phase) == ""


@pytest.mark.parametrize("phase", [Phase.SCHEDULED, Phase.PAUSED, Phase.HALTED, Phase.ROLLING_BACK])
def test_pause_is_refused_elsewhere(phase):
    assert refusal(Update.PAUSE, phase=phase).startswith("Only a running rollout or one awaiting promotion")


def test_resume_only_a_paused_rollout():
    assert refusal(Update.RESUME, phase=Phase.PAUSED) == ""
    assert refusal(Update.RESUME, phase=Phase.RUNNING) == "Only a paused rollout can be resumed; this one is running."


# --- cadence --------------------------------------------------------------------------------------------------------


def test_the_monitor_interval_never_drops_below_one_second():
    assert policy.monitor_interval(0) == 1
    assert policy.monitor_interval(30) == 30


@pytest.mark.parametrize(
    ("remaining", "clamp", "expected"),
    [
        (10.0, True, 10.0),  # the soak ends before the next regular check: judge it at its end
        (10.0, False, 30.0),  # version 1: the next regular check
        (45.0, True, 30.0),  # the soak outlasts the interval
        (0.0, True, 30.0),  # the soak is over: regular checks while deadlines resolve devices
        (-5.0, True, 30.0),
    ],
)
def test_next_check(remaining, clamp, expected):
    assert policy.next_check_seconds(30, remaining, clamp_to_soak_end=clamp) == expected


def test_the_soak_clamp_applies_only_when_the_soak_ends_within_one_interval():
    assert policy.soak_clamp_applies(30, 10.0)
    assert not policy.soak_clamp_applies(30, 30.0)
    assert not policy.soak_clamp_applies(30, 0.0)


# --- health gates on signals (folded into the wave's health) ------------------------------------------------------


def _signals(health: WaveHealth, signal: str) -> WaveHealth:
    health.signal, health.signal_reason = signal, f"{signal} in a test"
    return health


def test_a_signal_regression_fails_the_wave_mid_soak_though_every_device_succeeded():
    assert verdict(_signals(counts(20, succeeded=20), SignalVerdict.REGRESSION), soak_done=False) == Verdict.FAIL


def test_inconclusive_signals_never_pass_a_wave():
    health = _signals(counts(20, succeeded=20), SignalVerdict.INCONCLUSIVE)
    assert verdict(health, soak_done=False) == Verdict.CONTINUE
    assert verdict(health, soak_done=True) == Verdict.INCONCLUSIVE
    # While devices are still finishing (their telemetry still to come) the wave keeps soaking.
    assert verdict(_signals(counts(20, succeeded=19), SignalVerdict.INCONCLUSIVE), soak_done=True) == Verdict.CONTINUE


def test_passing_or_absent_signals_leave_the_count_rules_as_they_were():
    for signal in (SignalVerdict.PASS, SignalVerdict.NONE):
        assert verdict(_signals(counts(20, succeeded=20), signal), soak_done=True) == Verdict.PASS
        assert verdict(_signals(counts(100, succeeded=8, failed=2), signal), soak_done=False) == Verdict.FAIL
