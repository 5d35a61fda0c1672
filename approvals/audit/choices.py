"""Security event kinds and their display severity (values live in rows and are never renamed)."""

from django.db import models


class SecurityEventKind(models.TextChoices):
    """What was refused; values live in rows and are never renamed."""

    DEVICE_AUTH_FAILED = "device_auth_failed", "Device authentication failed"
    DEVICE_REPLAY = "device_replay", "Device report replayed"
    DEVICE_STALE_REPORT = "device_stale_report", "Stale device report"
    DEVICE_CROSS_DEVICE = "device_cross_device", "Device named another device's deployment"
    DEVICE_ARTIFACT_REFUSED = "device_artifact_refused", "Image not offered to the device"
    ACTION_FORGED = "action_forged", "Forged or unverifiable action"
    ACTION_UNAUTHORISED = "action_unauthorised", "Action not permitted"
    STALE_REVISION = "stale_revision", "Decision on a stale revision"
    START_REFUSED = "start_refused", "Rollout start refused"
    LOGIN_LOCKED_OUT = "login_locked_out", "Sign-in locked out"
    API_AUTH_FAILED = "api_auth_failed", "API authentication failed"
    HSM_PIN_REFUSED = "hsm_pin_refused", "HSM refused the PIN"
    RELEASE_SIGN_REFUSED = "release_sign_refused", "Release signing refused"
    DEVICE_UPDATE_UNTRUSTED = "device_update_untrusted", "Device refused an update its signed metadata did not back"
    DEVICE_ATTESTATION_FAILED = "device_attestation_failed", "Device attestation failed (device quarantined)"
    DEVICE_RATE_LIMITED = "device_rate_limited", "Device credential or address over its request limit"
    DEVICE_SWARM = "device_swarm", "Many devices or addresses over their limits at once"


class SecuritySeverity(models.TextChoices):
    """How urgently a kind of refusal deserves a look (for display and sorting only, never stored)."""

    LOW = "low", "Low"
    MEDIUM = "medium", "Medium"
    HIGH = "high", "High"


K = SecurityEventKind
SECURITY_SEVERITY: dict[str, str] = {
    # Expected on flaky links (a lost answer makes the device re-send) or in a busy CAB: worth counting only.
    K.DEVICE_REPLAY: SecuritySeverity.LOW,
    K.DEVICE_STALE_REPORT: SecuritySeverity.LOW,
    K.STALE_REVISION: SecuritySeverity.LOW,
    K.DEVICE_AUTH_FAILED: SecuritySeverity.MEDIUM,
    K.DEVICE_ARTIFACT_REFUSED: SecuritySeverity.MEDIUM,
    K.ACTION_UNAUTHORISED: SecuritySeverity.MEDIUM,
    K.START_REFUSED: SecuritySeverity.MEDIUM,
    K.API_AUTH_FAILED: SecuritySeverity.MEDIUM,
    K.DEVICE_RATE_LIMITED: SecuritySeverity.MEDIUM,
    # A device naming another's deployment, a forged step or a locked-out account points at an attack.
    K.DEVICE_CROSS_DEVICE: SecuritySeverity.HIGH,
    K.ACTION_FORGED: SecuritySeverity.HIGH,
    # A vehicle found metadata or an image that does not verify: a compromised server, mirror or link.
    K.DEVICE_UPDATE_UNTRUSTED: SecuritySeverity.HIGH,
    # A device whose signed evidence does not match, or that replays a nonce: compromised or cloned.
    K.DEVICE_ATTESTATION_FAILED: SecuritySeverity.HIGH,
    # Many credentials or addresses over their limits in one window: a botnet or a fleet-wide fault.
    K.DEVICE_SWARM: SecuritySeverity.HIGH,
    K.LOGIN_LOCKED_OUT: SecuritySeverity.HIGH,
    K.HSM_PIN_REFUSED: SecuritySeverity.HIGH,
    # An unapproved or altered image offered for signing: the gate the whole update chain rests on.
    K.RELEASE_SIGN_REFUSED: SecuritySeverity.HIGH,
}


class AuditKind(models.TextChoices):
    """The recurring audits (each a Temporal schedule `audit-<value>`); values live in rows and schedule ids."""

    STALE_DEVICES = "stale_devices", "Stale devices"
    INVENTORY_DRIFT = "inventory_drift", "Inventory drift"
    OVERDUE_REVIEWS = "overdue_reviews", "Overdue post-implementation reviews"
    TELEMETRY_GAPS = "telemetry_gaps", "Telemetry gaps"
    CERTIFICATES = "certificates", "Certificates"
    # The expiry audit of the signed chain (devices.firmware.repository.expiry; its own schedule `expiry-audit`).
    SIGNING_EXPIRY = "signing_expiry", "Signing keys and metadata"


# The audits RecurringAuditWorkflow runs (schedules `audit-<kind>`); the signing expiry audit has its own workflow.
RECURRING_AUDIT_KINDS = frozenset(AuditKind.values) - {AuditKind.SIGNING_EXPIRY}


class FindingSeverity(models.TextChoices):
    """How urgent a finding is; values live in rows and are never renamed."""

    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"
