"""Rollouts, their waves and per-device deployments, health history and spent action tokens.

Releases live in devices.firmware (`firmware.FirmwareRelease`).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from approvals.plans import RolloutPlan, plan_parse
from devices.firmware.models import FirmwareRelease
from rollouts.choices import DEPLOYMENT_ACTIVE, DeploymentKind, DeploymentStatus, RolloutStatus, WaveStatus


class Rollout(models.Model):
    """The execution of one approved change: its waves run by one Temporal workflow (`rollout-<pk>`)."""

    change = models.OneToOneField("approvals.ChangeRequest", on_delete=models.PROTECT, related_name="rollout")
    release = models.ForeignKey(FirmwareRelease, on_delete=models.PROTECT, related_name="rollouts")
    rollback_release = models.ForeignKey(FirmwareRelease, on_delete=models.PROTECT, related_name="+")
    plan = models.JSONField(help_text="The rollout plan exactly as approved.")
    plan_hash = models.CharField(max_length=64)
    status = models.CharField(max_length=24, choices=RolloutStatus.choices, default=RolloutStatus.SCHEDULED)
    current_wave = models.PositiveSmallIntegerField(default=0)
    gate = models.CharField(max_length=24, blank=True, default="", help_text="Why it waits for a person.")
    status_reason = models.TextField(blank=True, default="")
    last_health = models.JSONField(null=True, blank=True)
    started_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    halted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status"])]

    def __str__(self) -> str:
        return f"rollout-{self.pk}"

    @property
    def approved_plan(self) -> RolloutPlan:
        """The plan this rollout runs (as approved), typed; parsed once per loaded JSON value."""
        # Keyed on the JSON object's identity: assigning `plan` or reloading the row parses again.
        cached = self.__dict__.get("_approved_plan")
        if cached is None or cached[0] is not self.plan:
            cached = (self.plan, plan_parse(self.plan))
            self.__dict__["_approved_plan"] = cached
        return cached[1]

    @property
    def workflow_id(self) -> str:
        return f"rollout-{self.pk}"


class Wave(models.Model):
    """One wave of a rollout: its cohort size and verdict."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="waves")
    index = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=64)
    status = models.CharField(max_length=20, choices=WaveStatus.choices, default=WaveStatus.PENDING)
    planned_devices = models.PositiveIntegerField(default=0)
    assigned_devices = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    verdict_at = models.DateTimeField(null=True, blank=True)
    health = models.JSONField(null=True, blank=True)
    # The server-side breaker: set in the same transaction as the device report that took the wave across its
    # failure threshold. From then on the offer, download and report paths refuse the rollout's release, whether
    # or not a workflow worker is alive to run the halt step.
    breaker_tripped_at = models.DateTimeField(null=True, blank=True)
    breaker_reason = models.CharField(max_length=300, blank=True, default="")
    # The health gates' last reading (rollouts.signal_gates): verdict and, per hardware model and indicator, the
    # numbers it was decided on (n, means or rates, p-value, tolerance). None: the plan names no health gates.
    signals = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["rollout", "index"]
        constraints = [models.UniqueConstraint(fields=["rollout", "index"], name="one_wave_per_index")]

    def __str__(self) -> str:
        return f"{self.rollout} wave {self.index} ({self.name})"


class Deployment(models.Model):
    """One device's update (or rollback) within a rollout, tracked to a confirmed, healthy boot."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="deployments")
    wave = models.ForeignKey(Wave, on_delete=models.CASCADE, related_name="deployments")
    device = models.ForeignKey("devices.Device", on_delete=models.PROTECT, related_name="deployments")
    release = models.ForeignKey(FirmwareRelease, on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=12, choices=DeploymentKind.choices, default=DeploymentKind.UPDATE)
    # What the device ran (inventory version and counter) when this row was created; written once by the bulk
    # insert and never changed. Blank/null on rows created before it was recorded: the register then reconstructs it.
    from_version = models.CharField(
        max_length=64, blank=True, default="", help_text="Installed version when the deployment was created."
    )
    from_release_counter = models.PositiveIntegerField(
        null=True, blank=True, help_text="Installed release counter when the deployment was created."
    )
    status = models.CharField(max_length=16, choices=DeploymentStatus.choices, default=DeploymentStatus.PENDING)
    not_before = models.DateTimeField(null=True, blank=True, help_text="Pacing: not offered before this time.")
    deadline_at = models.DateTimeField(null=True, blank=True, help_text="Deadline of the current phase.")
    attempts = models.PositiveSmallIntegerField(default=0)
    last_seq = models.BigIntegerField(default=-1, help_text="Highest device sequence number applied.")
    failure_class = models.CharField(max_length=32, blank=True, default="")
    detail = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The director's signed targets for this device and this deployment (rollouts.director): signed once at the
    # offer and reused by every re-sent offer until less than half of its lifetime is left (no query, no signature).
    director_targets = models.BinaryField(null=True, blank=True, editable=False)
    director_expires = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["rollout", "device", "kind"], name="one_deployment_per_device_and_kind"),
            # A device holds at most one active deployment across all rollouts: the database refuses the second.
            models.UniqueConstraint(
                fields=["device"],
                condition=Q(status__in=sorted(DEPLOYMENT_ACTIVE)),
                name="one_active_deployment_per_device",
            ),
        ]
        indexes = [
            models.Index(fields=["wave", "status"]),
            models.Index(fields=["rollout", "kind", "status"]),
            models.Index(fields=["device", "status"]),
            models.Index(fields=["status", "deadline_at"]),
            # The fleet-wide safety net's window over one release (rollouts.fleet_safety).
            models.Index(fields=["release", "kind", "finished_at"], name="deployment_release_finished"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.device_id} in {self.rollout_id}: {self.status}"


class HealthSample(models.Model):
    """One health evaluation of a wave (or of the rollback saga): counts and failure rate, for charts over time.

    Written by the gate's health step, one row per change in the counts: an evaluation that finds the same counts
    as the previous one only moves that row's `taken_at` (a retried activity or a quiet soak adds no rows).
    Never one row per device.
    """

    class Kind(models.TextChoices):
        WAVE = "wave", "Wave"
        ROLLBACK = "rollback", "Rollback"

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="health_samples")
    wave_index = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.WAVE)
    first_at = models.DateTimeField(help_text="When these counts were first seen.")
    taken_at = models.DateTimeField(help_text="When these counts were last seen.")
    counts = models.JSONField(help_text="total, pending, in_progress, succeeded, failed, timed_out, ...")
    failure_rate = models.FloatField(null=True, blank=True, help_text="failures / finished; None before any finished.")
    evaluations = models.PositiveIntegerField(default=1)

    class Meta:
        ordering = ["rollout", "first_at", "id"]
        indexes = [models.Index(fields=["rollout", "kind", "wave_index", "first_at"])]

    def __str__(self) -> str:
        return f"{self.rollout} {self.kind} {self.wave_index} at {self.taken_at:%Y-%m-%d %H:%M:%S}"


class ActionTokenUse(models.Model):
    """A human-action token that has been spent: each token moves a rollout at most once (replays are refused)."""

    nonce = models.CharField(max_length=32, unique=True)
    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="+")
    action = models.CharField(max_length=16)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.action} on {self.rollout_id} by {self.actor_id}"


class FleetSignalSnapshot(models.Model):
    """A release's cumulative post-update reboot counts (from the wave cohorts' telemetry aggregates) at one check of
    the fleet-wide safety net: the counts over a window are the growth since the snapshot at the window's start."""

    release = models.ForeignKey(FirmwareRelease, on_delete=models.CASCADE, related_name="+")
    taken_at = models.DateTimeField()
    # Update deployments whose post-update sample carried the reboot count, and those whose count was above zero.
    reporting = models.BigIntegerField()
    rebooting = models.BigIntegerField()

    class Meta:
        indexes = [models.Index(fields=["release", "taken_at"], name="fleet_snapshot_release_taken")]
        constraints = [
            models.CheckConstraint(
                condition=Q(reporting__gte=0, rebooting__gte=0, rebooting__lte=models.F("reporting")),
                name="fleet_snapshot_counts",
            )
        ]

    def __str__(self) -> str:
        return f"release {self.release_id} at {self.taken_at:%Y-%m-%d %H:%M:%S}: {self.rebooting}/{self.reporting}"
