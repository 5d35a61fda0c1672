"""Small wording helpers shared by views and template tags."""

from __future__ import annotations

from datetime import timedelta


def describe_duration(duration: timedelta | None) -> str:
    """'15 minutes', '1 hour 30 minutes', '45 seconds': a duration in words ('' for None)."""
    if duration is None:
        return ""
    seconds = max(int(duration.total_seconds()), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if hours:
        parts.append(f"{hours} hour{'s' if hours != 1 else ''}")
    if minutes:
        parts.append(f"{minutes} minute{'s' if minutes != 1 else ''}")
    if secs and not hours:
        parts.append(f"{secs} second{'s' if secs != 1 else ''}")
    return " ".join(parts) or "a moment"
