"""The landing page: what this is and where to go."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def home(request: HttpRequest) -> HttpResponse:
    """Landing page with links to the API, its docs and the admin."""
    return render(request, "home.html")
