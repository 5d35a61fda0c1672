"""Small widgets and helpers for pages: progress bars, status badges, confirmed actions, navigation, messages."""

from __future__ import annotations

from typing import Any

from django import template
from django.http import HttpRequest
from django.middleware.csrf import get_token

from ota_project.roles import Role, roles_of
from ota_project.web.charts import humanize_status
from ota_project.web.nav import nav_items
from ota_project.web.widgets import badge_data, confirm_action_data, progress_data

register = template.Library()


@register.inclusion_tag("includes/widgets/progress.html")
def progress(done: Any, total: Any, label: str = "Progress") -> dict[str, Any]:
    """Accessible progress bar (role=progressbar with aria values) and the text "done/total"."""
    return {"bar": progress_data(done, total, label)}


@register.inclusion_tag("includes/widgets/status_badge.html")
def status_badge(value: Any, label: str | None = None) -> dict[str, Any]:
    """<span class="badge badge-<value>">Label</span>; the value becomes a safe CSS class."""
    return {"badge": badge_data(value, label)}


@register.filter
def status_label(value: Any) -> str:
    """Filter form of the badge label: {{ change.status|status_label }}."""
    return humanize_status(value)


@register.inclusion_tag("includes/widgets/confirm_action.html", takes_context=True)
def confirm_action(
    context: template.Context,
    url: str,
    label: str,
    reason_required: bool = True,
    danger: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """A POST form behind a confirmation step (<details>), with CSRF and a reason (required unless told).

    Options: field_name="reason", field_label="Reason", prompt="..." (the question shown), confirm_label="...",
    and hidden_<name>=value for extra hidden inputs (e.g. hidden_wave_index=2 posts wave_index=2).
    """
    request: HttpRequest | None = context.get("request")
    token = get_token(request) if request is not None else context.get("csrf_token", "")
    action = confirm_action_data(url, label, reason_required=reason_required, danger=danger, options=options)
    return {"action": action, "csrf_value": token}


@register.simple_tag(takes_context=True)
def main_nav(context: template.Context) -> list[Any]:
    """The navigation items for the current user ({% main_nav as items %})."""
    request = context.get("request")
    return nav_items(request) if request is not None else []


@register.simple_tag(takes_context=True)
def user_roles(context: template.Context) -> list[str]:
    """Labels of the roles the current user holds ({% user_roles as roles %})."""
    request = context.get("request")
    held = roles_of(getattr(request, "user", None))
    return [str(label) for value, label in Role.choices if value in held]


@register.filter
def message_class(tags: str) -> str:
    """Map a django.contrib.messages level tag to an alert class."""
    for level in ("error", "warning", "success", "info"):
        if level in (tags or "").split():
            return f"alert-{level}"
    return "alert-info"
