"""Fleet inventory: hardware models, regions, tags and devices."""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q

from devices.choices import DeviceStatus, SigningScheme, UpdateChannel, UsageProfile, VehicleType


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


class Region(models.Model):
    """A geographic region with its time zone (maintenance windows are local to it)."""

    code = models.SlugField(max_length=32, unique=True)
    name = models.CharField(max_length=100)
    time_zone = models.CharField(max_length=64, help_text="IANA time zone, e.g. Europe/Berlin.")

    class Meta:
        ordering = ["code"]

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
    status = models.CharField(max_length=16, choices=DeviceStatus.choices, default=DeviceStatus.ACTIVE)
    status_reason = models.TextField(blank=True, default="")
    certificate_fingerprint = models.CharField(max_length=64, unique=True, null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
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

    class Meta:
        indexes = [
            models.Index(fields=["device", "reported_at"]),
            models.Index(fields=["deployment_id"]),
        ]

    def __str__(self) -> str:
        return f"telemetry {self.device_id} at {self.reported_at}"
