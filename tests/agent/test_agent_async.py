"""The same agent on asyncio (the fleet drill's transport), the server ending a deployment under the agent,
offer deadlines, telemetry, and the server slowing devices down (Retry-After, poll interval)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from devices.agent import Agent, AsyncHttpTransport, TransportError
from devices.credentials import device_credential_issue
from devices.models import TelemetrySample
from rollouts import rollout_services
from rollouts.choices import DeploymentStatus
from rollouts.models import Deployment
from tests.agent.conftest import CHUNK, FACTORY_IMAGE, IMAGE

pytestmark = pytest.mark.django_db(transaction=True)


async def no_sleep(seconds: float) -> None:
    pass


def state(directory) -> dict:
    return json.loads((directory / "state.json").read_text())


@pytest.fixture
def async_device(live_server, pilot, operator, tmp_path):
    secret = device_credential_issue(actor=operator, device=pilot)
    transport = AsyncHttpTransport(live_server.url, pilot.serial, secret, timeout=10)
    directory = tmp_path / "tcu-async"

    def power_on(**kwargs) -> Agent:
        return Agent(
            directory, transport, factory_image=FACTORY_IMAGE, chunk_size=CHUNK, rng=random.Random(2), **kwargs
        )

    return pilot, transport, directory, power_on


def test_the_agent_updates_over_asyncio_and_reports_its_kpis(async_device):
    pilot, transport, directory, power_on = async_device
    probe = lambda slot: {"boot_time_s": 14, "gps_fix_s": 31, "sensor_calibrated": True}  # noqa: E731
    asyncio.run(power_on(probe=probe).arun(max_cycles=3, sleep=no_sleep))
    deployment = Deployment.objects.get(device=pilot)
    assert deployment.status == DeploymentStatus.SUCCEEDED
    saved = state(directory)
    assert saved["active_slot"] == "b" and saved["slots"]["b"]["version"] == "1.1.0" and saved["telemetry"] == []
    assert (directory / "slot_b.img").read_bytes() == IMAGE
    assert transport.bytes_received == len(IMAGE) and transport.downloads == 1 and transport.resumed_downloads == 0
    sample = TelemetrySample.objects.get(device=pilot)
    assert sample.deployment_id == deployment.pk
    assert (sample.boot_time_s, sample.gps_fix_s, sample.sensor_calibrated) == (14, 31, True)
    assert sample.install_duration_s is not None and sample.link_kbps and sample.unexpected_reboots == 0


def test_a_deployment_the_server_cancels_mid_download_is_never_installed(async_device, running):
    pilot, transport, directory, power_on = async_device

    def halt_when_downloaded(event: str) -> None:
        if event == "downloaded":  # staged, not yet reported: the rollout halts now (the ORM wants a thread)
            with ThreadPoolExecutor(1) as pool:
                pool.submit(rollout_services.rollout_halt, rollout_id=running.pk, wave_index=0, reason="pilot").result()

    asyncio.run(power_on(hook=halt_when_downloaded).arun(max_cycles=3, sleep=no_sleep))
    assert Deployment.objects.get(device=pilot).status == DeploymentStatus.CANCELLED
    saved = state(directory)
    assert saved["deployment"] is None and saved["active_slot"] == "a" and saved["trial_slot"] is None
    assert saved["slots"]["b"]["present"] is False and not (directory / "slot_b.img").exists()
    assert not (directory / "staged.enc").exists() and not (directory / "download.part").exists()
    assert (directory / "slot_a.img").read_bytes() == FACTORY_IMAGE


def test_an_offer_past_its_deadline_is_given_up_without_downloading(async_device):
    pilot, transport, directory, power_on = async_device
    late = power_on(clock=lambda: time.time() + 86_400)  # the device's clock says the deadline passed long ago
    asyncio.run(late.arun(max_cycles=1, sleep=no_sleep))
    deployment = Deployment.objects.get(device=pilot)
    assert transport.downloads == 0
    assert deployment.failure_class == "download" and "deadline" in deployment.detail
    assert deployment.status in (DeploymentStatus.PENDING, DeploymentStatus.FAILED)  # the plan decides on a retry
    saved = state(directory)
    assert saved["deployment"] is None and saved["slots"]["b"]["present"] is False


class StubServer:
    """A device API stand-in answering every request with one status, headers and body."""

    def __init__(self, status: int, headers: dict[str, str], body: dict) -> None:
        self.status, self.headers, self.body = status, headers, json.dumps(body).encode()
        self.requests = 0

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(
                (line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")),
                b"0",
            )
        )
        await reader.readexactly(length)
        extra = "".join(f"{name}: {value}\r\n" for name, value in self.headers.items())
        writer.write(
            f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\nContent-Length: {len(self.body)}\r\n{extra}\r\n".encode()
            + self.body
        )
        await writer.drain()
        writer.close()


@pytest.mark.django_db(transaction=False)
@pytest.mark.parametrize(
    ("status", "headers", "retryable", "retry_after"),
    [
        (429, {"Retry-After": "7"}, True, 7.0),
        (503, {"Retry-After": "3"}, True, 3.0),
        (500, {}, True, None),
        (403, {}, False, None),
    ],
)
def test_async_transport_classifies_errors_like_the_blocking_one(status, headers, retryable, retry_after):
    async def call() -> TransportError:
        async with StubServer(status, headers, {"error": {"code": "x"}}) as url:
            with pytest.raises(TransportError) as caught:
                await AsyncHttpTransport(url, "TCU-1", "s").post_json("/device/v1/checkin/", {})
            return caught.value

    error = asyncio.run(call())
    assert (error.status, error.retryable, error.retry_after) == (status, retryable, retry_after)


@pytest.mark.django_db(transaction=False)
def test_the_agent_waits_at_least_retry_after_when_the_server_sheds_load(tmp_path):
    sleeps: list[float] = []

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    async def run() -> int:
        async with StubServer(429, {"Retry-After": "45"}, {"error": {"code": "region_over_budget"}}) as url:
            agent = Agent(tmp_path / "d", AsyncHttpTransport(url, "TCU-1", "s"), rng=random.Random(1))
            await agent.arun(max_cycles=3, sleep=record)
            return agent.state["next_seq"]

    next_seq = asyncio.run(run())
    assert len(sleeps) == 3 and all(delay >= 45 for delay in sleeps)
    assert next_seq == 1  # nothing was reported: a refused check-in changes nothing on the device


@pytest.mark.django_db(transaction=False)
def test_the_agent_polls_at_the_interval_the_server_gives(tmp_path):
    sleeps: list[float] = []

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    async def run() -> None:
        async with StubServer(200, {}, {"poll_interval_seconds": 42, "offer": None}) as url:
            agent = Agent(tmp_path / "d", AsyncHttpTransport(url, "TCU-1", "s"), rng=random.Random(1))
            await agent.arun(max_cycles=4, sleep=record)

    asyncio.run(run())
    assert len(sleeps) == 4 and all(42 <= delay <= 42 * 1.1 for delay in sleeps)
    assert len({round(delay, 6) for delay in sleeps}) == 4  # jittered, so a fleet does not poll in lockstep
