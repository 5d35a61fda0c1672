"""Device API views: identity from devices.edge.identity only, input serializer -> one service -> output.

Never the staff permission class: these endpoints authenticate devices, not people.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any, BinaryIO, Literal
from urllib.parse import urlencode

from django.conf import settings
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBase
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from approvals.audit.security import SecurityEventKind, security_event
from devices.edge import services
from devices.edge.abuse import source_address
from devices.edge.attestation import Attestation, Verdict, attestation_enforced, checkin_attestation
from devices.edge.checkin import checkin_record
from devices.edge.download_tokens import (
    DownloadGrant,
    DownloadTokenRefused,
    download_token_deployment,
    download_token_issue,
    download_token_verify,
    now_seconds,
)
from devices.edge.identity import (
    DEVICE_AUTHENTICATION,
    DEVICE_PERMISSIONS,
    MalformedCredential,
    PresentedIdentity,
    current_device,
    presented_identity,
    request_identity,
    tls_refusal_record,
)
from devices.edge.quiet import (
    OfferParts,
    QuietDevice,
    RememberedOffer,
    last_seen_note,
    offer_lookup,
    offer_remember,
    quiet_forget,
    quiet_lookup,
    quiet_remember,
)
from devices.edge.serializers import (
    CheckinInputSerializer,
    CheckinOutputSerializer,
    OfferOutputSerializer,
    StatusInputSerializer,
    StatusOutputSerializer,
    TelemetryInputSerializer,
    TelemetryOutputSerializer,
    checkin_input_valid,
)
from devices.edge.telemetry_quick import TELEMETRY_BODY_BYTES, telemetry_answer
from devices.edge.throttle import DownloadLease, RegionOverBudget, checkin_admit, download_acquire
from devices.firmware.storage import artifact_open, artifact_relative_path
from devices.models import Device, Region
from devices.selectors import LoadShaping, region_load_shaping
from devices.services import device_record_report
from ota_project.errors import DomainError, InvalidInput
from ota_project.exceptions import error_body
from ota_project.parsers import JSONBodyError, SafeJSONParser, json_loads_strict
from ota_project.serializers import ApiErrorSerializer
from rollouts.deployment_services import Report, deployment_offer, deployment_report
from rollouts.director import deployment_director_targets
from rollouts.models import Deployment
from rollouts.offer_resend import offer_resend_until

logger = logging.getLogger(__name__)

IN_FLIGHT_POLL_SECONDS = 30
SMALL_BODY_BYTES = 16 * 1024
STREAM_BLOCK_BYTES = 256 * 1024  # reads where the server has no sendfile (bounded memory)
UNTRUSTED = "untrusted"  # the failure class of an update the vehicle's verification refused
RANGE_RE = re.compile(r"\Abytes=(\d*)-(\d*)\Z")


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is larger than this endpoint accepts."
    default_code = "payload_too_large"


class DeviceAPIView(APIView):
    """Base for device endpoints: device identity, JSON only, bounded bodies, errors always as JSON."""

    authentication_classes = DEVICE_AUTHENTICATION
    permission_classes = DEVICE_PERMISSIONS
    parser_classes = [SafeJSONParser]
    renderer_classes = [JSONRenderer]
    max_body_bytes = SMALL_BODY_BYTES

    def perform_content_negotiation(self, request: Request, force: bool = False) -> tuple[BaseRenderer, str]:
        return super().perform_content_negotiation(request, force=True)

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # authenticates first: strangers learn nothing about limits
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise exceptions.ParseError("Invalid Content-Length.") from None
        if length > self.max_body_bytes:
            raise PayloadTooLarge(f"At most {self.max_body_bytes} bytes.")
        # Last, once nothing else in here can refuse (a download slot taken here is given back by the handler);
        # still before the body is read or the database asked, so an over-budget refusal costs next to nothing.
        self.admit(request)

    def admit(self, request: Request) -> None:
        """Refuse with 429 and Retry-After when the device's region is over its budget (per endpoint)."""

    def body(self, request: Request) -> Any:
        """The parsed body, checked against the real size too (Content-Length can be absent)."""
        if len(request.body) > self.max_body_bytes:
            raise PayloadTooLarge(f"At most {self.max_body_bytes} bytes.")
        return request.data


def _errors(described: dict[int, str]) -> dict[int, OpenApiResponse]:
    """Error answers, all in the one envelope {"error": {"code", "message", "fields"}}."""
    return {code: OpenApiResponse(ApiErrorSerializer, description=text) for code, text in described.items()}


OVER_BUDGET = "The region is over its load budget: retry after the `Retry-After` header's seconds."
UNAUTHENTICATED = "Missing, unknown, wrong or revoked device credential (one answer for all)."


def _device_event(request: Request, *, kind: str, endpoint: str, subject: str, message: str) -> None:
    """Record a refused or suspicious request of the authenticated device as a security event."""
    security_event(
        kind=kind,
        source=f"device_api.{endpoint}",
        message=message,
        device_serial=current_device(request).serial,
        address=str(request.META.get("REMOTE_ADDR", "") or ""),
        subject=subject,
    )


def poll_interval(*, shaping: LoadShaping, in_flight: bool) -> int:
    """Seconds until the next check-in: the region's interval (or the global one), shorter while updating."""
    base = shaping.poll_interval_seconds
    return min(base, IN_FLIGHT_POLL_SECONDS) if in_flight else base


def _offer_parts(deployment: Deployment) -> OfferParts:
    """What the offer of `deployment` says apart from its URL (the director metadata may be signed here)."""
    artifact = deployment.release.artifact
    return OfferParts(
        device_id=deployment.device_id,
        deployment_id=deployment.pk,
        kind=deployment.kind,
        release_version=deployment.release.version,
        release_counter=deployment.release.release_counter,
        sha256=artifact.sha256,
        length=artifact.size_bytes,
        deadline_at=deployment.deadline_at,
        director=_director(deployment),
    )


def _offer_body(request: HttpRequest | Request, deployment: Deployment) -> dict[str, Any]:
    return _offer_answer(request, _offer_parts(deployment))


def _offer_answer(request: HttpRequest | Request, parts: OfferParts) -> dict[str, Any]:
    """The offer's answer with a download URL whose token is signed now (an HMAC: no database)."""
    presented = request_identity(request)
    token = download_token_issue(
        device_id=parts.device_id,
        certificate=presented.fingerprint if presented is not None else "",
        deployment_id=parts.deployment_id,
        sha256=parts.sha256,
        length=parts.length,
        deadline_at=parts.deadline_at,
        now=now_seconds(),
    )
    url = reverse("device-artifact", kwargs={"sha256": parts.sha256}) + "?" + urlencode({"token": token})
    return {
        "deployment_id": parts.deployment_id,
        "kind": parts.kind,
        "release_version": parts.release_version,
        "release_counter": parts.release_counter,
        "artifact": {"sha256": parts.sha256, "length": parts.length, "url": _absolute(request, url, presented)},
        "deadline_at": parts.deadline_at,
        "director": parts.director,
    }


def _absolute(request: HttpRequest | Request, path: str, presented: PresentedIdentity | None) -> str:
    """The URL of `path` on the origin the device spoke to: https for a certificate (it came through the TLS
    proxy, which the proxy secret proved), the request's own scheme otherwise. The agent refuses any other origin."""
    if presented is not None and presented.by_certificate:
        return f"https://{request.get_host()}{path}"
    return request.build_absolute_uri(path)


def _director(deployment: Deployment) -> str | None:
    """The director's signed targets for this offer (signed at the first offer, then reused from the row)."""
    signed = deployment_director_targets(deployment=deployment)
    return signed.decode() if signed is not None else None


class CheckinView(DeviceAPIView):
    """Record what the device runs; answer the poll interval and, when one is due, an offer.

    Most check-ins never get here: they take the short path (`quick_checkin`, run by
    devices.edge.middleware.DeviceShortPathMiddleware before sessions, CSRF, routing and DRF): one SQL statement
    authenticates the device, stores its report and looks for work. Only when work waits does the locking offer path
    run; anything else the short path cannot answer exactly as this view would (a bad credential or body, a region
    with a check-in budget) comes here, which answers it (401 and its security event, 400, 413, 429).
    """

    def admit(self, request: Request) -> None:
        self.shaping = checkin_admit(device=current_device(request))

    @extend_schema(
        operation_id="device_checkin",
        summary="Check in: report slots, boot count and health; get the poll interval and maybe an offer",
        description=(
            "The active slot's version is what the device runs (drift is reported vs expected). "
            "`poll_interval_seconds` comes from the device's region (shorter while an update is in flight). "
            "When the region is over its check-in budget the answer is 429 with `Retry-After` (seconds) and "
            "nothing is recorded."
        ),
        request=CheckinInputSerializer,
        responses={
            200: CheckinOutputSerializer,
            **_errors(
                {
                    400: "Malformed report; `fields` names each problem. Nothing is recorded.",
                    401: UNAUTHENTICATED,
                    413: "The body is larger than 16 KiB.",
                    429: OVER_BUDGET,
                }
            ),
        },
    )
    def post(self, request: Request) -> Response:
        device = current_device(request)
        body = CheckinInputSerializer(data=self.body(request))
        body.is_valid(raise_exception=True)
        device_record_report(device=device, at=timezone.now(), **_report(body.validated_data))
        quiet_forget(device.pk)  # what this process remembers of its report is not what is stored now
        attestation = _attestation(request, device.pk, body.validated_data)
        return Response(_checkin_answer(request, device_id=device.pk, shaping=self.shaping, attestation=attestation))


def _attestation(request: HttpRequest | Request, device_id: int, body: dict[str, Any]) -> Attestation:
    """The check-in's attestation verdict (devices.edge.attestation) for the identity the request presented."""
    presented = request_identity(request)
    if presented is None:
        return Attestation(Verdict.OFF)
    return checkin_attestation(
        presented=presented,
        device_id=device_id,
        evidence=body.get("attestation"),
        address=source_address(request),
        now=time.time(),
    )


def _report(data: dict[str, Any]) -> dict[str, Any]:
    """The device_record_report arguments of a valid check-in body (the active slot's version is what it runs)."""
    active = data["slots"][data["active_slot"]]
    return {
        "version": active["version"],
        "release_counter": active["release_counter"],
        "active_slot": data["active_slot"],
        "boot_count": data["boot_count"],
        "health": data["health"],
    }


def _checkin_answer(
    request: HttpRequest | Request,
    *,
    device_id: int,
    shaping: LoadShaping,
    attestation: Attestation,
    work_waiting: bool | None = None,
) -> dict[str, Any]:
    """The answer once the report is stored: the offer service decides (and locks), then the poll interval."""
    return _checkin_decision(
        request, device_id=device_id, shaping=shaping, attestation=attestation, work_waiting=work_waiting
    )[0]


def _checkin_decision(
    request: HttpRequest | Request,
    *,
    device_id: int,
    shaping: LoadShaping,
    attestation: Attestation,
    work_waiting: bool | None = None,
) -> tuple[dict[str, Any], tuple[Deployment, OfferParts] | None]:
    """The answer, and the deployment offered (with what its offer said) when the offer service offered one.

    Without verified evidence where attestation applies nothing is offered (and nothing marked offered): the
    answer carries a fresh nonce and, when work waits, `attestation_required`, so the device attests at once."""
    if not attestation.offers_allowed:
        waiting = services.device_has_work(device_id=device_id) if work_waiting is None else work_waiting
        answer = {
            "poll_interval_seconds": poll_interval(shaping=shaping, in_flight=waiting),
            "offer": None,
            **attestation.answer_fields(withheld=waiting),
        }
        return dict(CheckinOutputSerializer(answer).data), None
    # Quarantined devices may check in (their report is drift evidence) but are offered nothing; the offer
    # service withdraws what they had been offered and not yet started installing. It reads the device's row
    # itself, in its locking statement: the request's copy is not what it decides on.
    # A device fetching an image gets its offer again, with a fresh URL: a download outlives its token that way.
    offered = deployment_offer(device_id=device_id)
    deployment = offered or services.device_download_in_progress(device_id=device_id)
    in_flight = deployment is not None or services.device_has_deployment_in_flight(device_id=device_id)
    parts = _offer_parts(deployment) if deployment else None
    answer = {
        "poll_interval_seconds": poll_interval(shaping=shaping, in_flight=in_flight),
        "offer": _offer_answer(request, parts) if parts else None,
        **attestation.answer_fields(withheld=False),
    }
    return dict(CheckinOutputSerializer(answer).data), (offered, parts) if offered and parts else None


@csrf_exempt
def tls_refused(request: HttpRequest) -> HttpResponse:
    """Where nginx sends a request whose client certificate it refused (495/496): record it, answer 400.

    Only nginx can reach it meaningfully (the proxy secret); anything else gets a plain 404 and records nothing,
    so the endpoint cannot be used to flood the security events."""
    if not tls_refusal_record(request):
        return HttpResponse(JSONRenderer().render(error_body("not_found", "Not found.")), status=404)
    body = error_body("client_certificate_refused", "A valid device certificate is required.")
    return HttpResponse(JSONRenderer().render(body), status=400, content_type="application/json")


def quick_checkin(request: HttpRequest) -> HttpResponse | None:
    """The short check-in path: one SQL statement when nothing waits, the locking offer path only when work does.

    None whenever the full path must answer instead: no or a malformed credential, a body without a length, too
    large or not a valid report, a credential the statement does not accept, or a region with a check-in budget (admission
    comes before anything is recorded). Nothing was written then, and no security event recorded.
    """
    try:
        presented = presented_identity(request)
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except (MalformedCredential, ValueError):
        return None
    # A stated length only: without one, reading the body before authentication would read what a stranger sends.
    if presented is None or not 0 < length <= SMALL_BODY_BYTES or len(request.body) > SMALL_BODY_BYTES:
        return None
    try:
        body = checkin_input_valid(json_loads_strict(request.body))
    except JSONBodyError:
        return None
    if body is None:
        return None
    report = _report(body)
    if body.get("attestation") is None:  # evidence is checked against the database: never from memory
        remembered = quiet_lookup(presented, report)
        if remembered is not None:
            return _quiet_answer(request, remembered, body, report)
        resent = offer_lookup(presented, report) if not attestation_enforced(presented) else None
        if resent is not None:
            return _resent_answer(request, presented, resent, report)
    as_of = time.monotonic()
    try:
        row = checkin_record(presented=presented, report=report, at=timezone.now())
    except InvalidInput:
        return None
    if row is None or not row.recorded:
        return None
    request.device_identity = presented  # type: ignore[attr-defined]  # the offer's token binds it
    shaping = region_load_shaping(region=_region(row.quiet_device()))
    # Evidence costs one statement when the check-in carries it; a nonce for the next one costs none.
    attestation = _attestation(request, row.device_id, body)
    if row.quiet and attestation.verdict is not Verdict.REFUSED:
        quiet_remember(presented, row.quiet_device(), report, row.epochs, as_of)
    else:
        quiet_forget(row.device_id)
    if row.work_waiting:
        answer, offered = _checkin_decision(
            request, device_id=row.device_id, shaping=shaping, attestation=attestation, work_waiting=True
        )
        # The device's one deployment under way, offered, where attestation does not apply: memory may re-send it.
        if offered and row.one_candidate and not row.under_way and attestation.verdict is Verdict.OFF:
            deployment, parts = offered
            until = offer_resend_until(deployment, director=parts.director is not None)
            if until is not None:
                offer_remember(presented, row.quiet_device(), report, parts, until, row.epochs, as_of)
    else:
        # Nothing in flight: the one statement answered. Under way: a download in progress gets a fresh URL.
        refresh = row.fetching and attestation.offers_allowed
        fetching = services.device_download_in_progress(device_id=row.device_id) if refresh else None
        offer = dict(OfferOutputSerializer(_offer_body(request, fetching)).data) if fetching else None
        answer = {
            "poll_interval_seconds": poll_interval(shaping=shaping, in_flight=row.under_way),
            "offer": offer,
            **attestation.answer_fields(withheld=row.fetching and not attestation.offers_allowed),
        }
    return HttpResponse(JSONRenderer().render(answer), content_type="application/json")


def _region(device: QuietDevice) -> Region:
    return Region(
        pk=device.region_id,
        poll_interval_seconds=device.region_poll_interval_seconds,
        max_checkins_per_window=device.region_max_checkins_per_window,
    )


def _quiet_answer(
    request: HttpRequest, device: QuietDevice, body: dict[str, Any], report: dict[str, Any]
) -> HttpResponse:
    """The answer the statement gave this quiet device, again, from memory (devices.edge.quiet): no offer, the
    region's poll interval, a fresh attestation nonce where attestation applies (no evidence came: no database)."""
    shaping = region_load_shaping(region=_region(device))
    attestation = _attestation(request, device.device_id, body)
    last_seen_note(device.device_id, timezone.now(), report)
    answer = {
        "poll_interval_seconds": poll_interval(shaping=shaping, in_flight=False),
        "offer": None,
        **attestation.answer_fields(withheld=False),
    }
    return HttpResponse(JSONRenderer().render(answer), content_type="application/json")


def _resent_answer(
    request: HttpRequest, presented: PresentedIdentity, resent: RememberedOffer, report: dict[str, Any]
) -> HttpResponse:
    """The live offer the locking path re-sent to this device, again, from memory (devices.edge.quiet): the same
    answer with a download token signed now. Only where attestation does not apply (no nonce, no evidence)."""
    request.device_identity = presented  # type: ignore[attr-defined]  # the offer's token binds it
    shaping = region_load_shaping(region=_region(resent.device))
    last_seen_note(resent.device.device_id, timezone.now(), report)
    answer = {
        "poll_interval_seconds": poll_interval(shaping=shaping, in_flight=True),
        "offer": _offer_answer(request, resent.parts),
    }
    return HttpResponse(JSONRenderer().render(CheckinOutputSerializer(answer).data), content_type="application/json")


class StatusView(DeviceAPIView):
    """Apply one status report to the device's own deployment (idempotent; replays answer applied=false)."""

    @extend_schema(
        operation_id="device_deployment_status",
        summary="Report a deployment's progress with the device's sequence number",
        description=(
            "Idempotent: re-sending the last applied report (same `seq`) answers 200 with `applied: false`. "
            "A `seq` below the last applied one is refused (409 `stale_seq`). A newer report never moves the "
            "deployment backwards. `succeeded` is accepted only from `confirming`, with the booted version of the "
            "offered release and `health_passed: true`."
        ),
        request=StatusInputSerializer,
        responses={
            200: StatusOutputSerializer,
            **_errors(
                {
                    400: "Malformed report, or success without the offered version and a passed health window.",
                    401: UNAUTHENTICATED,
                    404: "No such deployment for this device (also: another device's).",
                    409: "`stale_seq`: older than the last applied report; `not_confirming`: success too early.",
                    413: "The body is larger than 16 KiB.",
                }
            ),
        },
    )
    def post(self, request: Request, deployment_id: int) -> Response:
        device = current_device(request)
        before = services.device_deployment_get(device=device, deployment_id=deployment_id)
        if before is None:
            if services.deployment_is_another_devices(device=device, deployment_id=deployment_id):
                # Still the same 404 as for a missing deployment: the device learns nothing from the difference.
                _device_event(
                    request,
                    kind=SecurityEventKind.DEVICE_CROSS_DEVICE,
                    endpoint="status",
                    subject=f"deployment:{deployment_id}",
                    message="A status report named another device's deployment.",
                )
            raise exceptions.NotFound("No such deployment for this device.")
        body = StatusInputSerializer(data=self.body(request))
        body.is_valid(raise_exception=True)
        report = Report(**body.validated_data)
        # The offer this process may remember for the device is not what it will be: the epoch tells the others.
        quiet_forget(device.pk)
        try:
            outcome = deployment_report(device=device, deployment_id=deployment_id, report=report)
        except DomainError as exc:
            if exc.code == "not_found":
                raise exceptions.NotFound("No such deployment for this device.") from exc
            if exc.code == "stale_seq":
                # From the past (decided under the row lock by the service): the device drops it.
                _device_event(
                    request,
                    kind=SecurityEventKind.DEVICE_STALE_REPORT,
                    endpoint="status",
                    subject=f"deployment:{deployment_id}",
                    message=exc.message,
                )
            raise
        # Decided under the deployment's row lock: of concurrent copies of one report exactly one says applied.
        after, applied = outcome.deployment, outcome.applied
        if applied and report.failure_class == UNTRUSTED:
            # The vehicle refused what the server offered because its signed metadata did not back it: whatever
            # the cause (tampered mirror, forged director entry, downgrade, replay), someone should look.
            _device_event(
                request,
                kind=SecurityEventKind.DEVICE_UPDATE_UNTRUSTED,
                endpoint="status",
                subject=f"deployment:{deployment_id}",
                message=report.detail or "The device refused an update that did not verify.",
            )
        if not applied:
            # Usually a lost answer re-sent over a flaky link (low severity), but also what a replay attack looks like.
            _device_event(
                request,
                kind=SecurityEventKind.DEVICE_REPLAY,
                endpoint="status",
                subject=f"deployment:{deployment_id}",
                message=f"Sequence number {report.seq} was already applied.",
            )
        answer = {
            "deployment_id": after.pk,
            "status": after.status,
            "last_seq": after.last_seq,
            "applied": applied,
            "deadline_at": after.deadline_at,
        }
        return Response(StatusOutputSerializer(answer).data)


class TelemetryView(DeviceAPIView):
    """Accept a batch of KPI samples (at most 500); a Celery task folds it into the KPI samples.

    A valid batch of an accepted device is answered on the short path (devices.edge.telemetry_quick, before the
    middleware chain) with this view's serializer, deployments check, accept and answer; this view answers the rest
    (401, 400 with fields, 413) and records their security events."""

    max_body_bytes = TELEMETRY_BODY_BYTES

    @extend_schema(
        operation_id="device_telemetry",
        summary="Send a batch of KPI samples (processed asynchronously)",
        description=(
            "Install duration, boot time, unexpected reboots, GPS fix time, sensor calibration and link throughput; "
            "nothing else is accepted (data minimisation). 202 once the batch is stored for processing. "
            "Re-sending a batch (same `batch_id`, or the same samples without one) answers 202 with "
            "`duplicate: true` and counts nothing twice."
        ),
        request=TelemetryInputSerializer,
        responses={
            202: TelemetryOutputSerializer,
            **_errors(
                {
                    400: "Malformed batch (unknown fields, bad values, another device's deployment). Nothing stored.",
                    401: UNAUTHENTICATED,
                    413: "The body is larger than 256 KiB.",
                }
            ),
        },
    )
    def post(self, request: Request) -> Response:
        device = current_device(request)
        body = TelemetryInputSerializer(data=self.body(request))
        body.is_valid(raise_exception=True)
        outcome = services.telemetry_accept(
            device=device, samples=body.validated_data["samples"], batch_id=body.validated_data.get("batch_id")
        )
        return Response(telemetry_answer(outcome), status=status.HTTP_202_ACCEPTED)


class LeasedFileResponse(FileResponse):
    """A file response that frees its region download slot when the server closes it (also on a cut stream).

    Under gunicorn the WSGI handler hands `file_to_stream` to the server's file wrapper, whose close is this
    close: gunicorn calls it in a `finally` after its sendfile, so a client that disconnects mid-range frees the
    slot as surely as a complete transfer does."""

    block_size = STREAM_BLOCK_BYTES
    lease: DownloadLease | None = None

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.lease is not None:
                self.lease.release()


class FileRange:
    """`length` bytes of an open file from its current position, for a FileResponse.

    `fileno()` is the file's own: gunicorn sends a file wrapper with the kernel's sendfile from the descriptor's
    current offset for exactly Content-Length bytes, so a range costs no Python-side loop. A server without that
    path (the test client, a TLS-terminating gunicorn) reads it through `read()`, which stops at the range's end.
    """

    def __init__(self, file: BinaryIO, length: int):
        self._file = file
        self._remaining = length

    def fileno(self) -> int:
        return self._file.fileno()

    def read(self, size: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        size = self._remaining if size is None or size < 0 else min(size, self._remaining)
        chunk = self._file.read(min(size, STREAM_BLOCK_BYTES))
        self._remaining -= len(chunk)
        return chunk

    def close(self) -> None:
        self._file.close()


def parse_range(header: str, size: int) -> tuple[int, int] | Literal[False] | None:
    """(start, end inclusive) for one satisfiable range; None to ignore the header; False if unsatisfiable."""
    match = RANGE_RE.match(header.strip())
    if not match or not (match.group(1) or match.group(2)):
        return None  # malformed or multiple ranges: RFC 9110 lets us answer the whole image
    first, last = match.group(1), match.group(2)
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            return False
        return max(size - suffix, 0), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        return False
    return start, min(end, size - 1)


class ArtifactView(DeviceAPIView):
    """Send an offered image by sha256 (token from the offer's URL), with single byte ranges, resume and If-Range.

    The bytes go by the kernel's sendfile under gunicorn, or by nginx (X-Accel-Redirect) when configured; never
    whole in memory, never a Python loop per block on either path."""

    def admit(self, request: Request) -> None:
        self.lease = download_acquire(device=current_device(request))

    @extend_schema(
        operation_id="device_artifact",
        summary="Download an offered image by sha256 (Range, resume, If-Range)",
        description=(
            "Use the offer's `artifact.url` as given: its `token` (at most 15 minutes, never past the deadline) is "
            "bound to the device, the deployment and the image. Only while the deployment may still deliver the "
            "image (a withdrawal stops new ranges within `OTA_DOWNLOAD_RECHECK_SECONDS`). One byte range per request (206 with "
            "`Content-Range`); `ETag` is the quoted sha256 and `If-Range` with another value answers the whole "
            "image. When the region already streams its maximum of concurrent downloads the answer is 429 with "
            "`Retry-After`."
        ),
        parameters=[
            OpenApiParameter("Range", OpenApiTypes.STR, OpenApiParameter.HEADER, description="e.g. bytes=1048576-"),
            OpenApiParameter("If-Range", OpenApiTypes.STR, OpenApiParameter.HEADER, description='"<sha256>"'),
        ],
        responses={
            (200, "application/octet-stream"): OpenApiResponse(OpenApiTypes.BINARY, description="The whole image."),
            (206, "application/octet-stream"): OpenApiResponse(OpenApiTypes.BINARY, description="One byte range."),
            **_errors(
                {
                    401: UNAUTHENTICATED + " Also: no download token, or an expired one (check in for a new one).",
                    403: "A forged download token, or another device's or another image's.",
                    404: "Not offered to this device, or missing from the store.",
                    416: "The range starts beyond the image (`Content-Range: bytes */<size>`).",
                    429: OVER_BUDGET,
                }
            ),
        },
    )
    def get(self, request: Request, sha256: str) -> HttpResponseBase:
        lease = getattr(self, "lease", None)
        try:
            response = self._stream(request, sha256)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        return _leased(response, lease)

    def _stream(self, request: Request, sha256: str) -> HttpResponseBase:
        device = current_device(request)
        grant = self._authorise(request, device, sha256)
        image = _stored_image(sha256, grant.length)
        byte_range, headers = _requested_range(request, sha256, grant.length)
        if byte_range is False:
            image.close()
            return Response(
                error_body("range_not_satisfiable", f"The image has {grant.length} bytes."),
                status=status.HTTP_416_REQUESTED_RANGE_NOT_SATISFIABLE,
                headers={**headers, "Content-Range": f"bytes */{grant.length}"},
            )
        return _bytes_response(image, sha256, grant.length, byte_range, headers)

    def _authorise(self, request: Request, device: Device, sha256: str) -> DownloadGrant:
        """The token's grant, if the token holds and the deployment may still deliver this image to the device."""
        presented = request_identity(request)
        try:
            grant = download_token_verify(
                request.query_params.get("token", ""),
                device_id=device.pk,
                certificate=presented.fingerprint if presented is not None else "",
                sha256=sha256,
                now=now_seconds(),
            )
        except DownloadTokenRefused as refused:
            _device_event(
                request,
                kind=SecurityEventKind.DEVICE_ARTIFACT_REFUSED,
                endpoint="artifact",
                subject=f"sha256:{sha256}",
                message=f"{refused.code}: {refused.message}",
            )
            if refused.code == "download_token_invalid":
                raise exceptions.PermissionDenied(refused.message, code=refused.code) from None
            raise exceptions.NotAuthenticated(refused.message, code=refused.code) from None
        verdict = services.device_download_allowed(device=device, deployment_id=grant.deployment_id, sha256=sha256)
        if not verdict.allowed:
            _device_event(
                request,
                kind=SecurityEventKind.DEVICE_ARTIFACT_REFUSED,
                endpoint="artifact",
                subject=f"sha256:{sha256}",
                message="An image was requested that is not offered to this device.",
            )
            raise exceptions.NotFound("No such artifact offered to this device.")
        if presented is not None:  # authentication accepted it: the stored certificate (or secret)
            services.download_pass_store(
                presented=presented, device=device, deployment_id=grant.deployment_id, sha256=sha256, verdict=verdict
            )
        return grant


def quick_artifact(request: HttpRequest, sha256: str) -> HttpResponseBase | None:
    """The short path for a range: no database, no DRF, when the full path recently vouched for this download
    (called by devices.edge.middleware.DeviceShortPathMiddleware, ahead of the middleware a range does not need).

    It answers only when the identity matches a live download pass (`services.download_pass_device`: the full
    path authenticated this very certificate (or secret) and found the deployment's rules allow this image, at most
    OTA_DOWNLOAD_RECHECK_SECONDS ago), the token verifies for that device and image, the region has a download
    slot and the range is one the image can satisfy. Anything else (no or a malformed credential, a missing,
    forged or expired token, no pass, a full region, a missing image, 416) returns None and the full path answers
    it, with its refusals, security events and error envelope.
    """
    try:
        presented: PresentedIdentity | None = presented_identity(request)
    except MalformedCredential:
        return None
    token = request.GET.get("token", "")
    deployment_id = download_token_deployment(token)
    if presented is None or deployment_id is None:
        return None
    device = services.download_pass_device(presented=presented, deployment_id=deployment_id, sha256=sha256)
    if device is None:
        return None
    try:
        grant = download_token_verify(
            token, device_id=device.pk, certificate=presented.fingerprint, sha256=sha256, now=now_seconds()
        )
        lease = download_acquire(device=device)
    except (DownloadTokenRefused, RegionOverBudget):
        return None
    try:
        image = _stored_image(sha256, grant.length)
        byte_range, headers = _requested_range(request, sha256, grant.length)
        if byte_range is False:
            image.close()
            response = None
        else:
            response = _bytes_response(image, sha256, grant.length, byte_range, headers)
    except exceptions.NotFound:
        response = None
    except BaseException:
        if lease is not None:
            lease.release()
        raise
    if response is None:
        if lease is not None:
            lease.release()
        return None
    return _leased(response, lease)


def _leased(response: HttpResponseBase, lease: DownloadLease | None) -> HttpResponseBase:
    """Tie the region download slot to the response: a file response frees it when the server closes it, any other
    answer (nginx's hand-off, an error) at once."""
    if isinstance(response, LeasedFileResponse):
        response.lease = lease
    elif lease is not None:
        lease.release()
    return response


def _stored_image(sha256: str, length: int) -> BinaryIO:
    """The image open for reading, checked to have the offered length; NotFound when missing or damaged."""
    try:
        image = artifact_open(sha256)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("artifact %s is offered but missing from the store", sha256)
        raise exceptions.NotFound("The image is missing from the store.", code="artifact_missing") from exc
    size = os.fstat(image.fileno()).st_size
    if size != length:
        image.close()
        logger.error("artifact %s has %s bytes on disk, %s offered", sha256, size, length)
        raise exceptions.NotFound("The image is damaged in the store.", code="artifact_missing")
    return image


def _requested_range(
    request: HttpRequest, sha256: str, size: int
) -> tuple[tuple[int, int] | Literal[False] | None, dict[str, str]]:
    """The one range to send (None: the whole image; False: unsatisfiable) and the headers every answer carries."""
    etag = f'"{sha256}"'
    wanted = request.headers.get("Range", "")
    if_range = request.headers.get("If-Range")
    byte_range = parse_range(wanted, size) if wanted and (if_range is None or if_range == etag) else None
    return byte_range, {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, max-age=0, must-revalidate"}


def _bytes_response(
    image: BinaryIO, sha256: str, size: int, byte_range: tuple[int, int] | None, headers: dict[str, str]
) -> HttpResponseBase:
    """The bytes of a decided answer: nginx's hand-off when configured, else the kernel's sendfile of the range."""
    accel = getattr(settings, "OTA_ARTIFACT_ACCEL_REDIRECT", "")
    if accel:
        image.close()
        return _accel_response(accel, sha256, ranged=byte_range is not None, headers=headers)
    start, end = byte_range if byte_range is not None else (0, size - 1)
    image.seek(start)  # the descriptor's offset is where sendfile starts
    response = LeasedFileResponse(FileRange(image, end - start + 1), content_type="application/octet-stream")
    response["Content-Length"] = str(end - start + 1)
    if byte_range is None:
        response.status_code = status.HTTP_200_OK
    else:
        response.status_code = status.HTTP_206_PARTIAL_CONTENT
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    for name, value in headers.items():
        response[name] = value
    return response


def _accel_response(prefix: str, sha256: str, *, ranged: bool, headers: dict[str, str]) -> HttpResponse:
    """Hand the bytes to nginx (X-Accel-Redirect) once the app has decided the answer.

    The app decided 416 already; what is left is "the whole image" or "the one satisfiable range the request
    names". Each has its own internal location (see the README's nginx snippet): `whole/` has ranges off, so a
    Range the app chose to ignore (If-Range mismatch, several ranges, malformed) cannot be answered differently
    by nginx; `range/` lets nginx apply the request's single range, whose If-Range it compares with the same
    sha256 ETag. nginx sends ETag itself (from the path) and keeps the app's Cache-Control and Accept-Ranges.
    """
    response = HttpResponse(content_type="application/octet-stream")
    response["X-Accel-Redirect"] = (
        f"{prefix.rstrip('/')}/{'range' if ranged else 'whole'}/{artifact_relative_path(sha256)}"
    )
    for name, value in headers.items():
        response[name] = value
    return response
