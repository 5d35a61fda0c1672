"""Signals the shared layer sends and the apps answer, so that the core imports no app."""

from __future__ import annotations

from django.dispatch import Signal

# A request that could be an attack was refused by the shared layer (API exception handler, 403 page, token issue).
# Keyword arguments: request, kind (a value of approvals.audit.choices.SecurityEventKind), source, message, subject.
# Sent with send_robust: a receiver's failure never changes the refusal's answer.
refusal = Signal()

REFUSAL_UNAUTHORISED = "action_unauthorised"
REFUSAL_API_AUTH_FAILED = "api_auth_failed"

# A web worker is exiting (gunicorn's worker_exit hook; ota_project/gunicorn_conf.py): apps write back what they
# buffered in the process's memory. No arguments. Sent with send_robust: one receiver's failure spares the others.
worker_exiting = Signal()
