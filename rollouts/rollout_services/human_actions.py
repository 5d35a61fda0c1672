"""Human actions on a rollout (pause, resume, promote, abort, roll back): the rule the page and API ask, the
single-use proof an operator mints, and the activity that re-checks the person before the workflow moves."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from approvals.audit.models import DecisionRecord
from approvals.audit.records import record_decision
from approvals.audit.security import SecurityEventKind
from ota_project.errors import Conflict, DomainError, InvalidInput, NotPermitted
from ota_project.roles import operator_not_author_refusal, roles_of
from rollouts.action_tokens import action_token_check, action_token_mint, action_token_spend, action_token_spent
from rollouts.choices import (
    ROLLOUT_ACTIVE,
    WAVE_TERMINAL,
    WaveStatus,
)
from rollouts.fleet_safety import PAUSABLE_ROLLOUTS, PAUSE_REQUESTED, SAFETY_ACTOR, safety_pause_pending
from rollouts.models import Rollout, Wave
from rollouts.step_keys import human_action_step_key
from rollouts.transitions import wave_transition
from workflows import policy
from workflows.policy import HUMAN_ACTIONS
from workflows.types import Update

if TYPE_CHECKING:
    from workflows.types import RolloutProgress as WorkflowStatus
from rollouts.rollout_services.shared import _forged, _record, _refusals_recorded

logger = logging.getLogger(__name__)


def _promotable(rollout: Rollout, wave_index: int) -> str:
    """Why a person may not promote this wave now ("" when they may): it must be open, over its soak, not failed."""
    wave = Wave.objects.filter(rollout=rollout, index=wave_index).first()
    if wave is None or wave.started_at is None:
        return f"Wave {wave_index + 1} (wave_index {wave_index}) has not started."
    if wave.status in WAVE_TERMINAL or wave.breaker_tripped_at is not None:
        done = {str(WaveStatus.PROMOTED): "already promoted", str(WaveStatus.STOPPED): "stopped"}.get(
            wave.status, "failed"
        )
        return f"Wave {wave.name} is {done}."
    soak = timedelta(seconds=rollout.approved_plan.waves[wave_index].soak_seconds)
    if timezone.now() < wave.started_at + soak:
        return f"Wave {wave.name} is still soaking."
    return ""


def _authorized_before(
    rollout: Rollout, step_key: str, *, action: str, actor_id: int, wave_index: int, token: str, subject: str
) -> bool:
    """True when this very action (same update, person, proof) was authorised and recorded by an earlier attempt.

    An activity retried after its transaction committed (the worker died before reporting) finds its own record
    and its own spent token: it succeeds without recording again. Anything else under the same key is refused.
    """
    record = DecisionRecord.objects.filter(step_key=step_key).only("action", "actor_id").first()
    if record is None:
        return False
    with _refusals_recorded(SecurityEventKind.ACTION_FORGED, "rollouts.human_action", actor=None, subject=subject):
        claim = action_token_check(
            token=token,
            actor_id=actor_id,
            rollout_id=rollout.pk,
            action=action,
            wave_index=wave_index,
            now=timezone.now(),
        )
    if (record.action, record.actor_id) != (f"rollout.{action}", actor_id) or not action_token_spent(claim):
        # _forged reports the security event itself.
        raise _forged(rollout, f"Update {step_key} was already recorded for another action, person or proof.")
    return True


@transaction.atomic
def human_action_authorize(
    *, rollout_id: int, action: str, actor_id: int, reason: str, wave_index: int, token: str, update_id: str = ""
) -> None:
    """Re-check a person's action against the database, verify and spend its proof (the token minted for that
    person after sign-in), and record it; raises NotPermitted when refused. A promotion opens the next wave.

    Exactly once per Temporal Update (`update_id`): a retried attempt of an action already recorded changes and
    records nothing (see rollouts.step_keys and `_authorized_before`)."""
    rollout = Rollout.objects.select_for_update(of=("self",)).select_related("change").get(pk=rollout_id)
    if action not in HUMAN_ACTIONS:
        raise InvalidInput(f"Unknown action {action}.")
    subject = f"rollout:{rollout_id} {action} as user {actor_id}"
    # The rollout row lock serialises every action on this rollout, so the earlier attempt has committed or failed.
    step_key = human_action_step_key(rollout_id, wave_index, action, update_id)
    if actor_id == policy.SYSTEM_ACTOR_ID:
        _safety_pause_authorize(rollout, action=action, reason=reason, step_key=step_key)
        return
    if step_key is not None and _authorized_before(
        rollout, step_key, action=action, actor_id=actor_id, wave_index=wave_index, token=token, subject=subject
    ):
        return
    with _refusals_recorded(SecurityEventKind.ACTION_FORGED, "rollouts.human_action", actor=None, subject=subject):
        action_token_spend(
            token=token,
            actor_id=actor_id,
            rollout_id=rollout_id,
            action=action,
            wave_index=wave_index,
            now=timezone.now(),
        )
    actor = get_user_model().objects.filter(pk=actor_id, is_active=True).first()
    with _refusals_recorded(
        SecurityEventKind.ACTION_UNAUTHORISED, "rollouts.human_action", actor=actor, subject=subject
    ):
        refusal = rollout_actor_refusal(actor, rollout)
        if refusal is not None:
            raise refusal
    if action == Update.PROMOTE:
        promote_refusal = _promotable(rollout, wave_index)
        if promote_refusal:
            raise Conflict(promote_refusal, code="not_promotable")
        wave_transition(
            waves=Wave.objects.filter(rollout=rollout, index=wave_index),
            to=WaveStatus.PROMOTED,
            verdict_at=timezone.now(),
        )
    after = {"wave": wave_index} if wave_index >= 0 else None
    _record(actor, rollout, f"rollout.{action}", after=after, reason=reason, step_key=step_key)


def _safety_pause_authorize(rollout: Rollout, *, action: str, reason: str, step_key: str | None) -> None:
    """A pause no person sent: only the safety net's, backed by its request in the decision record (the latest word
    on the rollout, see `safety_pause_pending`); recorded as `system:fleet-safety`, once per Update."""
    if step_key is not None:
        done = DecisionRecord.objects.filter(step_key=step_key).only("action", "actor_id").first()
        if done is not None and done.action == "rollout.pause" and done.actor_id is None:
            return  # a retried attempt of this very pause
        if done is not None:
            raise _forged(rollout, f"Update {step_key} was already recorded for another action or person.")
    if action != Update.PAUSE or not safety_pause_pending(rollout.pk):
        raise _forged(rollout, f"No person sent this {action} and the fleet safety net did not ask for it.")
    record_decision(
        actor=None,
        action="rollout.pause",
        object_type="rollout",
        object_id=rollout.pk,
        reason=reason,
        system_actor=SAFETY_ACTOR,
        step_key=step_key,
    )


def rollout_safety_pause(*, rollout_id: int) -> bool:
    """Send the safety net's pause to the workflow as an Update, the path an operator's pause takes (the workflow
    validates it and its authorize activity re-checks the request above); True when the workflow paused.

    A rollout that is no longer pausable (paused, halted, finished) or whose request was carried out is left alone.
    """
    from workflows.client import TemporalUnavailable, execute_rollout_update
    from workflows.types import HumanAction

    if not safety_pause_pending(rollout_id):
        return False
    rollout = Rollout.objects.get(pk=rollout_id)
    if rollout.status not in PAUSABLE_ROLLOUTS:
        return False
    request = (
        DecisionRecord.objects.filter(object_type="rollout", object_id=str(rollout_id), action=PAUSE_REQUESTED)
        .order_by("-seq")
        .values_list("reason", flat=True)
        .first()
    )
    try:
        execute_rollout_update(
            rollout_id,
            Update.PAUSE,
            HumanAction(
                actor_id=policy.SYSTEM_ACTOR_ID,
                actor_roles=[policy.SAFETY_NET_ROLE],
                reason=(request or "fleet-wide safety net")[:1000],
            ),
        )
    except TemporalUnavailable:
        raise  # retried by the task, then re-sent by the beat check
    except DomainError as exc:  # refused by the workflow: it is no longer in a phase that pauses
        logger.warning("safety pause of rollout %s refused: %s", rollout_id, exc.message)
        return False
    return True


def rollout_actor_refusal(actor: User | None, rollout: Rollout) -> NotPermitted | None:
    """Who may act on a rollout at all: an operator who did not author its change (separation of duties)."""
    return operator_not_author_refusal(
        actor, author_id=rollout.change.author_id, act="act on a rollout", act_as_other="decide on its rollout"
    )


def rollout_act_refusal(actor: User, rollout: Rollout, action: str) -> DomainError | None:
    """The part of `rollout_action_refusal` the database decides for good: a known action, by an operator who did
    not author the change, on a rollout that has not finished. The phase part is the workflow's to apply."""
    if action not in HUMAN_ACTIONS:
        return InvalidInput(f"Unknown action {action}.", fields={"action": [f"One of: {', '.join(HUMAN_ACTIONS)}."]})
    refusal = rollout_actor_refusal(actor, rollout)
    if refusal is not None:
        return refusal
    if rollout.status not in ROLLOUT_ACTIVE:
        return Conflict(
            f"The rollout is already {rollout.get_status_display().lower()}; nothing more can be done.", code="finished"
        )
    return None


def rollout_action_refusal(
    actor: User, rollout: Rollout, action: str, *, wave_index: int | None = None
) -> DomainError | None:
    """Why `actor` may not take `action` (promote, pause, resume, abort, rollback) on the rollout now (None when
    they may): an operator who did not author the change, on an unfinished rollout, in a phase that allows it
    (`workflows.policy.human_action_refusal` over the database projection, the rule the workflow's update
    validator applies to its own state). The dashboard offers exactly the actions for which it returns None.
    `action_token_issue` raises its person part (`rollout_act_refusal`); the phase part is raised by the workflow's
    update validator from the same function over the workflow's live state, because the projection read here can
    trail the workflow by one activity (refusing on it would turn away a pause the workflow accepts). `wave_index`
    is the wave a promotion names (default: the current wave)."""
    refusal = rollout_act_refusal(actor, rollout, action)
    if refusal is not None:
        return refusal
    phase_refusal = policy.human_action_refusal(
        action,
        actor_id=actor.pk,
        actor_roles=roles_of(actor),
        author_id=rollout.change.author_id,
        phase=rollout.status,
        gate=rollout.gate,
        gated_wave=rollout.current_wave,
        requested_wave=rollout.current_wave if wave_index is None or wave_index < 0 else wave_index,
    )
    if phase_refusal:
        return Conflict(phase_refusal, code="not_allowed_now")
    return None


def rollout_act(
    *, actor: User, rollout: Rollout, action: str, reason: str = "", wave_index: int = -1
) -> WorkflowStatus:
    """A person's promote / abort / rollback / pause / resume, sent to the workflow as a Temporal Update.

    Checked here first so the caller gets a clear refusal without a round trip; the update carries a token minted
    for this authenticated person, which the workflow's authorize activity verifies and spends before it records
    the decision (the `temporal` CLI reaches the workflow without passing through here, see action_token_issue).
    """
    from workflows.client import execute_rollout_update
    from workflows.types import HumanAction

    token = action_token_issue(actor=actor, rollout=rollout, action=action, reason=reason, wave_index=wave_index)
    return execute_rollout_update(
        rollout.pk,
        action,
        HumanAction(
            actor_id=actor.pk, actor_roles=sorted(roles_of(actor)), reason=reason, wave_index=wave_index, token=token
        ),
    )


def action_token_issue(*, actor: User, rollout: Rollout, action: str, reason: str, wave_index: int) -> str:
    """Mint the proof for one action by this signed-in person, after the checks the workflow would make."""
    refusal = rollout_act_refusal(actor, rollout, action)
    if refusal is not None:
        raise refusal
    if action in (Update.ABORT, Update.ROLLBACK) and not reason.strip():
        raise InvalidInput(f"A reason is required to {action}.", fields={"reason": ["Required."]})
    return action_token_mint(
        actor_id=actor.pk, rollout_id=rollout.pk, action=action, wave_index=wave_index, now=timezone.now()
    )
