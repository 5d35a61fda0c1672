"""The "needs you now" home (/): what waits for the signed-in person, per role, refreshed live with htmx."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from ota_project.roles import Role, acting_user, roles_of
from ota_project.web.access import login_redirect
from rollouts.web.home_selectors import needs_you_now

# The live fragment asks again this often (seconds): soak countdowns and gates move on their own.
HOME_POLL_SECONDS = 15


def _context(request: HttpRequest) -> dict[str, object]:
    roles = roles_of(request.user)
    return {
        "page": needs_you_now(acting_user(request)) if roles else None,
        "held_roles": [str(label) for value, label in Role.choices if value in roles],
        "poll_seconds": HOME_POLL_SECONDS,
    }


@never_cache
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """Signed out: the sign-in page. Signed in: what needs this person now, one section per role held."""
    if not request.user.is_authenticated:
        return redirect(settings.LOGIN_URL)
    return render(request, "home.html", _context(request))


@never_cache
@require_GET
def home_live(request: HttpRequest) -> HttpResponse:
    """The #home-live fragment the home page polls (a signed-out poll is sent to the sign-in page)."""
    if not request.user.is_authenticated:
        return login_redirect(request)
    return render(request, "home/_live.html", _context(request))
