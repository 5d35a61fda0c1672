"""Error pages: JSON for the API and the device protocol, the web UI's own pages elsewhere."""

import logging

from django.http import HttpRequest, HttpResponse, HttpResponseServerError, JsonResponse
from django.shortcuts import render

from ota_project.exceptions import error_body

logger = logging.getLogger(__name__)

# Served when even the 500 page cannot be rendered (e.g. the database is down and the layout needs the user).
PLAIN_500 = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Error · OTA change control</title></head>'
    '<body><main><h1>Something went wrong</h1><p>The error has been logged. <a href="/">Back to the start page</a>.'
    "</p></main></body></html>"
)


def _is_machine_path(request: HttpRequest) -> bool:
    return request.path.startswith(("/api/", "/device/"))


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """404 in the API's error format for API paths, the site's page elsewhere."""
    if _is_machine_path(request):
        return JsonResponse(error_body("not_found", "No such resource."), status=404)
    return render(request, "404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    """500 in the API's error format for API paths (a bug: the tests assert this never happens), a page elsewhere."""
    if _is_machine_path(request):
        return JsonResponse(error_body("server_error", "Internal error; it has been logged."), status=500)
    try:
        return render(request, "500.html", status=500)
    except Exception:  # the error page must never fail: fall back to markup that needs nothing
        logger.exception("The 500 page could not be rendered")
        return HttpResponseServerError(PLAIN_500)
