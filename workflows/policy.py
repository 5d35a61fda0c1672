"""Pure rollout decisions: is this wave healthy, may this person act now, how long until the next check.

Stdlib only and free of I/O, so the workflow can call it deterministically and tests can cover every branch.
"""

from __future__ import annotations

from collections.abc import Collection

from workflows.types import Gate, Phase, SignalVerdict, Update, Verdict, WaveHealth, WavePlan

OPERATOR_ROLE = "operator"
# The one list of what a person may ask of a running rollout (API, pages, token minting and the workflow use it).
HUMAN_ACTIONS: tuple[str, ...] = tuple(Update)
FINISHED_PHASES = frozenset({Phase.COMPLETED, Phase.ABORTED, Phase.ROLLED_BACK})
PAUSABLE_PHASES = frozenset({Phase.RUNNING, Phase.AWAITING_PROMOTION})
# A person may promote past a passed manual wave, or past an inconclusive one (never the workflow by itself).
PROMOTABLE_GATES = frozenset({Gate.PROMOTION, Gate.INCONCLUSIVE})
MIN_MONITOR_INTERVAL_SECONDS = 1

# Thresholds are fractions from JSON; compare with a little slack so 19/20 meets 0.95 however it is rounded.
_EPSILON = 1e-9


def wave_verdict(health: WaveHealth, wave: WavePlan, *, soak_done: bool) -> str:
    """Judge one wave from its deployment counts: FAIL early, PASS only at soak end on enough evidence.

    - An empty wave (0 devices assigned, e.g. the cohort had nobody left) passes at once: nothing to judge.
    - FAIL as soon as enough devices finished and failures/finished >= failure_threshold, even mid-soak; FAIL as
      well on a significant signal regression (health.signal, the plan's health gates), even mid-soak.
      "Enough" is min_sample, or every device of a wave smaller than min_sample: a 3-device wave whose
      3 devices all failed must halt, not wait for a sample it can never reach.
    - CONTINUE while the soak runs.
    - At or after soak end: INCONCLUSIVE below min_sample finished (promotion always needs the full sample);
      PASS when succeeded/total >= success_threshold (cancelled devices stay in total: no evidence of success)
      and the health gates do not doubt (an inconclusive signal holds: CONTINUE while devices are unfinished,
      then INCONCLUSIVE; never PASS);
      CONTINUE while devices are unfinished (their deadlines will resolve them); otherwise INCONCLUSIVE.
    """
    if health.total == 0:
        return Verdict.PASS
    finished = health.finished
    failure_sample = max(1, min(wave.min_sample, health.total))
    if finished >= failure_sample and health.failures / finished >= wave.failure_threshold - _EPSILON:
        return Verdict.FAIL
    if health.signal == SignalVerdict.REGRESSION:
        return Verdict.FAIL
    if not soak_done:
        return Verdict.CONTINUE
    if finished < wave.min_sample:
        return Verdict.INCONCLUSIVE
    if health.succeeded / health.total >= wave.success_threshold - _EPSILON:
        if health.signal == SignalVerdict.INCONCLUSIVE:
            # Installed is not healthy: wait for the telemetry of devices still finishing, then hold for a person.
            return Verdict.CONTINUE if health.unfinished > 0 else Verdict.INCONCLUSIVE
        return Verdict.PASS
    if health.unfinished > 0:
        return Verdict.CONTINUE
    return Verdict.INCONCLUSIVE


# The fleet-wide safety net (rollouts.fleet_safety) pauses rollouts without a person: this actor id (no person has
# it) with this role. It may only pause; the authorize activity then requires the database's record of its trip.
SYSTEM_ACTOR_ID = 0
SAFETY_NET_ROLE = "system:safety_net"


def human_action_refusal(
    action: str,
    *,
    actor_id: int,
    actor_roles: Collection[str],
    author_id: int,
    phase: str,
    gate: str,
    gated_wave: int,
    requested_wave: int,
) -> str:
    """Return "" when this person may take this action now, else one sentence saying why not.

    Rules: only an operator acts; never the change's author (separation of duties); nothing after the rollout
    finished; promote only an open promotion or inconclusive gate, naming exactly the gated wave, and not while
    paused; roll back unless already rolling back; pause only while running or awaiting promotion; resume only
    while paused. Abort is allowed in every unfinished phase.
    """
    if action not in HUMAN_ACTIONS:
        return f"Unknown action {action!r}; expected one of {', '.join(HUMAN_ACTIONS)}."
    if actor_id == SYSTEM_ACTOR_ID:
        if action != Update.PAUSE or SAFETY_NET_ROLE not in actor_roles:
            return "Only the fleet safety net acts without a person, and it only pauses."
        if phase not in PAUSABLE_PHASES:
            return f"Only a running rollout or one awaiting promotion can be paused; this one is {phase}."
        return ""
    if OPERATOR_ROLE not in actor_roles:
        return f"Only an operator may {action} a rollout."
    if actor_id == author_id:
        return f"The author of the change may not {action} its rollout (separation of duties)."
    if phase in FINISHED_PHASES:
        return f"The rollout is already {phase}; nothing more can be done."
    if action == Update.PROMOTE:
        return _promote_refusal(phase=phase, gate=gate, gated_wave=gated_wave, requested_wave=requested_wave)
    if action == Update.ROLLBACK and phase == Phase.ROLLING_BACK:
        return "The rollout is already rolling back."
    if action == Update.PAUSE and phase not in PAUSABLE_PHASES:
        return f"Only a running rollout or one awaiting promotion can be paused; this one is {phase}."
    if action == Update.RESUME and phase != Phase.PAUSED:
        return f"Only a paused rollout can be resumed; this one is {phase}."
    return ""


def _promote_refusal(*, phase: str, gate: str, gated_wave: int, requested_wave: int) -> str:
    if phase == Phase.PAUSED:
        return "The rollout is paused; resume it before promoting."
    if gate not in PROMOTABLE_GATES:
        return "No wave is waiting for promotion."
    if requested_wave != gated_wave:
        # People count waves from 1; the API's wave_index counts from 0: the refusal names both.
        return (
            f"Wave {gated_wave + 1} (wave_index {gated_wave}) is waiting for promotion, "
            f"not wave {requested_wave + 1} (wave_index {requested_wave})."
        )
    return ""


def monitor_interval(seconds: int) -> int:
    """The monitoring cadence actually used: at least MIN_MONITOR_INTERVAL_SECONDS, so 0 cannot spin."""
    return max(MIN_MONITOR_INTERVAL_SECONDS, seconds)


def next_check_seconds(interval_seconds: int, soak_remaining_seconds: float, *, clamp_to_soak_end: bool) -> float:
    """Seconds until the next health check.

    With clamp_to_soak_end, a check that would land after the soak ends is moved to the soak's end, so the
    wave is judged exactly when its soak is over instead of up to one interval later. (Version 1 of the
    workflow did not clamp; it keeps doing so when replaying old histories: see workflow.patched in rollout.py.)
    """
    interval = float(monitor_interval(interval_seconds))
    if clamp_to_soak_end and 0 < soak_remaining_seconds < interval:
        return soak_remaining_seconds
    return interval


def soak_clamp_applies(interval_seconds: int, soak_remaining_seconds: float) -> bool:
    """True when clamping to the soak end would change the next check (the only place the patch matters)."""
    return 0 < soak_remaining_seconds < monitor_interval(interval_seconds)
