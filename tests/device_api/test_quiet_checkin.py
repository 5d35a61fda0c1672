"""The zero-database idle check-in (devices.edge.quiet): a quiet device's repeat check-in costs no statement, and
new work, a revocation, a quarantine, a decommissioning or a region change reaches it within
OTA_CHECKIN_EPOCH_SECONDS, through the database's own epochs (triggers)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from approvals.audit.choices import SecurityEventKind
from approvals.audit.models import SecurityEvent
from devices.credentials import device_credential_revoke
from devices.edge import quiet
from devices.models import CheckinEpoch, Device
from devices.services import (
    device_decommission,
    device_quarantine,
    device_record_report,
    device_reports_record,
    region_update,
)
from rollouts import rollout_services as steps
from rollouts.choices import DeploymentStatus, RolloutStatus
from rollouts.models import Deployment
from tests.device_api.conftest import CHECKIN, MEMORY_BOUND, checkin_body, checkin_counted, epoch_rereads
from workflows.types import PhaseChange

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("memory_bounds")]


def _epochs() -> dict[str, int]:
    return dict(CheckinEpoch.objects.values_list("name", "value"))


def _quiet_device(fleet) -> Device:
    return Device.objects.filter(region=fleet["region"]).order_by("serial")[0]


def test_a_quiet_repeat_check_in_issues_no_statement_and_answers_the_same(fleet, device_client, settings):
    settings.OTA_CHECKIN_EPOCH_SECONDS = 60
    settings.OTA_DEVICE_POLL_SECONDS = 420
    device = _quiet_device(fleet)
    client = device_client(device)
    first = checkin_counted(client)
    assert first == (200, {"poll_interval_seconds": 420, "offer": None}, 1)
    device.refresh_from_db()
    written_at = device.last_seen_at
    for _ in range(3):
        assert checkin_counted(client) == (200, {"poll_interval_seconds": 420, "offer": None}, 0)
    assert quiet.last_seen_pending() == 1
    device.refresh_from_db()
    assert device.last_seen_at == written_at  # buffered, not written yet
    with CaptureQueriesContext(connection) as queries:
        assert quiet.last_seen_flush() == 1
    assert len(queries.captured_queries) == 1  # one statement for the whole buffer
    device.refresh_from_db()
    assert written_at is not None and device.last_seen_at is not None
    assert device.last_seen_at > written_at and device.reported_at == device.last_seen_at


def test_a_changed_report_is_written_at_once(fleet, device_client, settings):
    settings.OTA_CHECKIN_EPOCH_SECONDS = 60
    device = _quiet_device(fleet)
    client = device_client(device)
    checkin_counted(client)
    assert checkin_counted(client)[2] == 0
    for body in (checkin_body(version="1.0.4", release_counter=2), checkin_body(health={"modem_attach": False})):
        assert checkin_counted(client, body)[2] == 1
        device.refresh_from_db()
        stored = (device.reported_version, device.reported_health)
        assert stored == (body["slots"]["a"]["version"], body["health"])


def test_only_a_check_in_memory_could_answer_re_reads_the_epochs(fleet, device_client, settings):
    settings.OTA_CHECKIN_EPOCH_SECONDS = 0  # the epochs are due at every check-in
    client = device_client(_quiet_device(fleet))
    assert checkin_counted(client)[2] == 1  # unknown to memory: the statement alone
    with CaptureQueriesContext(connection) as queries:
        assert client.post(CHECKIN, checkin_body(), format="json").status_code == 200
    assert len(queries.captured_queries) == epoch_rereads(queries) == 1  # from memory, once the epochs held
    # A changed report takes the statement anyway: memory refuses it before asking the database for the epochs.
    with CaptureQueriesContext(connection) as queries:
        assert client.post(CHECKIN, checkin_body(boot_count=13), format="json").status_code == 200
    assert (len(queries.captured_queries), epoch_rereads(queries)) == (1, 0)


def test_a_report_stored_by_another_worker_is_replaced_by_the_next_flush(fleet, device_client, settings):
    settings.OTA_CHECKIN_EPOCH_SECONDS = 60
    device = _quiet_device(fleet)
    client = device_client(device)
    checkin_counted(client)
    # Another worker stored a different report of the device (the modem dropped); then it recovered and the
    # check-in with the report this worker remembers is answered from memory: the flush writes it back.
    device_record_report(device=device, version="1.0.0", release_counter=1, at=timezone.now(), health={"x": False})
    assert checkin_counted(client)[2] == 0
    quiet.last_seen_flush()
    device.refresh_from_db()
    assert device.reported_health == {"modem_attach": True, "gnss_fix": True}


def test_a_failed_flush_keeps_its_check_ins_for_the_next_one(fleet, device_client, settings):
    settings.OTA_CHECKIN_EPOCH_SECONDS = 60
    device = _quiet_device(fleet)
    client = device_client(device)
    checkin_counted(client)
    device.refresh_from_db()
    written_at = device.last_seen_at
    assert checkin_counted(client)[2] == 0

    def refuse(execute, sql, params, many, context):
        raise OperationalError("connection lost")

    with connection.execute_wrapper(refuse):
        assert quiet.last_seen_flush() == 0  # logged, not raised
    assert quiet.last_seen_pending() == 1
    assert quiet.last_seen_flush() == 1
    device.refresh_from_db()
    assert written_at is not None and device.last_seen_at is not None and device.last_seen_at > written_at


def test_a_flush_due_is_done_by_the_check_in_that_finds_it_due(fleet, device_client, settings):
    settings.OTA_CHECKIN_EPOCH_SECONDS = 60
    settings.OTA_LAST_SEEN_FLUSH_SECONDS = 0
    device = _quiet_device(fleet)
    client = device_client(device)
    checkin_counted(client)
    assert checkin_counted(client)[2] == 1  # answered from memory, then the due flush's one statement
    assert quiet.last_seen_pending() == 0


def test_last_seen_never_moves_backwards_in_a_flush(fleet):
    device = _quiet_device(fleet)
    now = timezone.now()
    report = {"version": "1.0.0", "release_counter": 1, "active_slot": "a", "boot_count": 3, "health": None}
    device_reports_record({device.pk: (now, report)})
    device_reports_record({device.pk: (now - timedelta(minutes=5), {**report, "version": "0.0.1"})})
    device.refresh_from_db()
    assert (device.last_seen_at, device.reported_at, device.reported_version) == (now, now, "1.0.0")


def test_the_bulk_report_write_stores_what_the_one_device_write_stores(fleet):
    one, many = Device.objects.filter(region=fleet["region"]).order_by("serial")[:2]
    at = timezone.now()
    report: dict[str, Any] = {"version": "1.2.3", "release_counter": 7, "active_slot": "b", "boot_count": 9}
    report["health"] = {"g": True}
    device_record_report(device=one, at=at, **report)
    device_reports_record({many.pk: (at, report)})
    columns = ["reported_version", "reported_release_counter", "reported_active_slot", "reported_boot_count"]
    columns += ["reported_health", "reported_at", "last_seen_at"]
    rows = {d.pk: [getattr(d, c) for c in columns] for d in Device.objects.filter(pk__in=[one.pk, many.pk])}
    assert rows[one.pk] == rows[many.pk]


def test_new_work_reaches_a_quiet_device_within_the_bound(rollout, device_client, operator):
    clients = {device.pk: device_client(device) for device in Device.objects.all()}
    for client in clients.values():  # every device is quiet: nothing assigned yet
        assert checkin_counted(client)[1]["offer"] is None
        assert checkin_counted(client)[2] == 0
    before = _epochs()["work"]
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    steps.rollout_phase(PhaseChange(rollout.pk, RolloutStatus.RUNNING, 0))
    assigned = Deployment.objects.filter(rollout=rollout)
    assert before < _epochs()["work"] < before + assigned.count()  # bumped per statement, not per deployment
    time.sleep(MEMORY_BOUND)
    status, answer, _ = checkin_counted(clients[assigned.order_by("pk")[0].device_id])
    assert status == 200 and answer["offer"] is not None
    assert Deployment.objects.get(pk=answer["offer"]["deployment_id"]).status == DeploymentStatus.OFFERED


def test_moves_within_in_flight_statuses_do_not_bump_the_work_epoch(pilot, running, device_client):
    client = device_client(pilot)
    offer = client.post(CHECKIN, checkin_body(), format="json").json()["offer"]
    before = _epochs()["work"]
    status_url = f"/device/v1/deployments/{offer['deployment_id']}/status/"
    for seq, step in enumerate(("downloading", "downloaded"), start=1):
        assert client.post(status_url, {"seq": seq, "status": step}, format="json").status_code == 200
    Deployment.objects.filter(pk=offer["deployment_id"]).update(status=DeploymentStatus.CANCELLED)
    assert _epochs()["work"] == before


def _refused_within_the_bound(client, device: Device) -> None:
    time.sleep(MEMORY_BOUND)
    quiet.last_seen_flush()  # the check-ins answered before the change are recorded, as they happened
    before = Device.objects.get(pk=device.pk)
    status, answer, _ = checkin_counted(client, checkin_body())
    assert status == 401 and answer["error"]["message"] == "Invalid device credentials."
    assert SecurityEvent.objects.filter(kind=SecurityEventKind.DEVICE_AUTH_FAILED).count() == 1
    quiet.last_seen_flush()
    assert Device.objects.get(pk=device.pk).last_seen_at == before.last_seen_at


def test_a_revoked_credential_is_refused_within_the_bound(fleet, device_client, operator):
    device = _quiet_device(fleet)
    client = device_client(device)
    checkin_counted(client)
    assert checkin_counted(client)[0] == 200
    before = _epochs()["identity"]
    device_credential_revoke(actor=operator, device=device, reason="unit stolen")
    assert _epochs()["identity"] == before + 1
    _refused_within_the_bound(client, device)


def test_a_decommissioned_device_is_refused_within_the_bound(fleet, device_client, operator):
    device = _quiet_device(fleet)
    client = device_client(device)
    checkin_counted(client)
    assert checkin_counted(client)[0] == 200
    device_decommission(actor=operator, device=device, reason="scrapped")
    _refused_within_the_bound(client, device)


def test_a_quarantined_device_goes_to_the_database_within_the_bound(fleet, device_client, operator):
    device = _quiet_device(fleet)
    client = device_client(device)
    checkin_counted(client)
    device_quarantine(actor=operator, device=device, reason="tampered enclosure")
    time.sleep(MEMORY_BOUND)
    status, answer, statements = checkin_counted(client)
    assert (status, answer["offer"]) == (200, None) and statements >= 1  # the statement answered, not memory


def test_a_region_change_reaches_a_quiet_device_within_the_bound(fleet, device_client, operator):
    device = _quiet_device(fleet)
    client = device_client(device)
    checkin_counted(client)
    region_update(actor=operator, region=device.region, changes={"poll_interval_seconds": 900})
    time.sleep(MEMORY_BOUND)
    assert checkin_counted(client)[1]["poll_interval_seconds"] == 900


def test_a_check_ins_own_columns_bump_nothing(fleet):
    device = _quiet_device(fleet)
    before = _epochs()
    Device.objects.filter(pk=device.pk).update(reported_version="1.0.9", last_seen_at=timezone.now())
    assert _epochs() == before
