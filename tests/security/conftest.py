"""The signed update chain end to end: the image repository and the director started (keys on the session token,
the root keys standing in for the offline token's), a rollout whose release and rollback release are signed, and a
pilot vehicle provisioned with both trust roots, talking to a live server through a transport an attacker controls."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User

from devices.agent import Agent, HttpTransport
from devices.agent.verify import Trust
from devices.credentials import device_credential_issue
from devices.firmware.director.models import DirectorRoot
from devices.firmware.director.services import director_init, director_root_draft, director_root_sign_offline
from devices.firmware.keys.services import key_create, key_import_public
from devices.firmware.repository.models import ImageMetadata, ImageRole
from devices.models import Device
from ota_project.hsm.public import KeyAlgorithm
from ota_project.hsm.roles import KeyRole
from ota_project.hsm.token import role_label, server_token, token_key_generate
from rollouts import rollout_services as steps
from rollouts.choices import RolloutStatus
from rollouts.models import Deployment, Rollout
from tests.factories import DeviceFactory, FirmwareReleaseFactory, HardwareModelFactory, RegionFactory
from tests.firmware.repository_support import release_bytes, repository_start
from workflows.types import PhaseChange

IMAGE = random.Random(20261206).randbytes(40_000) + b"tail-of-image"
OLD_IMAGE = b"factory image 1.0.0\n" * 100
HARDWARE = "tcu-4g-r2"
CHUNK = 4096


def director_start(officer: User) -> DirectorRoot:
    """Register a director root key (made on the session token, as a ceremony would on the offline one) and the
    online director key, sign director root v1 with it and start the director."""
    root_key = token_key_generate(label=role_label(KeyRole.DIRECTOR_ROOT), algorithm=KeyAlgorithm.ED25519)
    key_import_public(actor=officer, role=KeyRole.DIRECTOR_ROOT, public_key=root_key.public_key_pem)
    key_create(actor=officer, role=KeyRole.DIRECTOR)
    return director_init(actor=officer, root=director_root_sign_offline(director_root_draft(), token=server_token()))


def trust_for(device: Device) -> Trust:
    """What provisioning gives a vehicle: its identity and the first root of each repository."""
    image_root = ImageMetadata.objects.get(role=ImageRole.ROOT, version=1)
    director_root = DirectorRoot.objects.get(version=1)
    return Trust(
        serial=device.serial,
        hardware_id=device.hardware_model.name,
        image_root=bytes(image_root.content),
        director_root=bytes(director_root.content),
    )


@pytest.fixture(autouse=True)
def _no_temporal_own_labels_and_directory(settings, tmp_path) -> None:
    settings.TEMPORAL_ENABLED = False
    settings.PKCS11_LABEL_PREFIX = f"chain-test-{uuid.uuid4().hex[:12]}"
    settings.IMAGE_REPOSITORY_DIR = tmp_path / "repository"


@pytest.fixture
def fleet(db) -> dict[str, Any]:
    """Two hardware models, a region, the old (rollback) and new releases with real stored images."""
    model = HardwareModelFactory.create(name=HARDWARE)
    other_model = HardwareModelFactory.create(name="tcu-5g-r1")
    region = RegionFactory.create(code="eu-west", time_zone="Europe/Paris")
    old = FirmwareReleaseFactory.create(version="1.0.0", release_counter=1, hardware_models=[model, other_model])
    new = FirmwareReleaseFactory.create(version="1.1.0", release_counter=1, hardware_models=[model])
    release_bytes(old, OLD_IMAGE)
    release_bytes(new, IMAGE)
    DeviceFactory.create_batch(2, hardware_model=model, region=region, tags=["pilot"])
    DeviceFactory.create_batch(18, hardware_model=model, region=region)
    DeviceFactory.create_batch(80, hardware_model=other_model, region=region)
    return {"model": model, "other_model": other_model, "region": region, "old": old, "new": new}


@pytest.fixture
def chain(security_officer) -> None:
    repository_start(security_officer)
    director_start(security_officer)


@pytest.fixture
def running(chain, approved_change, operator) -> Rollout:
    rollout = steps.rollout_start(actor=operator, change=approved_change)
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    steps.rollout_phase(PhaseChange(rollout.pk, RolloutStatus.RUNNING, 0))
    return rollout


class AttackerTransport(HttpTransport):
    """The real HTTP transport with a man in the middle: it may rewrite check-in answers (the offer), the check-in
    body, and the bytes of any download; it remembers every status report."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.reports: list[dict[str, Any]] = []
        self.offer_rewrite: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.checkin_rewrite: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.bytes_rewrite: Callable[[str, bytes], bytes] | None = None
        self.fetched: list[str] = []

    def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if "/status/" in path:
            self.reports.append(dict(body))
        if path.endswith("/checkin/") and self.checkin_rewrite is not None:
            body = self.checkin_rewrite(body)
        answer = super().post_json(path, body)
        if path.endswith("/checkin/") and answer.get("offer") and self.offer_rewrite is not None:
            answer["offer"] = self.offer_rewrite(dict(answer["offer"]))
        return answer

    def download(self, url: str, *, sink: Callable[[int, bytes], None], **kwargs: Any) -> int:
        self.fetched.append(url)
        if self.bytes_rewrite is None:
            return super().download(url, sink=sink, **kwargs)
        parts: list[bytes] = []
        total = super().download(url, sink=lambda position, chunk: parts.append(chunk), **kwargs)
        data = self.bytes_rewrite(url, b"".join(parts))
        for start in range(0, len(data), CHUNK):
            sink(start, data[start : start + CHUNK])
        return total


class Vehicle:
    """The pilot vehicle: its server-side row, deployment, state directory, attacker transport and trust."""

    def __init__(self, model: Device, deployment: Deployment, state_dir: Any, transport: AttackerTransport):
        self.model = model
        self.deployment = deployment
        self.dir = state_dir
        self.transport = transport
        self.trust = trust_for(model)

    def power_on(self, **kwargs: Any) -> Agent:
        kwargs.setdefault("factory_image", OLD_IMAGE)
        kwargs.setdefault("chunk_size", CHUNK)
        kwargs.setdefault("trust", self.trust)
        return Agent(self.dir, self.transport, rng=random.Random(1), **kwargs)


@pytest.fixture
def vehicle(live_server, running, operator, tmp_path) -> Vehicle:
    deployment = Deployment.objects.select_related("device__hardware_model").order_by("pk").first()
    assert deployment is not None  # the pilot wave is assigned
    secret = device_credential_issue(actor=operator, device=deployment.device)
    transport = AttackerTransport(live_server.url, deployment.device.serial, secret, timeout=10)
    return Vehicle(deployment.device, deployment, tmp_path / "tcu-state", transport)
