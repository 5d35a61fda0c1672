"""Sign-in and sign-out pages (the landing page is rollouts.web.home_views: it reads every app)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.views import LoginView, LogoutView
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from ota_project.roles import Role
from ota_project.web.access import role_labels
from ota_project.web.text import describe_duration


@dataclass(frozen=True)
class DemoAccount:
    """A demo user as the sign-in page lists it (never with a password)."""

    username: str
    roles: list[str]


def demo_accounts() -> list[DemoAccount]:
    """Active users who hold a role, with their role labels, for the demo sign-in page."""
    users = (
        get_user_model()
        .objects.filter(is_active=True, groups__name__in=Role.values)
        .distinct()
        .order_by("username")
        .prefetch_related("groups")
    )
    accounts = []
    for user in users:
        held = {group.name for group in user.groups.all()}
        ordered = [role for role in Role.values if role in held]
        accounts.append(DemoAccount(username=user.get_username(), roles=role_labels(ordered)))
    return accounts


def demo_credentials_path() -> str:
    """Where `seed_demo` keeps the demo passwords, relative to the project when it lies inside it."""
    path = Path(settings.DATA_DIR) / "demo-credentials.txt"
    try:
        return str(path.resolve().relative_to(Path(settings.BASE_DIR).resolve()))
    except ValueError:
        return str(path)


class SignInView(LoginView):
    """The /login/ page; django-axes counts failures and answers with the lockout page once locked."""

    template_name = "registration/login.html"
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["demo_mode"] = settings.OTA_DEMO_MODE
        if settings.OTA_DEMO_MODE:
            context["demo_accounts"] = demo_accounts()
            context["demo_credentials_path"] = demo_credentials_path()
        context["failure_limit"] = settings.AXES_FAILURE_LIMIT
        context["cooloff"] = describe_duration(_cooloff())
        return context


def _cooloff() -> timedelta | None:
    """AXES_COOLOFF_TIME as a timedelta (the setting is hours as a number, or a timedelta)."""
    value = settings.AXES_COOLOFF_TIME
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)):
        return timedelta(hours=value)
    return None


class SignOutView(LogoutView):
    """Sign-out by POST only (CSRF-protected); a GET shows a confirmation button instead of signing out."""

    http_method_names = ["get", "post", "options"]

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect(settings.LOGIN_URL)
        return render(request, "registration/logout_confirm.html")

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = super().post(request, *args, **kwargs)
        messages.info(request, "You are signed out.")
        return response
