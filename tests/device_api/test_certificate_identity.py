"""The certificate identity inside the app (what nginx passes, in process): the one-statement check-in costs the
same one statement with a certificate, the headers count only with the proxy secret, a revoked or superseded
certificate is refused at once, and the secret credential is refused while its development mode is off."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from approvals.audit.choices import SecurityEventKind
from approvals.audit.models import SecurityEvent
from devices.certificates import (
    device_ca_ensure,
    device_certificate_renew,
    device_certificate_revoke,
    device_certificates_provision,
)
from devices.edge.identity import device_proxy_secret
from devices.edge.quiet import last_seen_flush
from devices.models import Device
from devices.pki import DeviceKeyPair, device_certificate_make, issuer_open
from tests.device_api.conftest import checkin_body
from tests.security.attestation_support import evidence

pytestmark = pytest.mark.django_db

CHECKIN = "/device/v1/checkin/"


@pytest.fixture(autouse=True)
def _certificate_mode(settings, db):
    settings.OTA_DEVICE_AUTH = "certificate"
    settings.OTA_DEVICE_CA_KEY = "file"  # the token path is covered by tests/devices/test_certificates.py
    device_ca_ensure()


def _device(fleet) -> Device:
    return Device.objects.filter(region=fleet["region"]).order_by("serial")[0]


def _through_nginx(issued: DeviceKeyPair, secret: str | None = None) -> APIClient:
    """A client sending what nginx sends for a verified certificate: the escaped PEM and the proxy secret."""
    client = APIClient()
    client.credentials(
        HTTP_X_OTA_CLIENT_CERT=quote(issued.certificate_pem.decode(), safe=""),
        HTTP_X_OTA_PROXY_AUTH=device_proxy_secret() if secret is None else secret,
    )
    return client


def _post(client: APIClient) -> tuple[int, dict, int]:
    with CaptureQueriesContext(connection) as queries:
        response = client.post(CHECKIN, checkin_body(version="1.0.3", release_counter=2), format="json")
    return response.status_code, response.json(), len(queries.captured_queries)


def test_an_idle_check_in_with_a_certificate_is_one_statement(fleet, settings):
    settings.OTA_DEVICE_POLL_SECONDS = 420
    device = _device(fleet)
    (issued,) = device_certificates_provision(actor=None, devices=[device])
    status, answer, statements = _post(_through_nginx(issued))
    nonce = answer.pop("attestation_nonce")  # minted without the database (an HMAC), for the next check-in
    assert (status, answer, statements) == (200, {"poll_interval_seconds": 420, "offer": None}, 1)
    assert nonce.startswith(f"{device.pk}.")
    device.refresh_from_db()
    assert device.reported_version == "1.0.3" and device.last_seen_at is not None


def test_an_idle_attested_check_in_adds_one_statement_and_a_stale_nonce_quarantines_nothing(fleet, settings, tmp_path):
    device = _device(fleet)
    (issued,) = device_certificates_provision(actor=None, devices=[device])
    key = tmp_path / "device-key.pem"
    key.write_bytes(issued.key_pem)
    client = _through_nginx(issued)
    nonce = client.post(CHECKIN, checkin_body(), format="json").json()["attestation_nonce"]
    signed = {**checkin_body(), "attestation": evidence(key, nonce)}
    with CaptureQueriesContext(connection) as queries:
        answer = client.post(CHECKIN, signed, format="json").json()
    assert len(queries.captured_queries) == 2  # the check-in's one statement + consuming the nonce with the lineage
    assert answer["offer"] is None and answer["attestation_nonce"] != nonce
    device.refresh_from_db()
    assert device.attested_nonce_us is not None
    # A nonce older than its life (a device back from a long time offline) is no attack: no offer, a fresh nonce.
    settings.OTA_ATTESTATION_NONCE_SECONDS = 1
    old = answer["attestation_nonce"]
    time.sleep(1.1)
    stale = client.post(CHECKIN, {**checkin_body(), "attestation": evidence(key, old)}, format="json").json()
    assert stale["offer"] is None and stale["attestation_nonce"] != old
    device.refresh_from_db()
    assert device.status == "active"
    assert not SecurityEvent.objects.exists()


def test_the_certificate_header_without_the_proxy_secret_is_refused_and_recorded(fleet):
    device = _device(fleet)
    (issued,) = device_certificates_provision(actor=None, devices=[device])
    status, answer, _ = _post(_through_nginx(issued, secret="not-the-secret"))
    assert status == 401 and answer["error"]["code"] == "authentication_failed"
    device.refresh_from_db()
    assert device.last_seen_at is None
    (event,) = SecurityEvent.objects.filter(kind=SecurityEventKind.DEVICE_AUTH_FAILED)
    assert event.message == "Spoofed identity headers: not from the device TLS proxy."


def test_revoked_and_superseded_certificates_are_refused_within_the_epoch_bound(fleet, operator, settings):
    # A device with nothing to do may be answered from memory (devices.edge.quiet) until the web process re-reads
    # the check-in epochs, which the renewal and the revocation bump: at most OTA_CHECKIN_EPOCH_SECONDS later.
    settings.OTA_CHECKIN_EPOCH_SECONDS = 0.2
    device = _device(fleet)
    (first,) = device_certificates_provision(actor=None, devices=[device])
    assert _post(_through_nginx(first))[0] == 200
    assert _post(_through_nginx(first))[0] == 200  # remembered
    renewal = device_certificate_renew(actor=None, device=device)
    time.sleep(0.2)
    assert _post(_through_nginx(first))[0] == 401
    (event,) = SecurityEvent.objects.filter(kind=SecurityEventKind.DEVICE_AUTH_FAILED)
    assert event.message == "A superseded device certificate was presented."
    assert _post(_through_nginx(renewal.issued))[0] == 200
    assert _post(_through_nginx(renewal.issued))[0] == 200  # remembered
    device_certificate_revoke(actor=operator, device=device, reason="compromised")
    time.sleep(0.2)
    last_seen_flush()  # the check-ins answered before the revocation are recorded, as they happened
    device.refresh_from_db()
    seen = device.last_seen_at
    assert _post(_through_nginx(renewal.issued))[0] == 401
    device.refresh_from_db()
    assert device.last_seen_at == seen
    event.refresh_from_db()  # one row per device and time bucket: its count and latest message
    assert event.count == 2 and event.message == "A revoked device certificate was presented."


def test_a_certificate_of_the_ca_that_was_never_recorded_is_refused_like_any_other(fleet):
    device = _device(fleet)
    with issuer_open() as issuer:  # e.g. issued before a database restore: the CA signed it, no row knows it
        unknown = device_certificate_make(issuer, serial=device.serial, days=1)
    assert _post(_through_nginx(unknown))[0] == 401
    (event,) = SecurityEvent.objects.filter(kind=SecurityEventKind.DEVICE_AUTH_FAILED)
    assert event.message == "A certificate bound to no active device was presented."


def test_an_inventory_edit_of_the_fingerprint_column_cannot_move_a_certificate_to_another_device(fleet):
    mine, theirs = Device.objects.filter(region=fleet["region"]).order_by("serial")[:2]
    (issued,) = device_certificates_provision(actor=None, devices=[mine])
    Device.objects.filter(pk=mine.pk).update(certificate_fingerprint=None)
    Device.objects.filter(pk=theirs.pk).update(certificate_fingerprint=issued.fingerprint)
    assert _post(_through_nginx(issued))[0] == 200
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.reported_version == "1.0.3" and theirs.last_seen_at is None  # still the certificate's own device


def test_secret_credentials_are_refused_unless_the_development_mode_is_on(fleet, device_client, settings):
    device = _device(fleet)
    client = device_client(device)
    assert _post(client)[0] == 401
    (event,) = SecurityEvent.objects.filter(kind=SecurityEventKind.DEVICE_AUTH_FAILED)
    assert "disabled" in event.message and event.device_serial == device.serial
    settings.OTA_DEVICE_AUTH = "secret"
    assert _post(client)[0] == 200


def test_a_garbled_certificate_header_from_the_proxy_is_refused(fleet):
    client = APIClient()
    client.credentials(HTTP_X_OTA_CLIENT_CERT="not-a-certificate", HTTP_X_OTA_PROXY_AUTH=device_proxy_secret())
    assert _post(client)[0] == 401
    assert SecurityEvent.objects.filter(kind=SecurityEventKind.DEVICE_AUTH_FAILED).exists()
