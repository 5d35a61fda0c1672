"""What a vehicle verifies updates with: the director's metadata per device (authenticated by the device
credential) and the image repository's static tree (public, CDN-style; served here for development, drills and
small sites - production puts the directory behind nginx or a CDN).

A deployment's director metadata is served from its offer until it is installed, while the rollout still wants it;
a halted, aborted or cancelled deployment's is withdrawn: the answer is 404 with code `director_withdrawn`, which
the agent understands as "do not install".
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.views.decorators.http import require_safe
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request

from devices.edge.identity import current_device
from devices.edge.views import DeviceAPIView, _errors
from devices.firmware.director.models import DirectorRoot
from ota_project.errors import DomainError
from rollouts.director import device_director_targets

JSON = "application/json"


class DirectorWithdrawn(DomainError):
    """The device has no deployment whose director metadata is served (none, finished, halted or withdrawn)."""

    status_code = 404
    code = "director_withdrawn"


class DirectorTargetsView(DeviceAPIView):
    """The director's signed targets for the calling device's current deployment."""

    @extend_schema(
        operation_id="device_director_targets",
        summary="The director's signed targets metadata for this device (TUF JSON)",
        description=(
            "Naming the one image this device must install, with its serial, hardware id, release counter, "
            "deployment and a nonce. 404 `director_withdrawn` once the deployment was halted, cancelled or ended."
        ),
        responses={
            200: OpenApiResponse(OpenApiTypes.OBJECT, description="TUF targets metadata, signed by the director."),
            **_errors({401: "Missing, unknown, wrong or revoked device credential.", 404: "Withdrawn or none."}),
        },
    )
    def get(self, request: Request) -> HttpResponse:
        signed = device_director_targets(device=current_device(request))
        if signed is None:
            raise DirectorWithdrawn("No director metadata is served for this device now.")
        return HttpResponse(signed, content_type=JSON, headers={"Cache-Control": "no-store"})


class DirectorRootView(DeviceAPIView):
    """One version of the director's root (a vehicle walks the chain from the version it trusts)."""

    @extend_schema(
        operation_id="device_director_root",
        summary="Director root metadata, version N",
        responses={
            200: OpenApiResponse(OpenApiTypes.OBJECT, description="TUF root metadata of the director."),
            **_errors({401: "Missing, unknown, wrong or revoked device credential.", 404: "No such version."}),
        },
    )
    def get(self, request: Request, version: int) -> HttpResponse:
        stored = DirectorRoot.objects.filter(version=version).first()
        if stored is None:
            raise Http404("No such director root version.")
        return HttpResponse(bytes(stored.content), content_type=JSON)


@require_safe
def image_repository_file(request: HttpRequest, path: str) -> HttpResponseBase:
    """A file of the image repository's static tree (metadata/ or targets/), never anything outside it."""
    base = Path(settings.IMAGE_REPOSITORY_DIR).resolve()
    candidate = (base / path).resolve()
    if not path or not candidate.is_relative_to(base) or not candidate.is_file() or candidate.name.startswith("."):
        raise Http404("No such repository file.")
    content_type = JSON if candidate.suffix == ".json" else "application/octet-stream"
    response = FileResponse(candidate.open("rb"), content_type=content_type)
    if candidate.name in ("timestamp.json", "root.json"):  # the only names whose content changes
        response["Cache-Control"] = "no-cache"
    return response
