"""Warnings before trouble: what in a plan, as it stands against today's fleet, will need a person later.

Not refusals (a CAB may knowingly approve a pilot that ends inconclusive), but said on the change form, the change
page and the start page, where the start asks for an explicit acknowledgement of each one (recorded with the
start). The hard conditions (a rollback release that cannot roll back, an overlap with an active rollout) stay
refusals of the start itself (`rollouts.rollout_services.rollout_start_blockers`); an overlap with another approved,
scheduled or implementing change in the same window is a warning here first (`changes_sharing_targets`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from approvals.choices import ChangeStatus
from approvals.models import ChangeRequest
from approvals.plans import RolloutPlan
from approvals.selectors import WavePreview, plan_wave_preview
from devices.scope import TargetScope, scope_devices
from ota_project.web.text import describe_duration

# Changes that will hold vehicles: approved (may start any time in their window), scheduled, implementing.
TARGET_HOLDING_STATUSES = (ChangeStatus.APPROVED, ChangeStatus.SCHEDULED, ChangeStatus.IMPLEMENTING)
# Other changes examined per warning check (by window start); more than this in flight at once is itself news.
OTHERS_EXAMINED = 100
OVERLAP_STATES: dict[str, str] = {
    ChangeStatus.IMPLEMENTING: "is rolling out now",
    ChangeStatus.SCHEDULED: "is scheduled",
}


@dataclass(frozen=True)
class PlanWarning:
    """One warning: a stable code (what the start page's acknowledgement names) and the words a person reads."""

    code: str
    message: str


@dataclass(frozen=True)
class SharedTargets:
    """Another change whose rollout holds (or will hold) some of the same vehicles or hardware models."""

    change: ChangeRequest
    shared_devices: int
    shared_models: tuple[str, ...]
    window_overlaps: bool


def changes_sharing_targets(
    scope: TargetScope,
    *,
    window_start: datetime | None,
    window_end: datetime | None,
    exclude_change_id: int | None,
    statuses: Collection[str] = TARGET_HOLDING_STATUSES,
) -> list[SharedTargets]:
    """Changes in `statuses` (not the excluded one) targeting some of the same devices or hardware models, earliest
    window first, each marked by whether its requested window overlaps [window_start, window_end)."""
    if scope.is_empty:
        return []
    mine = scope_devices(scope)
    my_models = set(mine.order_by().values_list("hardware_model__name", flat=True).distinct())
    if not my_models:
        return []
    others = ChangeRequest.objects.filter(status__in=list(statuses))
    if exclude_change_id is not None:
        others = others.exclude(pk=exclude_change_id)
    found = []
    for other in others.select_related("release").order_by("requested_window_start", "id")[:OTHERS_EXAMINED]:
        theirs = scope_devices(other.scope)
        shared_models = tuple(
            sorted(set(theirs.order_by().values_list("hardware_model__name", flat=True).distinct()) & my_models)
        )
        if not shared_models:
            continue
        shared = theirs.filter(pk__in=mine.values("pk")).count()
        overlaps = (
            window_start is not None
            and window_end is not None
            and other.requested_window_start < window_end
            and window_start < other.requested_window_end
        )
        found.append(SharedTargets(other, shared, shared_models, overlaps))
    return found


def overlap_warnings(
    scope: TargetScope | None,
    *,
    window_start: datetime | None,
    window_end: datetime | None,
    exclude_change_id: int | None,
) -> list[PlanWarning]:
    """Other approved, scheduled or implementing changes in an overlapping window that update the same vehicles or
    the same hardware models (their health gates would judge two releases at once)."""
    if scope is None or window_start is None or window_end is None or window_end <= window_start:
        return []
    warnings = []
    for item in changes_sharing_targets(
        scope, window_start=window_start, window_end=window_end, exclude_change_id=exclude_change_id
    ):
        if not item.window_overlaps:
            continue
        other = item.change
        state = OVERLAP_STATES.get(str(other.status), "is approved")
        models = ", ".join(item.shared_models)
        if item.shared_devices:
            what = (
                f"targets {item.shared_devices} of the same vehicle{'s' if item.shared_devices != 1 else ''} "
                f"({models}): only one rollout may hold a vehicle, so one start will be refused while the other runs"
            )
        else:
            what = f"updates the same hardware model{'s' if len(item.shared_models) > 1 else ''} ({models})"
        warnings.append(
            PlanWarning(
                f"overlap-change-{other.pk}",
                f"CR-{other.pk} ({other.title}) {state} in an overlapping window and {what}.",
            )
        )
    return warnings


def plan_warnings(
    plan: RolloutPlan,
    waves: Sequence[WavePreview],
    *,
    window_start: datetime | None,
    window_end: datetime | None,
    scope: TargetScope | None = None,
    exclude_change_id: int | None = None,
) -> list[PlanWarning]:
    """Waves that cannot reach their sample, a requested window shorter than the waves' soak times alone, and other
    changes holding the same vehicles or models in an overlapping window (with `scope`)."""
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
    warnings += overlap_warnings(
        scope, window_start=window_start, window_end=window_end, exclude_change_id=exclude_change_id
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
        scope=change.scope,
        exclude_change_id=change.pk,
    )
