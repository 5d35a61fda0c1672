"""Rollout, wave and per-device deployment statuses with their transition tables."""

from django.db import models


class RolloutStatus(models.TextChoices):
    """Rollout status; the same values as workflows.types.Phase. Never renamed (rows and histories hold them)."""

    SCHEDULED = "scheduled", "Scheduled"
    RUNNING = "running", "Running"
    AWAITING_PROMOTION = "awaiting_promotion", "Awaiting a decision"
    PAUSED = "paused", "Paused"
    HALTED = "halted", "Halted"
    COMPLETED = "completed", "Completed"
    ABORTED = "aborted", "Aborted"
    ROLLING_BACK = "rolling_back", "Rolling back"
    ROLLED_BACK = "rolled_back", "Rolled back"


R = RolloutStatus
ROLLOUT_TRANSITIONS: dict[str, frozenset[str]] = {
    R.SCHEDULED: frozenset({R.RUNNING, R.PAUSED, R.ABORTED, R.HALTED}),
    R.RUNNING: frozenset({R.AWAITING_PROMOTION, R.PAUSED, R.HALTED, R.COMPLETED, R.ABORTED, R.ROLLING_BACK}),
    R.AWAITING_PROMOTION: frozenset({R.RUNNING, R.PAUSED, R.HALTED, R.COMPLETED, R.ABORTED, R.ROLLING_BACK}),
    R.PAUSED: frozenset({R.RUNNING, R.AWAITING_PROMOTION, R.HALTED, R.ABORTED, R.ROLLING_BACK}),
    R.HALTED: frozenset({R.ABORTED, R.ROLLING_BACK}),
    R.ROLLING_BACK: frozenset({R.ROLLED_BACK}),
    R.COMPLETED: frozenset(),
    R.ABORTED: frozenset(),
    R.ROLLED_BACK: frozenset(),
}
ROLLOUT_TERMINAL = frozenset({R.COMPLETED, R.ABORTED, R.ROLLED_BACK})
ROLLOUT_ACTIVE = frozenset(set(R.values) - ROLLOUT_TERMINAL)


class WaveStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    WAITING_WINDOW = "waiting_window", "Waiting for a window"
    RUNNING = "running", "Running"
    PASSED = "passed", "Passed"
    FAILED = "failed", "Failed"
    INCONCLUSIVE = "inconclusive", "Inconclusive"
    PROMOTED = "promoted", "Promoted"


class DeploymentKind(models.TextChoices):
    UPDATE = "update", "Update to the new release"
    ROLLBACK = "rollback", "Rollback to the previous release"


class DeploymentStatus(models.TextChoices):
    """Per-device deployment status. A device counts as succeeded only after it booted the new image,
    confirmed it and passed its health window."""

    PENDING = "pending", "Pending"
    OFFERED = "offered", "Offered"
    DOWNLOADING = "downloading", "Downloading"
    DOWNLOADED = "downloaded", "Downloaded"
    INSTALLING = "installing", "Installing"
    REBOOTING = "rebooting", "Rebooting"
    CONFIRMING = "confirming", "Confirming"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    TIMED_OUT = "timed_out", "Timed out"
    ROLLED_BACK = "rolled_back", "Rolled back (device fell back)"
    CANCELLED = "cancelled", "Cancelled"
    SKIPPED = "skipped", "Skipped"


D = DeploymentStatus
# Progress order: a report never moves a deployment backwards along it.
DEPLOYMENT_PROGRESS: tuple[str, ...] = (
    D.PENDING,
    D.OFFERED,
    D.DOWNLOADING,
    D.DOWNLOADED,
    D.INSTALLING,
    D.REBOOTING,
    D.CONFIRMING,
)
# A device holds at most one deployment in these statuses across all rollouts (a partial unique index).
DEPLOYMENT_ACTIVE = frozenset(DEPLOYMENT_PROGRESS)
DEPLOYMENT_TERMINAL = frozenset({D.SUCCEEDED, D.FAILED, D.TIMED_OUT, D.ROLLED_BACK, D.CANCELLED, D.SKIPPED})
# Not yet installing: a halt, abort, breaker or withdrawal still stops these (the device drops a staged image).
DEPLOYMENT_UNSTARTED = frozenset({D.PENDING, D.OFFERED, D.DOWNLOADING, D.DOWNLOADED})
DEPLOYMENT_IN_PROGRESS = frozenset(DEPLOYMENT_PROGRESS) - {D.PENDING}
DEPLOYMENT_FAILURES = frozenset({D.FAILED, D.TIMED_OUT, D.ROLLED_BACK})
# Statuses a device may report (the server sets pending, offered, timed_out, cancelled and skipped itself).
DEPLOYMENT_REPORTABLE = frozenset(
    {D.DOWNLOADING, D.DOWNLOADED, D.INSTALLING, D.REBOOTING, D.CONFIRMING, D.SUCCEEDED, D.FAILED, D.ROLLED_BACK}
)
# Which deadline applies while a deployment sits in a status.
# A pending deployment's deadline covers "offered and downloaded": a device that never checks in times out too.
DEADLINE_PHASE: dict[str, str] = {
    D.PENDING: "download",
    D.OFFERED: "download",
    D.DOWNLOADING: "download",
    D.DOWNLOADED: "install",
    D.INSTALLING: "install",
    D.REBOOTING: "confirm",
    D.CONFIRMING: "confirm",
}
