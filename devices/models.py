"""Fleet inventory: hardware models, regions, tags and devices."""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q

from devices.choices import CertificateStatus, DeviceStatus, SigningScheme, UpdateChannel, UsageProfile, VehicleType


class HardwareModel(models.Model):
    """A telematics unit hardware model: the unit of firmware compatibility and anti-rollback."""

    name = models.SlugField(max_length=64, unique=True, help_text="Hardware id, e.g. tcu-4g-r2.")
    family = models.CharField(max_length=64)
    revision = models.CharField(max_length=32)
    update_channel = models.CharField(max_length=16, choices=UpdateChannel.choices, default=UpdateChannel.STABLE)
    signing_scheme = models.CharField(max_length=40, choices=SigningScheme.choices, default=SigningScheme.ECDSA_P256)
    validation_checks = models.JSONField(
        default=list, help_text="Post-update checks that apply (ValidationCheck values)."
    )
    partition_layout = models.JSONField(
        default=dict, help_text='e.g. {"scheme": "ab", "slots": ["a", "b"], "slot_size_bytes": 268435456}'
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


MIN_POLL_SECONDS = 10
MAX_POLL_SECONDS = 86_400


class Region(models.Model):
    """A geographic region with its time zone (maintenance windows are local to it) and its device load budget."""

    code = models.SlugField(max_length=32, unique=True)
    name = models.CharField(max_length=100)
    time_zone = models.CharField(max_length=64, help_text="IANA time zone, e.g. Europe/Berlin.")
    # Load shaping: empty means the global default from settings; 0 (for the budgets) means no limit.
    poll_interval_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text=f"Seconds between check-ins ({MIN_POLL_SECONDS}-{MAX_POLL_SECONDS}); empty: the global default.",
    )
    max_checkins_per_window = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Check-ins accepted per budget window (OTA_DEVICE_BUDGET_WINDOW_SECONDS); 0: no limit; "
        "empty: the global default. Devices over it get 429 with Retry-After.",
    )
    max_concurrent_downloads = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Image downloads streaming at once; 0: no limit; empty: the global default. "
        "Devices over it get 429 with Retry-After.",
    )

    class Meta:
        ordering = ["code"]
        constraints = [
            models.CheckConstraint(
                condition=Q(poll_interval_seconds__isnull=True)
                | Q(poll_interval_seconds__gte=MIN_POLL_SECONDS, poll_interval_seconds__lte=MAX_POLL_SECONDS),
                name="region_poll_interval_range",
            ),
        ]

    def __str__(self) -> str:
        return self.code


class Tag(models.Model):
    """A label on devices (for example `pilot`), used in target scopes and cohorts."""

    name = models.SlugField(max_length=64, unique=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Device(models.Model):
    """One telematics unit in a vehicle, with what the inventory expects it to run and what it last reported."""

    serial = models.CharField(max_length=64, unique=True)
    vin = models.CharField(max_length=17, unique=True, null=True, blank=True)
    hardware_model = models.ForeignKey(HardwareModel, on_delete=models.PROTECT, related_name="devices")
    region = models.ForeignKey(Region, on_delete=models.PROTECT, related_name="devices")
    vehicle_type = models.CharField(max_length=32, choices=VehicleType.choices)
    usage_profile = models.CharField(max_length=32, choices=UsageProfile.choices, default=UsageProfile.MIXED)
    tags = models.ManyToManyField(Tag, blank=True, related_name="devices")
    network_capabilities = models.JSONField(default=list)
    # What the inventory expects (set at provisioning/import and by confirmed updates).
    installed_version = models.CharField(max_length=64)
    installed_release_counter = models.PositiveIntegerField(default=0)
    # What the device itself last reported; differences from the above are drift.
    reported_version = models.CharField(max_length=64, blank=True, default="")
    reported_release_counter = models.PositiveIntegerField(null=True, blank=True)
    reported_at = models.DateTimeField(null=True, blank=True)
    # The rest of the last check-in (data minimisation: what gates, KPIs and the UI need, nothing else).
    reported_active_slot = models.CharField(max_length=8, blank=True, default="")
    reported_boot_count = models.PositiveIntegerField(null=True, blank=True)
    reported_health = models.JSONField(
        default=dict, blank=True, help_text='Named health checks as booleans, e.g. {"modem_attach": true}.'
    )
    status = models.CharField(max_length=16, choices=DeviceStatus.choices, default=DeviceStatus.ACTIVE)
    status_reason = models.TextField(blank=True, default="")
    # Failed installs since the last success or release from quarantine (the plan's quarantine_after_failures).
    install_failures = models.PositiveIntegerField(default=0)
    certificate_fingerprint = models.CharField(max_length=64, unique=True, null=True, blank=True)
    # The last accepted check-in (what "offline" is measured against).
    last_seen_at = models.DateTimeField(null=True, blank=True)
    # Attestation (devices.attestation): the issue time (µs) of the last nonce consumed, so each nonce is used once.
    attested_nonce_us = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["serial"]
        indexes = [
            models.Index(fields=["hardware_model", "status"]),
            models.Index(fields=["region", "status"]),
            models.Index(fields=["installed_version"]),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=DeviceStatus.values), name="device_status_valid"),
            # Taken out of service for cause: the reason is what the person who releases it reads.
            models.CheckConstraint(
                condition=~Q(status__in=[DeviceStatus.QUARANTINED, DeviceStatus.REVOKED]) | ~Q(status_reason=""),
                name="device_out_of_service_has_reason",
            ),
        ]

    def __str__(self) -> str:
        return self.serial

    @property
    def has_drift(self) -> bool:
        """True when the device reported something other than what the inventory expects."""
        if not self.reported_at:
            return False
        return (self.reported_version, self.reported_release_counter) != (
            self.installed_version,
            self.installed_release_counter,
        )


DRIFT_Q = Q(reported_at__isnull=False) & (
    ~Q(reported_version=F("installed_version")) | ~Q(reported_release_counter=F("installed_release_counter"))
)


class DeviceCredential(models.Model):
    """A device's provisioning credential until mTLS lands: only the sha256 of the secret is stored."""

    device = models.OneToOneField(Device, on_delete=models.CASCADE, related_name="credential")
    secret_hash = models.CharField(max_length=64, help_text="sha256 hex of the secret; the secret is never stored.")
    created_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"credential of {self.device_id}"


class DeviceCertificate(models.Model):
    """A client certificate issued to a device by the project's issuing CA; at most one active per device.

    The device's identity on the device API is the sha256 fingerprint of the DER certificate nginx verified:
    `Device.certificate_fingerprint` holds the active one (the check-in's one statement reads only that column),
    this row keeps every certificate ever issued, for renewal, revocation and the audit."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="certificates")
    fingerprint = models.CharField(max_length=64, unique=True, help_text="sha256 hex of the DER certificate.")
    serial_number = models.CharField(max_length=40, unique=True, help_text="The certificate's serial, hex.")
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    issued_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=CertificateStatus.choices, default=CertificateStatus.ACTIVE)
    ended_at = models.DateTimeField(null=True, blank=True, help_text="When it was superseded or revoked.")
    reason = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["device_id", "-issued_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["device"], condition=Q(status="active"), name="device_certificate_one_active"
            ),
            models.CheckConstraint(condition=Q(status__in=CertificateStatus.values), name="device_certificate_status"),
            models.CheckConstraint(
                condition=Q(status="active", ended_at__isnull=True) | (~Q(status="active") & Q(ended_at__isnull=False)),
                name="device_certificate_ended_iff_not_active",
            ),
        ]

    def __str__(self) -> str:
        return f"certificate {self.serial_number} of {self.device_id}"


class TelemetrySample(models.Model):
    """One KPI sample a device sent; only what health gates and KPIs need (data minimisation: no positions)."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="telemetry")
    # Plain integer, not a foreign key: the inventory app depends on no other app.
    deployment_id = models.BigIntegerField(null=True, blank=True)
    reported_at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)
    install_duration_s = models.PositiveIntegerField(null=True, blank=True)
    boot_time_s = models.PositiveIntegerField(null=True, blank=True)
    unexpected_reboots = models.PositiveIntegerField(null=True, blank=True)
    gps_fix_s = models.PositiveIntegerField(null=True, blank=True)
    sensor_calibrated = models.BooleanField(null=True, blank=True)
    link_kbps = models.PositiveIntegerField(null=True, blank=True)
    # Attribution, fixed when the batch is accepted (devices.telemetry_aggregates): the release the sample measures
    # (its deployment's release, else the device's installed version) and the opaque cohort its deployment belongs
    # to (the rollout's wave, named by the caller; "" for none).
    # A database default too: batches accepted before the attribution are copied without these columns.
    release_version = models.CharField(max_length=64, blank=True, default="", db_default="")
    cohort = models.CharField(max_length=64, blank=True, default="", db_default="")

    class Meta:
        indexes = [
            models.Index(fields=["device", "reported_at"]),
            models.Index(fields=["deployment_id"]),
            # One batch's rows (one device, one receipt time): what the aggregates' fold reads back, whatever the
            # device's history.
            models.Index(fields=["device", "received_at"], name="telemetry_sample_batch"),
        ]

    def __str__(self) -> str:
        return f"telemetry {self.device_id} at {self.reported_at}"


class TelemetryBatch(models.Model):
    """One telemetry batch as a device sent it: (device, batch_id) is accepted once; samples kept until processed."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="telemetry_batches")
    batch_id = models.CharField(max_length=80, help_text="The device's id for the batch (or sha256 of its samples).")
    received_at = models.DateTimeField()
    sample_count = models.PositiveIntegerField()
    # The validated samples until the Celery task folds them into TelemetrySample rows; then cleared. Since the COPY
    # intake: `rows`, the samples already as PostgreSQL COPY text (one line per kept sample, COPY_COLUMNS order), so
    # the task hands them to COPY untouched. `samples` (JSON) only in batches accepted before it.
    samples = models.JSONField(null=True, blank=True)
    rows = models.TextField(blank=True, default="", editable=False)
    processed_at = models.DateTimeField(null=True, blank=True)
    stored_count = models.PositiveIntegerField(null=True, blank=True, help_text="Samples kept (empty ones dropped).")
    # When an unprocessed batch counts as stale (its task lost) and is enqueued again; later each time it is.
    requeue_after = models.DateTimeField(null=True, blank=True)
    requeue_count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["device", "batch_id"], name="telemetry_batch_once_per_device"),
        ]
        indexes = [
            models.Index(fields=["processed_at", "received_at"]),
            models.Index(fields=["processed_at", "requeue_after"], name="telemetry_batch_requeue"),
        ]

    def __str__(self) -> str:
        return f"telemetry batch {self.batch_id} of {self.device_id}"


class _TelemetryAggregate(models.Model):
    """Running sums of one indicator (count, sum, sum of squares: enough for a mean, a variance and a proportion),
    added to in the transaction that stores the samples and kept when the raw samples are purged."""

    indicator = models.CharField(max_length=40)
    n = models.BigIntegerField(default=0)
    # Exact integer sums (every indicator value is an integer), so no rounding ever drifts the aggregates.
    total = models.DecimalField(max_digits=38, decimal_places=0, default=0)
    total_sq = models.DecimalField(max_digits=38, decimal_places=0, default=0)
    updated_at = models.DateTimeField()

    class Meta:
        abstract = True


class DeviceTelemetryAggregate(_TelemetryAggregate):
    """One device's indicator on one release."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="telemetry_aggregates")
    release_version = models.CharField(max_length=64)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["device", "release_version", "indicator"], name="device_telemetry_aggregate_key"
            ),
            models.CheckConstraint(condition=Q(n__gte=0), name="device_telemetry_aggregate_n"),
        ]

    def __str__(self) -> str:
        return f"{self.indicator} of {self.device_id} on {self.release_version}"


class ReleaseTelemetryAggregate(_TelemetryAggregate):
    """An indicator over every device of a hardware model on one release: the baseline a later release is judged
    against."""

    release_version = models.CharField(max_length=64)
    hardware_model = models.ForeignKey(HardwareModel, on_delete=models.CASCADE, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["release_version", "hardware_model", "indicator"], name="release_telemetry_aggregate_key"
            ),
            models.CheckConstraint(condition=Q(n__gte=0), name="release_telemetry_aggregate_n"),
        ]

    def __str__(self) -> str:
        return f"{self.indicator} of {self.hardware_model_id} on {self.release_version}"


class CohortTelemetryAggregate(_TelemetryAggregate):
    """An indicator over the devices of one cohort (a rollout's wave) and hardware model: the candidate side of a
    health gate, one row per (cohort, model, indicator) whatever the wave's size."""

    cohort = models.CharField(max_length=64)
    hardware_model = models.ForeignKey(HardwareModel, on_delete=models.CASCADE, related_name="+")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["cohort", "hardware_model", "indicator"], name="cohort_telemetry_aggregate_key"
            ),
            models.CheckConstraint(condition=~Q(cohort=""), name="cohort_telemetry_aggregate_named"),
            models.CheckConstraint(condition=Q(n__gte=0), name="cohort_telemetry_aggregate_n"),
        ]

    def __str__(self) -> str:
        return f"{self.indicator} of {self.cohort} ({self.hardware_model_id})"


class CheckinEpoch(models.Model):
    """A counter the database bumps (triggers) whenever a cached "nothing to do" check-in answer may have gone stale.

    `work`: a deployment became an offer candidate or in flight. `identity`: a credential or certificate changed
    (revoked, superseded, deleted), or a device's status, region or serial changed, or a region's poll interval or
    check-in budget did. Never written by application code; devices.edge.quiet reads them (a missing row counts 0)."""

    name = models.CharField(max_length=16, primary_key=True)
    value = models.BigIntegerField(default=0)
    # The transaction and statement that bumped it last: a statement changing many rows bumps it once.
    bumped_by = models.CharField(max_length=64, blank=True, default="")

    def __str__(self) -> str:
        return f"{self.name}={self.value}"


class LimitedKey(models.Model):
    """A credential or source address the device API's abuse limits refused in one swarm window, once for the whole
    server (devices.edge.abuse): the swarm threshold counts these rows, whichever web process refused each key."""

    window = models.DateTimeField(
        help_text="Start of the swarm window (OTA_DEVICE_SWARM_WINDOW_SECONDS, epoch-aligned)."
    )
    key = models.CharField(max_length=200, help_text="credential:<fingerprint or serial> or address:<ip>.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["window", "key"], name="one_limited_key_per_swarm_window")]

    def __str__(self) -> str:
        return f"{self.key} in {self.window:%Y-%m-%d %H:%M:%S}"


class SwarmWindow(models.Model):
    """A swarm window that crossed OTA_DEVICE_SWARM_THRESHOLD: its unique row lets exactly one web process raise the
    window's `device_swarm` security event and alert (devices.edge.abuse)."""

    window = models.DateTimeField(unique=True, help_text="Start of the swarm window.")
    keys = models.PositiveIntegerField(help_text="Distinct keys over their limits when the swarm was declared.")
    declared_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"swarm of {self.keys} keys in {self.window:%Y-%m-%d %H:%M:%S}"
