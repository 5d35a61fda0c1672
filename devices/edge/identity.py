"""THE one place a device's identity comes from on the device API.

Today: a per-device credential issued at provisioning, sent as `Authorization: Device <serial>:<secret>`.
The sha256 of the presented secret is compared with the stored one inside one indexed lookup
(`accepted_devices`), so an unknown serial, a wrong secret, a revoked credential and an inactive device all cost
the same query and get the same answer.
Every presented credential that fails is recorded as one `device_auth_failed` security event (same message for
every reason); a request with no device credential at all is a plain 401 and no event.

How mTLS replaces it: the TLS terminator verifies the client certificate against the device CA and passes the
certificate's sha256 fingerprint in a header it sets itself (stripping any client-supplied copy), e.g.
`X-Client-Cert-Fingerprint`, or in the WSGI environ. A `DeviceCertificateAuthentication` class then looks up
`Device.certificate_fingerprint` and applies the same status rules as `accepted_devices` below; the device views
keep calling `current_device(request)` and name only `DEVICE_AUTHENTICATION` / `IsDevice`, so swapping the
class in `DEVICE_AUTHENTICATION` is the whole change for every endpoint but the check-in's short path
(`devices.edge.checkin`), which embeds `accepted_devices` and reads `presented_credential`: give both the
fingerprint (until then, a check-in without the header simply takes the full path).
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import HttpRequest
from rest_framework import HTTP_HEADER_ENCODING, exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from approvals.audit.security import SecurityEventKind, security_event
from devices.choices import DeviceStatus
from devices.credentials import secret_hash
from devices.models import Device

KEYWORD = "Device"
MAX_HEADER_LENGTH = 512
# Devices that may not talk to the server at all; quarantined ones may check in but get no offer.
REFUSED_STATUSES = frozenset({DeviceStatus.REVOKED, DeviceStatus.DECOMMISSIONED})


class DeviceIdentity:
    """What authentication puts on `request.user` for a device: not a Django user, never staff."""

    is_authenticated = True
    is_active = True
    is_staff = False
    is_superuser = False

    def __init__(self, device: Device):
        self.device = device

    def __str__(self) -> str:
        return f"device:{self.device.serial}"


class MalformedCredential(Exception):
    """A device credential was presented but cannot be one (too long, not ASCII, no serial or secret)."""

    def __init__(self, serial: str = ""):
        super().__init__("Invalid device credentials.")
        self.serial = serial


def presented_credential(request: HttpRequest | Request) -> tuple[str, str] | None:
    """(serial, secret) of `Authorization: Device <serial>:<secret>`; None when no device credential is presented.

    Reads only the header, never the database. Raises MalformedCredential for a header that names the device
    scheme (or cannot be read) but holds no usable credential.
    """
    header = request.META.get("HTTP_AUTHORIZATION", b"")
    if isinstance(header, str):
        header = header.encode(HTTP_HEADER_ENCODING)  # as DRF reads it: latin-1, so any byte survives
    if not header:
        return None
    if len(header) > MAX_HEADER_LENGTH:
        raise MalformedCredential()
    try:
        keyword, _, value = header.decode("ascii").partition(" ")
    except UnicodeDecodeError:
        raise MalformedCredential() from None
    if keyword != KEYWORD:
        return None
    serial, sep, secret = value.strip().partition(":")
    if not sep or not serial or not secret:
        raise MalformedCredential(serial)
    return serial, secret


def accepted_devices(serial: str, secret: str) -> QuerySet[Device]:
    """THE rule of who may talk to the device API: the device with this serial whose credential's hash matches the
    secret, is not revoked, and whose status allows it (at most one device; none for every kind of failure).

    The secret's sha256 is compared by PostgreSQL in the same indexed lookup whether the serial is unknown, the
    secret wrong, the credential revoked or the device inactive, so every failure costs the same one lookup; the
    presented value is a digest, so a comparison's timing says nothing about the stored one. The one-statement
    check-in (devices.edge.checkin) embeds this same query.
    """
    return (
        Device.objects.filter(
            serial=serial,
            credential__secret_hash=secret_hash(secret),
            credential__revoked_at__isnull=True,
        )
        .exclude(status__in=REFUSED_STATUSES)
        .order_by()
    )


def _device_for(serial: str, secret: str) -> Device | None:
    return accepted_devices(serial, secret).select_related("region", "hardware_model").first()


def _refused(request: HttpRequest | Request, serial: str = "") -> exceptions.AuthenticationFailed:
    """Record a failed device authentication and build the one answer every failure gets."""
    # The event says as little as the answer: which of the reasons it was would tell an attacker what to try next
    # if the record ever leaked, and the security officer can look the serial up.
    security_event(
        kind=SecurityEventKind.DEVICE_AUTH_FAILED,
        source="device_api.auth",
        message="Invalid device credentials.",
        device_serial=serial,
        address=str(request.META.get("REMOTE_ADDR", "") or ""),
    )
    return exceptions.AuthenticationFailed("Invalid device credentials.")


class DeviceCredentialAuthentication(BaseAuthentication):
    """`Authorization: Device <serial>:<secret>` -> request.user = DeviceIdentity, request.auth = the Device."""

    def authenticate(self, request: Request) -> tuple[DeviceIdentity, Device] | None:
        try:
            presented = presented_credential(request)
        except MalformedCredential as exc:
            raise _refused(request, exc.serial) from None
        if presented is None:
            return None
        serial, secret = presented
        device = _device_for(serial, secret)
        if device is None:
            # One answer for unknown serial, wrong secret, revoked credential and inactive device.
            raise _refused(request, serial)
        return DeviceIdentity(device), device

    def authenticate_header(self, request: Request) -> str:
        return f'{KEYWORD} realm="device"'


class IsDevice(BasePermission):
    """Only an authenticated device (never a staff user or token) may use the device API."""

    message = "Device credentials are required."

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, Device)


def current_device(request: Request) -> Device:
    """The device making this request, as established by the authentication class (the only source)."""
    device = request.auth
    if not isinstance(device, Device):
        raise exceptions.NotAuthenticated()
    return device


DEVICE_AUTHENTICATION: list[type[BaseAuthentication]] = [DeviceCredentialAuthentication]
DEVICE_PERMISSIONS: list[type[BasePermission]] = [IsDevice]
