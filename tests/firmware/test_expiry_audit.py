"""The expiry audit: metadata and keys close to expiry, or trusted when they must not be, become alert rows and
decision records; a finding that goes away is resolved; running it again changes nothing."""

from __future__ import annotations

import io
import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from approvals.audit.choices import AuditKind
from approvals.audit.models import AuditFinding, DecisionRecord
from devices.firmware.keys.models import SigningKey
from devices.firmware.keys.services import key_revoke, key_rotate
from devices.firmware.repository.expiry import expiry_audit
from devices.firmware.repository.models import ImageMetadata
from devices.firmware.repository.services import image_repository_refresh
from tests.firmware.repository_support import repository_start

pytestmark = pytest.mark.django_db


@pytest.fixture
def repository(settings, tmp_path, security_officer, django_capture_on_commit_callbacks):
    settings.PKCS11_LABEL_PREFIX = f"expiry-test-{uuid.uuid4().hex[:12]}"
    settings.IMAGE_REPOSITORY_DIR = tmp_path / "repository"
    with django_capture_on_commit_callbacks(execute=True):
        repository_start(security_officer)
    return settings.IMAGE_REPOSITORY_DIR


def _alerts():
    return AuditFinding.objects.filter(kind=AuditKind.SIGNING_EXPIRY)


def _open() -> set[tuple[str, str, str]]:
    return set(_alerts().filter(resolved_at__isnull=True).values_list("subject", "code", "severity"))


def test_a_fresh_repository_has_no_findings(repository):
    assert expiry_audit() == [] and not _alerts().exists()


def test_metadata_near_and_past_expiry_is_flagged_then_resolved_once_re_signed(repository):
    timestamp = ImageMetadata.objects.get(role="timestamp")
    near = timestamp.expires - timedelta(hours=3)  # a quarter of the day-long lifetime left: the refresh is failing
    expiry_audit(now=near)
    assert _open() == {("timestamp", "expires_soon", "warning")}
    assert expiry_audit(now=near) and _alerts().count() == 1  # idempotent: the same alert, refreshed
    expiry_audit(now=timestamp.expires + timedelta(minutes=1))
    assert ("timestamp", "expired", "critical") in _open()

    image_repository_refresh(now=near)  # re-signed: a new timestamp version with a full day ahead of `near`
    expiry_audit(now=near)
    assert _open() == set()
    assert _alerts().filter(resolved_at__isnull=False).count() == 2
    runs = DecisionRecord.objects.filter(action="audit.findings", object_id=AuditKind.SIGNING_EXPIRY)
    flagged = sum((record.after or {})["opened"] for record in runs)
    resolved = sum((record.after or {})["resolved"] for record in runs)
    assert (flagged, resolved) == (2, 2)


def test_the_root_is_flagged_a_month_before_it_expires(repository):
    root = ImageMetadata.objects.get(role="root")
    expiry_audit(now=root.expires - timedelta(days=29))
    assert ("root", "expires_soon", "warning") in _open()


def test_a_revoked_key_the_root_still_names_is_critical_and_a_key_not_in_root_a_warning(repository, security_officer):
    snapshot = SigningKey.objects.get(role="snapshot")
    key_revoke(actor=security_officer, key_id=snapshot.key_id, reason="compromised")
    new_timestamp = key_rotate(actor=security_officer, role="timestamp", reason="planned")
    expiry_audit()
    assert _open() == {
        (snapshot.key_id, "revoked_key_trusted", "critical"),
        (new_timestamp.key_id, "key_not_in_root", "warning"),
    }


def test_keys_past_their_maximum_age_are_flagged(repository, settings):
    settings.KEY_MAX_AGE_DAYS = 10
    expiry_audit(now=timezone.now() + timedelta(days=11))
    aged = {subject for subject, code, severity in _open() if code == "key_due_for_rotation" and severity == "critical"}
    online = set(SigningKey.objects.exclude(role="root").filter(state="active").values_list("key_id", flat=True))
    assert online <= aged and SigningKey.objects.get(role="root").key_id not in aged  # root: 5 years


def test_the_commands_print_the_findings_and_the_status_shows_the_open_alerts(repository, settings):
    settings.EXPIRY_WARN_ROOT_DAYS = 400
    out = io.StringIO()
    call_command("image_repository", "expiry-audit", stdout=out)
    assert "warning" in out.getvalue() and "1 finding(s)" in out.getvalue()
    status = io.StringIO()
    call_command("image_repository", "status", stdout=status)
    assert "mode       classical" in status.getvalue()
    assert "alert      warning: 1.root.json expires at" in status.getvalue()
