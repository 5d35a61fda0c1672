"""Maintenance windows (local time per region) and blackout windows (UTC) from an approved plan."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from approvals.plans import MaintenanceWindow, RolloutPlan

LOOKAHEAD_DAYS = 8


def blackout_until(plan: RolloutPlan, now: datetime) -> tuple[datetime, str] | None:
    """End and reason of the blackout covering `now`, if any."""
    for span in plan.blackout_windows:
        start, end = span.starts_at, span.ends_at
        if start <= now < end:
            return end, span.reason or ""
    return None


def _openings(spans: Iterable[MaintenanceWindow], zone: ZoneInfo, now: datetime) -> Iterable[tuple[datetime, datetime]]:
    local_now = now.astimezone(zone)
    for day_offset in range(-1, LOOKAHEAD_DAYS):
        day = (local_now + timedelta(days=day_offset)).date()
        for span in spans:
            if day.weekday() not in span.days:
                continue
            start_h, start_m = map(int, span.start.split(":"))
            end_h, end_m = map(int, span.end.split(":"))
            start = datetime(day.year, day.month, day.day, start_h, start_m, tzinfo=zone)
            end = datetime(day.year, day.month, day.day, end_h, end_m, tzinfo=zone)
            if end <= start:  # the window runs past midnight
                end += timedelta(days=1)
            yield start, end


def region_open(plan: RolloutPlan, region_code: str, time_zone: str, now: datetime) -> bool:
    """True when devices of this region may be updated now (no windows defined: always)."""
    spans = plan.windows_for(region_code)
    if spans is None:
        return True
    return any(start <= now < end for start, end in _openings(spans, ZoneInfo(time_zone), now))


def region_next_opening(plan: RolloutPlan, region_code: str, time_zone: str, now: datetime) -> datetime | None:
    """When this region's next maintenance window opens (now if open; None if it never opens)."""
    if region_open(plan, region_code, time_zone, now):
        return now
    spans = plan.windows_for(region_code) or ()
    starts = [start for start, _ in _openings(spans, ZoneInfo(time_zone), now) if start > now]
    return min(starts) if starts else None
