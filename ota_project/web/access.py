"""Who may open a page: sign-in first, then one of the page's roles (the 403 page names the missing role)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import wraps
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import render
from django.views import View
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails

from ota_project.roles import Role, has_role
from ota_project.signals import REFUSAL_UNAUTHORISED, refusal

ViewFunc = Callable[..., HttpResponse]


class HtmxHttpRequest(HttpRequest):
    """The request as views see it: django-htmx's middleware (installed for every request) adds `htmx`."""

    htmx: HtmxDetails


def role_labels(roles: Iterable[str]) -> list[str]:
    """Human labels of role names, in the order given (unknown names are shown as they are)."""
    labels = dict(Role.choices)
    return [str(labels.get(role, role)) for role in roles]


def missing_role_message(roles: Iterable[str]) -> str:
    """The sentence a 403 page shows: 'You need the X role to see this page.' (X or Y when several qualify)."""
    labels = role_labels(roles)
    if not labels:
        return "You need a role in this system to see this page."
    if len(labels) == 1:
        named = labels[0]
    else:
        named = ", ".join(labels[:-1]) + " or " + labels[-1]
    return f"You need the {named} role to see this page."


def _page_source(request: HttpRequest) -> str:
    """The refusing page by its URL name, e.g. web.web-audit:records (names from code, never from input)."""
    match = getattr(request, "resolver_match", None)
    return f"web.{match.view_name}" if match is not None and match.view_name else "web"


def forbidden(request: HttpRequest, roles: Iterable[str], *, message: str | None = None) -> HttpResponse:
    """The 403 page saying which role would open this page; the refusal is announced as security-relevant."""
    roles = list(roles)
    context = {
        "required_message": message or missing_role_message(roles),
        "required_roles": role_labels(roles),
    }
    refusal.send_robust(
        sender=forbidden,
        request=request,
        kind=REFUSAL_UNAUTHORISED,
        source=_page_source(request),
        message=context["required_message"],
        subject=f"{request.method} {request.path}"[:200],
    )
    return render(request, "403.html", context, status=403)


def login_redirect(request: HttpRequest) -> HttpResponse:
    """Send an anonymous visitor to the sign-in page and back here afterwards (a full-page redirect for htmx)."""
    htmx: HtmxDetails | None = getattr(request, "htmx", None)
    if htmx:
        # An htmx fragment request (e.g. a polling dashboard after the session expired) must not swap the
        # sign-in page into a fragment: tell htmx to navigate the whole page instead.
        current = htmx.current_url_abs_path or request.get_full_path()
        return HttpResponseClientRedirect(f"{settings.LOGIN_URL}?{urlencode({'next': current}, safe='/')}")
    return redirect_to_login(request.get_full_path(), settings.LOGIN_URL)


def check_access(request: HttpRequest, roles: tuple[str, ...]) -> HttpResponse | None:
    """None when the request may proceed; otherwise the redirect (anonymous) or the 403 page (missing role)."""
    user = request.user
    if not user.is_authenticated:
        return login_redirect(request)
    if not has_role(user, *roles):
        return forbidden(request, roles)
    return None


def role_required(*roles: str) -> Callable[[ViewFunc], ViewFunc]:
    """View decorator: anonymous -> sign-in page (?next=), signed in without one of `roles` -> 403 naming them."""
    if not roles:
        raise ValueError("role_required needs at least one role")

    def decorator(view: ViewFunc) -> ViewFunc:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            refused = check_access(request, roles)
            if refused is not None:
                return refused
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


if TYPE_CHECKING:
    _ViewBase = View
else:
    _ViewBase = object


class RoleRequiredMixin(_ViewBase):
    """Class-based views: set `required_roles = (Role.X, ...)`; same answers as `role_required`."""

    required_roles: tuple[str, ...] = ()

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not self.required_roles:
            raise ValueError(f"{type(self).__name__} must set required_roles")
        refused = check_access(request, tuple(self.required_roles))
        if refused is not None:
            return refused
        return super().dispatch(request, *args, **kwargs)
