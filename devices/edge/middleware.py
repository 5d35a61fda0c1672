"""The ranged-download short path's place in the request: right after SecurityMiddleware, before everything a
device's range does not need (static files, sessions, CSRF, users, messages, htmx, sign-in lockout, URL routing).

Only a GET of an artifact URL is looked at, and only `quick_artifact` answers it; whatever it declines goes down
the ordinary chain to ArtifactView (the full path), unchanged. Staff pages never reach this branch.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase
from django.urls import reverse

from devices.edge.views import quick_artifact

_SHA256 = "0" * 64


@functools.cache
def _artifact_path_re() -> re.Pattern[str]:
    """The artifact route's path, as the URLconf places it (the prefix is read from it, not written again here)."""
    prefix = reverse("device-artifact", kwargs={"sha256": _SHA256}).removesuffix(f"{_SHA256}/")
    return re.compile(rf"\A{re.escape(prefix)}(?P<sha256>[0-9a-f]{{64}})/\Z")


class QuickRangeMiddleware:
    """Answer a device's range on the short path when it can; pass every other request on untouched."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.method == "GET":
            match = _artifact_path_re().match(request.path_info)
            if match is not None:
                answer = quick_artifact(request, match["sha256"])
                if answer is not None:
                    return answer
        return self.get_response(request)
