"""Times on pages: {% when value %} renders a <time> in UTC that app.js rewrites to the viewer's time zone."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from django import template

from ota_project.web.text import describe_duration
from ota_project.web.widgets import moment_data

register = template.Library()


@register.inclusion_tag("includes/widgets/time.html")
def when(value: datetime | date | None) -> dict[str, Any]:
    """<time> in UTC that app.js rewrites to the viewer's time zone (UTC on hover); "—" for None."""
    return {"moment": moment_data(value)}


@register.filter
def duration_words(value: timedelta | int | float | None) -> str:
    """A timedelta, or a number of seconds, in words: '15 minutes', '1 hour 30 minutes' (one wording everywhere)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = timedelta(seconds=value)
    return describe_duration(value) if isinstance(value, timedelta) else ""
