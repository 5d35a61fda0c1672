"""Device identity over mutual TLS through the real nginx: certificates from the device PKI, the agent's pinning and
origin discipline on both transports, revocation, certificate-bound download tokens and spoofed identity headers.

Every refusal test asserts the refusal, that nothing changed, and the record it leaves (a security event, or
nginx's own log line for a handshake the app never sees)."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import json
import socket
import ssl
import threading
import time
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from approvals.audit.choices import SecurityEventKind
from approvals.audit.models import SecurityEvent
from devices.agent.aio import AsyncHttpTransport
from devices.agent.tls import FOREIGN_ORIGIN, PIN_MISMATCH
from devices.agent.transport import HttpTransport, TransportError
from devices.certificates import device_certificate_renew, device_certificate_revoke
from devices.edge.download_tokens import download_token_issue
from devices.models import Device
from devices.pki import device_identity_write, issuer_open, pki_paths, server_pins
from rollouts.models import Deployment
from tests.device_api.conftest import IMAGE, checkin_body
from tests.security.attestation_support import attested_checkin, attested_checkin_async

pytestmark = [pytest.mark.django_db(transaction=True)]

CHECKIN = "/device/v1/checkin/"


def _seen(device: Device) -> tuple[Any, ...]:
    device.refresh_from_db()
    return device.last_seen_at, device.reported_at, device.reported_boot_count, device.certificate_fingerprint


def _events(kind: str) -> list[SecurityEvent]:
    return list(SecurityEvent.objects.filter(kind=kind))


def _deployment(device: Device) -> Deployment:
    found = Deployment.objects.filter(device=device).order_by("-pk").first()
    assert found is not None
    return found


def _target(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_a_provisioned_device_checks_in_and_downloads_over_mutual_tls(edge, pilot, sha):
    transport = edge.transport(pilot)
    answer = attested_checkin(transport)
    offer = answer["offer"]
    assert offer is not None and offer["artifact"]["sha256"] == sha
    assert offer["artifact"]["url"].startswith(f"{edge.server}/device/v1/artifacts/{sha}/?token=")
    received = bytearray()
    total = transport.download(offer["artifact"]["url"], sha256=sha, offset=0, sink=lambda _p, c: received.extend(c))
    assert total == len(IMAGE) and bytes(received) == IMAGE  # sent by nginx after the app authorised it
    partial = bytearray()
    transport.download(offer["artifact"]["url"], sha256=sha, offset=100, sink=lambda _p, c: partial.extend(c))
    assert bytes(partial) == IMAGE[100:]
    pilot.refresh_from_db()
    assert pilot.last_seen_at is not None and pilot.reported_boot_count == 12
    assert not SecurityEvent.objects.exists()


def test_the_asyncio_transport_speaks_mutual_tls_with_pinning_too(edge, pilot):
    transport = AsyncHttpTransport(edge.server, tls=edge.identity(pilot), timeout=15)
    answer = asyncio.run(attested_checkin_async(transport))
    assert answer["offer"] is not None
    pilot.refresh_from_db()
    assert pilot.last_seen_at is not None


class RecordingTlsServer:
    """A TLS server with a given certificate that records every application byte it receives."""

    def __init__(self, certificate: Path, key: Path):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(certificate), str(key))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = b""
        self.handshakes = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(20)
        try:
            while True:
                raw, _ = self.listener.accept()
                raw.settimeout(3)
                try:
                    with self.context.wrap_socket(raw, server_side=True) as tls:
                        self.handshakes += 1
                        while chunk := tls.recv(4096):
                            self.received += chunk
                except (OSError, ssl.SSLError):
                    pass
        except OSError:
            return

    def close(self) -> None:
        self.listener.close()


def _server_certificate(tmp_path: Path, *, same_ca: bool) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 with a key no agent pins: from the device CA itself, or a stranger's CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if same_ca:
        with issuer_open() as issuer:
            certificate = issuer.sign(builder)
            chain = certificate.public_bytes(serialization.Encoding.PEM) + issuer.certificate.public_bytes(
                serialization.Encoding.PEM
            )
    else:
        stranger = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some other CA")])
        certificate = builder.issuer_name(name).sign(stranger, hashes.SHA256())
        chain = certificate.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = tmp_path / f"impostor-{same_ca}.pem", tmp_path / f"impostor-{same_ca}-key.pem"
    cert_path.write_bytes(chain)
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.mark.parametrize("same_ca", [False, True], ids=["another-ca", "device-ca-unpinned-key"])
def test_the_agent_never_sends_a_request_to_a_server_whose_key_is_not_pinned(edge, pilot, tmp_path, same_ca):
    impostor = RecordingTlsServer(*_server_certificate(tmp_path, same_ca=same_ca))
    before = _seen(pilot)
    try:
        url = f"https://127.0.0.1:{impostor.port}"
        with pytest.raises(TransportError) as blocking:
            HttpTransport(url, tls=edge.identity(pilot), timeout=5).post_json(CHECKIN, checkin_body())
        with pytest.raises(TransportError) as aio:
            asyncio.run(AsyncHttpTransport(url, tls=edge.identity(pilot), timeout=5).post_json(CHECKIN, checkin_body()))
        time.sleep(0.3)
    finally:
        impostor.close()
    assert impostor.received == b""  # not one byte of the request (nor the device's report) left the agent
    assert blocking.value.retryable and aio.value.retryable
    if same_ca:
        # The chain verifies (same CA, right name): only the pin tells the impostor apart.
        assert impostor.handshakes == 2
        assert blocking.value.code == PIN_MISMATCH and aio.value.code == PIN_MISMATCH
    assert _seen(pilot) == before


def test_the_agent_refuses_urls_on_another_origin_before_connecting(edge, pilot, sha):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    transport = edge.transport(pilot)
    offer = attested_checkin(transport)["offer"]
    foreign = f"https://127.0.0.1:{port}{_target(offer['artifact']['url'])}"
    with pytest.raises(TransportError) as refused:
        transport.download(foreign, sha256=sha, offset=0, sink=lambda _p, _c: None)
    aio = AsyncHttpTransport(edge.server, tls=edge.identity(pilot), timeout=5)
    with pytest.raises(TransportError) as refused_aio:
        asyncio.run(aio.download(f"http://attacker.invalid/{sha}", sha256=sha, offset=0, sink=lambda _p, _c: None))
    with pytest.raises(OSError):
        listener.accept()  # nobody came
    listener.close()
    assert refused.value.code == FOREIGN_ORIGIN and not refused.value.retryable
    assert refused_aio.value.code == FOREIGN_ORIGIN
    assert transport.downloads == 0 and aio.downloads == 0 and aio.requests == 0


def _stranger_identity(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TCU-STRANGER")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Not the device CA")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "stranger.pem", tmp_path / "stranger-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_nginx_refuses_a_client_certificate_from_an_unknown_ca_and_no_certificate(edge, pilot, tmp_path):
    before = _seen(pilot)
    context = ssl.create_default_context(cafile=str(pki_paths().bundle))
    context.load_cert_chain(*map(str, _stranger_identity(tmp_path)))
    bare = ssl.create_default_context(cafile=str(pki_paths().bundle))
    messages = []
    for client_context in (context, bare):  # a stranger's certificate, then none at all
        connection = http.client.HTTPSConnection("127.0.0.1", edge.tls_port, context=client_context, timeout=10)
        try:
            body = json.dumps(checkin_body())
            connection.request("POST", CHECKIN, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            assert response.status == 400
            assert json.loads(response.read())["error"]["code"] == "client_certificate_refused"
        finally:
            connection.close()
        # nginx refused it before the device API and handed it to the app's refusal endpoint, which recorded it.
        (event,) = _events(SecurityEventKind.DEVICE_AUTH_FAILED)
        assert event.source == "device_api.tls" and event.address == "127.0.0.1"
        messages.append(event.message)
    assert "FAILED" in messages[0] and "NONE" in messages[1], messages
    assert SecurityEvent.objects.get().count == 2
    assert _seen(pilot) == before


def test_the_tls_refusal_endpoint_records_nothing_for_a_caller_past_nginx_or_a_device_through_it(edge, pilot):
    status, _ = edge.direct("POST", "/device/v1/tls-refused/", {"X-OTA-TLS-Refused": "FAILED:forged"})
    assert status == 404
    status, _ = edge.raw(pilot, "POST", "/device/v1/tls-refused/", {"X-OTA-TLS-Refused": "FAILED:forged"})
    assert status == 404
    assert not SecurityEvent.objects.exists()


def test_a_revoked_certificate_is_refused_from_the_next_check_in_and_ranges_within_the_bound(
    edge,
    pilot,
    sha,
    security_officer,
):
    transport = edge.transport(pilot)
    offer = attested_checkin(transport)["offer"]
    transport.download(offer["artifact"]["url"], sha256=sha, offset=0, sink=lambda _p, _c: None)  # pass cached
    revoked = device_certificate_revoke(actor=security_officer, device=pilot, reason="unit reported stolen")
    before = _seen(pilot)
    assert before[3] is None  # the device row no longer names a certificate
    with pytest.raises(TransportError) as refused:
        transport.post_json(CHECKIN, checkin_body(boot_count=99))
    assert refused.value.status == 401
    time.sleep(1.2)  # OTA_DOWNLOAD_RECHECK_SECONDS=1: the bound on a download already vouched for
    with pytest.raises(TransportError) as range_refused:
        transport.download(offer["artifact"]["url"], sha256=sha, offset=10, sink=lambda _p, _c: None)
    assert range_refused.value.status == 401
    assert _seen(pilot) == before
    (event,) = _events(SecurityEventKind.DEVICE_AUTH_FAILED)
    assert event.device_serial == pilot.serial and "revoked" in event.message and event.count == 2
    assert event.subject == f"certificate:{revoked.serial_number}"


@pytest.mark.parametrize("recheck_seconds", ["4"])
def test_nginx_reuses_a_vouch_for_its_certificate_only_and_stops_within_the_bound_on_revocation(
    edge, pilot, other_pilot, sha, security_officer
):
    mine = edge.transport(pilot)
    offer = attested_checkin(mine)["offer"]
    target = _target(offer["artifact"]["url"])
    decided = time.time()  # the app's first (and only) database check of this download comes after this
    for start in (0, 100, 5000):
        status, body = edge.raw(pilot, "GET", target, {"Range": f"bytes={start}-{start + 9}"})
        assert status == 206 and body == IMAGE[start : start + 10]
    resumed = bytearray()  # the agent's resume, through the same cached vouch
    mine.download(offer["artifact"]["url"], sha256=sha, offset=100, sink=lambda _p, c: resumed.extend(c))
    assert bytes(resumed) == IMAGE[100:]
    assert edge.app_requests(f"/artifacts/{sha}/vouch/") == 1  # nginx reused the app's vouch
    assert edge.app_requests(f"/artifacts/{sha}/?") == 0  # and sent every range itself
    # Right after the owner's cached use, its URL over another device's certificate is refused and recorded.
    status, body = edge.raw(other_pilot, "GET", target, {"Range": "bytes=0-9"})
    assert status == 403 and json.loads(body)["error"]["code"] == "download_token_invalid"
    (foreign,) = _events(SecurityEventKind.DEVICE_ARTIFACT_REFUSED)
    assert foreign.device_serial == other_pilot.serial
    device_certificate_revoke(actor=security_officer, device=pilot, reason="unit reported stolen")
    seen = []
    while time.time() < decided + 8:
        status, _ = edge.raw(pilot, "GET", target, {"Range": "bytes=1-1"})
        seen.append((round(time.time() - decided, 2), status))
        if status != 206:
            break
        time.sleep(0.1)
    assert seen[-1][1] == 401 and seen[-1][0] <= 4.5, seen  # OTA_DOWNLOAD_RECHECK_SECONDS of the last check
    (revoked,) = _events(SecurityEventKind.DEVICE_AUTH_FAILED)
    assert revoked.device_serial == pilot.serial and "revoked" in revoked.message


def test_a_renewed_device_uses_its_new_certificate_and_the_old_one_and_its_tokens_are_refused(
    edge,
    pilot,
    sha,
):
    old = edge.transport(pilot)
    offer = attested_checkin(old)["offer"]
    renewal = device_certificate_renew(actor=None, device=pilot, reason="due")
    device_identity_write(edge.identities, renewal.issued, server_pins())
    new = edge.transport(pilot)
    with pytest.raises(TransportError) as refused:
        old.post_json(CHECKIN, checkin_body())
    assert refused.value.status == 401
    # The token the old certificate was given is bound to it: refused over the new one.
    with pytest.raises(TransportError) as token_refused:
        new.download(offer["artifact"]["url"], sha256=sha, offset=0, sink=lambda _p, _c: None)
    assert token_refused.value.status == 403
    fresh = attested_checkin(new)["offer"]
    received = bytearray()
    new.download(fresh["artifact"]["url"], sha256=sha, offset=0, sink=lambda _p, c: received.extend(c))
    assert bytes(received) == IMAGE
    assert {e.kind for e in SecurityEvent.objects.all()} == {
        SecurityEventKind.DEVICE_AUTH_FAILED,
        SecurityEventKind.DEVICE_ARTIFACT_REFUSED,
    }


def test_a_certificate_of_device_x_cannot_act_on_device_y_deployment_or_use_its_token(
    edge,
    pilot,
    other_pilot,
    sha,
):
    theirs = attested_checkin(edge.transport(other_pilot))["offer"]
    their_deployment = _deployment(other_pilot)
    status_before = (their_deployment.status, their_deployment.last_seq)
    mine = edge.transport(pilot)
    report = {"seq": 1, "status": "downloading"}
    with pytest.raises(TransportError) as cross:
        mine.post_json(f"/device/v1/deployments/{their_deployment.pk}/status/", report)
    assert cross.value.status == 404
    with pytest.raises(TransportError) as token:
        mine.download(theirs["artifact"]["url"], sha256=sha, offset=0, sink=lambda _p, _c: None)
    assert token.value.status == 403 and mine.bytes_received == 0
    their_deployment.refresh_from_db()
    assert (their_deployment.status, their_deployment.last_seq) == status_before
    (crossing,) = _events(SecurityEventKind.DEVICE_CROSS_DEVICE)
    assert crossing.device_serial == pilot.serial and crossing.subject == f"deployment:{their_deployment.pk}"
    (foreign_token,) = _events(SecurityEventKind.DEVICE_ARTIFACT_REFUSED)
    assert foreign_token.device_serial == pilot.serial and "download_token_invalid" in foreign_token.message


def test_an_expired_token_is_refused_and_recorded(edge, pilot, sha):
    transport = edge.transport(pilot)
    attested_checkin(transport)
    deployment = _deployment(pilot)
    pilot.refresh_from_db()
    expired = download_token_issue(
        device_id=pilot.pk,
        certificate=pilot.certificate_fingerprint or "",
        deployment_id=deployment.pk,
        sha256=sha,
        length=len(IMAGE),
        deadline_at=None,
        now=time.time() - 3600,
    )
    status_before = _deployment(pilot).status
    with pytest.raises(TransportError) as refused:
        transport.download(
            f"/device/v1/artifacts/{sha}/?token={expired}", sha256=sha, offset=0, sink=lambda _p, _c: None
        )
    assert refused.value.status == 401 and refused.value.code == "download_token_expired"
    assert transport.bytes_received == 0 and _deployment(pilot).status == status_before
    (event,) = _events(SecurityEventKind.DEVICE_ARTIFACT_REFUSED)
    assert event.device_serial == pilot.serial and "download_token_expired" in event.message


def test_identity_headers_sent_straight_to_the_app_port_are_refused_and_recorded(edge, pilot):
    certificate = (edge.identities / pilot.serial / "device.pem").read_text()
    body = json.dumps(checkin_body()).encode()
    before = _seen(pilot)
    spoofs = [
        {"X-OTA-Client-Cert": quote(certificate, safe="")},
        {"X-OTA-Client-Cert": quote(certificate, safe=""), "X-OTA-Proxy-Auth": "guessed"},
        {"Authorization": f"Device {pilot.serial}:whatever"},  # the development mode is off
    ]
    for headers in spoofs:
        status, answer = edge.direct("POST", CHECKIN, {**headers, "Content-Type": "application/json"}, body)
        assert status == 401, answer
    assert _seen(pilot) == before
    events = _events(SecurityEventKind.DEVICE_AUTH_FAILED)
    assert sum(event.count for event in events) == 3
    messages = {event.message for event in events}
    assert "Spoofed identity headers: not from the device TLS proxy." in messages
    assert any("disabled" in message for message in messages)


def test_a_client_cannot_set_the_identity_headers_through_nginx(edge, pilot, other_pilot):
    theirs = (edge.identities / other_pilot.serial / "device.pem").read_text()
    other_before = _seen(other_pilot)
    headers = {
        "Content-Type": "application/json",
        "X-OTA-Client-Cert": quote(theirs, safe=""),
        "X-OTA-Proxy-Auth": "guessed",
        "X_OTA_Client_Cert": quote(theirs, safe=""),
    }
    status, _ = edge.raw(pilot, "POST", CHECKIN, headers, json.dumps(checkin_body(boot_count=77)).encode())
    assert status == 200  # nginx replaced both headers: the caller is who its certificate says
    pilot.refresh_from_db()
    assert pilot.reported_boot_count == 77
    assert _seen(other_pilot) == other_before
