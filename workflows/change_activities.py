"""ChangeWorkflow's activities: sync, on the worker's thread pool, with connection hygiene, each one service call.

Anything reaching Temporal can be forged, so an activity acts only for the change's own workflow (`change-<id>`)
and only on what the database says is due at the Temporal server's time for this attempt (never a time the
workflow code supplies): an early, repeated or forged call reads the change and does nothing else.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone
from temporalio import activity
from temporalio.exceptions import ApplicationError

from approvals.audit.security import SecurityEventKind, security_event
from approvals.models import ChangeRequest
from ota_project.errors import DomainError
from rollouts.rollout_services.scheduled import change_timers_fire, change_timers_state
from workflows.change_types import ChangeActivity, ChangeRef, ChangeState, change_workflow_id


def _now() -> datetime:
    """This machine's clock: what is due is decided by the database's rules at the real time, so neither a forged
    workflow nor a Temporal server with a wrong clock can make a step come due early. Only where
    OTA_CHANGE_TIMERS_TEMPORAL_CLOCK is on (the time-skipping test server) does the server's time for this attempt
    count, when it is later."""
    if not settings.OTA_CHANGE_TIMERS_TEMPORAL_CLOCK:
        return timezone.now()
    scheduled = activity.info().current_attempt_scheduled_time
    if scheduled.tzinfo is None:
        scheduled = scheduled.replace(tzinfo=UTC)
    return max(timezone.now(), scheduled)


def _verified(ref: ChangeRef) -> int:
    """The change id, once the calling workflow is the change's own and the change exists."""
    workflow_id = activity.info().workflow_id
    if workflow_id != change_workflow_id(ref.change_id) or not ChangeRequest.objects.filter(pk=ref.change_id).exists():
        message = f"workflow {workflow_id!r} is not the workflow of change {ref.change_id}"
        security_event(
            kind=SecurityEventKind.ACTION_FORGED,
            source="workflows.change_activities",
            message=message,
            subject=f"change:{ref.change_id}",
        )
        raise ApplicationError(message, {"code": "forged_action"}, type="NotPermitted", non_retryable=True)
    return ref.change_id


@activity.defn(name=ChangeActivity.CHANGE_SYNC)
def change_sync(ref: ChangeRef) -> ChangeState:
    """Read the change's status, risk, type and due dates (writes nothing)."""
    close_old_connections()
    try:
        return change_timers_state(change_id=_verified(ref), now=_now())
    finally:
        close_old_connections()


@activity.defn(name=ChangeActivity.CHANGE_FIRE)
def change_fire(ref: ChangeRef) -> ChangeState:
    """Take every step of the change's timers due now by the database (reminder, escalation, expiry, start)."""
    close_old_connections()
    try:
        return change_timers_fire(change_id=_verified(ref), now=_now())
    except DomainError as exc:
        raise ApplicationError(
            exc.message, {"code": exc.code, "fields": exc.fields}, type=type(exc).__name__, non_retryable=True
        ) from exc
    finally:
        close_old_connections()


CHANGE_ACTIVITIES = [change_sync, change_fire]
