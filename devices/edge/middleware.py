"""The device edge's short paths and their place in the request: right after SecurityMiddleware, before everything
a device's check-in or range does not need (static files, sessions, CSRF, users, messages, htmx, sign-in lockout,
URL routing, DRF).

Only a POST of the check-in or telemetry URL and a GET of an artifact URL or its vouch (nginx's question, devices.edge.vouch)
are looked at, and only `quick_checkin`, `quick_telemetry` (devices.edge.telemetry_quick), `quick_artifact` and `artifact_vouch` answer them; whatever they decline goes down the ordinary chain to CheckinView, TelemetryView or ArtifactView
(the full paths), unchanged, with their refusals, security events and error envelope. Staff pages never reach
either branch. Before either, every device API request passes the abuse limits (devices.edge.abuse: per credential
and per source address, in memory, no database): over them it is answered 429 here. A deadlock or serialization failure in a short path answers 503 + Retry-After, as
`ota_project.views.RetryLaterMiddleware` does for views.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase
from django.urls import reverse

from devices.edge.abuse import LimitExceeded, limit_refusal, limits_check
from devices.edge.telemetry_quick import quick_telemetry
from devices.edge.views import quick_artifact, quick_checkin
from devices.edge.vouch import artifact_vouch
from ota_project.db import is_retryable_db_error
from ota_project.views import retry_later

_SHA256 = "0" * 64


@functools.cache
def _artifact_path_re() -> re.Pattern[str]:
    """The artifact route's path, as the URLconf places it (the prefix is read from it, not written again here)."""
    prefix = reverse("device-artifact", kwargs={"sha256": _SHA256}).removesuffix(f"{_SHA256}/")
    return re.compile(rf"\A{re.escape(prefix)}(?P<sha256>[0-9a-f]{{64}})/(?P<vouch>vouch/)?\Z")


@functools.cache
def _checkin_path() -> str:
    return reverse("device-checkin")


@functools.cache
def _telemetry_path() -> str:
    return reverse("device-telemetry")


@functools.cache
def _device_api_prefix() -> str:
    """Where the device API is mounted (read from the URLconf: the check-in route's parent)."""
    return _checkin_path().removesuffix("checkin/")


class DeviceShortPathMiddleware:
    """Answer a device's check-in or range on its short path when it can; pass every other request on untouched."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info.startswith(_device_api_prefix()):
            try:
                limits_check(request)
            except LimitExceeded as refused:
                return limit_refusal(refused)
        try:
            answer = self._short(request)
        except Exception as exc:
            if not is_retryable_db_error(exc):
                raise
            return retry_later(request)
        return answer if answer is not None else self.get_response(request)

    @staticmethod
    def _short(request: HttpRequest) -> HttpResponseBase | None:
        if request.method == "POST" and request.path_info == _checkin_path():
            return quick_checkin(request)
        if request.method == "POST" and request.path_info == _telemetry_path():
            return quick_telemetry(request)
        if request.method == "GET":
            match = _artifact_path_re().match(request.path_info)
            if match is not None and match["vouch"]:
                return artifact_vouch(request, match["sha256"])
            if match is not None:
                return quick_artifact(request, match["sha256"])
        return None
