"""Alerts about a rollout that needs a person: halted by its own gates or breakers, or held because a wave is
inconclusive. Raised in the transaction that projects the state (so an alert exists exactly when the state does),
deduplicated per rollout (halt) and per wave (hold); mailed to operators and sent to the webhook by the alerts room.

A halt or hold a person decided (abort, roll back) raises nothing: that person is already on it.
"""

from __future__ import annotations

from typing import Any

from django.urls import reverse

from ota_project.alerts.choices import AlertKind, AlertSeverity
from ota_project.alerts.services import raise_alert
from rollouts.models import Rollout


def _link(rollout: Rollout) -> str:
    return reverse("web-rollouts:detail", args=[rollout.pk])


def alert_rollout_halted(*, rollout: Rollout, wave_index: int, wave_name: str, reason: str) -> None:
    """The rollout stopped offering its release on its own verdict: the on-call operator decides what follows."""
    raise_alert(
        kind=AlertKind.ROLLOUT_HALTED,
        dedup_key=f"{AlertKind.ROLLOUT_HALTED}:{rollout.pk}",
        severity=AlertSeverity.CRITICAL,
        title=f"Rollout {rollout.pk} (change #{rollout.change_id}) halted in wave {wave_index + 1} {wave_name}",
        summary=(
            f"{reason} The release is offered nowhere any more; the dashboard's runbook says what the halt needs "
            "(roll back or abort, with a reason)."
        ),
        link=_link(rollout),
        evidence={"rollout": rollout.pk, "change": rollout.change_id, "wave": wave_index + 1, "reason": reason},
    )


def alert_wave_held(*, rollout: Rollout, wave_index: int, reason: str, evidence: dict[str, Any]) -> None:
    """A wave ended its soak without the evidence to promote: nothing moves until a person promotes, aborts or
    rolls back."""
    raise_alert(
        kind=AlertKind.ROLLOUT_HELD,
        dedup_key=f"{AlertKind.ROLLOUT_HELD}:{rollout.pk}:{wave_index}",
        severity=AlertSeverity.WARNING,
        title=f"Rollout {rollout.pk} (change #{rollout.change_id}) held at wave {wave_index + 1}: inconclusive",
        summary=reason or "The wave is inconclusive at the end of its soak; an operator decides.",
        link=_link(rollout),
        evidence={"rollout": rollout.pk, "change": rollout.change_id, **evidence, "wave": wave_index + 1},
    )
