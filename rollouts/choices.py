"""Rollout, wave and per-device deployment statuses with their transition tables and named groups.

The rollout's status words are the workflow's (workflows.types.Phase, Django-free): the model choices are built
from them and checked against them at import. Status values live in rows and workflow histories: never renamed.
Moves between statuses go through rollouts.transitions, which checks the tables here.
"""

from django.core.exceptions import ImproperlyConfigured
from django.db import models

from workflows.types import Gate, Phase


class RolloutStatus(models.TextChoices):
    """Rollout status: exactly the values of workflows.types.Phase, with labels for people."""

    SCHEDULED = Phase.SCHEDULED.value, "Scheduled"
    RUNNING = Phase.RUNNING.value, "Running"
    AWAITING_PROMOTION = Phase.AWAITING_PROMOTION.value, "Awaiting a decision"
    PAUSED = Phase.PAUSED.value, "Paused"
    HALTED = Phase.HALTED.value, "Halted"
    COMPLETED = Phase.COMPLETED.value, "Completed"
    ABORTED = Phase.ABORTED.value, "Aborted"
    ROLLING_BACK = Phase.ROLLING_BACK.value, "Rolling back"
    ROLLED_BACK = Phase.ROLLED_BACK.value, "Rolled back"


if {status.value for status in RolloutStatus} != {phase.value for phase in Phase}:
    raise ImproperlyConfigured(
        "rollouts.choices.RolloutStatus and workflows.types.Phase must hold the same status words."
    )


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
    """A wave's status: opened once, judged by its gate, then promoted (the next wave may open), failed (its gate
    or a circuit breaker said so) or stopped (a person aborted or rolled back, or a step failed for good, while the
    wave had not failed)."""

    PENDING = "pending", "Pending"
    WAITING_WINDOW = "waiting_window", "Waiting for a window"
    RUNNING = "running", "Running"
    PASSED = "passed", "Passed"
    FAILED = "failed", "Failed"
    INCONCLUSIVE = "inconclusive", "Inconclusive"
    PROMOTED = "promoted", "Promoted"
    STOPPED = "stopped", "Stopped"


W = WaveStatus
# Every move a wave may make (rollouts.transitions.wave_transition refuses the rest).
WAVE_TRANSITIONS: dict[str, frozenset[str]] = {
    # A halt on a wave that never opened (a step failed for good before its assignment) ends it stopped.
    W.PENDING: frozenset({W.WAITING_WINDOW, W.RUNNING, W.FAILED, W.STOPPED}),
    W.WAITING_WINDOW: frozenset({W.RUNNING, W.FAILED, W.STOPPED}),
    W.RUNNING: frozenset({W.PASSED, W.INCONCLUSIVE, W.FAILED, W.PROMOTED, W.STOPPED}),
    # A gate is open: a person promotes; the health checks go on and can still fail the wave.
    W.PASSED: frozenset({W.FAILED, W.PROMOTED, W.STOPPED}),
    W.INCONCLUSIVE: frozenset({W.FAILED, W.PROMOTED, W.STOPPED}),
    W.FAILED: frozenset(),
    W.PROMOTED: frozenset(),
    W.STOPPED: frozenset(),
}
WAVE_TERMINAL = frozenset({W.FAILED, W.PROMOTED, W.STOPPED})
# Opened to devices and not yet decided for good.
WAVE_ACTIVE = frozenset({W.RUNNING, W.PASSED, W.INCONCLUSIVE})
# The wave status an open gate of the workflow shows (Gate.NONE: the projection leaves the wave alone).
WAVE_STATUS_FOR_GATE: dict[str, str] = {
    Gate.PROMOTION: W.PASSED,
    Gate.INCONCLUSIVE: W.INCONCLUSIVE,
    Gate.HALTED: W.FAILED,
}


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

DEPLOYMENT_TRANSITIONS: dict[str, frozenset[str]] = {
    # Along the progress order, forwards only (a device may skip steps it reports late); back to pending for a
    # retried failure; out to a failure or the deadline's time-out from anywhere; withdrawn (cancelled, skipped)
    # only before installing; succeeded only from confirming (a confirmed, healthy boot).
    **{
        status: frozenset(DEPLOYMENT_PROGRESS[index + 1 :])
        | ({D.PENDING} if status != D.PENDING else set())
        | {D.FAILED, D.ROLLED_BACK, D.TIMED_OUT}
        | ({D.CANCELLED, D.SKIPPED} if status in DEPLOYMENT_UNSTARTED else set())
        | ({D.SUCCEEDED} if status == D.CONFIRMING else set())
        for index, status in enumerate(DEPLOYMENT_PROGRESS)
    },
    # The server gave up before the device confirmed; a later confirmed, healthy boot is still the device's truth.
    D.TIMED_OUT: frozenset({D.SUCCEEDED}),
    D.CANCELLED: frozenset({D.SUCCEEDED}),
    D.SUCCEEDED: frozenset(),
    D.FAILED: frozenset(),
    D.ROLLED_BACK: frozenset(),
    D.SKIPPED: frozenset(),
}
