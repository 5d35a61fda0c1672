"""A person's move of an alert (acknowledge, resolve) joined with its decision record: the one place that writes both.

The alert core (`ota_project.alerts`) sits below the decision record, so the record is written here, above it, in the
caller's transaction: by the alert pages and API (`rollouts.alert_services`, after their role check) and by a
decision that settles the alert's condition itself (releasing a quarantined device resolves its alert).
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from approvals.audit.records import record_decision
from ota_project.alerts.choices import ALERT_LIVE, AlertStatus
from ota_project.alerts.models import Alert
from ota_project.alerts.services import alert_transition

VERBS: dict[str, str] = {AlertStatus.ACKNOWLEDGED: "acknowledge", AlertStatus.RESOLVED: "resolve"}


def alert_move_recorded(*, actor: User, alert_id: int, to: str, note: str) -> Alert | None:
    """Move the alert to `to` by `actor` and record it (`alert.<verb>`); None when it already was there (nothing
    changes or is recorded). Must run in the caller's transaction, which also holds the caller's own decision."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("alert_move_recorded must run inside the transaction of the decision it belongs to")
    moved = alert_transition(alert_id=alert_id, to=to, by=actor, note=note, now=timezone.now())
    if moved is None:
        return None
    alert, previous = moved
    record_decision(
        actor=actor,
        action=f"alert.{VERBS[to]}",
        object_type="alert",
        object_id=alert.pk,
        before={"status": previous},
        after={"status": to, "kind": alert.kind, "dedup_key": alert.dedup_key, "occurrences": alert.occurrences},
        reason=note,
    )
    return alert


def alert_resolve_live(*, actor: User, dedup_key: str, note: str) -> Alert | None:
    """Resolve the live alert of `dedup_key` (if any) by `actor`, recorded; None when none is live."""
    alert_id = Alert.objects.filter(dedup_key=dedup_key, status__in=ALERT_LIVE).values_list("pk", flat=True).first()
    if alert_id is None:
        return None
    # Locked and re-checked by the guarded move: resolved meanwhile by someone else -> None, nothing recorded twice.
    return alert_move_recorded(actor=actor, alert_id=alert_id, to=AlertStatus.RESOLVED, note=note)
