"""The one time-zone rule of the pages: times are shown, and typed, in the viewer's zone; stored and exported in UTC.

The viewer's zone is the browser's: app.js writes its IANA name (Intl.DateTimeFormat().resolvedOptions().timeZone)
into the `ota_tz` cookie, and `ViewerTimeZoneMiddleware` activates it for the pages of that request. A missing or
unknown name means UTC. The API, the device protocol and the image repository never use it: machine interfaces
speak UTC whatever cookie a browser sends. Every shown time carries its zone, and its UTC value on hover.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from urllib.parse import unquote

from django.http import HttpRequest, HttpResponse
from django.utils import timezone

ZONE_COOKIE = "ota_tz"
# Machine interfaces: their times are UTC, never the zone of the browser that happens to call them.
MACHINE_PREFIXES = ("/api/", "/device/", "/repository/")
SHOWN_FORMAT = "%Y-%m-%d %H:%M"
_ZONE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+){0,2}$")


@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    # The system's own link files are no zone a browser names.
    return frozenset(zoneinfo.available_timezones()) - {"localtime", "posixrules", "Factory"}


def zone_named(name: str | None) -> tzinfo | None:
    """The zone of an IANA name from the tz database, or None for anything else (a cookie is user input)."""
    if not name or len(name) > 64 or not _ZONE_NAME.match(name) or name not in _known_zones():
        return None
    return zoneinfo.ZoneInfo(name)


def zone_name(zone: tzinfo) -> str:
    """The IANA name of a zone ("UTC" for the datetime module's UTC)."""
    return str(getattr(zone, "key", None) or ("UTC" if zone is UTC else zone))


def viewer_zone() -> tzinfo:
    """The zone of the person this request is for (UTC outside a page request or without a valid cookie)."""
    return timezone.get_current_timezone()


def as_utc(value: datetime) -> datetime:
    """An aware datetime in UTC (naive ones are taken to be UTC already)."""
    if timezone.is_naive(value):
        value = timezone.make_aware(value, UTC)
    return value.astimezone(UTC)


def in_viewer_zone(value: datetime) -> datetime:
    """The same instant on the viewer's clock."""
    return as_utc(value).astimezone(viewer_zone())


def zone_abbreviation(value: datetime) -> str:
    """The zone's short name at that instant ("CET", "CEST", "UTC"; "+03" where the zone has no letters)."""
    return value.strftime("%Z") or zone_name(viewer_zone())


def shown_time(value: datetime, time_format: str = SHOWN_FORMAT) -> str:
    """The instant on the viewer's clock with its zone: "2026-03-29 03:30 CEST" (24-hour, ISO order)."""
    local = in_viewer_zone(value)
    return f"{local.strftime(time_format)} {zone_abbreviation(local)}"


def utc_time(value: datetime, time_format: str = SHOWN_FORMAT) -> str:
    """The instant in UTC, as the hover text and exports give it: "2026-03-29 01:30 UTC"."""
    return f"{as_utc(value).strftime(time_format)} UTC"


def utc_offset_text(zone: tzinfo, at: datetime | None = None) -> str:
    """The zone's offset from UTC at `at` (now by default): "UTC+01:00"."""
    local = (at or timezone.now()).astimezone(zone)
    offset = local.utcoffset()
    seconds = int(offset.total_seconds()) if offset is not None else 0
    sign = "-" if seconds < 0 else "+"
    hours, minutes = divmod(abs(seconds) // 60, 60)
    return f"UTC{sign}{hours:02d}:{minutes:02d}"


class ViewerTimeZoneMiddleware:
    """Activates the zone named by the `ota_tz` cookie for a page request (UTC without one, and for the API)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        zone = None
        if not request.path.startswith(MACHINE_PREFIXES):
            zone = zone_named(unquote(request.COOKIES.get(ZONE_COOKIE) or ""))
        if zone is None:
            timezone.deactivate()
        else:
            timezone.activate(zone)
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()
