"""Whether a device may take a release now: the one rule used when a wave is assigned and at every offer."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


def release_refusal(
    release: Any, *, supported_model_ids: Collection[int], hardware_model_id: int, committed_counter: int
) -> str:
    """Why the device may not take `release` ("" when it may): its hardware model must be supported now, and the
    release counter (a security epoch) may never fall below the device's committed counter (anti-rollback)."""
    if hardware_model_id not in supported_model_ids:
        return f"release {release.version} does not support the device's hardware model now"
    if release.release_counter < committed_counter:
        return (
            f"anti-rollback: release {release.version} has counter {release.release_counter}, "
            f"below the device's committed counter {committed_counter}"
        )
    return ""
