"""The roles people hold, as Django groups, and helpers to ask about them."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import HttpRequest

from ota_project.errors import NotPermitted


class Role(models.TextChoices):
    """Named roles; the value is the Django group name and never changes."""

    REQUESTER = "requester", "Requester (release engineer)"
    CAB_MEMBER = "cab_member", "CAB member"
    CAB_CHAIR = "cab_chair", "CAB chair (overdue reviews escalate here)"
    EMERGENCY_CAB = "emergency_cab", "Emergency CAB member"
    SECURITY_OFFICER = "security_officer", "Security officer"
    OPERATOR = "operator", "Operator"
    AUDITOR = "auditor", "Auditor (read-only)"


# Roles that read the recurring audits' findings (devices, certificates, overdue reviews): the nav and the page.
FINDING_READER_ROLES = frozenset(
    {Role.OPERATOR, Role.AUDITOR, Role.SECURITY_OFFICER, Role.CAB_MEMBER, Role.CAB_CHAIR, Role.EMERGENCY_CAB}
)


# Roles whose members take part in change decisions.
APPROVER_ROLES = frozenset({Role.CAB_MEMBER, Role.EMERGENCY_CAB, Role.SECURITY_OFFICER})
# Roles that read every (non-draft) change in any status without deciding on it: auditors for the record,
# operators for what they will carry out.
CHANGE_READER_ROLES = frozenset({Role.AUDITOR, Role.OPERATOR})


def roles_of(user: User | AnonymousUser | None) -> frozenset[str]:
    """Return the role names a user holds (empty for anonymous or inactive users)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return frozenset()
    cached = getattr(user, "_ota_roles", None)
    if cached is None:
        valid = set(Role.values)
        cached = frozenset(name for name in user.groups.values_list("name", flat=True) if name in valid)
        user._ota_roles = cached  # type: ignore[attr-defined]  # a cache on this request's user object, not a field
    return cached


def has_role(user: User | AnonymousUser | None, *roles: str) -> bool:
    """True when the user holds at least one of the given roles."""
    return bool(roles_of(user) & set(roles))


def operator_not_author_refusal(
    user: User | AnonymousUser | None, *, author_id: int | None, act: str, act_as_other: str
) -> NotPermitted | None:
    """Separation of duties for carrying a change out: only an operator, and never the change's author.

    The one statement of this rule for scheduling a change, starting its rollout and acting on the rollout;
    `act` completes "You need the operator role to ...", `act_as_other` "... another operator must ...".
    """
    if not has_role(user, Role.OPERATOR):
        return NotPermitted(f"You need the operator role to {act}.")
    if user is not None and user.pk == author_id:
        return NotPermitted(f"You are the author of this change; another operator must {act_as_other}.")
    return None


def acting_user(request: HttpRequest) -> User:
    """The signed-in person behind a request that passed a login or permission check (403 for anyone else)."""
    user = request.user
    if not isinstance(user, User) or not user.is_authenticated:
        raise PermissionDenied("Sign in to do this.")
    return user
