"""The change's own timers as one step for its workflow: review reminders and escalation, approval expiry, and the
start that fires by itself at the scheduled time (after the same pre-flight a person's Start goes through).

Called by the CHANGE_FIRE activity (workflows/change_activities.py) with the Temporal server's time; every part
re-reads the change, does only what the database says is due at that time, and records each step once.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction

from approvals import services as change_services
from approvals import timers as change_timers
from approvals.audit.records import record_decision
from approvals.choices import ChangeStatus
from approvals.models import ChangeRequest
from approvals.notify import TIMER_ACTOR
from approvals.services import change_start_hold
from ota_project.db import atomic_with_retry
from ota_project.errors import DomainError
from rollouts.rollout_services.start import _rollout_start, _serialise_starts
from workflows.change_types import ChangeState


@atomic_with_retry()
def change_scheduled_start(*, change_id: int, now: datetime) -> str:
    """Start the rollout of a scheduled change whose start time has come, as the operator who scheduled it, after
    the pre-flight (`rollout_start_refusal`, the checks of a person's Start); a refusal holds the change instead.

    Returns "started", "held" or "" (nothing due at `now`: not scheduled, or not yet; a forged call does nothing).
    """
    _serialise_starts()
    change = ChangeRequest.objects.select_for_update(of=("self",)).select_related("scheduled_by").get(pk=change_id)
    if change.status != ChangeStatus.SCHEDULED or change.scheduled_start is None or now < change.scheduled_start:
        return ""
    operator = change.scheduled_by
    if operator is None:
        reason = "Nobody is recorded as having scheduled the change, so there is no operator to start it as."
    else:
        try:
            with transaction.atomic():  # a refusal rolls back everything the start wrote, the rollout included
                rollout = _rollout_start(actor=operator, change=change, start_workflow=True, now=now)
                record_decision(
                    actor=None,
                    action="rollout.scheduled_start",
                    object_type="rollout",
                    object_id=rollout.pk,
                    revision=change.revision,
                    after={"change": change.pk, "scheduled_start": change.scheduled_start.isoformat()},
                    reason="The change's scheduled start came and the pre-flight passed.",
                    system_actor=f"{TIMER_ACTOR} for {operator.get_username()}"[:140],
                )
            return "started"
        except DomainError as refusal:
            reason = refusal.message
    change_start_hold(change_id=change_id, reason=f"Pre-flight refused the scheduled start: {reason}", now=now)
    return "held"


def change_timers_fire(*, change_id: int, now: datetime) -> ChangeState:
    """Do every step of the change's timers that is due at `now`, then report the change's state and next due time.

    Order matters: a lapsed approval is marked before the scheduled start is considered, and the start's own
    pre-flight refuses a lapsed approval anyway. Each part is its own transaction and idempotent.
    """
    done = change_timers.change_review_timers_fire(change_id=change_id, now=now)
    done += change_timers.change_follow_up_reviews_fire(change_id=change_id, now=now)
    if change_services.change_approval_lapse(change_id=change_id, now=now) is not None:
        done.append("approval lapsed")
    outcome = change_scheduled_start(change_id=change_id, now=now)
    if outcome:
        done.append(f"scheduled start {outcome}")
    state = change_timers.change_timer_state(change_id=change_id, now=now)
    state.done = done
    return state


def change_timers_state(*, change_id: int, now: datetime) -> ChangeState:
    """The change's state and next due time, read only."""
    return change_timers.change_timer_state(change_id=change_id, now=now)
