"""Rollout life cycle: start (people), the steps the workflow's activities take, and human actions.

Each function is one atomic action that names its actor (a person, or the workflow as `system:temporal`)
and writes the decision record in the same transaction. Workflow-facing steps are idempotent: Temporal
retries activities, so repeating a step must change nothing.

Rooms: `start` (starting a rollout and re-starting lost workflows), `waves` (each wave's window, assignment,
health, gate, promotion, halt), `rollback` (the rollback saga and finishing), `human_actions` (the rules and
proofs for pause, resume, promote, abort, roll back), `shared` (the record and the guarded rollout transition).
Callers import the service functions from here.
"""

from rollouts.rollout_services.human_actions import (
    action_token_issue,
    human_action_authorize,
    rollout_act,
    rollout_act_refusal,
    rollout_action_refusal,
    rollout_actor_refusal,
    rollout_safety_pause,
)
from rollouts.rollout_services.rollback import TOOK_NEW_IMAGE, rollback_assign, rollback_health, rollout_finish
from rollouts.rollout_services.shared import workflow_step_forged
from rollouts.rollout_services.start import (
    rollout_start,
    rollout_start_blockers,
    rollout_workflows_ensure,
    search_attributes_for,
    workflow_input,
)
from rollouts.rollout_services.waves import (
    finished_rollouts_expire_deadlines,
    rollout_halt,
    rollout_phase,
    wave_assign,
    wave_health,
    wave_promote,
    wave_window_wait,
)

__all__ = [
    "TOOK_NEW_IMAGE",
    "action_token_issue",
    "finished_rollouts_expire_deadlines",
    "human_action_authorize",
    "rollback_assign",
    "rollback_health",
    "rollout_act",
    "rollout_act_refusal",
    "rollout_action_refusal",
    "rollout_actor_refusal",
    "rollout_safety_pause",
    "rollout_finish",
    "rollout_halt",
    "rollout_phase",
    "rollout_start",
    "rollout_start_blockers",
    "rollout_workflows_ensure",
    "search_attributes_for",
    "wave_assign",
    "wave_health",
    "wave_promote",
    "wave_window_wait",
    "workflow_input",
    "workflow_step_forged",
]
