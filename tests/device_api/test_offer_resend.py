"""A live offer re-sent from memory (devices.edge.quiet, rollouts.offer_resend): a device holding an offered
deployment that checks in again with the same report gets the same answer as the locking offer path would give, with
a download token signed afresh, and no SQL statement; anything that could withdraw or change the offer (a halt, a
pause, an abort, a cancelled deployment, a quarantine, the breaker, a revocation, the release) sends it back to the
database within OTA_CHECKIN_EPOCH_SECONDS, through the database's `offer` epoch (triggers, rollouts 0014)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices.credentials import device_credential_revoke
from devices.edge import quiet
from devices.firmware.models import FirmwareRelease
from devices.models import CheckinEpoch, Device
from devices.services import device_quarantine
from rollouts import rollout_services as steps
from rollouts.choices import DeploymentStatus, RolloutStatus
from rollouts.models import Deployment, Rollout, Wave
from tests.device_api.conftest import CHECKIN, IMAGE, MEMORY_BOUND, checkin_body, checkin_counted, epoch_rereads
from workflows.types import PhaseChange

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("memory_bounds")]


def _offer_epoch() -> int:
    return CheckinEpoch.objects.get(name="offer").value


def _without_token(answer: dict) -> dict:
    """The answer with the download URL's token left out (its nonce and expiry differ per answer by design)."""
    offer = dict(answer["offer"])
    url = urlsplit(offer["artifact"]["url"])
    assert url.query.startswith("token=")
    offer["artifact"] = {**offer["artifact"], "url": url._replace(query="").geturl()}
    return {**answer, "offer": offer}


@pytest.fixture
def held(running, pilot, device_client):
    """The pilot holds a live offer and its re-send is answered from memory."""
    client = device_client(pilot)
    status, first, _ = checkin_counted(client)
    assert status == 200 and first["offer"] is not None
    status, again, statements = checkin_counted(client)
    assert (status, statements) == (200, 0)
    return client, again


def test_a_re_sent_offer_costs_no_statement_and_equals_the_database_answer(held, pilot, settings):
    settings.OTA_CHECKIN_EPOCH_SECONDS = 60
    client, remembered = held
    quiet.quiet_reset()  # the next answer comes from the locking offer path
    status, from_database, statements = checkin_counted(client)
    assert status == 200 and statements >= 2
    assert _without_token(remembered) == _without_token(from_database)
    deployment = Deployment.objects.get(pk=remembered["offer"]["deployment_id"])
    assert deployment.status == DeploymentStatus.OFFERED and remembered["poll_interval_seconds"] == 30
    # The token signed from memory is a real one: the download it names is served.
    response = client.get(remembered["offer"]["artifact"]["url"])
    assert response.status_code == 200 and b"".join(response.streaming_content) == IMAGE


def test_a_changed_report_takes_the_database_path_without_re_reading_the_epochs(held, settings):
    settings.OTA_CHECKIN_EPOCH_SECONDS = 0  # the epochs are due at every check-in
    client, remembered = held
    with CaptureQueriesContext(connection) as queries:
        answer = client.post(CHECKIN, checkin_body(boot_count=13), format="json").json()
    assert answer["offer"]["deployment_id"] == remembered["offer"]["deployment_id"]
    assert len(queries.captured_queries) > 1 and epoch_rereads(queries) == 0  # the locking path, and nothing more
    with CaptureQueriesContext(connection) as queries:
        assert client.post(CHECKIN, checkin_body(boot_count=13), format="json").json()["offer"] is not None
    assert len(queries.captured_queries) == epoch_rereads(queries) == 1  # remembered again: the re-read alone


def _halt(rollout: Rollout, device: Device, operator) -> None:
    steps.rollout_halt(rollout_id=rollout.pk, wave_index=0, reason="bad telemetry")


def _pause(rollout: Rollout, device: Device, operator) -> None:
    steps.rollout_phase(PhaseChange(rollout.pk, RolloutStatus.PAUSED, 0))


def _abort(rollout: Rollout, device: Device, operator) -> None:
    Rollout.objects.filter(pk=rollout.pk).update(status=RolloutStatus.ABORTED)  # a side door: the trigger sees it


def _withdraw(rollout: Rollout, device: Device, operator) -> None:
    Deployment.objects.filter(device=device).update(status=DeploymentStatus.CANCELLED, finished_at=timezone.now())


def _quarantine(rollout: Rollout, device: Device, operator) -> None:
    device_quarantine(actor=operator, device=device, reason="tampered enclosure")


def _breaker(rollout: Rollout, device: Device, operator) -> None:
    Wave.objects.filter(rollout=rollout, index=0).update(breaker_tripped_at=timezone.now())


def _release_changed(rollout: Rollout, device: Device, operator) -> None:
    FirmwareRelease.objects.filter(pk=rollout.release_id).update(release_counter=0)  # below the device's: refused


def _model_dropped(rollout: Rollout, device: Device, operator) -> None:
    FirmwareRelease.objects.get(pk=rollout.release_id).hardware_models.remove(device.hardware_model_id)


def _higher_counter(rollout: Rollout, device: Device, operator) -> None:
    Device.objects.filter(pk=device.pk).update(installed_release_counter=9)  # committed elsewhere: anti-rollback


STOPS: dict[str, Callable[[Rollout, Device, object], None]] = {
    "halt": _halt,
    "pause": _pause,
    "abort": _abort,
    "withdrawal": _withdraw,
    "quarantine": _quarantine,
    "breaker": _breaker,
    "release": _release_changed,
    "model_dropped": _model_dropped,
    "higher_counter": _higher_counter,
}


@pytest.mark.parametrize("stop", STOPS)
def test_whatever_stops_the_offer_stops_the_remembered_one_within_the_bound(stop, held, running, pilot, operator):
    client, _ = held
    before = _offer_epoch()
    STOPS[stop](running, pilot, operator)
    assert _offer_epoch() > before or stop == "quarantine"  # a quarantine moves the identity epoch
    time.sleep(MEMORY_BOUND)
    status, answer, statements = checkin_counted(client)
    assert (status, answer["offer"]) == (200, None) and statements >= 1  # the database answered: no offer
    assert checkin_counted(client)[1]["offer"] is None  # and nothing offers it again from memory


def test_a_revoked_credential_gets_no_remembered_offer(held, pilot, operator):
    client, _ = held
    device_credential_revoke(actor=operator, device=pilot, reason="unit stolen")
    time.sleep(MEMORY_BOUND)
    status, answer, _ = checkin_counted(client)
    assert status == 401 and answer["error"]["message"] == "Invalid device credentials."


def test_a_download_under_way_takes_the_database_path(held, pilot):
    client, remembered = held
    url = f"/device/v1/deployments/{remembered['offer']['deployment_id']}/status/"
    assert client.post(url, {"seq": 1, "status": "downloading"}, format="json").status_code == 200
    time.sleep(MEMORY_BOUND)
    status, answer, statements = checkin_counted(client)
    assert (
        status == 200 and statements >= 1 and answer["offer"]["deployment_id"] == remembered["offer"]["deployment_id"]
    )
    assert (
        checkin_counted(client)[2] >= 1
    )  # never from memory while downloading: each answer signs a fresh URL from the row


def test_an_offer_in_a_region_with_maintenance_windows_is_never_remembered(running, pilot, device_client):
    # Open all day: the offer is made, and a window boundary could never meet a remembered answer.
    always = [{"days": list(range(7)), "start": "00:00", "end": "12:00"}]
    always.append({"days": list(range(7)), "start": "12:00", "end": "00:00"})
    Rollout.objects.filter(pk=running.pk).update(plan={**running.plan, "maintenance_windows": {"*": always}})
    client = device_client(pilot)
    assert checkin_counted(client)[1]["offer"] is not None
    for _ in range(2):
        status, answer, statements = checkin_counted(client)
        assert status == 200 and answer["offer"] is not None and statements >= 1


def test_an_offer_is_never_remembered_past_its_deadline(running, pilot, device_client, settings):
    settings.OTA_CHECKIN_EPOCH_SECONDS = 60
    client = device_client(pilot)
    assert checkin_counted(client)[1]["offer"] is not None
    deadline = timezone.now() + timedelta(seconds=0.6)
    Deployment.objects.filter(device=pilot).update(deadline_at=deadline)
    quiet.quiet_reset()
    assert checkin_counted(client)[2] >= 1  # remembered now, until the deadline
    assert checkin_counted(client)[2] == 0
    time.sleep(max(0.0, (deadline - timezone.now()).total_seconds()) + 0.05)
    assert checkin_counted(client)[2] >= 1


def test_a_halt_of_many_offers_bumps_the_offer_epoch_once(running, device_client):
    for deployment in Deployment.objects.filter(rollout=running):
        assert checkin_counted(device_client(deployment.device))[1]["offer"] is not None
    assert Deployment.objects.filter(rollout=running, status=DeploymentStatus.OFFERED).count() >= 2
    before = _offer_epoch()
    steps.rollout_halt(rollout_id=running.pk, wave_index=0, reason="bad telemetry")
    assert before < _offer_epoch() <= before + 3  # per statement (rollout, wave, deployments), never per row


def test_no_offer_is_remembered_when_turned_off(running, pilot, device_client, settings):
    settings.OTA_CHECKIN_OFFER_CACHE_SECONDS = 0
    client = device_client(pilot)
    assert checkin_counted(client)[1]["offer"] is not None
    assert checkin_counted(client)[2] > 1  # the locking path again


def test_a_status_report_forgets_the_remembered_offer_at_once_in_its_process(held, pilot):
    client, remembered = held
    url = f"/device/v1/deployments/{remembered['offer']['deployment_id']}/status/"
    assert client.post(url, {"seq": 1, "status": "downloading"}, format="json").status_code == 200
    assert checkin_counted(client)[2] >= 1  # no wait for the epoch: this process handled the report
