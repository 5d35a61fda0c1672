"""Error pages: JSON for the API and the device protocol, the web UI's own pages elsewhere."""

import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseServerError, JsonResponse
from django.shortcuts import render

from ota_project.db import RETRY_AFTER_SECONDS, is_retryable_db_error
from ota_project.exceptions import RETRY_LATER_MESSAGE, error_body

logger = logging.getLogger(__name__)

# Served when even the 500 page cannot be rendered (e.g. the database is down and the layout needs the user).
PLAIN_500 = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Error · OTA change control</title></head>'
    '<body><main><h1>Something went wrong</h1><p>The error has been logged. <a href="/">Back to the start page</a>.'
    "</p></main></body></html>"
)
PLAIN_503 = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Busy · OTA change control</title></head>'
    "<body><main><h1>Busy, please retry</h1><p>Nothing was changed. Send the form again in a moment.</p>"
    "</main></body></html>"
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


def retry_later(request: HttpRequest) -> HttpResponse:
    """503 with Retry-After: the database refused the transaction under concurrency and nothing was written."""
    if _is_machine_path(request):
        response: HttpResponse = JsonResponse(error_body("retry_later", RETRY_LATER_MESSAGE), status=503)
    else:
        try:
            response = render(request, "503.html", status=503)
        except Exception:  # like the 500 page: never fail while reporting a failure
            logger.exception("The 503 page could not be rendered")
            response = HttpResponse(PLAIN_503, status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class RetryLaterMiddleware:
    """Answers 503 + Retry-After instead of a 500 when a serialization failure or deadlock escapes a view
    (the web pages and any non-DRF endpoint; DRF views get the same answer from `api_exception_handler`)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if is_retryable_db_error(exception):
            logger.warning("%s %s: retryable database error reached the view layer", request.method, request.path)
            return retry_later(request)
        return None
