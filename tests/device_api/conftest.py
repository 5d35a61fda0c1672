"""Fixtures for the device API: a running rollout with a stored image, credentialed devices, device clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.core.cache import caches
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from devices.credentials import device_credential_issue
from devices.edge.download_tokens import download_token_issue, now_seconds
from devices.firmware.models import FirmwareArtifact
from devices.firmware.storage import artifact_path
from devices.models import CheckinEpoch, Device
from ota_project.celery import app as celery_app
from rollouts import rollout_services as steps
from rollouts.choices import RolloutStatus
from rollouts.models import Deployment, Rollout
from workflows.types import PhaseChange

IMAGE = bytes(range(256)) * 40 + b"tail-of-image"  # 10253 bytes
CHECKIN = "/device/v1/checkin/"
MEMORY_BOUND = 0.3  # the check-in memory's tests: OTA_CHECKIN_EPOCH_SECONDS short enough to wait out


@pytest.fixture(autouse=True)
def _no_temporal(settings):
    settings.TEMPORAL_ENABLED = False


@pytest.fixture(autouse=True)
def _fresh_download_verdicts():
    """Download verdicts live in per-process memory: no test sees another's (primary keys can repeat)."""
    caches["process"].clear()
    yield
    caches["process"].clear()


@pytest.fixture
def rollout(approved_change, operator, fleet) -> Rollout:
    """A started rollout whose new release's image is really in the store."""
    # The approvals bind the release's sha256, so the image goes where that sha says (content is test data).
    sha = fleet["new"].artifact.sha256
    FirmwareArtifact.objects.filter(sha256=sha).update(size_bytes=len(IMAGE))
    path = artifact_path(sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(IMAGE)
    return steps.rollout_start(actor=operator, change=approved_change)


@pytest.fixture
def sha(fleet) -> str:
    return fleet["new"].artifact.sha256


def download_url(device: Device, sha: str, *, now: float | None = None) -> str:
    """The device's download URL as its offer gives it: the image's path with a token for its deployment."""
    deployment = Deployment.objects.filter(device=device).order_by("-pk").first()
    assert deployment is not None  # the device's wave is assigned
    token = download_token_issue(
        device_id=device.pk,
        certificate="",  # these tests run in the secret-credential mode (tests/conftest.py)
        deployment_id=deployment.pk,
        sha256=sha,
        length=len(IMAGE),
        deadline_at=None,
        now=now_seconds() if now is None else now,
    )
    return f"/device/v1/artifacts/{sha}/?token={token}"


@pytest.fixture
def artifact_url(pilot, sha) -> str:
    """The pilot's download URL, token included (what its offer names)."""
    return download_url(pilot, sha)


@pytest.fixture
def assigned(rollout) -> Rollout:
    """Wave 0 assigned (two pilot devices), the rollout paused before anything was offered."""
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    steps.rollout_phase(PhaseChange(rollout.pk, RolloutStatus.PAUSED, 0))
    return rollout


@pytest.fixture
def running(assigned) -> Rollout:
    steps.rollout_phase(PhaseChange(assigned.pk, RolloutStatus.RUNNING, 0))
    return assigned


@pytest.fixture
def pilot(assigned) -> Device:
    deployment = Deployment.objects.order_by("pk").first()
    assert deployment is not None  # the pilot wave is assigned
    return deployment.device


@pytest.fixture
def other_pilot(assigned) -> Device:
    deployment = Deployment.objects.order_by("pk").last()
    assert deployment is not None  # the pilot wave is assigned
    return deployment.device


@pytest.fixture
def eager_celery():
    """Tasks run in the test's process, as in the embedded default (the real worker has its own test)."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


@pytest.fixture
def offered(pilot, running, device_client, sha) -> APIClient:
    """The pilot's client, once its check-in got the offer of the rollout's image."""
    client = device_client(pilot)
    response = client.post(CHECKIN, checkin_body(), format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["offer"]["artifact"]["sha256"] == sha
    return client


@pytest.fixture
def device_client(operator) -> Callable[[Device], APIClient]:
    """device_client(device) -> a client sending that device's freshly issued credential."""

    def _client(device: Device, secret: str | None = None) -> APIClient:
        secret = secret or device_credential_issue(actor=operator, device=device)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Device {device.serial}:{secret}")
        return client

    return _client


def checkin_body(version: str = "1.0.0", release_counter: int = 1, **overrides: object) -> dict[str, Any]:
    """A check-in's JSON body (a test may change any part of it before posting)."""
    body: dict[str, Any] = {
        "slots": {
            "a": {"version": version, "release_counter": release_counter},
            "b": {"version": "0.9.0", "release_counter": 0},
        },
        "active_slot": "a",
        "boot_count": 12,
        "health": {"modem_attach": True, "gnss_fix": True},
    }
    body.update(overrides)
    return body


@pytest.fixture
def memory_bounds(settings) -> None:
    """The check-in memory's epochs re-read at most every MEMORY_BOUND s, its last_seen buffer flushed by the tests
    themselves (devices.edge.quiet)."""
    settings.OTA_CHECKIN_EPOCH_SECONDS = MEMORY_BOUND
    settings.OTA_LAST_SEEN_FLUSH_SECONDS = 3600


def checkin_counted(client: APIClient, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any], int]:
    """A check-in's status and answer, and how many SQL statements it cost besides the epochs' re-read.

    That re-read falls due by the clock (at most once per OTA_CHECKIN_EPOCH_SECONDS per process), so on a loaded
    machine it may fall on any check-in of a test; the tests that ask about it count it (epoch_rereads)."""
    with CaptureQueriesContext(connection) as queries:
        response = client.post(CHECKIN, body or checkin_body(), format="json")
    return response.status_code, response.json(), len(queries.captured_queries) - epoch_rereads(queries)


def epoch_rereads(queries: CaptureQueriesContext) -> int:
    """How many of the captured statements are the check-in epochs' own re-read (devices.edge.quiet.epochs_read)."""
    read = str(CheckinEpoch.objects.values_list("name", "value").query)
    return sum(query["sql"] == read for query in queries.captured_queries)
