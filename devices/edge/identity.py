"""THE one place a device's identity comes from on the device API.

By default (OTA_DEVICE_AUTH=certificate) a device is the client certificate nginx verified on the device port
(mutual TLS against the device CA bundle, devices.edge.nginx). nginx passes the verified certificate to the app in
`X-OTA-Client-Cert` (its `$ssl_client_escaped_cert`) and adds `X-OTA-Proxy-Auth`, a secret only it and the app know
(DEVICE_PROXY_SECRET_FILE); it sets both itself, so a client's own copies never pass. The app trusts the certificate
header only with that secret (compared in constant time): anything that reaches gunicorn's port directly and
sends the headers without it is refused and recorded (`device_auth_failed`, "spoofed identity headers"). The
identity is the sha256 of the DER certificate, matched against the device's active `DeviceCertificate` (the active
certificate, through its own row) in one indexed lookup, which the one-statement check-in (devices.edge.checkin)
embeds.

OTA_DEVICE_AUTH=secret is the development mode: `Authorization: Device <serial>:<secret>` (a per-device credential
whose sha256 is stored) is accepted too. Off by default; with it off such a header is refused and recorded.

Every presented identity that fails is recorded as one `device_auth_failed` security event (same answer for every
reason); a request with no identity at all is a plain 401 and no event.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from django.conf import settings
from django.db.models import QuerySet
from django.http import HttpRequest
from rest_framework import HTTP_HEADER_ENCODING, exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from approvals.audit.security import SecurityEventKind, security_event
from devices.certificates import certificate_presented_revoked
from devices.choices import CertificateStatus, DeviceStatus
from devices.credentials import secret_hash
from devices.models import Device
from ota_project.files import run_time_secret

KEYWORD = "Device"
MAX_HEADER_LENGTH = 512
MAX_CERTIFICATE_HEADER_LENGTH = 16 * 1024
CERTIFICATE_META = "HTTP_X_OTA_CLIENT_CERT"
PROXY_AUTH_META = "HTTP_X_OTA_PROXY_AUTH"
PROXY_AUTH_HEADER = "X-OTA-Proxy-Auth"
TLS_REFUSED_META = "HTTP_X_OTA_TLS_REFUSED"
FORWARDED_FOR_META = "HTTP_X_FORWARDED_FOR"
CERTIFICATE_HEADER = "X-OTA-Client-Cert"
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
    """A device credential was presented but cannot be one (too long, not ASCII, no serial or secret), or identity
    headers came without the proxy's secret, or a secret credential while that mode is off; `why` goes to the
    security event only."""

    def __init__(self, serial: str = "", why: str = "Invalid device credentials."):
        super().__init__("Invalid device credentials.")
        self.serial = serial
        self.why = why


@dataclass(frozen=True)
class PresentedIdentity:
    """What a request presents: a verified certificate's fingerprint, or (development mode) serial and secret."""

    fingerprint: str = ""
    serial: str = ""
    secret: str = ""
    certificate: bytes = b""  # the DER certificate nginx verified (attestation checks signatures with its key)

    @property
    def by_certificate(self) -> bool:
        return bool(self.fingerprint)

    @property
    def proof(self) -> str:
        """What a download pass compares: the fingerprint, or the secret's sha256."""
        return self.fingerprint or secret_hash(self.secret)

    @property
    def key(self) -> str:
        """Names the presenter before the database is asked (download pass keys)."""
        return f"c:{self.fingerprint}" if self.fingerprint else f"s:{self.serial}"


def secret_mode() -> bool:
    """True only when the development mode that accepts secret credentials is explicitly on."""
    return getattr(settings, "OTA_DEVICE_AUTH", "certificate") == "secret"


def _proxy_secret_file() -> Path:
    configured = getattr(settings, "DEVICE_PROXY_SECRET_FILE", None)
    return Path(configured) if configured else Path(settings.DATA_DIR) / "device_proxy_secret"


def device_proxy_secret() -> str:
    """The secret nginx adds to every request it proxies from the device port (OTA_DEVICE_PROXY_SECRET, else the
    file, generated on first use with mode 0600)."""
    return run_time_secret(_proxy_secret_file(), os.environ.get("OTA_DEVICE_PROXY_SECRET", "")).decode()


def from_device_proxy(request: HttpRequest | Request) -> bool:
    """Whether the request carries the device TLS proxy's secret (compared in constant time)."""
    return hmac.compare_digest(_header_bytes(request, PROXY_AUTH_META), device_proxy_secret().encode())


def tls_refusal_record(request: HttpRequest) -> bool:
    """Record a client certificate nginx refused (unknown CA, expired, none): nginx hands such a request here
    (`error_page 495 496`) with its verification result. False (nothing recorded) unless it came from nginx."""
    verdict = _header_bytes(request, TLS_REFUSED_META).decode("latin-1")[:120]
    if not verdict or _header_bytes(request, CERTIFICATE_META) or not from_device_proxy(request):
        return False  # not nginx's hand-off of a refused handshake (which carries no certificate)
    address = _header_bytes(request, FORWARDED_FOR_META).decode("latin-1")[:64]
    security_event(
        kind=SecurityEventKind.DEVICE_AUTH_FAILED,
        source="device_api.tls",
        message=f"The TLS proxy refused the client certificate: {verdict}.",
        address=address,
    )
    return True


def _certificate_der(escaped: bytes) -> bytes:
    """The DER certificate in nginx's `$ssl_client_escaped_cert` (URL-encoded PEM)."""
    pem = unquote_to_bytes(escaped)
    begin, end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    head = pem.find(begin)
    tail = pem.find(end, head + 1)
    if head < 0 or tail < 0:
        raise MalformedCredential(why="The certificate header holds no certificate.")
    try:
        der = base64.b64decode(b"".join(pem[head + len(begin) : tail].split()), validate=True)
    except ValueError:
        raise MalformedCredential(why="The certificate header holds no certificate.") from None
    return der


def _header_bytes(request: HttpRequest | Request, name: str) -> bytes:
    value = request.META.get(name, b"")
    return value.encode(HTTP_HEADER_ENCODING) if isinstance(value, str) else value


def presented_identity(request: HttpRequest | Request) -> PresentedIdentity | None:
    """The identity a request presents (None: none at all); MalformedCredential for one that cannot be trusted.

    Reads only headers, never the database. The certificate header counts only with the proxy's secret."""
    certificate = _header_bytes(request, CERTIFICATE_META)
    proxy_auth = _header_bytes(request, PROXY_AUTH_META)
    if certificate or proxy_auth:
        if not from_device_proxy(request):
            raise MalformedCredential(why="Spoofed identity headers: not from the device TLS proxy.")
        if not certificate:
            return None  # through nginx without a client certificate (nginx refuses that; defence in depth)
        if len(certificate) > MAX_CERTIFICATE_HEADER_LENGTH:
            raise MalformedCredential(why="The certificate header is too long.")
        der = _certificate_der(certificate)
        return PresentedIdentity(fingerprint=hashlib.sha256(der).hexdigest(), certificate=der)
    presented = presented_credential(request)
    if presented is None:
        return None
    if not secret_mode():
        raise MalformedCredential(presented[0], why="Secret device credentials are disabled (OTA_DEVICE_AUTH).")
    return PresentedIdentity(serial=presented[0], secret=presented[1])


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


def accepted_certificate_devices(fingerprint: str) -> QuerySet[Device]:
    """THE rule of who may talk to the device API with a certificate: the device that holds the active certificate
    with this fingerprint (nginx verified it against the CA and its validity period), if its status allows it.

    One lookup on the certificates' unique fingerprint index, joined to the device by the certificate's own foreign
    key: only the certificate services (issue, renew, revoke) decide which device a certificate belongs to, never an
    inventory edit of `Device.certificate_fingerprint` (which mirrors the active one for the pages). The
    one-statement check-in (devices.edge.checkin) embeds this same query."""
    return (
        Device.objects.filter(certificates__fingerprint=fingerprint, certificates__status=CertificateStatus.ACTIVE)
        .exclude(status__in=REFUSED_STATUSES)
        .order_by()
    )


def identity_devices(presented: PresentedIdentity) -> QuerySet[Device]:
    """The accepted device (at most one) for what the request presents."""
    if presented.by_certificate:
        return accepted_certificate_devices(presented.fingerprint)
    return accepted_devices(presented.serial, presented.secret)


def _device_for(presented: PresentedIdentity) -> Device | None:
    return identity_devices(presented).select_related("region", "hardware_model").first()


def _refused(
    request: HttpRequest | Request, serial: str = "", why: str = "Invalid device credentials.", subject: str = ""
) -> exceptions.AuthenticationFailed:
    """Record a failed device authentication and build the one answer every failure gets."""
    # The event says as little as the answer: which of the reasons it was would tell an attacker what to try next
    # if the record ever leaked, and the security officer can look the serial up.
    security_event(
        kind=SecurityEventKind.DEVICE_AUTH_FAILED,
        source="device_api.auth",
        message=why,
        device_serial=serial,
        address=str(request.META.get("REMOTE_ADDR", "") or ""),
        subject=subject,
    )
    return exceptions.AuthenticationFailed("Invalid device credentials.")


def _refused_certificate(request: HttpRequest | Request, fingerprint: str) -> exceptions.AuthenticationFailed:
    # Only on failure: say whether a revoked or superseded certificate is still presenting (the audit's question).
    ended = certificate_presented_revoked(fingerprint)
    if ended is not None:
        return _refused(
            request,
            ended.device.serial,
            f"A {ended.status} device certificate was presented.",
            subject=f"certificate:{ended.serial_number}",
        )
    return _refused(
        request, why="A certificate bound to no active device was presented.", subject=f"sha256:{fingerprint}"
    )


class DeviceAuthentication(BaseAuthentication):
    """The verified client certificate (or, in development mode, the secret credential) -> request.user =
    DeviceIdentity, request.auth = the Device; request.device_identity = what was presented."""

    def authenticate(self, request: Request) -> tuple[DeviceIdentity, Device] | None:
        try:
            presented = presented_identity(request)
        except MalformedCredential as exc:
            raise _refused(request, exc.serial, exc.why) from None
        if presented is None:
            return None
        device = _device_for(presented)
        if device is None:
            # One answer for every reason: unknown, wrong, revoked, inactive.
            if presented.by_certificate:
                raise _refused_certificate(request, presented.fingerprint)
            raise _refused(request, presented.serial)
        request._request.device_identity = presented  # type: ignore[attr-defined]
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


def request_identity(request: HttpRequest | Request) -> PresentedIdentity | None:
    """What the authenticated request presented (set by DeviceAuthentication or the short paths)."""
    raw = request._request if isinstance(request, Request) else request
    identity = getattr(raw, "device_identity", None)
    return identity if isinstance(identity, PresentedIdentity) else None


DEVICE_AUTHENTICATION: list[type[BaseAuthentication]] = [DeviceAuthentication]
DEVICE_PERMISSIONS: list[type[BasePermission]] = [IsDevice]
