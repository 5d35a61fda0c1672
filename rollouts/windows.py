"""Maintenance windows (local time per region) and blackout windows (UTC) from an approved plan."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

LOOKAHEAD_DAYS = 8


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def blackout_until(plan: dict[str, Any], now: datetime) -> tuple[datetime, str] | None:
    """End and reason of the blackout covering `now`, if any."""
    for span in plan.get("blackout_windows", []):
        start, end = _parse(span["start"]), _parse(span["end"])
        if start <= now < end:
            return end, span.get("reason", "")
    return None


def _spans(plan: dict[str, Any], region_code: str) -> list[dict[str, Any]] | None:
    windows = plan.get("maintenance_windows", {})
    if not windows:
        return None
    return windows.get(region_code, windows.get("*", []))


def _openings(spans: list[dict[str, Any]], zone: ZoneInfo, now: datetime) -> Iterable[tuple[datetime, datetime]]:
    local_now = now.astimezone(zone)
    for day_offset in range(-1, LOOKAHEAD_DAYS):
        day = (local_now + timedelta(days=day_offset)).date()
        for span in spans:
            if day.weekday() not in span["days"]:
                continue
            start_h, start_m = map(int, span["start"].split(":"))
            end_h, end_m = map(int, span["end"].split(":"))
            start = datetime(day.year, day.month, day.day, start_h, start_m, tzinfo=zone)
            end = datetime(day.year, day.month, day.day, end_h, end_m, tzinfo=zone)
            if end <= start:  # the window runs past midnight
                end += timedelta(days=1)
            yield start, end


def region_open(plan: dict[str, Any], region_code: str, time_zone: str, now: datetime) -> bool:
    """True when devices of this region may be updated now (no windows defined: always)."""
    spans = _spans(plan, region_code)
    if spans is None:
        return True
    return any(start <= now < end for start, end in _openings(spans, ZoneInfo(time_zone), now))


def region_next_opening(plan: dict[str, Any], region_code: str, time_zone: str, now: datetime) -> datetime | None:
    """When this region's next maintenance window opens (now if open; None if it never opens)."""
    if region_open(plan, region_code, time_zone, now):
        return now
    spans = _spans(plan, region_code) or []
    starts = [start for start, _ in _openings(spans, ZoneInfo(time_zone), now) if start > now]
    return min(starts) if starts else None
