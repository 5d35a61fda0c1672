"""The device PKI and the certificate services: a token-held issuing CA, provisioning, renewal and revocation rules,
the database's one-active-certificate invariant and the decision records."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.utils import timezone

from approvals.audit.choices import SecurityEventKind
from approvals.audit.models import DecisionRecord, SecurityEvent
from devices.certificates import (
    certificates_due_for_renewal,
    device_certificate_renew,
    device_certificate_revoke,
    device_certificates_provision,
)
from devices.choices import CertificateStatus, DeviceStatus
from devices.models import Device, DeviceCertificate
from devices.pki import certificate_fingerprint, pki_paths
from ota_project.errors import Conflict, InvalidInput, NotPermitted
from ota_project.roles import Role
from tests.factories import DeviceFactory


@pytest.fixture
def token_ca(settings) -> None:
    settings.OTA_DEVICE_CA_KEY = "token"
    call_command("devices", "ca-init")


def _load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


@pytest.mark.django_db
def test_ca_init_keeps_the_issuing_key_in_the_token_and_the_root_key_nowhere(token_ca):
    paths = pki_paths()
    described = json.loads(paths.issuer.read_text())
    assert described["storage"] == "token" and len(described["key_id"]) == 64
    assert not paths.intermediate_key.exists()
    assert {path.name for path in paths.directory.iterdir()} == {
        "root.pem",
        "intermediate.pem",
        "issuer.json",
        "ca-bundle.pem",
    }
    for path in paths.directory.iterdir():
        assert b"PRIVATE KEY" not in path.read_bytes()
    root, intermediate = _load(paths.root.read_bytes()), _load(paths.intermediate.read_bytes())
    intermediate.verify_directly_issued_by(root)
    assert intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    (record,) = DecisionRecord.objects.filter(action="devices.ca_create")
    assert record.after is not None and record.after["storage"] == "token"


@pytest.mark.django_db
def test_provisioning_issues_a_short_lived_client_certificate_signed_in_the_token(token_ca, operator):
    device = DeviceFactory.create(serial="TCU-PKI-1")
    (issued,) = device_certificates_provision(actor=operator, devices=[device])
    certificate = _load(issued.certificate_pem)
    certificate.verify_directly_issued_by(_load(pki_paths().intermediate.read_bytes()))
    assert certificate.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "TCU-PKI-1"
    assert certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert dt.timedelta(days=89) < lifetime <= dt.timedelta(days=90, minutes=5)
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    assert key.public_key() == certificate.public_key()
    assert issued.fingerprint == certificate_fingerprint(certificate.public_bytes(serialization.Encoding.DER))
    device.refresh_from_db()
    assert device.certificate_fingerprint == issued.fingerprint
    row = DeviceCertificate.objects.get(device=device)
    assert row.status == CertificateStatus.ACTIVE and row.serial_number == issued.serial_number
    (record,) = DecisionRecord.objects.filter(action="devices.certificate_issue")
    assert (
        record.after is not None
        and record.actor == operator
        and record.after["certificates"]["TCU-PKI-1"]["fingerprint"] == issued.fingerprint
    )


@pytest.mark.django_db
def test_a_batch_of_devices_is_provisioned_in_one_token_session_and_one_record(token_ca, operator):
    devices = DeviceFactory.create_batch(200)
    started = time.perf_counter()
    issued = device_certificates_provision(actor=operator, devices=devices)
    elapsed = time.perf_counter() - started
    assert len({pair.fingerprint for pair in issued}) == 200
    assert Device.objects.filter(certificate_fingerprint__isnull=False).count() == 200
    assert DecisionRecord.objects.filter(action="devices.certificate_issue").count() == 1
    assert elapsed < 20, elapsed  # 2000 devices in well under a minute on the drill's machine


@pytest.mark.django_db
def test_provisioning_refuses_a_device_that_already_has_a_certificate_and_changes_nothing(token_ca, operator):
    first, second = DeviceFactory.create_batch(2)
    device_certificates_provision(actor=operator, devices=[first])
    before = list(DeviceCertificate.objects.values_list("fingerprint", flat=True))
    with pytest.raises(Conflict) as refused:
        device_certificates_provision(actor=operator, devices=[first, second])
    assert refused.value.code == "certificate_active"
    assert list(DeviceCertificate.objects.values_list("fingerprint", flat=True)) == before
    second.refresh_from_db()
    assert second.certificate_fingerprint is None


@pytest.mark.django_db
def test_provisioning_refuses_revoked_devices_and_people_without_the_role(token_ca, make_user):
    revoked = DeviceFactory.create(status=DeviceStatus.REVOKED)
    with pytest.raises(Conflict):
        device_certificates_provision(actor=None, devices=[revoked])
    cab = make_user(Role.CAB_MEMBER)
    active = DeviceFactory.create()
    with pytest.raises(NotPermitted):
        device_certificates_provision(actor=cab, devices=[active])
    assert not DeviceCertificate.objects.exists()
    assert SecurityEvent.objects.filter(kind=SecurityEventKind.ACTION_UNAUTHORISED, actor_id=cab.pk).exists()


@pytest.mark.django_db
def test_the_database_holds_one_active_certificate_per_device(token_ca, operator):
    device = DeviceFactory.create()
    (issued,) = device_certificates_provision(actor=operator, devices=[device])
    now = timezone.now()
    with pytest.raises(IntegrityError), transaction.atomic():
        DeviceCertificate.objects.create(
            device=device,
            fingerprint="f" * 64,
            serial_number="abc",
            not_before=now,
            not_after=now,
            issued_at=now,
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        DeviceCertificate.objects.filter(device=device).update(status=CertificateStatus.REVOKED)  # no end time
    assert DeviceCertificate.objects.get(device=device).fingerprint == issued.fingerprint


@pytest.mark.django_db
def test_renewal_supersedes_the_old_certificate_and_records_both(token_ca, operator):
    device = DeviceFactory.create()
    (first,) = device_certificates_provision(actor=operator, devices=[device])
    renewal = device_certificate_renew(actor=operator, device=device, reason="due in 20 days")
    assert renewal.replaced_serial_number == first.serial_number
    rows = dict(DeviceCertificate.objects.filter(device=device).values_list("fingerprint", "status"))
    assert rows == {
        first.fingerprint: CertificateStatus.SUPERSEDED,
        renewal.issued.fingerprint: CertificateStatus.ACTIVE,
    }
    device.refresh_from_db()
    assert device.certificate_fingerprint == renewal.issued.fingerprint
    (record,) = DecisionRecord.objects.filter(action="devices.certificate_renew")
    assert (
        record.before is not None
        and record.before["fingerprint"] == first.fingerprint
        and record.reason == "due in 20 days"
    )


@pytest.mark.django_db
def test_certificates_due_for_renewal_are_those_expiring_within_the_window(token_ca, operator, settings):
    soon, later = DeviceFactory.create_batch(2)
    device_certificates_provision(actor=operator, devices=[soon, later])
    DeviceCertificate.objects.filter(device=soon).update(not_after=timezone.now() + dt.timedelta(days=10))
    assert certificates_due_for_renewal(within_days=30) == [soon]
    assert set(certificates_due_for_renewal(within_days=100)) == {soon, later}


@pytest.mark.django_db
def test_revocation_needs_a_reason_and_the_role_and_clears_the_device_identity(token_ca, operator, make_user):
    device = DeviceFactory.create()
    (issued,) = device_certificates_provision(actor=operator, devices=[device])
    cab = make_user(Role.CAB_MEMBER)
    with pytest.raises(NotPermitted):
        device_certificate_revoke(actor=cab, device=device, reason="why not")
    with pytest.raises(InvalidInput):
        device_certificate_revoke(actor=operator, device=device, reason="  ")
    device.refresh_from_db()
    assert device.certificate_fingerprint == issued.fingerprint
    revoked = device_certificate_revoke(actor=operator, device=device, reason="key extracted from a scrapped unit")
    assert revoked.status == CertificateStatus.REVOKED and revoked.ended_at is not None
    device.refresh_from_db()
    assert device.certificate_fingerprint is None
    (record,) = DecisionRecord.objects.filter(action="devices.certificate_revoke")
    assert record.actor == operator and record.reason == "key extracted from a scrapped unit"
    with pytest.raises(Conflict):
        device_certificate_revoke(actor=operator, device=device, reason="again")


@pytest.mark.django_db
def test_the_devices_command_provisions_into_the_agent_identity_layout(token_ca, tmp_path):
    device = DeviceFactory.create(serial="TCU-CLI-1")
    call_command("devices", "provision", "--serial", "TCU-CLI-1", "--out", str(tmp_path))
    directory = tmp_path / "TCU-CLI-1"
    assert {path.name for path in directory.iterdir()} == {"device-key.pem", "device.pem", "ca.pem", "server-pins.txt"}
    assert directory.joinpath("device-key.pem").stat().st_mode & 0o077 == 0
    chain = x509.load_pem_x509_certificates(directory.joinpath("device.pem").read_bytes())
    device.refresh_from_db()
    assert certificate_fingerprint(chain[0].public_bytes(serialization.Encoding.DER)) == device.certificate_fingerprint
    assert len(directory.joinpath("server-pins.txt").read_text().split()) == 2
