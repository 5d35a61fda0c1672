"""Cohort planning: which devices each wave takes, deterministically, so re-running an assignment is a no-op.

Targets are ordered once per rollout by a keyed hash of their serial (a stable pseudo-random order). Stratified
waves interleave hardware-model/region strata so that every prefix of the order holds each stratum in proportion.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    device_id: int
    serial: str
    stratum: tuple[int, int]  # (hardware model id, region id)
    pilot: bool
    committed_counter: int = 0  # the higher of the inventory's and the device's own reported release counter


def _rank(rollout_id: int, serial: str) -> str:
    return hashlib.sha256(f"{rollout_id}:{serial}".encode()).hexdigest()


def order_targets(rollout_id: int, targets: Iterable[Target], *, stratify: bool) -> list[Target]:
    """Stable pseudo-random order; with stratify, strata are interleaved in proportion to their size."""
    ranked = sorted(targets, key=lambda t: _rank(rollout_id, t.serial))
    if not stratify:
        return ranked
    strata: dict[tuple[int, int], list[Target]] = defaultdict(list)
    for target in ranked:
        strata[target.stratum].append(target)
    keyed = []
    for members in strata.values():
        for position, target in enumerate(members):
            keyed.append(((position + 0.5) / len(members), _rank(rollout_id, target.serial), target))
    return [target for _, _, target in sorted(keyed, key=lambda item: (item[0], item[1]))]


def next_cohort(ordered: Sequence[Target], *, already_assigned: set[int], size: int, pilot_only: bool) -> list[Target]:
    """The next `size` devices in the order that this rollout has not assigned yet (pilots only for a pilot wave)."""
    cohort: list[Target] = []
    for target in ordered:
        if len(cohort) >= size:
            break
        if target.device_id in already_assigned or (pilot_only and not target.pilot):
            continue
        cohort.append(target)
    return cohort
