"""A person's acknowledgement or resolution of an alert: checked, recorded in the decision record, refused loudly.

The alert core (`ota_project.alerts`) sits below the decision record; this is the service above it that joins the
guarded status move and its record in one transaction. Only operators and security officers act on alerts; any
other signed-in person who tries is refused (403) and the refusal is a security event.
"""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.db import transaction

from approvals.audit.alert_decisions import VERBS, alert_move_recorded
from approvals.audit.security import SecurityEventKind, security_event
from ota_project.alerts.choices import ALERT_ACK_ROLES, AlertStatus
from ota_project.alerts.models import Alert
from ota_project.alerts.selectors import alert_get
from ota_project.errors import InvalidInput, NotPermitted
from ota_project.roles import has_role

MAX_NOTE_CHARS = 1000


def alert_act_refusal(actor: User | AnonymousUser | None) -> NotPermitted | None:
    """Who may acknowledge or resolve alerts: operators and security officers (the rule pages and API ask)."""
    if not has_role(actor, *ALERT_ACK_ROLES):
        return NotPermitted("Only operators and security officers may acknowledge or resolve alerts.")
    return None


def _note_clean(note: object) -> str:
    if not isinstance(note, str):
        raise InvalidInput("The note must be text.", fields={"note": ["Must be text."]})
    note = note.strip()
    if len(note) > MAX_NOTE_CHARS:
        raise InvalidInput("The note is too long.", fields={"note": [f"At most {MAX_NOTE_CHARS} characters."]})
    return note


@transaction.atomic
def _alert_move(*, actor: User, alert_id: int, to: str, note: object) -> Alert:
    verb = VERBS[to]
    refusal = alert_act_refusal(actor)
    if refusal is not None:
        security_event(
            kind=SecurityEventKind.ACTION_UNAUTHORISED,
            source=f"alerts.{verb}",
            message=refusal.message,
            actor=actor,
            subject=f"alert:{alert_id}",
        )
        raise refusal
    cleaned = _note_clean(note)
    if to == AlertStatus.RESOLVED and not cleaned:
        raise InvalidInput("Say how the alert was resolved.", fields={"note": ["Required to resolve an alert."]})
    alert = alert_move_recorded(actor=actor, alert_id=alert_id, to=to, note=cleaned)
    if alert is None:  # already there: a repeated click changes and records nothing
        alert = alert_get(alert_id)
        assert alert is not None  # the guarded move found it
    return alert


def alert_acknowledge(*, actor: User, alert_id: int, note: object = "") -> Alert:
    """An operator or security officer says they are on it: no more reminders; recorded with their name."""
    return _alert_move(actor=actor, alert_id=alert_id, to=AlertStatus.ACKNOWLEDGED, note=note)


def alert_resolve(*, actor: User, alert_id: int, note: object) -> Alert:
    """An operator or security officer closes the alert with what was done (required); the condition may alert anew."""
    return _alert_move(actor=actor, alert_id=alert_id, to=AlertStatus.RESOLVED, note=note)
