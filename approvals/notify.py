"""Telling the people a change's timers concern: e-mail through the one mail path of `ota_project.mail`, alerts
through `ota_project.alerts`, and the timers' actor."""

from __future__ import annotations

from django.urls import reverse

from approvals.models import ChangeRequest
from ota_project.alerts.choices import AlertKind, AlertSeverity
from ota_project.alerts.services import raise_alert
from ota_project.mail import notify_people, users_with_roles

__all__ = ["TIMER_ACTOR", "alert_start_held", "notify_people", "users_with_roles"]

# The system actor of the change's timers in decision records (`system:change-timer for <person or policy>`).
TIMER_ACTOR = "change-timer"


def alert_start_held(*, change: ChangeRequest, scheduled_by: str, reason: str) -> None:
    """A scheduled start the pre-flight refused: an alert for the operators on call (the /alerts/ page, e-mail,
    the webhook), one per change and schedule, in the transaction that holds the change."""
    raise_alert(
        kind=AlertKind.CHANGE_START_HELD,
        dedup_key=f"{AlertKind.CHANGE_START_HELD}:{change.pk}",
        severity=AlertSeverity.WARNING,
        title=f"CR-{change.pk} did not start at its scheduled time",
        summary=(
            f"The pre-flight refused the automatic start scheduled by {scheduled_by or 'an operator'}: {reason} "
            "The change is held (approved, no longer scheduled); fix the cause, then schedule or start it again."
        ),
        link=reverse("web-changes:detail", args=[change.pk]),
        evidence={"change": change.pk, "scheduled_by": scheduled_by, "reason": reason},
    )
