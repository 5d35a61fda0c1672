"""The one-statement check-in: an idle device costs one SQL statement, and the short path never answers what only
the full path may (an offer, a refused credential, a budget, a bad body)."""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import pytest
from django.core.cache import caches
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from approvals.audit.choices import SecurityEventKind
from approvals.audit.models import SecurityEvent
from devices.credentials import device_credential_revoke
from devices.models import Device
from devices.services import device_decommission, device_quarantine, region_update
from rollouts.choices import DeploymentStatus, RolloutStatus
from rollouts.models import Deployment, Wave
from rollouts.rollout_services import rollout_phase
from tests.device_api.conftest import checkin_body
from workflows.types import PhaseChange

pytestmark = pytest.mark.django_db

CHECKIN = "/device/v1/checkin/"


@pytest.fixture(autouse=True)
def _locking_path(settings):
    """These tests are about the locking offer path itself: no re-send from memory (tests/device_api/
    test_offer_resend.py has the memory's, each change within OTA_CHECKIN_EPOCH_SECONDS)."""
    settings.OTA_CHECKIN_OFFER_CACHE_SECONDS = 0


@pytest.fixture(autouse=True)
def _clean_budget_cache():
    caches["default"].clear()
    yield
    caches["default"].clear()


def _fleet_device(fleet) -> Device:
    return Device.objects.filter(region=fleet["region"]).order_by("serial")[0]


def _statements(client, body=None) -> tuple[int, dict, list[str]]:
    with CaptureQueriesContext(connection) as queries:
        response = client.post(CHECKIN, body or checkin_body(), format="json")
    # The check-in statement is bound on the server, so its logged text can be empty (None).
    return response.status_code, response.json(), [q["sql"] or "" for q in queries.captured_queries]


def _unsigned(offer: dict) -> dict:
    """An offer without its download URL (whose token is signed with the current second)."""
    return {**offer, "artifact": {**offer["artifact"], "url": offer["artifact"]["url"].split("?")[0]}}


def test_an_idle_check_in_is_one_statement_that_stores_the_report(fleet, device_client, settings):
    settings.OTA_DEVICE_POLL_SECONDS = 420
    device = _fleet_device(fleet)
    client = device_client(device)
    status, answer, statements = _statements(client, checkin_body(version="1.0.3", release_counter=2))
    assert (status, answer) == (200, {"poll_interval_seconds": 420, "offer": None})
    assert len(statements) == 1
    device.refresh_from_db()
    assert (device.reported_version, device.reported_release_counter) == ("1.0.3", 2)
    assert (device.reported_active_slot, device.reported_boot_count) == ("a", 12)
    assert device.reported_health == {"modem_attach": True, "gnss_fix": True}
    first_seen = device.last_seen_at
    assert first_seen is not None
    assert len(_statements(client)[2]) == 1
    device.refresh_from_db()
    assert device.last_seen_at is not None and device.last_seen_at >= first_seen
    assert device.reported_version == "1.0.0"


def test_a_device_with_an_update_under_way_polls_faster_in_one_statement(pilot, running, device_client, operator):
    client = device_client(pilot)
    offer = client.post(CHECKIN, checkin_body(), format="json").json()["offer"]
    status_url = f"/device/v1/deployments/{offer['deployment_id']}/status/"
    for seq, step in enumerate(("downloading", "downloaded"), start=1):
        assert client.post(status_url, {"seq": seq, "status": step}, format="json").status_code == 200
    region_update(actor=operator, region=pilot.region, changes={"poll_interval_seconds": 3600})
    status, answer, statements = _statements(client)
    assert (status, answer, len(statements)) == (200, {"poll_interval_seconds": 30, "offer": None}, 1)


def test_a_download_in_progress_gets_its_offer_again_with_a_fresh_url(pilot, running, device_client, settings):
    settings.OTA_DOWNLOAD_TOKEN_SECONDS = 60
    client = device_client(pilot)
    offer = client.post(CHECKIN, checkin_body(), format="json").json()["offer"]
    status_url = f"/device/v1/deployments/{offer['deployment_id']}/status/"
    assert client.post(status_url, {"seq": 1, "status": "downloading"}, format="json").status_code == 200
    status, answer, statements = _statements(client)
    again = answer["offer"]
    assert status == 200 and answer["poll_interval_seconds"] == 30
    same = ("deployment_id", "kind", "release_version", "release_counter")
    assert [again[k] for k in same] == [offer[k] for k in same]
    assert again["artifact"]["sha256"] == offer["artifact"]["sha256"]
    assert "token=" in again["artifact"]["url"]
    # The statement, then reads only (the deployment, its rules' breaker): never the offer path's lock.
    assert len(statements) == 3 and not any("FOR UPDATE" in sql for sql in statements)
    url = urlsplit(again["artifact"]["url"])
    assert client.get(f"{url.path}?{url.query}", HTTP_RANGE="bytes=0-9").status_code == 206
    assert Deployment.objects.get(pk=offer["deployment_id"]).status == DeploymentStatus.DOWNLOADING


def test_a_live_offer_is_re_sent_by_the_locking_offer_path(pilot, running, device_client):
    client = device_client(pilot)
    first = client.post(CHECKIN, checkin_body(), format="json").json()["offer"]
    status, answer, statements = _statements(client)
    assert status == 200 and _unsigned(answer["offer"]) == _unsigned(first) and answer["poll_interval_seconds"] == 30
    assert len(statements) > 1  # not the short path alone
    assert Deployment.objects.get(pk=first["deployment_id"]).status == DeploymentStatus.OFFERED


@pytest.mark.django_db(transaction=True)
def test_a_re_send_takes_the_offers_row_lock_and_skips_an_offer_being_changed(pilot, running, device_client):
    client = device_client(pilot)
    first = client.post(CHECKIN, checkin_body(), format="json").json()["offer"]
    locked, release = threading.Event(), threading.Event()

    def hold_the_row() -> None:  # as a report or a withdrawal changing the deployment would
        try:
            with transaction.atomic():
                list(Deployment.objects.select_for_update().filter(pk=first["deployment_id"]))
                locked.set()
                release.wait(timeout=30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    try:
        assert locked.wait(timeout=30)
        while_locked = client.post(CHECKIN, checkin_body(), format="json").json()
    finally:
        release.set()
        holder.join(timeout=30)
    assert while_locked == {"poll_interval_seconds": 30, "offer": None}  # skipped (SKIP LOCKED), not waited for
    assert _unsigned(client.post(CHECKIN, checkin_body(), format="json").json()["offer"]) == _unsigned(first)


def test_re_sending_a_live_offer_costs_the_short_statement_and_one_locking_statement(
    pilot, running, device_client, django_assert_max_num_queries
):
    client = device_client(pilot)
    first = client.post(CHECKIN, checkin_body(), format="json").json()["offer"]
    # The short statement, then deployment_offer's transaction (a savepoint inside the test's own) around the one
    # statement that locks the candidates and reads every rule's rows: the device, rollout, change, release,
    # artifact, the supported models and the breaker. It was 8 before the rules' reads were folded into it.
    with django_assert_max_num_queries(4):
        answer = client.post(CHECKIN, checkin_body(), format="json").json()
    assert _unsigned(answer["offer"]) == _unsigned(first)


def test_a_re_sent_offer_is_withdrawn_once_the_breaker_has_tripped(pilot, running, device_client):
    client = device_client(pilot)
    offer = client.post(CHECKIN, checkin_body(), format="json").json()["offer"]
    Wave.objects.filter(rollout=running, index=0).update(breaker_tripped_at=timezone.now())  # a side door
    assert client.post(CHECKIN, checkin_body(), format="json").json()["offer"] is None
    deployment = Deployment.objects.get(pk=offer["deployment_id"])
    assert deployment.status == DeploymentStatus.CANCELLED
    assert deployment.detail == "withdrawn: the rollout's failure threshold was crossed"


def test_a_re_sent_offer_is_skipped_once_the_release_drops_the_devices_model(pilot, running, device_client):
    client = device_client(pilot)
    offer = client.post(CHECKIN, checkin_body(), format="json").json()["offer"]
    Deployment.objects.get(pk=offer["deployment_id"]).release.hardware_models.remove(pilot.hardware_model_id)
    assert client.post(CHECKIN, checkin_body(), format="json").json()["offer"] is None
    deployment = Deployment.objects.get(pk=offer["deployment_id"])
    assert deployment.status == DeploymentStatus.SKIPPED
    assert "does not support the device's hardware model now" in deployment.detail


def test_a_re_sent_offer_is_skipped_once_the_device_committed_a_higher_counter(pilot, running, device_client):
    client = device_client(pilot)
    offer = client.post(CHECKIN, checkin_body(), format="json").json()["offer"]
    Device.objects.filter(pk=pilot.pk).update(installed_release_counter=99)
    assert client.post(CHECKIN, checkin_body(), format="json").json()["offer"] is None
    deployment = Deployment.objects.get(pk=offer["deployment_id"])
    assert deployment.status == DeploymentStatus.SKIPPED and "anti-rollback" in deployment.detail


def test_a_halted_rollouts_offer_is_not_re_sent(pilot, running, device_client):
    client = device_client(pilot)
    offer = client.post(CHECKIN, checkin_body(), format="json").json()["offer"]
    assert offer is not None
    rollout_phase(PhaseChange(running.pk, RolloutStatus.HALTED, 0))
    status, answer, _ = _statements(client)
    assert status == 200 and answer["offer"] is None
    pilot.refresh_from_db()
    assert pilot.last_seen_at is not None


def test_a_withdrawn_offer_is_not_served_to_a_quarantined_device(pilot, running, device_client, operator):
    client = device_client(pilot)
    offer = client.post(CHECKIN, checkin_body(), format="json").json()["offer"]
    device_quarantine(actor=operator, device=pilot, reason="tampered enclosure")
    status, answer, _ = _statements(client, checkin_body(version="1.0.9"))
    assert status == 200 and answer["offer"] is None
    assert Deployment.objects.get(pk=offer["deployment_id"]).status == DeploymentStatus.CANCELLED
    pilot.refresh_from_db()
    assert pilot.reported_version == "1.0.9"  # a quarantined device's report is still drift evidence


def _refused_once(client, device: Device) -> None:
    before = Device.objects.get(pk=device.pk)
    status, answer, _ = _statements(client, checkin_body(version="9.9.9"))
    assert status == 401 and answer["error"]["message"] == "Invalid device credentials."
    (event,) = SecurityEvent.objects.all()
    assert (event.kind, event.count) == (SecurityEventKind.DEVICE_AUTH_FAILED, 1)
    after = Device.objects.get(pk=device.pk)
    assert (after.last_seen_at, after.reported_version) == (before.last_seen_at, before.reported_version)


def test_a_revoked_credential_is_refused_once_and_records_nothing(fleet, device_client, operator):
    device = _fleet_device(fleet)
    client = device_client(device)
    assert client.post(CHECKIN, checkin_body(), format="json").status_code == 200
    device_credential_revoke(actor=operator, device=device, reason="unit stolen")
    _refused_once(client, device)


def test_a_decommissioned_device_is_refused_once_and_records_nothing(fleet, device_client, operator):
    device = _fleet_device(fleet)
    client = device_client(device)
    device_decommission(actor=operator, device=device, reason="scrapped")
    _refused_once(client, device)


def test_a_bad_body_with_a_bad_credential_is_a_401_not_a_400(fleet, device_client):
    device = _fleet_device(fleet)
    client = device_client(device, secret="not-the-issued-secret")
    device_client(device)  # the device has a real credential; the client sends another secret
    _refused_once(client, device)
    assert client.post(CHECKIN, {"slots": "nope"}, format="json").status_code == 401


def test_a_bad_report_from_a_good_device_is_a_400_naming_the_field(fleet, device_client):
    device = _fleet_device(fleet)
    client = device_client(device)
    answer = client.post(CHECKIN, checkin_body(version="not a version"), format="json")
    assert answer.status_code == 400 and "version" in answer.json()["error"]["fields"]
    device.refresh_from_db()
    assert device.last_seen_at is None


def test_a_region_with_a_check_in_budget_is_admitted_before_anything_is_written(fleet, device_client, operator):
    region_update(actor=operator, region=fleet["region"], changes={"max_checkins_per_window": 1})
    first, second = Device.objects.filter(region=fleet["region"])[:2]
    assert device_client(first).post(CHECKIN, checkin_body(), format="json").status_code == 200
    assert device_client(second).post(CHECKIN, checkin_body(), format="json").status_code == 429
    second.refresh_from_db()
    assert second.last_seen_at is None and second.reported_at is None


def test_the_reused_check_in_validator_keeps_nothing_between_requests(fleet, device_client):
    device = _fleet_device(fleet)
    client = device_client(device)
    assert client.post(CHECKIN, checkin_body(version="1.0.1"), format="json").status_code == 200
    nested_unknown = checkin_body(slots={"a": {"version": "1.0.2", "release_counter": 1, "extra": 1}})
    refused = client.post(CHECKIN, nested_unknown, format="json")
    assert refused.status_code == 400 and "extra" in refused.json()["error"]["fields"]["slots"]["a"]
    missing_active = checkin_body(active_slot="b", slots={"a": {"version": "1.0.3", "release_counter": 1}})
    assert client.post(CHECKIN, missing_active, format="json").status_code == 400
    assert client.post(CHECKIN, checkin_body(version="1.0.4"), format="json").status_code == 200
    device.refresh_from_db()
    assert device.reported_version == "1.0.4"


def test_the_short_path_runs_before_the_rest_of_the_chain_and_the_view_alone_answers_the_same(
    fleet, device_client, settings
):
    settings.OTA_DEVICE_POLL_SECONDS = 420
    device = _fleet_device(fleet)
    short = device_client(device).post(CHECKIN, checkin_body(), format="json")
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if not m.endswith("DeviceShortPathMiddleware")]
    full = device_client(device).post(CHECKIN, checkin_body(), format="json")  # a new client loads the new chain
    assert short.status_code == full.status_code == 200
    assert short.json() == full.json() == {"poll_interval_seconds": 420, "offer": None}
    # XFrameOptionsMiddleware (further down the chain) marks every answer it sees: the short path's it never saw.
    assert "X-Frame-Options" not in short and full["X-Frame-Options"] == "DENY"


def test_a_deadlock_on_the_short_path_answers_503_with_retry_after(fleet, device_client, monkeypatch):
    import psycopg
    from django.db import OperationalError

    from devices.edge import middleware

    def deadlocked(request):
        error = OperationalError("deadlock detected")
        error.__cause__ = psycopg.errors.DeadlockDetected("deadlock detected")
        raise error

    monkeypatch.setattr(middleware, "quick_checkin", deadlocked)
    response = device_client(_fleet_device(fleet)).post(CHECKIN, checkin_body(), format="json")
    assert response.status_code == 503 and response.json()["error"]["code"] == "retry_later"
    assert int(response["Retry-After"]) > 0
