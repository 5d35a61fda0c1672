"""Domain errors raised by services; the API exception handler maps them to HTTP answers."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A business rule refused the request (HTTP 409 unless a subclass says otherwise)."""

    status_code = 409
    code = "conflict"

    def __init__(self, message: str, *, fields: dict[str, Any] | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        if code:
            self.code = code


class InvalidInput(DomainError):
    """The input is well-formed but violates a rule about its content (HTTP 400 with field errors)."""

    status_code = 400
    code = "invalid"


class NotPermitted(DomainError):
    """The actor may not do this (HTTP 403); refusals of this kind are security-relevant."""

    status_code = 403
    code = "not_permitted"


class Conflict(DomainError):
    """The object is not in a state that allows this (HTTP 409)."""

    status_code = 409
    code = "conflict"
