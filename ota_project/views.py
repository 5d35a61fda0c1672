"""The landing page: what this is and where to go."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from ota_project.exceptions import error_body


def home(request: HttpRequest) -> HttpResponse:
    """Landing page with links to the API, its docs and the admin."""
    return render(request, "home.html")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """404 in the API's error format for API paths, a plain page elsewhere."""
    if request.path.startswith(("/api/", "/device/")):
        return JsonResponse(error_body("not_found", "No such resource."), status=404)
    return render(request, "404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    """500 in the API's error format for API paths (a bug: the tests assert this never happens)."""
    if request.path.startswith(("/api/", "/device/")):
        return JsonResponse(error_body("server_error", "Internal error; it has been logged."), status=500)
    return render(request, "500.html", status=500)
