"""Metadata size limits for python-tuf's ngclient, per signature scheme (pure: the agent owns this module).

python-tuf refuses to download metadata larger than its UpdaterConfig limits. A hybrid repository's metadata carries
an ML-DSA-65 signature (3,309 bytes, 6,618 hex characters in JSON) beside each classical one, and its root lists
ML-DSA-65 public keys (1,952 bytes, ~2.7 KB as PEM), so the small timestamp limit (16 KiB by default) leaves too
little headroom; the server refuses to publish metadata over these limits (devices.firmware.repository.services),
so a client configured with these limits never refuses metadata the repository publishes:

    UpdaterConfig(**updater_config_kwargs(hardware_model_signing_scheme))

Standard library only (the agent's dependency list is checked by tests/agent/test_agent_dependencies.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

HYBRID_SCHEME = "hybrid-ecdsa-p256+ml-dsa-65"  # devices.choices.SigningScheme.HYBRID_ML_DSA_65


@dataclass(frozen=True)
class TufLimits:
    """Largest metadata file a client downloads, per role, in bytes."""

    root_max_length: int
    timestamp_max_length: int
    snapshot_max_length: int
    targets_max_length: int


# python-tuf's own defaults: enough for classical signatures.
CLASSICAL_LIMITS = TufLimits(
    root_max_length=512_000, timestamp_max_length=16_384, snapshot_max_length=2_000_000, targets_max_length=5_000_000
)
# Hybrid: ML-DSA-65 signatures and keys on every role (a rotated root carries the old and new root signatures).
HYBRID_LIMITS = TufLimits(
    root_max_length=1_048_576, timestamp_max_length=65_536, snapshot_max_length=4_000_000, targets_max_length=10_000_000
)


def tuf_limits(signing_scheme: str) -> TufLimits:
    """The limits for a hardware model's signing scheme (hybrid, or a classical one)."""
    return HYBRID_LIMITS if signing_scheme == HYBRID_SCHEME else CLASSICAL_LIMITS


def limits_for_root_keys(keytypes: Iterable[str]) -> TufLimits:
    """The limits for a repository by what its trusted root names: hybrid as soon as one key is ML-DSA (a hybrid
    repository, or a classical one rotated to hybrid), classical otherwise. The vehicle's agent uses this: it knows
    its repository by its root, not by the server's name for its hardware model's scheme."""
    return HYBRID_LIMITS if any(keytype.startswith("ml-dsa") for keytype in keytypes) else CLASSICAL_LIMITS


def limit_for_file(limits: TufLimits, filename: str) -> int:
    """The most bytes a client takes for one metadata file (`2.root.json`, `timestamp.json`, `7.targets.json`...)."""
    for role, limit in (
        ("root", limits.root_max_length),
        ("timestamp", limits.timestamp_max_length),
        ("snapshot", limits.snapshot_max_length),
    ):
        if filename.endswith(f"{role}.json"):
            return limit
    return limits.targets_max_length


def updater_config_kwargs(signing_scheme: str) -> dict[str, int]:
    """Keyword arguments for python-tuf's `UpdaterConfig`: the size limits for this signing scheme."""
    return asdict(tuf_limits(signing_scheme))
