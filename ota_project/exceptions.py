"""One error format for the whole API: {"error": {"code", "message", "fields"}}."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ota_project.db import RETRY_AFTER_SECONDS, is_retryable_db_error
from ota_project.errors import DomainError, NotPermitted
from ota_project.signals import REFUSAL_API_AUTH_FAILED, REFUSAL_UNAUTHORISED, refusal


def error_body(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the single error envelope every API error uses."""
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def _first_message(detail: Any) -> str:
    if isinstance(detail, dict):
        for key, value in detail.items():
            return f"{key}: {_first_message(value)}"
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    return str(detail)


RETRY_LATER_MESSAGE = "The database refused the transaction under concurrent load; retry the request shortly."


def _refusal_source(context: dict[str, Any]) -> str:
    """The API operation that refused, e.g. api.ChangeViewSet.approve (names from code, never from input)."""
    view = context.get("view")
    if view is None:
        return "api"
    action = getattr(view, "action", None)
    return f"api.{type(view).__name__}" + (f".{action}" if action else "")


def _announce_refusal(exc: Exception, context: dict[str, Any]) -> None:
    """Tell the apps about a refused person or a bad credential (they record it as a security event)."""
    request = context.get("request")
    if request is None:
        return
    if isinstance(exc, NotPermitted | exceptions.PermissionDenied):
        kind = REFUSAL_UNAUTHORISED
    elif isinstance(exc, exceptions.AuthenticationFailed):
        kind = REFUSAL_API_AUTH_FAILED
    else:
        return
    message = exc.message if isinstance(exc, DomainError) else str(getattr(exc, "detail", exc))
    refusal.send_robust(
        sender=api_exception_handler,
        request=request,
        kind=kind,
        source=_refusal_source(context),
        message=message,
        subject=f"{request.method} {request.path}"[:200],
    )


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Map domain, validation, permission and parse errors to the one error format; announce refusals; retryable
    database errors (serialization failure, deadlock) become 503 with Retry-After, never a 500."""
    if is_retryable_db_error(exc):
        unavailable = Response(
            error_body("retry_later", RETRY_LATER_MESSAGE), status=status.HTTP_503_SERVICE_UNAVAILABLE
        )
        unavailable["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return unavailable
    if isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    _announce_refusal(exc, context)
    if isinstance(exc, DomainError):
        return Response(error_body(exc.code, exc.message, exc.fields), status=exc.status_code)
    if isinstance(exc, RequestDataTooBig):
        return Response(
            error_body("payload_too_large", "The request body is larger than the server accepts."),
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, DjangoValidationError):
        fields = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return Response(error_body("invalid", _first_message(fields), fields), status=400)
    if isinstance(exc, SuspiciousOperation):
        return Response(error_body("bad_request", str(exc) or "Bad request."), status=400)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        response.data = error_body("invalid", _first_message(detail), detail)
    elif isinstance(exc, exceptions.APIException):
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else "error"
        response.data = error_body(str(code), str(exc.detail))
    return response
