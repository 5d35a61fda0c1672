"""An update never starts outside its region's maintenance window: an offer the device has not acted on when the
window closes goes back to pending (no failure, no attempt burned, the reason kept) and is offered again in the next
window; a download already under way goes on; rollbacks ignore windows."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from devices.models import Device
from rollouts import rollout_services as steps
from rollouts.choices import DeploymentKind, DeploymentStatus
from rollouts.deployment_services import Report, deployment_offer, deployment_report
from rollouts.models import Deployment, Rollout, Wave
from tests.device_api.conftest import checkin_body
from tests.support.rollouts import expect_offer

pytestmark = pytest.mark.django_db

CHECKIN = "/device/v1/checkin/"


def _windows(rollout: Rollout, start_hour: int, end_hour: int) -> None:
    """Give every region one daily maintenance window, start_hour:00 to end_hour:00 local time."""
    span = {"days": list(range(7)), "start": f"{start_hour % 24:02d}:00", "end": f"{end_hour % 24:02d}:00"}
    Rollout.objects.filter(pk=rollout.pk).update(plan={**rollout.plan, "maintenance_windows": {"*": [span]}})


def _local(device: Device, days: int, hour: int, minute: int) -> datetime:
    """`hour:minute` local time in the device's region, `days` days from today (always after the wave opened)."""
    zone = ZoneInfo(device.region.time_zone)
    day = (timezone.now().astimezone(zone) + timedelta(days=days)).date()
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)


@pytest.fixture
def evening(running) -> Rollout:
    """The running pilot wave, its regions open 21:00-22:00 local time only."""
    _windows(running, 21, 22)
    return running


def test_an_unstarted_offer_goes_back_to_pending_when_the_window_closes_and_returns_in_the_next(evening, pilot):
    offered = expect_offer(pilot, now=_local(pilot, 1, 21, 59))
    assert (offered.status, offered.attempts) == (DeploymentStatus.OFFERED, 1)
    after_close = _local(pilot, 1, 22, 1)
    assert deployment_offer(device_id=pilot.pk, now=after_close) is None
    pending = Deployment.objects.get(pk=offered.pk)
    assert (pending.status, pending.attempts, pending.failure_class) == (DeploymentStatus.PENDING, 0, "")
    assert "maintenance window closed" in pending.detail and pending.finished_at is None
    next_opening = _local(pilot, 2, 21, 0)
    assert pending.deadline_at == next_opening + timedelta(seconds=evening.approved_plan.deadlines.download_seconds)
    assert deployment_offer(device_id=pilot.pk, now=_local(pilot, 2, 20, 59)) is None  # still closed
    again = expect_offer(pilot, now=_local(pilot, 2, 21, 0))
    assert (again.pk, again.status, again.attempts) == (offered.pk, DeploymentStatus.OFFERED, 1)
    pilot.refresh_from_db()
    assert pilot.install_failures == 0


def test_a_deployment_waiting_for_the_next_window_does_not_time_out_at_its_offer_deadline(running, pilot):
    # On the real clock (the wave's health check expires deadlines as of now): a window that closed two hours ago.
    zone = ZoneInfo(pilot.region.time_zone)
    opened = timezone.now().astimezone(zone).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    _windows(running, opened.hour, opened.hour + 1)
    download = timedelta(seconds=running.approved_plan.deadlines.download_seconds)
    Deployment.objects.filter(device=pilot).update(not_before=opened, deadline_at=opened + download)  # wave opened then
    offered = expect_offer(pilot, now=opened + timedelta(minutes=30))
    assert offered.deadline_at is not None and offered.deadline_at < timezone.now()  # that offer's deadline passed
    assert deployment_offer(device_id=pilot.pk, now=opened + timedelta(minutes=61)) is None
    health = steps.wave_health(rollout_id=running.pk, wave_index=Wave.objects.get(pk=offered.wave_id).index)
    waiting = Deployment.objects.get(pk=offered.pk)
    assert waiting.status == DeploymentStatus.PENDING and health.timed_out == 0
    assert waiting.deadline_at == opened + timedelta(days=1) + download


def test_a_download_under_way_goes_on_after_the_window_closes(evening, pilot):
    offered = expect_offer(pilot, now=_local(pilot, 1, 21, 59))
    report = Report(1, DeploymentStatus.DOWNLOADING)
    deployment_report(device=pilot, deployment_id=offered.pk, report=report, now=_local(pilot, 1, 21, 59))
    assert deployment_offer(device_id=pilot.pk, now=_local(pilot, 1, 22, 1)) is None  # no new offer ...
    assert Deployment.objects.get(pk=offered.pk).status == DeploymentStatus.DOWNLOADING  # ... and nothing cut off
    outcome = deployment_report(
        device=pilot,
        deployment_id=offered.pk,
        report=Report(2, DeploymentStatus.DOWNLOADED),
        now=_local(pilot, 1, 22, 5),
    )
    assert outcome.deployment.status == DeploymentStatus.DOWNLOADED


def test_a_start_reported_late_on_an_offer_given_back_counts_its_attempt(evening, pilot):
    offered = expect_offer(pilot, now=_local(pilot, 1, 21, 59))
    assert deployment_offer(device_id=pilot.pk, now=_local(pilot, 1, 22, 1)) is None
    assert Deployment.objects.get(pk=offered.pk).attempts == 0  # given back with the offer
    # The device had begun at 21:59; its report arrives after the close: the download goes on, as the attempt it is.
    report = Report(1, DeploymentStatus.DOWNLOADING)
    outcome = deployment_report(device=pilot, deployment_id=offered.pk, report=report, now=_local(pilot, 1, 22, 2))
    assert (outcome.deployment.status, outcome.deployment.attempts) == (DeploymentStatus.DOWNLOADING, 1)


def test_a_rollback_offer_is_re_sent_outside_the_window(evening, pilot):
    first = expect_offer(pilot, now=_local(pilot, 1, 21, 0))
    for seq, status in enumerate(("downloading", "downloaded", "installing", "rebooting", "confirming"), start=1):
        deployment_report(device=pilot, deployment_id=first.pk, report=Report(seq, status))
    deployment_report(
        device=pilot,
        deployment_id=first.pk,
        report=Report(6, DeploymentStatus.SUCCEEDED, booted_version=first.release.version, health_passed=True),
    )
    steps.rollout_halt(rollout_id=evening.pk, wave_index=0, reason="bad telemetry")
    assert steps.rollback_assign(rollout_id=evening.pk) == 1
    closed = _local(pilot, 1, 23, 0)
    rollback = expect_offer(pilot, now=closed)
    assert rollback.kind == DeploymentKind.ROLLBACK
    assert expect_offer(pilot, now=closed + timedelta(minutes=1)).pk == rollback.pk


def test_a_device_checking_in_after_the_window_closed_gets_no_offer_and_no_bytes(running, pilot, device_client):
    # Through the device API, on the real clock: open around now, then the window closes (the plan moves it).
    hour = timezone.now().astimezone(ZoneInfo(pilot.region.time_zone)).hour
    _windows(running, hour - 1, hour + 2)
    client = device_client(pilot)
    offer = client.post(CHECKIN, checkin_body(), format="json").json()["offer"]
    assert offer is not None
    _windows(running, hour + 3, hour + 4)
    answer = client.post(CHECKIN, checkin_body(), format="json")
    assert answer.status_code == 200 and answer.json()["offer"] is None
    deployment = Deployment.objects.get(pk=offer["deployment_id"])
    assert deployment.status == DeploymentStatus.PENDING
    assert client.get(offer["artifact"]["url"]).status_code == 404  # the token of a pending deployment is refused
    _windows(running, hour - 1, hour + 2)
    again = client.post(CHECKIN, checkin_body(), format="json").json()["offer"]
    assert again is not None and again["deployment_id"] == offer["deployment_id"]


def test_a_device_downloading_when_the_window_closes_keeps_its_download(running, pilot, device_client):
    hour = timezone.now().astimezone(ZoneInfo(pilot.region.time_zone)).hour
    _windows(running, hour - 1, hour + 2)
    client = device_client(pilot)
    offer = client.post(CHECKIN, checkin_body(), format="json").json()["offer"]
    status_url = f"/device/v1/deployments/{offer['deployment_id']}/status/"
    assert client.post(status_url, {"seq": 1, "status": "downloading"}, format="json").status_code == 200
    _windows(running, hour + 3, hour + 4)
    resumed = client.post(CHECKIN, checkin_body(), format="json").json()["offer"]
    assert resumed is not None and resumed["deployment_id"] == offer["deployment_id"]  # a fresh URL to resume
    assert client.get(resumed["artifact"]["url"], HTTP_RANGE="bytes=0-99").status_code == 206
    assert Deployment.objects.get(pk=offer["deployment_id"]).status == DeploymentStatus.DOWNLOADING
