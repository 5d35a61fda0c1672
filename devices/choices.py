"""Status and category choices for the fleet inventory."""

from django.db import models


class DeviceStatus(models.TextChoices):
    """Inventory status of a device; values live in rows and must never be renamed."""

    ACTIVE = "active", "Active"
    QUARANTINED = "quarantined", "Quarantined"
    REVOKED = "revoked", "Revoked"
    DECOMMISSIONED = "decommissioned", "Decommissioned"


DEVICE_TRANSITIONS: dict[str, frozenset[str]] = {
    DeviceStatus.ACTIVE: frozenset({DeviceStatus.QUARANTINED, DeviceStatus.REVOKED, DeviceStatus.DECOMMISSIONED}),
    DeviceStatus.QUARANTINED: frozenset({DeviceStatus.ACTIVE, DeviceStatus.REVOKED, DeviceStatus.DECOMMISSIONED}),
    DeviceStatus.REVOKED: frozenset({DeviceStatus.DECOMMISSIONED}),
    DeviceStatus.DECOMMISSIONED: frozenset(),
}
DEVICE_TERMINAL = frozenset({DeviceStatus.DECOMMISSIONED})
# Only these devices can be targeted by a change.
DEVICE_TARGETABLE = frozenset({DeviceStatus.ACTIVE})


class VehicleType(models.TextChoices):
    PASSENGER_CAR = "passenger_car", "Passenger car"
    LIGHT_COMMERCIAL = "light_commercial", "Light commercial vehicle"
    HEAVY_TRUCK = "heavy_truck", "Heavy truck"
    BUS = "bus", "Bus"
    TRAILER = "trailer", "Trailer"
    MACHINERY = "machinery", "Off-road machinery"


class UsageProfile(models.TextChoices):
    URBAN = "urban", "Urban"
    HIGHWAY = "highway", "Highway / long haul"
    MIXED = "mixed", "Mixed"
    OFF_ROAD = "off_road", "Off-road"
    DEPOT = "depot", "Mostly parked at depot"


class UpdateChannel(models.TextChoices):
    STABLE = "stable", "Stable"
    BETA = "beta", "Beta"
    CANARY = "canary", "Canary"


class SigningScheme(models.TextChoices):
    ECDSA_P256 = "ecdsa-p256", "ECDSA P-256"
    ED25519 = "ed25519", "Ed25519"
    HYBRID_ML_DSA_65 = "hybrid-ecdsa-p256+ml-dsa-65", "Hybrid ECDSA P-256 + ML-DSA-65"


class ValidationCheck(models.TextChoices):
    """Post-update checks a device must pass in its health window."""

    BOOT_OK = "boot_ok", "Boots the new image"
    MODEM_ATTACH = "modem_attach", "Cellular modem attaches"
    GNSS_FIX = "gnss_fix", "GNSS position fix"
    CAN_BUS = "can_bus", "CAN bus traffic seen"
    SENSOR_CALIBRATION = "sensor_calibration", "Sensors calibrated"
    BACKEND_REACHABLE = "backend_reachable", "Backend reachable"


class NetworkCapability(models.TextChoices):
    LTE = "lte", "LTE"
    NR_5G = "5g", "5G NR"
    NB_IOT = "nb_iot", "NB-IoT / LTE-M"
    SATELLITE = "satellite", "Satellite"
    WIFI = "wifi", "Wi-Fi (depot)"


# Devices with this tag are the ones `simulate_fleet` runs first (the `make run` demo's live fleet).
SIMULATED_TAG = "simulated"


class CertificateStatus(models.TextChoices):
    """Life of a device certificate; values live in rows and must never be renamed."""

    ACTIVE = "active", "Active"
    SUPERSEDED = "superseded", "Superseded by a renewal"
    REVOKED = "revoked", "Revoked"
