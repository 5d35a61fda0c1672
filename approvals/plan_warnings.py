"""Warnings before trouble: what in a plan, as it stands against today's fleet, will need a person later.

Not refusals (a CAB may knowingly approve a pilot that ends inconclusive), but said on the change form, the change
page and the start page, where the start asks for an explicit acknowledgement of each one (recorded with the
start). The hard conditions (a rollback release that cannot roll back, an overlap with an active rollout) stay
refusals of the start itself (`rollouts.rollout_services.rollout_start_blockers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from approvals.models import ChangeRequest
from approvals.plans import RolloutPlan
from approvals.selectors import WavePreview, plan_wave_preview
from ota_project.web.text import describe_duration


@dataclass(frozen=True)
class PlanWarning:
    """One warning: a stable code (what the start page's acknowledgement names) and the words a person reads."""

    code: str
    message: str


def plan_warnings(
    plan: RolloutPlan, waves: Sequence[WavePreview], *, window_start: datetime | None, window_end: datetime | None
) -> list[PlanWarning]:
    """Waves that cannot reach their sample, and a requested window shorter than the waves' soak times alone."""
    warnings = []
    for preview, wave in zip(waves, plan.waves, strict=True):
        number = f"Wave {preview.index + 1} ({preview.name})"
        if preview.devices == 0:
            warnings.append(PlanWarning(f"wave-empty-{preview.index}", f"{number} gets no devices from today's scope."))
        elif preview.devices < wave.min_sample:
            warnings.append(
                PlanWarning(
                    f"wave-sample-{preview.index}",
                    f"{number} gets {preview.devices} device{'s' if preview.devices != 1 else ''} but needs "
                    f"{wave.min_sample} finished to be judged: it will end inconclusive and wait for a person.",
                )
            )
    if window_start is not None and window_end is not None and window_end > window_start:
        soak = timedelta(seconds=sum(wave.soak_seconds for wave in plan.waves))
        window = window_end - window_start
        if soak > window:
            warnings.append(
                PlanWarning(
                    "window-short",
                    f"The waves' soak times alone take {describe_duration(soak)}; the requested window lasts "
                    f"{describe_duration(window)}, so the rollout cannot finish inside it.",
                )
            )
    return warnings


def change_plan_warnings(change: ChangeRequest) -> list[PlanWarning]:
    """The warnings for a change as it stands (none without a plan that parses)."""
    plan = change.plan
    if plan is None:
        return []
    return plan_warnings(
        plan,
        plan_wave_preview(plan, change.scope),
        window_start=change.requested_window_start,
        window_end=change.requested_window_end,
    )
