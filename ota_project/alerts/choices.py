"""Alert statuses, severities and webhook delivery states (values live in rows and are never renamed)."""

from __future__ import annotations

from django.db import models

from ota_project.roles import Role


class AlertStatus(models.TextChoices):
    """Life of an alert: raised open, acknowledged by a person who is on it, resolved when it is over."""

    OPEN = "open", "Open"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    RESOLVED = "resolved", "Resolved"


ALERT_TRANSITIONS: dict[str, frozenset[str]] = {
    AlertStatus.OPEN: frozenset({AlertStatus.ACKNOWLEDGED, AlertStatus.RESOLVED}),
    AlertStatus.ACKNOWLEDGED: frozenset({AlertStatus.RESOLVED}),
    AlertStatus.RESOLVED: frozenset(),
}
# An alert in one of these holds its dedup key: raising the same condition again bumps it instead of a new row.
ALERT_LIVE = (AlertStatus.OPEN, AlertStatus.ACKNOWLEDGED)


class AlertSeverity(models.TextChoices):
    """How urgent an alert is (sorting, colour, and the subject line of its mail)."""

    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


SEVERITY_ORDER: dict[str, int] = {AlertSeverity.CRITICAL: 0, AlertSeverity.WARNING: 1, AlertSeverity.INFO: 2}


class DeliveryStatus(models.TextChoices):
    """One webhook delivery: pending until the receiver answers 2xx, failed when its attempts ran out."""

    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed (attempts exhausted)"


# Alert kinds the system raises itself (other kinds may be raised too: a kind is a dotted slug).
class AlertKind(models.TextChoices):
    DEVICE_QUARANTINED = "device.quarantined", "Device quarantined after repeated failures"
    FLEET_ROLLBACK_RATE = "fleet.rollback_rate", "Fleet-wide rollback rate over its limit"
    FLEET_REBOOT_RATE = "fleet.reboot_rate", "Fleet-wide unexpected-reboot rate over its limit"
    ROLLOUT_HALTED = "rollout.halted", "Rollout halted by its gates or breakers"
    ROLLOUT_HELD = "rollout.held", "Rollout held: a wave is inconclusive"
    CHANGE_START_HELD = "change.start_held", "Scheduled start held: the pre-flight refused it"


# Who is mailed about an alert, by the first matching prefix of its kind; operators always.
KIND_PREFIX_ROLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("security.", (Role.OPERATOR, Role.SECURITY_OFFICER)),
    ("device.attestation", (Role.OPERATOR, Role.SECURITY_OFFICER)),
)
DEFAULT_ALERT_ROLES: tuple[str, ...] = (Role.OPERATOR,)
# Who may acknowledge or resolve an alert, and who may read the alerts.
ALERT_ACK_ROLES = frozenset({Role.OPERATOR, Role.SECURITY_OFFICER})
ALERT_READ_ROLES = frozenset({Role.OPERATOR, Role.SECURITY_OFFICER, Role.AUDITOR})


def alert_roles(kind: str) -> tuple[str, ...]:
    """The roles mailed about an alert of this kind."""
    for prefix, roles in KIND_PREFIX_ROLES:
        if kind.startswith(prefix):
            return roles
    return DEFAULT_ALERT_ROLES
