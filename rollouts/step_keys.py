"""Idempotency keys of rollout decisions: one key per decision, so a step that runs again records nothing new.

A key names the workflow (`rollout-<pk>`), the wave, the kind of decision and, where one wave can see the same kind
of decision more than once, what tells those apart; never a clock. The keys follow the workflow's rules:

- promote (automatic): a wave is promoted once, so (wave, promote) is the whole key.
- hold: recorded once per (wave, reason), the reason being the gate that holds the wave (`inconclusive`: not enough
  evidence at the end of the soak; `promotion`: a passed manual wave awaits a person). A gate stays open until a
  person decides, and monitoring ticks, pauses and resumes at an open gate, continue-as-new and retried projections
  all carry the same key, so a hold is one record however long it lasts; a different reason on the same wave is a
  new decision and gets its own record. Soak progress (the verdict `continue`) is not a gate verdict: the health
  history (HealthSample) keeps it, the decision record does not.
- halt: a rollout halts once (a halted rollout only ends), at the wave that failed; the breaker trips once per wave.
- the rollback saga begins once per rollout.
- a person's action (pause, resume, abort, rollback, promote) is the Temporal Update that carried it: its update id
  is recorded in the workflow's history, stable across activity retries, worker crashes and replays.
"""

from __future__ import annotations

import hashlib

from workflows.types import rollout_workflow_id

HOLD_GATES = ("promotion", "inconclusive")
# Update ids come from whoever sent the update (the API, the `temporal` CLI): longer ones are hashed, so a key
# always fits its column.
_MAX_UPDATE_ID = 64


def verdict_step_key(rollout_id: int, wave_index: int, verdict: str, reason: str = "") -> str:
    """The key of a gate verdict (promote, hold, halt, breaker) on one wave; `reason` tells holds apart."""
    key = f"{rollout_workflow_id(rollout_id)}/wave-{wave_index}/{verdict}"
    return f"{key}/{reason}" if reason else key


def rollback_step_key(rollout_id: int) -> str:
    """The key of the rollback saga's beginning (its assignment), once per rollout."""
    return f"{rollout_workflow_id(rollout_id)}/rollback/assign"


def human_action_step_key(rollout_id: int, wave_index: int, action: str, update_id: str) -> str | None:
    """The key of a person's action, from the id of the Temporal Update that carried it (None: no update id)."""
    if not update_id:
        return None
    if len(update_id) > _MAX_UPDATE_ID:
        update_id = "sha256-" + hashlib.sha256(update_id.encode()).hexdigest()
    return f"{rollout_workflow_id(rollout_id)}/wave-{wave_index}/{action}/update-{update_id}"
