"""Load shaping per region: poll interval from the region, 429 + Retry-After over the check-in or download budget,
what check-in stores (boot count, slot, health, last check-in) and "offline"."""

from __future__ import annotations

import os
import time
import uuid
from datetime import timedelta
from types import SimpleNamespace
from unittest import mock

import pytest
from django.core.cache import caches
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from approvals.audit.models import DecisionRecord
from devices.edge import throttle
from devices.models import Device, Region
from devices.selectors import device_is_offline, device_list
from devices.services import region_update
from tests.device_api.conftest import IMAGE, checkin_body, download_url

pytestmark = pytest.mark.django_db

CHECKIN = "/device/v1/checkin/"
T0 = 1_800_000_000.0  # a window boundary for windows of 60 s and leases of 900 s


@pytest.fixture(autouse=True)
def _clean_budget_cache():
    caches["default"].clear()
    yield
    caches["default"].clear()


@pytest.fixture
def clock(monkeypatch):
    """The budget's clock (seconds since the epoch), set by the test."""
    now = SimpleNamespace(value=T0)
    monkeypatch.setattr(throttle, "time", SimpleNamespace(time=lambda: now.value))
    return now


@pytest.fixture(params=["memory", "redis"])
def budget_cache(request, settings) -> str:
    """The download budget on the process's memory and on a real Redis (its one-round-trip scripts)."""
    if request.param == "redis":
        redis_url = os.environ.get("OTA_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
        settings.CACHES = {
            **settings.CACHES,
            "budget": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": redis_url,
                "KEY_PREFIX": f"test-{uuid.uuid4().hex}",
            },
        }
        settings.OTA_DEVICE_BUDGET_CACHE = "budget"
    return str(request.param)


def _region(device: Device) -> Region:
    return Region.objects.get(pk=device.region_id)


def _content(response) -> bytes:
    return b"".join(response.streaming_content)


# --- poll interval -------------------------------------------------------------------------------------------


def test_poll_interval_comes_from_the_region_else_the_global_default(fleet, device_client, operator, settings):
    settings.OTA_DEVICE_POLL_SECONDS = 450
    settings.OTA_CHECKIN_EPOCH_SECONDS = 0.2
    device = Device.objects.filter(hardware_model=fleet["other_model"]).first()
    client = device_client(device)
    assert client.post(CHECKIN, checkin_body(), format="json").json()["poll_interval_seconds"] == 450
    region_update(actor=operator, region=fleet["region"], changes={"poll_interval_seconds": 1800}, reason="LTE cap")
    time.sleep(settings.OTA_CHECKIN_EPOCH_SECONDS)  # a quiet device's answer may come from memory until then
    assert client.post(CHECKIN, checkin_body(), format="json").json()["poll_interval_seconds"] == 1800


def test_in_flight_devices_poll_faster_than_a_slow_region(pilot, running, device_client, operator):
    region_update(actor=operator, region=_region(pilot), changes={"poll_interval_seconds": 3600})
    answer = device_client(pilot).post(CHECKIN, checkin_body(), format="json").json()
    assert answer["offer"] is not None and answer["poll_interval_seconds"] == 30


# --- check-in budget -----------------------------------------------------------------------------------------


def test_over_the_checkin_budget_answers_429_with_retry_after_and_records_nothing(
    fleet, device_client, operator, clock, settings
):
    settings.OTA_DEVICE_BUDGET_WINDOW_SECONDS = 60
    region_update(actor=operator, region=fleet["region"], changes={"max_checkins_per_window": 2})
    first, second, third = (device_client(d) for d in Device.objects.filter(region=fleet["region"])[:3])
    late = Device.objects.filter(region=fleet["region"])[2]
    clock.value = T0 + 15
    assert first.post(CHECKIN, checkin_body(), format="json").status_code == 200
    assert second.post(CHECKIN, checkin_body(), format="json").status_code == 200
    refused = third.post(CHECKIN, checkin_body(), format="json")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "region_over_budget"
    assert "eu-west" in refused.json()["error"]["message"]
    # The rest of this window (45 s) plus a per-device spread below one window, so retries do not come together.
    assert 45 <= int(refused["Retry-After"]) < 45 + 60
    late.refresh_from_db()
    assert late.last_seen_at is None and late.reported_at is None
    clock.value = T0 + 60  # the next window
    assert third.post(CHECKIN, checkin_body(), format="json").status_code == 200
    late.refresh_from_db()
    assert late.last_seen_at is not None


def test_the_budget_is_per_region(fleet, device_client, operator, clock):
    region_update(actor=operator, region=fleet["region"], changes={"max_checkins_per_window": 1})
    elsewhere = Region.objects.create(code="us-east", name="US East", time_zone="America/New_York")
    devices = list(Device.objects.filter(region=fleet["region"])[:2])
    Device.objects.filter(pk=devices[1].pk).update(region=elsewhere)
    devices[1].refresh_from_db()
    assert device_client(devices[0]).post(CHECKIN, checkin_body(), format="json").status_code == 200
    assert device_client(devices[1]).post(CHECKIN, checkin_body(), format="json").status_code == 200


def test_global_default_budget_applies_to_regions_without_their_own(fleet, device_client, operator, clock, settings):
    settings.OTA_DEVICE_MAX_CHECKINS_PER_WINDOW = 1
    client = device_client(Device.objects.filter(region=fleet["region"]).first())
    assert client.post(CHECKIN, checkin_body(), format="json").status_code == 200
    assert client.post(CHECKIN, checkin_body(), format="json").status_code == 429
    region_update(actor=operator, region=fleet["region"], changes={"max_checkins_per_window": 0})  # 0: no limit
    assert client.post(CHECKIN, checkin_body(), format="json").status_code == 200


def test_an_unreachable_budget_cache_never_locks_devices_out(fleet, device_client, operator, clock):
    region_update(actor=operator, region=fleet["region"], changes={"max_checkins_per_window": 1})
    client = device_client(Device.objects.filter(region=fleet["region"]).first())
    broken = mock.Mock(add=mock.Mock(side_effect=ConnectionError("cache down")))
    with mock.patch.object(throttle, "_cache", return_value=broken):
        for _ in range(3):
            assert client.post(CHECKIN, checkin_body(), format="json").status_code == 200


def test_strangers_learn_nothing_about_the_budget(fleet, operator, clock, api_client):
    region_update(actor=operator, region=fleet["region"], changes={"max_checkins_per_window": 1})
    for _ in range(3):
        api_client.credentials(HTTP_AUTHORIZATION="Device TCU-NOPE:secret")
        assert api_client.post(CHECKIN, checkin_body(), format="json").status_code == 401


# --- download budget -----------------------------------------------------------------------------------------


def test_concurrent_downloads_over_the_region_limit_get_429_until_a_stream_ends(
    budget_cache, pilot, other_pilot, running, device_client, operator, artifact_url, sha, clock, settings
):
    settings.OTA_DEVICE_DOWNLOAD_RETRY_SECONDS = 30
    other_url = download_url(other_pilot, sha)
    first, second = device_client(pilot), device_client(other_pilot)
    for client in (first, second):
        assert client.post(CHECKIN, checkin_body(), format="json").json()["offer"] is not None
    region_update(actor=operator, region=_region(pilot), changes={"max_concurrent_downloads": 1})
    streaming = first.get(artifact_url)  # not read yet: the stream is open
    assert streaming.status_code == 200
    refused = second.get(other_url, HTTP_RANGE="bytes=100-")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "region_over_budget"
    assert 30 <= int(refused["Retry-After"]) < 60
    assert _content(streaming) == IMAGE  # the stream ends, the server closes it, the slot is free
    resumed = second.get(other_url, HTTP_RANGE="bytes=100-")
    assert resumed.status_code == 206 and _content(resumed) == IMAGE[100:]


def test_refused_and_failed_downloads_give_their_slot_back(
    budget_cache, pilot, running, device_client, operator, clock
):
    client = device_client(pilot)
    client.post(CHECKIN, checkin_body(), format="json")
    region_update(actor=operator, region=_region(pilot), changes={"max_concurrent_downloads": 1})
    assert client.get(f"/device/v1/artifacts/{'0' * 64}/").status_code == 401  # no token
    assert client.get(f"/device/v1/artifacts/{'0' * 64}/").status_code == 401  # not 429: the slot came back


def test_a_lost_download_slot_frees_itself_after_two_lease_periods(
    budget_cache, pilot, running, device_client, operator, artifact_url, clock, settings
):
    settings.OTA_DEVICE_DOWNLOAD_LEASE_SECONDS = 900
    client = device_client(pilot)
    client.post(CHECKIN, checkin_body(), format="json")
    region_update(actor=operator, region=_region(pilot), changes={"max_concurrent_downloads": 1})
    assert client.get(artifact_url).status_code == 200  # never read nor closed: a crashed server process
    clock.value = T0 + 900
    assert client.get(artifact_url).status_code == 429  # still counted in the next period
    clock.value = T0 + 1800
    assert _content(client.get(artifact_url)) == IMAGE


# --- region budget: service and API --------------------------------------------------------------------------


def test_region_api_role_matrix_and_field_errors(fleet, client_for, operator, requester, auditor):
    url = "/api/v1/regions/eu-west/"
    body = {"poll_interval_seconds": 600, "max_checkins_per_window": 5000, "reason": "cellular cost cap"}
    assert client_for(None).patch(url, body, format="json").status_code == 401
    assert client_for(requester).patch(url, body, format="json").status_code == 403
    assert client_for(auditor).patch(url, body, format="json").status_code == 403
    assert client_for(operator).patch("/api/v1/regions/nowhere/", body, format="json").status_code == 404
    for bad_body in ({"poll_interval_seconds": 1}, {"time_zone": "UTC"}, {"max_concurrent_downloads": "many"}):
        bad = client_for(operator).patch(url, bad_body, format="json")
        assert bad.status_code == 400 and set(bad.json()["error"]["fields"]) == set(bad_body)
    assert Region.objects.get(code="eu-west").poll_interval_seconds is None
    ok = client_for(operator).patch(url, body, format="json")
    assert ok.status_code == 200
    assert ok.json() | {"id": 0} == {
        "id": 0,
        "code": "eu-west",
        "name": fleet["region"].name,
        "time_zone": "Europe/Paris",
        "poll_interval_seconds": 600,
        "max_checkins_per_window": 5000,
        "max_concurrent_downloads": None,
    }
    assert client_for(auditor).get(url).json()["max_checkins_per_window"] == 5000
    cleared = client_for(operator).patch(url, {"poll_interval_seconds": None}, format="json")
    assert cleared.status_code == 200 and cleared.json()["poll_interval_seconds"] is None


# --- what check-in stores ------------------------------------------------------------------------------------


def test_checkin_stores_boot_count_active_slot_health_and_time(fleet, device_client, client_for, auditor):
    device = Device.objects.filter(region=fleet["region"]).first()
    assert device is not None
    body = checkin_body("1.0.0", 1, active_slot="b", boot_count=3, health={"modem_attach": True, "gnss_fix": False})
    body["slots"]["b"] = {"version": "1.0.0", "release_counter": 1}
    before = timezone.now()
    assert device_client(device).post(CHECKIN, body, format="json").status_code == 200
    device.refresh_from_db()
    assert (device.reported_active_slot, device.reported_boot_count) == ("b", 3)
    assert device.reported_health == {"modem_attach": True, "gnss_fix": False}
    assert device.last_seen_at is not None and device.last_seen_at >= before and not device.has_drift
    shown = client_for(auditor).get(f"/api/v1/devices/{device.serial}/").json()
    assert (shown["reported_active_slot"], shown["reported_boot_count"], shown["offline"]) == ("b", 3, False)
    assert shown["reported_health"] == {"modem_attach": True, "gnss_fix": False}


def test_offline_means_missed_poll_intervals_of_the_region(fleet, operator, settings, client_for, auditor):
    settings.OTA_DEVICE_OFFLINE_AFTER_POLLS = 3
    region_update(actor=operator, region=fleet["region"], changes={"poll_interval_seconds": 600})
    devices = list(Device.objects.filter(region=fleet["region"]).order_by("serial")[:3])
    now = timezone.now()
    Device.objects.filter(pk=devices[0].pk).update(last_seen_at=now - timedelta(minutes=29))
    Device.objects.filter(pk=devices[1].pk).update(last_seen_at=now - timedelta(minutes=31))
    fresh, stale, never = (Device.objects.get(pk=d.pk) for d in devices)
    assert (device_is_offline(device=fresh), device_is_offline(device=stale), device_is_offline(device=never)) == (
        False,
        True,
        True,
    )
    online = set(device_list(offline=False).values_list("serial", flat=True))
    assert online == {fresh.serial}
    listed = client_for(auditor).get("/api/v1/devices/", {"offline": "false"}).json()
    assert [d["serial"] for d in listed["results"]] == [fresh.serial]


def test_a_region_can_be_created_with_its_budget(db, client_for, operator):
    body = {"code": "ap-south", "name": "AP South", "time_zone": "Asia/Kolkata", "poll_interval_seconds": 1200}
    created = client_for(operator).post("/api/v1/regions/", body, format="json")
    assert created.status_code == 201 and created.json()["poll_interval_seconds"] == 1200
    assert created.json()["max_checkins_per_window"] is None
    record = DecisionRecord.objects.get(action="devices.region.create", object_id="ap-south")
    assert record.after is not None
    assert record.after["poll_interval_seconds"] == 1200
    bad = client_for(operator).post(
        "/api/v1/regions/", {**body, "code": "ap-east", "max_concurrent_downloads": -3}, format="json"
    )
    assert bad.status_code == 400 and set(bad.json()["error"]["fields"]) == {"max_concurrent_downloads"}
    assert not Region.objects.filter(code="ap-east").exists()


def test_the_short_path_takes_a_download_slot_and_gives_it_back(
    budget_cache, pilot, running, device_client, operator, artifact_url, clock, settings
):
    settings.OTA_DOWNLOAD_RECHECK_SECONDS = 60
    client = device_client(pilot)
    client.post(CHECKIN, checkin_body(), format="json")
    region_update(actor=operator, region=_region(pilot), changes={"max_concurrent_downloads": 1})
    assert _content(client.get(artifact_url, HTTP_RANGE="bytes=0-9")) == IMAGE[:10]  # full path: leaves a pass
    with CaptureQueriesContext(connection) as queries:
        streaming = client.get(artifact_url, HTTP_RANGE="bytes=10-")  # the short path; not read yet: slot held
    assert streaming.status_code == 206 and [q["sql"] for q in queries] == []
    refused = client.get(artifact_url, HTTP_RANGE="bytes=10-")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "region_over_budget"
    assert _content(streaming) == IMAGE[10:]  # the server closes the stream: the slot is free again
    assert _content(client.get(artifact_url, HTTP_RANGE="bytes=20-")) == IMAGE[20:]
