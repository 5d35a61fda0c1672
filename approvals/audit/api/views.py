"""The auditor's API: browse and verify the decision record, download signed exports, fetch the audit key.

Read-only for auditors and security officers; every other role gets 403, anonymous callers 401.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from typing import Any

from django.db.models import QuerySet
from django.http import FileResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from approvals.audit.api.filters import DecisionRecordFilter, SecurityEventFilter
from approvals.audit.api.serializers import (
    AuditPublicKeySerializer,
    AuditRecordSerializer,
    ChainVerdictSerializer,
    ExportQuerySerializer,
    SecurityEventSerializer,
    SecuritySummarySerializer,
)
from approvals.audit.checkpoints import checkpoint_after_verify
from approvals.audit.export import audit_export_write
from approvals.audit.keys import AUDIT_SIGNATURE_ALGORITHM, audit_key_id, audit_public_key_pem
from approvals.audit.models import DecisionRecord, SecurityEvent
from approvals.audit.security_selectors import security_event_list, security_event_summary
from ota_project.roles import Role, acting_user
from ota_project.serializers import ApiErrorSerializer

AUDIT_READ_ROLES = (Role.AUDITOR, Role.SECURITY_OFFICER)
_SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024

_AUTH_ERRORS = {
    401: OpenApiResponse(ApiErrorSerializer, description="Not signed in."),
    403: OpenApiResponse(ApiErrorSerializer, description="Only auditors and security officers may read the record."),
}


def decision_record_list() -> QuerySet[DecisionRecord]:
    """All records in chain order (auditors see the whole record; there is nothing to scope by user)."""
    return DecisionRecord.objects.order_by("seq")


def decision_record_get(*, seq: int) -> DecisionRecord:
    """One record by its position in the chain; 404 if there is none."""
    return get_object_or_404(decision_record_list(), seq=seq)


class DecisionRecordListView(generics.ListAPIView):
    """Page through the decision record in chain order, filtered."""

    read_roles = AUDIT_READ_ROLES
    serializer_class = AuditRecordSerializer
    filterset_class = DecisionRecordFilter

    def get_queryset(self) -> QuerySet[DecisionRecord]:
        return decision_record_list()

    @extend_schema(
        tags=["audit"],
        responses={
            200: AuditRecordSerializer(many=True),
            400: OpenApiResponse(ApiErrorSerializer, description="A filter value is not valid."),
            404: OpenApiResponse(ApiErrorSerializer, description="No such page."),
            **_AUTH_ERRORS,
        },
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class DecisionRecordDetailView(APIView):
    """One decision record by seq."""

    read_roles = AUDIT_READ_ROLES

    @extend_schema(
        tags=["audit"],
        responses={
            200: AuditRecordSerializer,
            404: OpenApiResponse(ApiErrorSerializer, description="No record with this seq."),
            **_AUTH_ERRORS,
        },
    )
    def get(self, request: Request, seq: int) -> Response:
        return Response(AuditRecordSerializer(decision_record_get(seq=seq)).data)


class ChainVerifyView(APIView):
    """Walk the whole chain against record signatures and signed checkpoints; name the first problem; an intact
    chain gets a new signed checkpoint of its head."""

    read_roles = AUDIT_READ_ROLES

    @extend_schema(tags=["audit"], responses={200: ChainVerdictSerializer, **_AUTH_ERRORS})
    def get(self, request: Request) -> Response:
        verdict, _ = checkpoint_after_verify()
        return Response(
            ChainVerdictSerializer(
                {
                    "ok": verdict.ok,
                    "length": verdict.length,
                    "broken_seq": verdict.broken_seq,
                    "problem": verdict.problem,
                    "head_hash": verdict.head_hash,
                }
            ).data
        )


class _ExportNegotiation(BaseContentNegotiation):
    """The export answers with a ZIP, or with a JSON error, whatever `Accept` says; and its `?format=` names
    the records format, so DRF must not read it as a renderer override (that would answer 404)."""

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser | None:
        return next(iter(parsers), None)

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type


class AuditExportView(APIView):
    """Download a signed export bundle (ZIP) of the decision record; the download is recorded as audit.export."""

    read_roles = AUDIT_READ_ROLES
    renderer_classes = [JSONRenderer]
    content_negotiation_class = _ExportNegotiation
    # HEAD would run the export (and record it) only to throw the body away.
    http_method_names = ["get", "options"]

    @extend_schema(
        tags=["audit"],
        parameters=[ExportQuerySerializer],
        responses={
            (200, "application/zip"): OpenApiResponse(
                OpenApiTypes.BINARY,
                description="ZIP: records.jsonl|records.csv, manifest.json, manifest.sig (base64 Ed25519 over "
                "manifest.json), audit_public_key.pem.",
            ),
            400: OpenApiResponse(ApiErrorSerializer, description="A query parameter is not valid."),
            **_AUTH_ERRORS,
        },
    )
    def get(self, request: Request) -> FileResponse:
        query = ExportQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        # Spooled: small bundles stay in memory, long chains spill to a temporary file instead of RAM.
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY_BYTES)
        try:
            result = audit_export_write(
                spool,
                actor=acting_user(request),
                fmt=params["format"],
                from_seq=params.get("from_seq"),
                to_seq=params.get("to_seq"),
                since=params.get("since"),
                until=params.get("until"),
            )
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        response = FileResponse(spool, as_attachment=True, filename=result.filename, content_type="application/zip")
        response["Cache-Control"] = "no-store"
        response["X-Audit-Manifest-Sha256"] = result.manifest_sha256
        response["X-Audit-Record-Seq"] = str(result.record.seq)
        return response


class AuditPublicKeyView(APIView):
    """The server audit public key and its id, so auditors can pin the key that signs exports."""

    read_roles = AUDIT_READ_ROLES

    @extend_schema(tags=["audit"], responses={200: AuditPublicKeySerializer, **_AUTH_ERRORS})
    def get(self, request: Request) -> Response:
        return Response(
            AuditPublicKeySerializer(
                {
                    "algorithm": AUDIT_SIGNATURE_ALGORITHM,
                    "key_id": audit_key_id(),
                    "public_key_pem": audit_public_key_pem(),
                }
            ).data
        )


class SecurityEventListView(generics.ListAPIView):
    """Page through the security events (refusals counted per kind, source, key and time bucket), latest first."""

    read_roles = AUDIT_READ_ROLES
    serializer_class = SecurityEventSerializer
    filterset_class = SecurityEventFilter

    def get_queryset(self) -> QuerySet[SecurityEvent]:
        return security_event_list()

    @extend_schema(
        tags=["audit"],
        responses={
            200: SecurityEventSerializer(many=True),
            400: OpenApiResponse(ApiErrorSerializer, description="A filter value is not valid."),
            404: OpenApiResponse(ApiErrorSerializer, description="No such page."),
            **_AUTH_ERRORS,
        },
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class SecurityEventSummaryView(APIView):
    """Refusals per kind over the last 24 hours and the last 7 days (every kind listed, zero included)."""

    read_roles = AUDIT_READ_ROLES

    @extend_schema(tags=["audit"], responses={200: SecuritySummarySerializer, **_AUTH_ERRORS})
    def get(self, request: Request) -> Response:
        now = timezone.now()
        kinds = security_event_summary(now=now)
        summary = {
            "generated_at": now,
            "total_24h": sum(k.last_24h for k in kinds),
            "total_7d": sum(k.last_7d for k in kinds),
            "kinds": kinds,
        }
        return Response(SecuritySummarySerializer(summary).data)
