"""Firmware release API: list and create (multipart upload), retrieve, and download the image."""

from __future__ import annotations

import logging
import os
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.http import FileResponse, HttpRequest
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, generics, status
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from devices.firmware.api.filters import ReleaseFilter
from devices.firmware.api.serializers import ReleaseCreateInputSerializer, ReleaseOutputSerializer
from devices.firmware.models import FirmwareRelease
from devices.firmware.selectors import release_get, release_list
from devices.firmware.services import release_create
from devices.firmware.storage import artifact_open, artifact_too_large, release_temp
from devices.firmware.uploads import (
    ArtifactMultiPartParser,
    HashingUploadHandler,
    client_file_name,
    close_uploads,
    install_hashing_handler,
    received_from_upload,
)
from ota_project.roles import Role, acting_user
from ota_project.serializers import ApiErrorSerializer

logger = logging.getLogger(__name__)

_INVALID = {400: OpenApiResponse(ApiErrorSerializer, description="Invalid input; `fields` names each bad field.")}
_AUTH = {
    401: OpenApiResponse(ApiErrorSerializer, description="Not signed in."),
    403: OpenApiResponse(ApiErrorSerializer, description="Signed in without a role that may do this."),
}
_NOT_FOUND = {404: OpenApiResponse(ApiErrorSerializer, description="No such release (or page).")}


class ReleaseListCreateView(generics.ListAPIView):
    """GET: releases (any role). POST: upload an image and create a release (release engineers)."""

    write_roles = (Role.REQUESTER,)
    serializer_class = ReleaseOutputSerializer
    filterset_class = ReleaseFilter
    parser_classes = [ArtifactMultiPartParser]
    upload_handler: HashingUploadHandler | None = None

    def get_queryset(self) -> QuerySet[FirmwareRelease]:
        return release_list()

    def initialize_request(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Request:
        # Before DRF wraps the request: nothing may have read the body yet (see devices/firmware/uploads.py).
        if request.method == "POST":
            self.upload_handler = install_hashing_handler(request)
        return super().initialize_request(request, *args, **kwargs)

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        # Runs on every outcome, including refusals before `post` (a session user's CSRF check parses the body
        # before the role check): delete every temp file of this request now, not when the server closes it.
        if self.upload_handler is not None:
            close_uploads(getattr(request, "_files", None), self.upload_handler)
        return super().finalize_response(request, response, *args, **kwargs)

    @extend_schema(
        summary="List firmware releases",
        description="Newest first. Filter by hardware model name, exact version and counter range. Any role.",
        responses={200: ReleaseOutputSerializer(many=True), **_INVALID, **_AUTH, **_NOT_FOUND},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(
        summary="Create a firmware release (multipart upload)",
        description=(
            "Streams the image to disk while computing its sha256; the stored path is the digest, never the "
            "client's file name. Images over ARTIFACT_MAX_BYTES are refused with 413 `artifact_too_large`. "
            "Role: requester."
        ),
        request={"multipart/form-data": ReleaseCreateInputSerializer},
        responses={
            201: ReleaseOutputSerializer,
            **_INVALID,
            **_AUTH,
            413: OpenApiResponse(ApiErrorSerializer, description="The image or the request body is too large."),
            415: OpenApiResponse(ApiErrorSerializer, description="Not a multipart/form-data body."),
        },
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = request.data  # streams the body through the hashing handler
        if self.upload_handler is not None and self.upload_handler.too_large:
            raise artifact_too_large(settings.ARTIFACT_MAX_BYTES)
        serializer = ReleaseCreateInputSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        values = serializer.validated_data
        received = received_from_upload(values["file"], max_bytes=settings.ARTIFACT_MAX_BYTES)
        try:
            release = release_create(
                actor=acting_user(request),
                version=values["version"],
                release_counter=values["release_counter"],
                hardware_models=values["hardware_models"],
                received=received,
                artifact_name=client_file_name(values["file"]),
                source_revision=values["source_revision"],
                builder=values["builder"],
                sbom_ref=values["sbom_ref"],
                notes=values["notes"],
            )
        finally:
            release_temp(received)
        body = ReleaseOutputSerializer(release_get(release_id=release.pk)).data
        location = reverse("api:release-detail", kwargs={"pk": release.pk})
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": location})


@extend_schema(summary="Retrieve a firmware release", responses={200: ReleaseOutputSerializer, **_AUTH, **_NOT_FOUND})
class ReleaseDetailView(generics.RetrieveAPIView):
    """One firmware release (any role)."""

    serializer_class = ReleaseOutputSerializer
    queryset = FirmwareRelease.objects.none()  # lookups go through the selector

    def get_object(self) -> FirmwareRelease:
        return release_get(release_id=self.kwargs["pk"])


class ReleaseArtifactView(APIView):
    """Download a release's image (any role), streamed from the store, with ETag = its sha256."""

    # Errors are always JSON, even for `Accept: application/octet-stream`; the image itself bypasses renderers.
    renderer_classes = [JSONRenderer]

    def perform_content_negotiation(self, request: Request, force: bool = False) -> tuple[BaseRenderer, str]:
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        summary="Download a release's firmware image",
        responses={
            (200, "application/octet-stream"): OpenApiResponse(
                OpenApiTypes.BINARY, description="The image; ETag is its quoted sha256."
            ),
            **_AUTH,
            **_NOT_FOUND,
        },
    )
    def get(self, request: Request, pk: int) -> FileResponse:
        release = release_get(release_id=pk)
        artifact = release.artifact
        try:
            image = artifact_open(artifact.sha256)
        except (FileNotFoundError, ValueError) as exc:
            logger.error("artifact %s of release %s is missing from the store", artifact.sha256, release.pk)
            raise exceptions.NotFound(
                "The image of this release is missing from the store.", code="artifact_missing"
            ) from exc
        size = os.fstat(image.fileno()).st_size
        if size != artifact.size_bytes:
            image.close()
            logger.error("artifact %s has %s bytes on disk, %s recorded", artifact.sha256, size, artifact.size_bytes)
            raise exceptions.NotFound("The image of this release is damaged in the store.", code="artifact_missing")
        response = FileResponse(
            image, as_attachment=True, filename=release.artifact_name, content_type="application/octet-stream"
        )
        response["Content-Length"] = str(size)
        response["ETag"] = f'"{artifact.sha256}"'
        response["Cache-Control"] = "private, max-age=0, must-revalidate"
        return response
