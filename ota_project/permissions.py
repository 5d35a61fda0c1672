"""DRF permission classes built on roles: read for any role, writes per view."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from ota_project.roles import has_role, roles_of


class HasAnyRole(BasePermission):
    """Authenticated users with at least one role may read; writes need the view's `write_roles`."""

    message = "You need a role in this system to use the API."

    def has_permission(self, request: Request, view: Any) -> bool:
        if not roles_of(request.user):
            return False
        if request.method in SAFE_METHODS:
            read_roles = getattr(view, "read_roles", None)
            return read_roles is None or has_role(request.user, *read_roles)
        action = getattr(view, "action", None)
        action_roles = getattr(view, "action_roles", {}) or {}
        if action in action_roles:
            return has_role(request.user, *action_roles[action])
        write_roles = getattr(view, "write_roles", ())
        return has_role(request.user, *write_roles)
