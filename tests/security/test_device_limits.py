"""Abuse and swarm limits on the device API (devices.edge.abuse): one credential hammering check-ins is refused
before it spends its region's budget, so the rest of the region keeps being served; an unauthenticated flood is
refused from memory without a database query; many keys over their limits at once are one swarm event and alert."""

from __future__ import annotations

import logging

import pytest
from django.core.cache import caches
from django.test import Client

from approvals.audit.choices import SecurityEventKind
from approvals.audit.models import SecurityEvent
from devices.edge import abuse
from devices.edge.identity import device_proxy_secret
from devices.models import Device, SwarmWindow
from devices.services import region_update
from ota_project.alerts.models import Alert
from ota_project.errors import Conflict
from tests import change_fixtures as _changes
from tests.device_api import conftest as _device_api
from tests.device_api.conftest import checkin_body

pytestmark = pytest.mark.django_db

CHECKIN = "/device/v1/checkin/"
device_client = _device_api.device_client
fleet = _changes.fleet  # the plain fleet, not the signed chain's of tests/security/conftest.py


@pytest.fixture(autouse=True)
def _limits_on(settings):
    """The limits as production runs them, scaled down so a test reaches them quickly (conftest turns them off)."""
    caches["default"].clear()  # the region budget's counters
    abuse.limits_reset()
    settings.OTA_DEVICE_RATE_PER_SECOND = 0.01
    settings.OTA_DEVICE_RATE_BURST = 3
    settings.OTA_ADDRESS_RATE_PER_SECOND = 500
    settings.OTA_ADDRESS_RATE_BURST = 5000
    settings.OTA_UNAUTHENTICATED_RATE_PER_SECOND = 0.01
    settings.OTA_UNAUTHENTICATED_RATE_BURST = 5
    settings.OTA_DEVICE_SWARM_THRESHOLD = 50
    settings.OTA_DEVICE_SWARM_WINDOW_SECONDS = 60
    yield
    abuse.limits_reset()
    caches["default"].clear()


def _events(kind: str) -> list[SecurityEvent]:
    return list(SecurityEvent.objects.filter(kind=kind))


def test_one_credential_hammering_check_ins_is_refused_while_its_region_keeps_being_served(
    fleet, device_client, operator, settings
):
    settings.OTA_DEVICE_BUDGET_WINDOW_SECONDS = 600
    region_update(actor=operator, region=fleet["region"], changes={"max_checkins_per_window": 8})
    hammer, *rest = Device.objects.filter(region=fleet["region"]).order_by("serial")[:6]
    client = device_client(hammer)
    answers = [client.post(CHECKIN, checkin_body(boot_count=n), format="json") for n in range(40)]
    assert [a.status_code for a in answers[:3]] == [200, 200, 200]  # its burst
    refused = answers[3:]
    assert {a.status_code for a in refused} == {429}
    assert {a.json()["error"]["code"] for a in refused} == {"rate_limited"}
    assert all(int(a["Retry-After"]) >= 1 for a in refused)
    hammer.refresh_from_db()
    assert hammer.reported_boot_count == 2  # nothing of the refused 37 was recorded
    # The region's budget (8 per window) was spent by 3 of the hammer's check-ins, not 40: the others are served.
    for device in rest:
        assert device_client(device).post(CHECKIN, checkin_body(), format="json").status_code == 200
    (event,) = _events(SecurityEventKind.DEVICE_RATE_LIMITED)  # once, not once per refused request
    assert event.device_serial == hammer.serial and event.count == 1
    assert not _events(SecurityEventKind.DEVICE_SWARM)


def test_an_unauthenticated_flood_is_refused_without_database_queries(django_assert_num_queries, settings):
    settings.OTA_DEVICE_SWARM_WINDOW_SECONDS = 3600  # no window boundary (a second count) within the flood
    client = Client(REMOTE_ADDR="203.0.113.9")
    # One statement for the whole flood: the address's first refusal counts it for the server's swarm threshold.
    with django_assert_num_queries(1):
        answers = [client.post(CHECKIN, b"{}", content_type="application/json") for _ in range(200)]
    assert [a.status_code for a in answers[:5]] == [401] * 5  # the burst reaches authentication: a plain 401
    assert {a.status_code for a in answers[5:]} == {429}
    assert all(a["Retry-After"] for a in answers[5:])
    # Recorded once (through its own connection, outside the refused requests' work), not 195 times.
    (event,) = _events(SecurityEventKind.DEVICE_RATE_LIMITED)
    assert event.address == "203.0.113.9" and event.count == 1
    # Another address is not affected by this one's flood.
    assert Client(REMOTE_ADDR="203.0.113.10").post(CHECKIN, b"{}", content_type="application/json").status_code == 401


def test_forged_credentials_are_limited_per_credential_before_the_database(fleet, django_assert_num_queries, settings):
    settings.OTA_DEVICE_SWARM_WINDOW_SECONDS = 3600  # no window boundary (a second count) within the flood
    device = Device.objects.filter(region=fleet["region"])[0]
    client = Client(REMOTE_ADDR="198.51.100.7", HTTP_AUTHORIZATION=f"Device {device.serial}:wrong-secret")
    first = [client.post(CHECKIN, checkin_body(), content_type="application/json") for _ in range(3)]
    assert {a.status_code for a in first} == {401}  # each one looked up and recorded as a failed authentication
    with django_assert_num_queries(1):  # the credential's first refusal, counted for the swarm; then memory only
        flood = [client.post(CHECKIN, checkin_body(), content_type="application/json") for _ in range(100)]
    assert {a.status_code for a in flood} == {429}
    assert _events(SecurityEventKind.DEVICE_AUTH_FAILED)[0].count == 3  # the flood added no lookups or events


def test_many_keys_over_their_limits_at_once_are_one_swarm_event_and_one_alert(settings, caplog):
    settings.OTA_DEVICE_SWARM_THRESHOLD = 5
    settings.OTA_UNAUTHENTICATED_RATE_BURST = 1
    caplog.set_level(logging.ERROR, logger="ota.alerts")
    for host in range(12):
        client = Client(REMOTE_ADDR=f"192.0.2.{host}")
        for _ in range(4):
            client.post(CHECKIN, b"{}", content_type="application/json")
    (swarm,) = _events(SecurityEventKind.DEVICE_SWARM)
    assert swarm.count == 1 and "5 credentials or addresses" in swarm.message
    alerts = [r for r in caplog.records if r.name == "ota.alerts"]
    assert len(alerts) == 1 and "swarm" in alerts[0].getMessage()
    assert len(_events(SecurityEventKind.DEVICE_RATE_LIMITED)) == 12  # each address once
    [alert] = Alert.objects.all()  # one alert for operators and security officers, with its evidence
    assert (alert.kind, alert.severity, alert.link) == ("security.device_swarm", "critical", "/audit/security/")
    assert alert.evidence["keys_over_limit"] == 5


def _flood(addresses: range) -> None:
    for host in addresses:
        client = Client(REMOTE_ADDR=f"192.0.2.{host}")
        for _ in range(3):
            client.post(CHECKIN, b"{}", content_type="application/json")


def test_the_swarm_threshold_counts_the_keys_every_process_refused(settings):
    settings.OTA_DEVICE_SWARM_THRESHOLD = 5
    settings.OTA_DEVICE_SWARM_WINDOW_SECONDS = 3600
    settings.OTA_UNAUTHENTICATED_RATE_BURST = 1
    _flood(range(3))  # this process refuses three addresses
    abuse.limits_reset()  # another process: its own buckets and window memory, the same database
    _flood(range(1, 3))  # two of them again: already counted by the first process, recorded once
    assert not _events(SecurityEventKind.DEVICE_SWARM)
    assert len(_events(SecurityEventKind.DEVICE_RATE_LIMITED)) == 3
    assert all(event.count == 1 for event in _events(SecurityEventKind.DEVICE_RATE_LIMITED))
    _flood(range(3, 5))  # two new ones: five keys over their limits on the server, three in this process
    (swarm,) = _events(SecurityEventKind.DEVICE_SWARM)
    assert swarm.count == 1 and "5 credentials or addresses" in swarm.message
    assert Alert.objects.get().evidence["keys_over_limit"] == 5
    abuse.limits_reset()  # a third process that never saw the swarm
    _flood(range(5, 8))
    assert _events(SecurityEventKind.DEVICE_SWARM)[0].count == 1 and Alert.objects.count() == 1  # once per window
    assert SwarmWindow.objects.count() == 1


def test_a_swarm_whose_alert_failed_is_declared_again_by_the_next_key(settings, monkeypatch):
    settings.OTA_DEVICE_SWARM_THRESHOLD = 2
    settings.OTA_DEVICE_SWARM_WINDOW_SECONDS = 3600
    settings.OTA_UNAUTHENTICATED_RATE_BURST = 1
    raise_alert = abuse.raise_alert
    failures = iter([Conflict("The alert changed too often while it was raised; try again.", code="stale")])

    def flaky_raise_alert(**kwargs):
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return raise_alert(**kwargs)

    monkeypatch.setattr(abuse, "raise_alert", flaky_raise_alert)
    _flood(range(2))  # the threshold is reached, but the alert fails: nothing of the swarm is kept
    assert not SwarmWindow.objects.exists() and not _events(SecurityEventKind.DEVICE_SWARM)
    _flood(range(2, 3))
    (swarm,) = _events(SecurityEventKind.DEVICE_SWARM)
    assert swarm.count == 1 and Alert.objects.get().evidence["keys_over_limit"] == 3


def test_the_source_address_is_nginx_s_only_with_the_proxy_secret(rf):
    spoofed = rf.post(CHECKIN, REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.50")
    assert abuse.source_address(spoofed) == "10.0.0.1"  # a client's own header counts for nothing
    proxied = rf.post(
        CHECKIN,
        REMOTE_ADDR="127.0.0.1",
        HTTP_X_FORWARDED_FOR="203.0.113.50",
        HTTP_X_OTA_PROXY_AUTH=device_proxy_secret(),
    )
    assert abuse.source_address(proxied) == "203.0.113.50"


def test_a_bucket_refills_at_its_rate(settings):
    buckets = abuse.TokenBuckets()
    assert [buckets.take("k", rate=2, burst=2, now=100.0) for _ in range(3)] == [0, 0, 0.5]
    assert buckets.take("k", rate=2, burst=2, now=100.5) == 0  # one token back after half a second
    small = abuse.TokenBuckets(max_keys=2)
    for key in ("a", "b", "c"):
        small.take(key, rate=1, burst=1, now=0.0)
    assert small.take("a", rate=1, burst=1, now=0.0) == 0  # "a" was forgotten (least recently used): starts full
