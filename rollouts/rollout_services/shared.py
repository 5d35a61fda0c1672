"""What every rollout service shares: the workflow's actor name, the rollout's decision record and its guarded
status transition (checks the table, conditional on the expected status, records in the same transaction)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import User
from django.utils import timezone

from approvals.audit.models import DecisionRecord
from approvals.audit.records import record_decision
from approvals.audit.security import SecurityEventKind, security_event
from ota_project.errors import Conflict, DomainError, NotPermitted
from rollouts.choices import (
    ROLLOUT_TRANSITIONS,
)
from rollouts.models import Rollout

if TYPE_CHECKING:
    pass


SYSTEM = "temporal"


def _record(actor: User | None, rollout: Rollout, action: str, **kwargs: Any) -> None:
    record_decision(
        actor=actor, action=action, object_type="rollout", object_id=rollout.pk, system_actor=SYSTEM, **kwargs
    )


def _transition(
    rollout: Rollout,
    to: str,
    *,
    actor: User | None,
    action: str,
    reason: str = "",
    step_key: str | None = None,
    **updates: Any,
) -> bool:
    """The one guarded status change; False (and nothing written) when already in `to`; `step_key` makes its
    record idempotent for a decision the workflow may take again (see rollouts.step_keys)."""
    if rollout.status == to:
        if updates:
            Rollout.objects.filter(pk=rollout.pk).update(**updates)
        return False
    if to not in ROLLOUT_TRANSITIONS[rollout.status]:
        raise Conflict(f"A rollout that is {rollout.status} cannot become {to}.", code="invalid_transition")
    changed = Rollout.objects.filter(pk=rollout.pk, status=rollout.status).update(
        status=to, updated_at=timezone.now(), **updates
    )
    if changed != 1:
        raise Conflict("The rollout changed at the same time; try again.")
    _record(
        actor,
        rollout,
        action,
        before={"status": rollout.status},
        after={"status": to},
        reason=reason,
        step_key=step_key,
    )
    rollout.status = to
    return True


def workflow_step_forged(*, rollout_id: int | None, message: str) -> NotPermitted:
    """A workflow step or action the database does not back: refused for good, and evidence of tampering."""
    text = f"Refused for rollout {rollout_id}: {message}"
    security_event(
        kind=SecurityEventKind.ACTION_FORGED,
        source="rollouts.workflow_step",
        message=text,
        subject=f"rollout:{rollout_id}",
    )
    return NotPermitted(text, code="forged_action")


@contextmanager
def _refusals_recorded(kind: str, source: str, *, actor: User | None, subject: str) -> Iterator[None]:
    """Every refusal (DomainError) raised inside becomes a security event before it propagates."""
    try:
        yield
    except DomainError as exc:
        security_event(kind=kind, source=source, message=exc.message, actor=actor, subject=subject)
        raise


def _forged(rollout: Rollout, message: str) -> NotPermitted:
    return workflow_step_forged(rollout_id=rollout.pk, message=message)


def _person_decided(rollout: Rollout, action: str, actor_id: int | None = None) -> bool:
    """True when the decision record holds this person's (or any person's) authorised action on the rollout."""
    records = DecisionRecord.objects.filter(
        object_type="rollout", object_id=str(rollout.pk), action=f"rollout.{action}", actor__isnull=False
    )
    return records.filter(actor_id=actor_id).exists() if actor_id else records.exists()
