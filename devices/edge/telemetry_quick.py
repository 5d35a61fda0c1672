"""The short path of a telemetry batch: ahead of the middleware chain and DRF (run by
devices.edge.middleware.DeviceShortPathMiddleware after the abuse limits, as the short check-in is).

Two statements for an accepted batch: the caller's identity (one prepared statement compiled from THE rule of who may
talk to the device API, `identity.accepted_certificate_devices` or `identity.accepted_devices`) and the accept's one
prepared INSERT (devices.telemetry.telemetry_batch_accept); a third only when samples name deployments (the same
`services.telemetry_deployments` read the full view makes). The body is validated by the full view's own serializer
(`serializers.telemetry_input_valid`), and the answer is the full view's (`telemetry_answer`).

Identity is never taken from the quiet check-in's memory (devices.edge.quiet) here: an accepted batch is attributed to
the release the device runs (`Device.installed_version`) when a sample names no deployment, and that memory does not
follow a device's version, only its credentials. So revocation reaches telemetry at once (0 s), as before.

Whatever is off returns None before anything is written, and the full path answers it with its refusals, security
events and error envelope: no or a malformed credential, a body without a length or too large, malformed JSON or an
invalid batch (400 naming each field), a credential the statement does not accept (401 and its security event), a
deployment the device does not have (400 and, for another device's, a security event).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from rest_framework.renderers import JSONRenderer

from devices.credentials import secret_hash
from devices.edge.identity import (
    MalformedCredential,
    PresentedIdentity,
    accepted_certificate_devices,
    accepted_devices,
    presented_identity,
)
from devices.edge.serializers import TelemetryOutputSerializer, telemetry_input_valid
from devices.edge.services import telemetry_deployments
from devices.models import Device
from devices.telemetry import BatchAcceptance, telemetry_batch_accept
from ota_project.compiled_queries import prepared_cursor
from ota_project.errors import InvalidInput
from ota_project.parsers import JSONBodyError, json_loads_strict

TELEMETRY_BODY_BYTES = 256 * 1024
# Stand-ins the identity statement is compiled with, once per kind of credential; each marks where a value goes.
_STAND_IN_FINGERPRINT = "7e1a" * 16
_STAND_IN_SERIAL = "stand-in-serial-7e1a"
_STAND_IN_SECRET = "stand-in-secret-7e1a"


@dataclass(frozen=True)
class _Statement:
    sql: str
    params: tuple[Any, ...]
    slots: tuple[tuple[int, str], ...]  # (position among the params, name of the presented value)

    def bound(self, values: dict[str, str]) -> tuple[Any, ...]:
        params = list(self.params)
        for position, name in self.slots:
            params[position] = values[name]
        return tuple(params)


def _caller(accepted: QuerySet[Device]) -> QuerySet[Device]:
    return accepted.values_list("pk", "serial", "installed_version")  # type: ignore[return-value]


@functools.cache
def _statement(by_certificate: bool) -> _Statement:
    """The identity query compiled by Django once per kind of credential, with where each presented value goes."""
    if by_certificate:
        queryset = _caller(accepted_certificate_devices(_STAND_IN_FINGERPRINT))
        markers = {"fingerprint": _STAND_IN_FINGERPRINT}
    else:
        queryset = _caller(accepted_devices(_STAND_IN_SERIAL, _STAND_IN_SECRET))
        markers = {"serial": _STAND_IN_SERIAL, "secret": secret_hash(_STAND_IN_SECRET)}
    sql, params = queryset.query.sql_with_params()
    slots = tuple((i, name) for i, param in enumerate(params) for name, m in markers.items() if param == m)
    if sorted(name for _, name in slots) != sorted(markers):
        raise RuntimeError("the telemetry identity statement does not place each presented value exactly once")
    return _Statement(sql, tuple(params), slots)


def telemetry_caller(presented: PresentedIdentity) -> Device | None:
    """The accepted device presenting this identity (id, serial and installed version loaded), or None: one prepared
    statement, never a security event (the full path records the refusal)."""
    statement = _statement(presented.by_certificate)
    values = {"fingerprint": presented.fingerprint, "serial": presented.serial}
    if not presented.by_certificate:
        values["secret"] = secret_hash(presented.secret)
    with prepared_cursor() as cursor:
        cursor.execute(statement.sql, statement.bound(values))
        row = cursor.fetchone()
    if row is None:
        return None
    device_id, serial, installed_version = row
    # As loaded from the database (telemetry_batch_accept reads these fields; nothing saves this instance).
    return Device.from_db(
        connection.alias, ["id", "serial", "installed_version"], [device_id, serial, installed_version]
    )


def telemetry_answer(outcome: BatchAcceptance) -> dict[str, Any]:
    """The 202 body of an accepted batch (both paths)."""
    answer = {
        "accepted": outcome.batch.sample_count,
        "batch_id": outcome.batch.batch_id,
        "duplicate": outcome.duplicate,
    }
    return dict(TelemetryOutputSerializer(answer).data)


def quick_telemetry(request: HttpRequest) -> HttpResponse | None:
    """Accept a valid batch of an accepted device without the middleware chain and DRF; None for the full path."""
    try:
        presented = presented_identity(request)
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except (MalformedCredential, ValueError):
        return None
    # A stated length only: without one, reading the body before authentication would read what a stranger sends.
    if presented is None or not 0 < length <= TELEMETRY_BODY_BYTES or len(request.body) > TELEMETRY_BODY_BYTES:
        return None
    try:
        body = telemetry_input_valid(json_loads_strict(request.body))
    except JSONBodyError:
        return None
    if body is None:
        return None
    device = telemetry_caller(presented)
    if device is None:
        return None
    samples = body["samples"]
    own, unknown = telemetry_deployments(device=device, samples=samples)
    if unknown:
        return None  # the full path refuses it (400) and records another device's deployment as a security event
    try:
        outcome = telemetry_batch_accept(device=device, samples=samples, batch_id=body.get("batch_id"), deployments=own)
    except InvalidInput:  # refused before its INSERT: nothing written
        return None
    body_json = JSONRenderer().render(telemetry_answer(outcome))
    return HttpResponse(body_json, status=202, content_type="application/json")
