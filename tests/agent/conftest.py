"""Fixtures for the device agent: a live server, a running rollout whose image really matches its sha256, and a
credentialed pilot device; `power_on()` builds an Agent (a fresh one is a power-on after a power loss)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any

import pytest

from devices.agent import Agent, HttpTransport
from devices.credentials import device_credential_issue
from devices.firmware.storage import artifact_path
from devices.models import Device
from rollouts import rollout_services as steps
from rollouts.choices import RolloutStatus
from rollouts.models import Deployment, Rollout
from tests.factories import (
    DeviceFactory,
    FirmwareArtifactFactory,
    FirmwareReleaseFactory,
    HardwareModelFactory,
    RegionFactory,
)
from workflows.types import PhaseChange

IMAGE = random.Random(20261127).randbytes(40_000) + b"tail-of-image"
FACTORY_IMAGE = b"factory image 1.0.0\n" * 100
CHUNK = 4096


@pytest.fixture(autouse=True)
def _no_temporal(settings):
    settings.TEMPORAL_ENABLED = False


@pytest.fixture
def fleet(db) -> dict[str, Any]:
    """As tests.change_fixtures.fleet, but the new release's artifact is a real image (sha256 and length match),
    so the approvals bind the image the agent verifies."""
    model = HardwareModelFactory.create(name="tcu-4g-r2")
    other_model = HardwareModelFactory.create(name="tcu-5g-r1")
    region = RegionFactory.create(code="eu-west", time_zone="Europe/Paris")
    old = FirmwareReleaseFactory.create(version="1.0.0", release_counter=1, hardware_models=[model, other_model])
    artifact = FirmwareArtifactFactory.create(sha256=hashlib.sha256(IMAGE).hexdigest(), size_bytes=len(IMAGE))
    new = FirmwareReleaseFactory.create(version="1.1.0", release_counter=1, hardware_models=[model], artifact=artifact)
    DeviceFactory.create_batch(2, hardware_model=model, region=region, tags=["pilot"])
    DeviceFactory.create_batch(18, hardware_model=model, region=region)
    DeviceFactory.create_batch(80, hardware_model=other_model, region=region)
    return {"model": model, "other_model": other_model, "region": region, "old": old, "new": new}


@pytest.fixture
def running(approved_change, operator, fleet) -> Rollout:
    path = artifact_path(fleet["new"].artifact.sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(IMAGE)
    rollout = steps.rollout_start(actor=operator, change=approved_change)
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    steps.rollout_phase(PhaseChange(rollout.pk, RolloutStatus.RUNNING, 0))
    return rollout


@pytest.fixture
def pilot(running) -> Device:
    deployment = Deployment.objects.order_by("pk").first()
    assert deployment is not None  # the pilot wave is assigned
    return deployment.device


class RecordingTransport(HttpTransport):
    """The real HTTP transport, remembering every status report and every download's starting offset."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.reports: list[dict[str, Any]] = []
        self.download_offsets: list[int] = []
        self.fail_download_after: int | None = None  # drop the connection once this many bytes have arrived
        self.before_download: Callable[[], None] | None = None  # runs once, just before the next download request

    def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if "/status/" in path:
            self.reports.append(dict(body))
        return super().post_json(path, body)

    def download(self, url: str, *, sink: Callable[[int, bytes], None], **kwargs: Any) -> int:
        self.download_offsets.append(kwargs["offset"])
        run, self.before_download = self.before_download, None
        if run is not None:
            run()

        def flaky_sink(position: int, chunk: bytes) -> None:
            sink(position, chunk)
            if self.fail_download_after is not None and self.bytes_received >= self.fail_download_after:
                self.fail_download_after = None
                raise ConnectionResetError("link dropped")

        return super().download(url, sink=flaky_sink, **kwargs)


@pytest.fixture
def device(live_server, pilot, operator, tmp_path) -> Any:
    secret = device_credential_issue(actor=operator, device=pilot)
    transport = RecordingTransport(live_server.url, pilot.serial, secret, timeout=10)
    state_dir = tmp_path / "tcu-state"

    class Device_:
        model = pilot
        dir = state_dir
        transport: RecordingTransport  # assigned below (`transport = transport` here would not read the local)

        @staticmethod
        def power_on(**kwargs: Any) -> Agent:
            kwargs.setdefault("factory_image", FACTORY_IMAGE)
            kwargs.setdefault("chunk_size", CHUNK)
            return Agent(state_dir, transport, rng=random.Random(1), **kwargs)

    Device_.transport = transport
    return Device_
