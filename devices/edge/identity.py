"""THE one place a device's identity comes from on the device API.

Today: a per-device credential issued at provisioning, sent as `Authorization: Device <serial>:<secret>`.
The stored sha256 of the secret is compared with `hmac.compare_digest`, so the comparison takes the same time
whether the serial is unknown, the credential revoked or the secret wrong (a dummy hash is compared then too).
Every presented credential that fails is recorded as one `device_auth_failed` security event (same message for
every reason); a request with no device credential at all is a plain 401 and no event.

How mTLS replaces it: the TLS terminator verifies the client certificate against the device CA and passes the
certificate's sha256 fingerprint in a header it sets itself (stripping any client-supplied copy), e.g.
`X-Client-Cert-Fingerprint`, or in the WSGI environ. A `DeviceCertificateAuthentication` class then looks up
`Device.certificate_fingerprint` and applies the same status rules as `_device_for` below; the device views
keep calling `current_device(request)` and name only `DEVICE_AUTHENTICATION` / `IsDevice`, so swapping the
class in `DEVICE_AUTHENTICATION` is the whole change.
"""

from __future__ import annotations

import hmac
from typing import Any

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from approvals.audit.security import SecurityEventKind, security_event
from devices.choices import DeviceStatus
from devices.credentials import secret_hash
from devices.models import Device, DeviceCredential

KEYWORD = "Device"
MAX_HEADER_LENGTH = 512
# Devices that may not talk to the server at all; quarantined ones may check in but get no offer.
REFUSED_STATUSES = frozenset({DeviceStatus.REVOKED, DeviceStatus.DECOMMISSIONED})
_DUMMY_HASH = secret_hash("no such device")


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


def _device_for(serial: str, secret: str) -> Device | None:
    credential = (
        DeviceCredential.objects.select_related("device", "device__region", "device__hardware_model")
        .filter(device__serial=serial)
        .first()
    )
    stored = credential.secret_hash if credential else _DUMMY_HASH
    matches = hmac.compare_digest(stored, secret_hash(secret))
    if credential is None or not matches or credential.revoked_at is not None:
        return None
    if credential.device.status in REFUSED_STATUSES:
        return None
    return credential.device


def _refused(request: Request, serial: str = "") -> exceptions.AuthenticationFailed:
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
        header = get_authorization_header(request)
        if not header:
            return None
        if len(header) > MAX_HEADER_LENGTH:
            raise _refused(request)
        try:
            keyword, _, value = header.decode("ascii").partition(" ")
        except UnicodeDecodeError:
            raise _refused(request) from None
        if keyword != KEYWORD:
            return None
        serial, sep, secret = value.strip().partition(":")
        if not sep or not serial or not secret:
            raise _refused(request, serial)
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
