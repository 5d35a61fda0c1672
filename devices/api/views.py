"""Fleet inventory API: hardware models, regions, devices, status actions, bulk import, drift and versions.

Any user with a role reads; operators write. Each view: input serializer -> one service or selector -> output.
"""

from __future__ import annotations

from typing import Any, cast

from django.db.models import QuerySet
from django.http import Http404, HttpRequest
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.viewsets import GenericViewSet

from devices import credentials, importer, selectors, services
from devices.api.filters import DeviceFilter
from devices.api.serializers import (
    DeviceCreateInputSerializer,
    DeviceCredentialIssuedSerializer,
    DeviceCredentialSerializer,
    DeviceDriftSerializer,
    DeviceImportRowsInputSerializer,
    DeviceImportUploadInputSerializer,
    DeviceSerializer,
    DeviceUpdateInputSerializer,
    FleetVersionsSerializer,
    HardwareModelCreateInputSerializer,
    HardwareModelSerializer,
    HardwareModelUpdateInputSerializer,
    ImportReportSerializer,
    RegionCreateInputSerializer,
    RegionSerializer,
    RegionUpdateInputSerializer,
)
from devices.api.uploads import ImportSizeLimitHandler
from devices.models import Device, HardwareModel, Region
from devices.validators import SERIAL_RE
from ota_project.parsers import SafeJSONParser
from ota_project.roles import Role, acting_user
from ota_project.serializers import ApiErrorSerializer, InputSerializer, ReasonInputSerializer


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ApiErrorSerializer, description=description)


READ_ERRORS = {
    401: _error("Not authenticated."),
    403: _error("The user holds no role in this system."),
}
DETAIL_ERRORS = {**READ_ERRORS, 404: _error("No such object.")}
LIST_ERRORS = {**READ_ERRORS, 400: _error("An invalid filter value."), 404: _error("No such page.")}
WRITE_ERRORS = {
    400: _error("Invalid input; fields names each problem."),
    401: _error("Not authenticated."),
    403: _error("Only operators may do this."),
}
DETAIL_WRITE_ERRORS = {**WRITE_ERRORS, 404: _error("No such object.")}
STATUS_ERRORS = {**DETAIL_WRITE_ERRORS, 409: _error("The device's status does not allow this move.")}

# The URL segment of a device: its serial (see devices.validators.SERIAL_RE).
SERIAL_PATH_RE = SERIAL_RE.pattern.removeprefix("^").removesuffix(r"\Z")


class InventoryViewSet(GenericViewSet):
    """Common settings: JSON bodies only, operators write."""

    parser_classes = [SafeJSONParser]
    write_roles = (Role.OPERATOR,)


@extend_schema_view(
    list=extend_schema(summary="List hardware models", responses={200: HardwareModelSerializer, **LIST_ERRORS}),
)
class HardwareModelViewSet(mixins.ListModelMixin, InventoryViewSet):
    """Hardware models, addressed by name (their hardware id)."""

    serializer_class = HardwareModelSerializer
    lookup_field = "name"
    lookup_value_regex = r"[-a-zA-Z0-9_]{1,64}"

    def get_queryset(self) -> QuerySet[HardwareModel]:
        return selectors.hardware_model_list()

    @extend_schema(summary="Get a hardware model", responses={200: HardwareModelSerializer, **DETAIL_ERRORS})
    def retrieve(self, request: Request, name: str) -> Response:
        return Response(HardwareModelSerializer(selectors.hardware_model_get(name=name)).data)

    @extend_schema(
        summary="Add a hardware model (operator)",
        request=HardwareModelCreateInputSerializer,
        responses={201: HardwareModelSerializer, **WRITE_ERRORS},
    )
    def create(self, request: Request) -> Response:
        serializer = HardwareModelCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        hardware_model = services.hardware_model_create(actor=acting_user(request), **serializer.validated_data)
        return Response(HardwareModelSerializer(hardware_model).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Change a hardware model (operator); the name never changes",
        request=HardwareModelUpdateInputSerializer,
        responses={200: HardwareModelSerializer, **DETAIL_WRITE_ERRORS},
    )
    def partial_update(self, request: Request, name: str) -> Response:
        hardware_model = selectors.hardware_model_get(name=name)
        serializer = HardwareModelUpdateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        reason = data.pop("reason", "")
        changes = cast(services.HardwareModelChanges, data)  # the input serializer declares the changeable fields
        hardware_model = services.hardware_model_update(
            actor=acting_user(request),
            hardware_model=hardware_model,
            changes=changes,
            reason=reason,
        )
        return Response(HardwareModelSerializer(hardware_model).data)


@extend_schema_view(
    list=extend_schema(summary="List regions", responses={200: RegionSerializer, **LIST_ERRORS}),
)
class RegionViewSet(mixins.ListModelMixin, InventoryViewSet):
    """Regions with their IANA time zone, addressed by code."""

    serializer_class = RegionSerializer
    lookup_field = "code"
    lookup_value_regex = r"[-a-zA-Z0-9_]{1,32}"

    def get_queryset(self) -> QuerySet[Region]:
        return selectors.region_list()

    @extend_schema(summary="Get a region", responses={200: RegionSerializer, **DETAIL_ERRORS})
    def retrieve(self, request: Request, code: str) -> Response:
        return Response(RegionSerializer(selectors.region_get(code=code)).data)

    @extend_schema(
        summary="Add a region (operator)",
        request=RegionCreateInputSerializer,
        responses={201: RegionSerializer, **WRITE_ERRORS},
    )
    def create(self, request: Request) -> Response:
        serializer = RegionCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        region = services.region_create(actor=acting_user(request), **serializer.validated_data)
        return Response(RegionSerializer(region).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Change a region's name or device load budget (operator); code and time zone never change",
        description=(
            "`poll_interval_seconds` is what check-in answers devices of the region; `max_checkins_per_window` "
            "(per OTA_DEVICE_BUDGET_WINDOW_SECONDS) and `max_concurrent_downloads` make check-in and download "
            "answer 429 with Retry-After when exceeded. null: the global default; 0 (budgets): no limit. "
            "Every change lands in the decision record."
        ),
        request=RegionUpdateInputSerializer,
        responses={200: RegionSerializer, **DETAIL_WRITE_ERRORS},
    )
    def partial_update(self, request: Request, code: str) -> Response:
        region = selectors.region_get(code=code)
        serializer = RegionUpdateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        reason = data.pop("reason", "")
        changes = cast(services.RegionChanges, data)  # the input serializer declares the changeable fields
        region = services.region_update(actor=acting_user(request), region=region, changes=changes, reason=reason)
        return Response(RegionSerializer(region).data)


def _status_action(summary: str) -> Any:
    return extend_schema(
        summary=summary, request=ReasonInputSerializer, responses={200: DeviceSerializer, **STATUS_ERRORS}
    )


@extend_schema_view(
    list=extend_schema(summary="List devices", responses={200: DeviceSerializer, **LIST_ERRORS}),
)
class DeviceViewSet(mixins.ListModelMixin, InventoryViewSet):
    """The device inventory, addressed by serial."""

    serializer_class = DeviceSerializer
    filterset_class = DeviceFilter
    # Any role passes the door; the service decides and writes refusals to the security log.
    action_roles = {"credential_revoke": tuple(Role.values)}
    lookup_field = "serial"
    lookup_value_regex = SERIAL_PATH_RE

    def initialize_request(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Request:
        drf_request = super().initialize_request(request, *args, **kwargs)
        if self.action == "import_devices":
            # Must be in place before anything reads the body (session CSRF checks read request.POST).
            self.import_size_limit = ImportSizeLimitHandler(request)
            request.upload_handlers = [self.import_size_limit, *request.upload_handlers]
        return drf_request

    def get_queryset(self) -> QuerySet[Device]:
        return selectors.device_list()

    @extend_schema(summary="Get a device by serial", responses={200: DeviceSerializer, **DETAIL_ERRORS})
    def retrieve(self, request: Request, serial: str) -> Response:
        return Response(DeviceSerializer(selectors.device_get(serial_or_id=serial)).data)

    @extend_schema(
        summary="Add a device (operator)",
        request=DeviceCreateInputSerializer,
        responses={201: DeviceSerializer, **WRITE_ERRORS},
    )
    def create(self, request: Request) -> Response:
        serializer = DeviceCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        device = services.device_create(actor=acting_user(request), **serializer.validated_data)
        return Response(DeviceSerializer(selectors.device_get(serial_or_id=device.pk)).data, status=201)

    @extend_schema(
        summary="Correct a device's inventory fields (operator); not its serial or status",
        request=DeviceUpdateInputSerializer,
        responses={200: DeviceSerializer, **DETAIL_WRITE_ERRORS},
    )
    def partial_update(self, request: Request, serial: str) -> Response:
        device = selectors.device_get(serial_or_id=serial)
        serializer = DeviceUpdateInputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        reason = data.pop("reason", "")
        changes = cast(services.DeviceChanges, data)  # the input serializer declares the changeable fields
        device = services.device_update(actor=acting_user(request), device=device, changes=changes, reason=reason)
        return Response(DeviceSerializer(selectors.device_get(serial_or_id=device.pk)).data)

    def _set_status(self, request: Request, serial: str, service: Any) -> Response:
        device = selectors.device_get(serial_or_id=serial)
        serializer = ReasonInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        device = service(actor=acting_user(request), device=device, reason=serializer.validated_data["reason"])
        return Response(DeviceSerializer(device).data)

    @_status_action("Quarantine a device: no rollout targets it until released (operator)")
    @action(detail=True, methods=["post"])
    def quarantine(self, request: Request, serial: str) -> Response:
        return self._set_status(request, serial, services.device_quarantine)

    @_status_action("Release a device from quarantine (operator)")
    @action(detail=True, methods=["post"])
    def release(self, request: Request, serial: str) -> Response:
        return self._set_status(request, serial, services.device_release_from_quarantine)

    @_status_action("Revoke a device for good, e.g. a compromised credential (operator)")
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, serial: str) -> Response:
        return self._set_status(request, serial, services.device_revoke)

    @_status_action("Decommission a device (operator; terminal)")
    @action(detail=True, methods=["post"])
    def decommission(self, request: Request, serial: str) -> Response:
        return self._set_status(request, serial, services.device_decommission)

    @extend_schema(
        methods=["GET"],
        summary="A device's credential: when it was issued and whether it is revoked (never the secret)",
        request=None,
        responses={200: DeviceCredentialSerializer, **DETAIL_ERRORS},
    )
    @extend_schema(
        methods=["POST"],
        summary="Issue or rotate a device's credential; the new secret is shown only in this answer (operator)",
        description="Rotation: a new secret replaces the old one at once (the old one stops working), recorded.",
        request=None,
        responses={
            201: DeviceCredentialIssuedSerializer,
            409: _error("A revoked or decommissioned device gets no credential."),
            **DETAIL_WRITE_ERRORS,
        },
    )
    @action(detail=True, methods=["get", "post"])
    def credential(self, request: Request, serial: str) -> Response:
        device = selectors.device_get(serial_or_id=serial)
        if request.method == "GET":
            current = credentials.device_credential_get(device=device)
            if current is None:
                raise Http404("No credential was issued to this device.")
            return Response(DeviceCredentialSerializer(current).data)
        InputSerializer(data=request.data or {}).is_valid(raise_exception=True)  # no fields accepted
        secret = credentials.device_credential_issue(actor=acting_user(request), device=device)
        response = Response({"serial": device.serial, "secret": secret}, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response

    @extend_schema(
        summary="Revoke a device's credential now (operator or security officer; reason required)",
        description="The device is refused from its next request on; issue a new credential to let it back in.",
        request=ReasonInputSerializer,
        responses={
            200: DeviceCredentialSerializer,
            403: _error("Only operators and security officers revoke credentials."),
            409: _error("The device has no active credential."),
            **DETAIL_WRITE_ERRORS,
        },
    )
    @action(detail=True, methods=["post"], url_path="credential/revoke", url_name="credential-revoke")
    def credential_revoke(self, request: Request, serial: str) -> Response:
        device = selectors.device_get(serial_or_id=serial)
        serializer = ReasonInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        revoked = credentials.device_credential_revoke(
            actor=acting_user(request), device=device, reason=serializer.validated_data["reason"]
        )
        return Response(DeviceCredentialSerializer(revoked).data)

    @extend_schema(
        summary="Import devices from CSV or JSON: all rows or none (operator)",
        description=(
            "multipart/form-data with `file` (CSV with a header row, `tags` and `network_capabilities` separated "
            "by `;`; or a JSON list of objects), optional `format` (csv|json, else from the extension) and "
            '`mode` (create|upsert); or application/json `{"format": "json", "mode": ..., "rows": [...]}`. '
            "Any error answers 400 with `error.fields.rows` = [{row, field, message}] and writes nothing. "
            f"At most {importer.MAX_IMPORT_BYTES // (1024 * 1024)} MiB and {importer.MAX_IMPORT_ROWS} rows."
        ),
        request={
            "multipart/form-data": DeviceImportUploadInputSerializer,
            "application/json": DeviceImportRowsInputSerializer,
        },
        responses={
            201: ImportReportSerializer,
            409: _error("The inventory changed during the import."),
            **WRITE_ERRORS,
        },
    )
    @action(
        detail=False,
        methods=["post"],
        url_path="import",
        url_name="import",
        parser_classes=[SafeJSONParser, MultiPartParser],
    )
    def import_devices(self, request: Request) -> Response:
        if request.content_type.startswith("multipart/"):
            data = request.data
            if self.import_size_limit.exceeded:
                raise importer.file_too_large()
            upload = DeviceImportUploadInputSerializer(data=data)
            upload.is_valid(raise_exception=True)
            report = importer.import_upload(
                actor=acting_user(request),
                upload=upload.validated_data["file"],
                file_format=upload.validated_data.get("format"),
                mode=upload.validated_data["mode"],
            )
        else:
            body = DeviceImportRowsInputSerializer(data=request.data)
            body.is_valid(raise_exception=True)
            rows = body.validated_data["rows"]
            report = importer.import_rows(
                actor=acting_user(request),
                rows=list(enumerate(rows, start=1)),
                mode=body.validated_data["mode"],
                file_format="json",
                sha256=importer.rows_sha256(rows),
            )
        if not report.ok:
            raise report.as_invalid_input()
        return Response(ImportReportSerializer(report.as_dict()).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Devices whose report differs from the inventory (expected vs reported)",
        filters=True,
        responses={200: DeviceDriftSerializer(many=True), **LIST_ERRORS},
    )
    @action(detail=False, methods=["get"], serializer_class=DeviceDriftSerializer)
    def drift(self, request: Request) -> Response:
        devices = self.filter_queryset(selectors.device_drift_list())
        page = self.paginate_queryset(devices)
        return self.get_paginated_response(DeviceDriftSerializer(page, many=True).data)


class FleetVersionsView(APIView):
    """Per hardware model, how many devices the inventory expects on each version (decommissioned excluded)."""

    @extend_schema(
        summary="Fleet version distribution per hardware model",
        responses={200: FleetVersionsSerializer(many=True), **READ_ERRORS},
    )
    def get(self, request: Request) -> Response:
        return Response(FleetVersionsSerializer(selectors.fleet_version_distribution(), many=True).data)
