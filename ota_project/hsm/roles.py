"""The roles a signing key can serve: one key per role, no key for two (the registry, devices.firmware.keys)."""

from __future__ import annotations

from django.db import models


class KeyRole(models.TextChoices):
    """What a key signs; values live in rows and token labels and are never renamed."""

    ROOT = "root", "TUF root (image repository, offline)"
    TARGETS_RELEASE = "targets-release", "TUF targets: release signing"
    TARGETS_SECURITY_OFFICER = "targets-security-officer", "TUF targets: security officer"
    SNAPSHOT = "snapshot", "TUF snapshot (online)"
    TIMESTAMP = "timestamp", "TUF timestamp (online)"
    DIRECTOR_ROOT = "director-root", "Director root (offline)"
    DIRECTOR = "director", "Director targets (online)"
    AUDIT_CHECKPOINT = "audit-checkpoint", "Decision record: records, checkpoints, export manifests"
    # The post-quantum half of a hybrid image repository (ML-DSA-65; every one of them signs besides the classical).
    ROOT_ML_DSA = "root-ml-dsa", "TUF root, ML-DSA-65 (image repository, offline, hybrid mode)"
    TARGETS_ML_DSA = "targets-ml-dsa", "TUF targets, ML-DSA-65 (hybrid mode)"
    SNAPSHOT_ML_DSA = "snapshot-ml-dsa", "TUF snapshot, ML-DSA-65 (online, hybrid mode)"
    TIMESTAMP_ML_DSA = "timestamp-ml-dsa", "TUF timestamp, ML-DSA-65 (online, hybrid mode)"


# Keys that must not be generated on the server's token: made in a key ceremony on an offline token, and only
# their public half registered (`keys import-public`).
OFFLINE_ROLES = frozenset({KeyRole.ROOT, KeyRole.DIRECTOR_ROOT, KeyRole.ROOT_ML_DSA})

# Roles whose keys are ML-DSA-65 (and only these are).
ML_DSA_ROLES = frozenset(
    {KeyRole.ROOT_ML_DSA, KeyRole.TARGETS_ML_DSA, KeyRole.SNAPSHOT_ML_DSA, KeyRole.TIMESTAMP_ML_DSA}
)
