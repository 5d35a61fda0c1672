"""Signal receivers that turn the shared layer's refusals and django-axes lockouts into security events."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.http import HttpRequest

from approvals.audit.choices import SecurityEventKind
from approvals.audit.security import security_event, security_event_recorded_in_request


def client_address(request: Any) -> str:
    """The peer address of the request as the server saw it (never a client-set header)."""
    return str(getattr(request, "META", {}).get("REMOTE_ADDR", "") or "")


def request_actor(request: Any) -> User | None:
    """The signed-in person making the request, if any (devices and anonymous callers are no actor)."""
    user = getattr(request, "user", None)
    return user if isinstance(user, User) and user.is_authenticated else None


def on_refusal(
    sender: Any, *, request: HttpRequest, kind: str, source: str, message: str, subject: str = "", **kwargs: Any
) -> None:
    """Record a refusal of the shared layer, unless the refusing code already recorded this request's refusal."""
    if security_event_recorded_in_request():
        return
    security_event(
        kind=kind,
        source=source,
        message=message,
        actor=request_actor(request),
        address=client_address(request),
        subject=subject,
    )


def on_user_locked_out(
    sender: Any, *, request: Any = None, username: str = "", ip_address: str = "", **kwargs: Any
) -> None:
    """Record a django-axes lockout (the locking attempt and every attempt while locked)."""
    security_event(
        kind=SecurityEventKind.LOGIN_LOCKED_OUT,
        source="auth.login",
        message="Too many failed sign-ins: the user name is locked out from this address.",
        address=ip_address or (client_address(request) if request is not None else ""),
        subject=f"username:{username}" if username else "",
    )
