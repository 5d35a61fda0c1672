"""Download tokens: the offer's URL authorises ranges without a join; foreign, forged and expired tokens are refused
and recorded; withdrawals, halts and revocations stop new ranges within their bound."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from approvals.audit.choices import SecurityEventKind
from approvals.audit.models import SecurityEvent
from devices.credentials import device_credential_revoke
from devices.edge import download_tokens
from devices.edge.download_tokens import (
    MAX_LIFETIME_SECONDS,
    DownloadTokenRefused,
    download_token_issue,
    download_token_verify,
)
from devices.services import device_decommission, device_quarantine
from rollouts.choices import DeploymentStatus, RolloutStatus
from rollouts.models import Deployment
from rollouts.transitions import deployment_transition
from tests.device_api.conftest import IMAGE, checkin_body, download_url
from workflows.types import PhaseChange

pytestmark = pytest.mark.django_db

CHECKIN = "/device/v1/checkin/"
NOW = 1_800_000_000.0


@pytest.fixture
def offer(pilot, running, device_client) -> dict:
    answer = device_client(pilot).post(CHECKIN, checkin_body(), format="json").json()
    assert answer["offer"] is not None
    return answer["offer"]


def _target(offer: dict) -> str:
    url = urlsplit(offer["artifact"]["url"])
    return f"{url.path}?{url.query}"


def _refusals() -> list[SecurityEvent]:
    return list(SecurityEvent.objects.filter(kind=SecurityEventKind.DEVICE_ARTIFACT_REFUSED).order_by("pk"))


def test_the_offers_url_downloads_and_resumes(offer, pilot, device_client, sha):
    client = device_client(pilot)
    target = _target(offer)
    first = client.get(target, HTTP_RANGE="bytes=0-4095")
    rest = client.get(target, HTTP_RANGE="bytes=4096-", HTTP_IF_RANGE=f'"{sha}"')
    assert (first.status_code, rest.status_code) == (206, 206)
    assert b"".join(first.streaming_content) + b"".join(rest.streaming_content) == IMAGE


def test_a_range_with_a_fresh_pass_asks_the_database_nothing(offer, pilot, device_client, settings):
    settings.OTA_DOWNLOAD_RECHECK_SECONDS = 60
    client = device_client(pilot)
    target = _target(offer)
    assert client.get(target, HTTP_RANGE="bytes=0-0").status_code == 206  # the full path: asks, leaves a pass
    with CaptureQueriesContext(connection) as queries:
        second = client.get(target, HTTP_RANGE="bytes=1-3")
    assert (second.status_code, second["Content-Range"], b"".join(second.streaming_content)) == (
        206,
        f"bytes 1-3/{len(IMAGE)}",
        IMAGE[1:4],
    )
    assert [q["sql"] for q in queries] == []  # neither the credential nor the deployment: the pass covers both


def test_a_pass_answers_only_its_own_credential(offer, pilot, device_client, settings):
    settings.OTA_DOWNLOAD_RECHECK_SECONDS = 60
    target = _target(offer)
    assert device_client(pilot).get(target, HTTP_RANGE="bytes=0-0").status_code == 206
    response = device_client(pilot, secret="not-the-secret").get(target, HTTP_RANGE="bytes=1-1")
    assert response.status_code == 401
    assert SecurityEvent.objects.filter(kind=SecurityEventKind.DEVICE_AUTH_FAILED, device_serial=pilot.serial).exists()


def test_an_expired_token_is_refused_even_with_a_fresh_pass(offer, pilot, device_client, sha, settings, monkeypatch):
    settings.OTA_DOWNLOAD_RECHECK_SECONDS = 3600
    client = device_client(pilot)
    assert client.get(_target(offer), HTTP_RANGE="bytes=0-0").status_code == 206
    later = time.time() + MAX_LIFETIME_SECONDS + 1
    monkeypatch.setattr(download_tokens, "time", SimpleNamespace(time=lambda: later))
    response = client.get(_target(offer), HTTP_RANGE="bytes=1-1")
    assert response.status_code == 401 and response.json()["error"]["code"] == "download_token_expired"
    assert _refusals()[-1].message.startswith("download_token_expired")


def test_the_token_lives_at_most_15_minutes_and_never_past_the_deadline():
    deadline = datetime.fromtimestamp(NOW + 60, tz=UTC)
    token = download_token_issue(
        certificate="", device_id=1, deployment_id=2, sha256="a" * 64, length=10, deadline_at=None, now=NOW
    )
    short = download_token_issue(
        certificate="", device_id=1, deployment_id=2, sha256="a" * 64, length=10, deadline_at=deadline, now=NOW
    )
    assert (
        download_token_verify(token, device_id=1, certificate="", sha256="a" * 64, now=NOW).expires_at
        == NOW + MAX_LIFETIME_SECONDS
    )
    assert download_token_verify(short, device_id=1, certificate="", sha256="a" * 64, now=NOW).expires_at == NOW + 60
    with pytest.raises(DownloadTokenRefused) as late:
        download_token_verify(short, device_id=1, certificate="", sha256="a" * 64, now=NOW + 60)
    assert late.value.code == "download_token_expired"


@pytest.mark.parametrize(
    ("tamper", "status", "code"),
    [
        (lambda token: "", 401, "download_token_required"),
        (lambda token: token[:-2] + ("AA" if not token.endswith("AA") else "BB"), 403, "download_token_invalid"),
        (lambda token: "9" + token, 403, "download_token_invalid"),  # another deployment named
        (lambda token: token.replace(".", ".1", 1), 403, "download_token_invalid"),  # another length
        (lambda token: "x" * 40, 403, "download_token_invalid"),
    ],
)
def test_missing_and_forged_tokens_are_refused_and_recorded(offer, pilot, device_client, sha, tamper, status, code):
    token = parse_qs(urlsplit(offer["artifact"]["url"]).query)["token"][0]
    response = device_client(pilot).get(f"/device/v1/artifacts/{sha}/?token={tamper(token)}", HTTP_RANGE="bytes=0-9")
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    (event,) = _refusals()
    assert (event.device_serial, event.subject, event.source) == (pilot.serial, f"sha256:{sha}", "device_api.artifact")
    assert event.message.startswith(code)


def test_a_token_replayed_by_another_device_or_onto_another_image_is_refused(
    offer, pilot, other_pilot, device_client, sha, fleet
):
    stranger = device_client(other_pilot)
    stranger.post(CHECKIN, checkin_body(), format="json")  # it has its own offer of the same image
    token = parse_qs(urlsplit(offer["artifact"]["url"]).query)["token"][0]
    assert stranger.get(_target(offer)).status_code == 403
    other_image = fleet["old"].artifact.sha256
    assert device_client(pilot).get(f"/device/v1/artifacts/{other_image}/?token={token}").status_code == 403
    assert [e.device_serial for e in _refusals()] == [other_pilot.serial, pilot.serial]
    assert Deployment.objects.get(device=other_pilot).status == DeploymentStatus.OFFERED  # nothing changed


def test_an_expired_token_is_refused_and_recorded(offer, pilot, device_client, sha, monkeypatch):
    later = time.time() + MAX_LIFETIME_SECONDS + 1
    monkeypatch.setattr(download_tokens, "time", SimpleNamespace(time=lambda: later))
    response = device_client(pilot).get(_target(offer))
    assert response.status_code == 401 and response.json()["error"]["code"] == "download_token_expired"
    assert _refusals()[0].message.startswith("download_token_expired")


@pytest.mark.parametrize("stop", ["halt", "cancel", "quarantine"])
def test_a_withdrawal_stops_new_ranges_within_the_recheck_bound(
    offer, pilot, running, operator, device_client, settings, stop
):
    settings.OTA_DOWNLOAD_RECHECK_SECONDS = 1
    client = device_client(pilot)
    target = _target(offer)
    assert client.get(target, HTTP_RANGE="bytes=0-0").status_code == 206  # verdict cached for 1 s
    if stop == "halt":
        from rollouts import rollout_services as steps

        steps.rollout_phase(PhaseChange(running.pk, RolloutStatus.HALTED, 0))
    elif stop == "cancel":
        deployment_transition(
            deployments=[offer["deployment_id"]], to=DeploymentStatus.CANCELLED, now=timezone.now(), reason="test"
        )
    else:
        device_quarantine(actor=operator, device=pilot, reason="tampered enclosure")
    time.sleep(1.1)  # the bound
    response = client.get(target, HTTP_RANGE="bytes=1-1")
    assert response.status_code == 404
    assert _refusals()[-1].message == "An image was requested that is not offered to this device."


def test_a_revoked_credential_or_decommissioned_device_stops_within_the_recheck_bound(
    offer, pilot, operator, device_client, settings
):
    settings.OTA_DOWNLOAD_RECHECK_SECONDS = 1  # the pass (credential and rules) lives at most this long
    client = device_client(pilot)
    target = _target(offer)
    assert client.get(target, HTTP_RANGE="bytes=0-0").status_code == 206
    device_credential_revoke(actor=operator, device=pilot, reason="stolen unit")
    time.sleep(1.1)  # the bound
    assert client.get(target, HTTP_RANGE="bytes=1-1").status_code == 401
    again = device_client(pilot)  # a new credential, then the device leaves the fleet
    assert again.get(target, HTTP_RANGE="bytes=1-1").status_code == 206
    device_decommission(actor=operator, device=pilot, reason="scrapped")
    time.sleep(1.1)
    assert again.get(target, HTTP_RANGE="bytes=1-1").status_code == 401
    assert SecurityEvent.objects.filter(kind=SecurityEventKind.DEVICE_AUTH_FAILED, device_serial=pilot.serial).exists()


def test_the_recheck_is_per_device_deployment_and_image(offer, pilot, other_pilot, device_client, sha, settings):
    settings.OTA_DOWNLOAD_RECHECK_SECONDS = 3600
    assert device_client(pilot).get(_target(offer), HTTP_RANGE="bytes=0-0").status_code == 206
    # The other pilot's deployment is pending (never offered): the pilot's cached verdict must not answer for it.
    assert device_client(other_pilot).get(download_url(other_pilot, sha)).status_code == 404


def test_the_key_is_generated_at_run_time_into_a_private_file_and_kept(settings, tmp_path, monkeypatch):
    monkeypatch.delenv("OTA_DOWNLOAD_TOKEN_KEY", raising=False)
    settings.OTA_DOWNLOAD_TOKEN_KEY_FILE = tmp_path / "download_token_key"
    token = download_token_issue(
        certificate="", device_id=1, deployment_id=2, sha256="a" * 64, length=10, deadline_at=None, now=NOW
    )
    key_file = tmp_path / "download_token_key"
    assert key_file.stat().st_mode & 0o777 == 0o600 and len(key_file.read_text()) >= 64
    assert [p.name for p in tmp_path.iterdir()] == ["download_token_key"]  # no staging file left behind
    assert download_token_verify(token, device_id=1, certificate="", sha256="a" * 64, now=NOW).deployment_id == 2
    settings.OTA_DOWNLOAD_TOKEN_KEY_FILE = tmp_path / "another_key"  # another key: the old tokens are void
    with pytest.raises(DownloadTokenRefused):
        download_token_verify(token, device_id=1, certificate="", sha256="a" * 64, now=NOW)
