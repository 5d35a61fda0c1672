"""The reference device agent against a live server: update, resume, power loss, fallback, encryption at rest."""

from __future__ import annotations

import hashlib
import json
import random
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from devices.agent import PowerLoss, TransportError
from devices.agent.agent import backoff_delay
from devices.edge import download_tokens
from rollouts.choices import DeploymentStatus
from rollouts.models import Deployment
from tests.agent.conftest import FACTORY_IMAGE, IMAGE

pytestmark = pytest.mark.django_db(transaction=True)


def no_sleep(seconds: float) -> None:
    pass


class PowerCut:
    """An agent hook cutting the power the first `times` times `when(event)` holds; .fired counts the cuts."""

    def __init__(self, when: Callable[[str], bool], times: int = 1) -> None:
        self.when = when
        self.times = times
        self.fired = 0

    def __call__(self, name: str) -> None:
        if self.fired < self.times and self.when(name):
            self.fired += 1
            raise PowerLoss(name)


def cut_power_at(event: str, times: int = 1) -> PowerCut:
    """A hook cutting the power the first `times` times `event` happens; .fired counts the cuts."""
    return PowerCut(lambda name: name == event, times)


def run_until_done(device, *, hook=None, health_check=None, power_ons: int = 8, cycles: int = 6):
    """Power the device on, run it; on a power loss build a fresh agent on the same state dir and go on."""
    for _ in range(power_ons):
        agent = device.power_on(hook=hook, health_check=health_check)
        try:
            agent.run(max_cycles=cycles, sleep=no_sleep)
            return agent
        except PowerLoss:
            continue
    raise AssertionError("the device never settled")


def state(device) -> dict:
    return json.loads((device.dir / "state.json").read_text())


def assert_seqs_fresh(device) -> None:
    seqs = [report["seq"] for report in device.transport.reports]
    assert seqs == sorted(set(seqs)), seqs  # strictly increasing: no seq is ever sent twice
    deployment = Deployment.objects.get(device=device.model)
    assert deployment.last_seq <= seqs[-1]


def assert_updated(device) -> None:
    deployment = Deployment.objects.get(device=device.model)
    assert deployment.status == DeploymentStatus.SUCCEEDED, deployment.status
    device.model.refresh_from_db()
    assert device.model.installed_version == "1.1.0"
    saved = state(device)
    assert saved["active_slot"] == "b" and saved["trial_slot"] is None and saved["deployment"] is None
    assert saved["slots"]["b"] == {"version": "1.1.0", "release_counter": 1, "present": True}
    assert (device.dir / "slot_b.img").read_bytes() == IMAGE
    assert (device.dir / "slot_a.img").read_bytes() == FACTORY_IMAGE
    assert not (device.dir / "staged.enc").exists() and not (device.dir / "download.part").exists()
    assert_seqs_fresh(device)


def test_healthy_update_ends_succeeded_with_the_image_in_the_active_slot(device):
    agent = device.power_on()
    agent.run(max_cycles=3, sleep=no_sleep)
    assert_updated(device)
    statuses = [report["status"] for report in device.transport.reports]
    assert statuses == ["downloading", "downloaded", "installing", "rebooting", "confirming", "succeeded"]
    success = device.transport.reports[-1]
    assert success["booted_version"] == "1.1.0" and success["health_passed"] is True
    assert device.transport.download_offsets == [0]
    assert device.transport.bytes_received == len(IMAGE)
    key = device.dir / "device.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    # Settled: later cycles only check in; a restarted agent keeps the new slot.
    agent.run(max_cycles=2, sleep=no_sleep)
    restarted = device.power_on()
    restarted.step()
    assert restarted.booted_slot == "b" and len(device.transport.reports) == 6


@pytest.mark.parametrize("cut_after", [4096, 12288, 36864])
def test_download_cut_by_power_loss_resumes_where_it_stopped(device, cut_after):
    hook = PowerCut(lambda name: name == "download:chunk" and device.transport.bytes_received >= cut_after)
    run_until_done(device, hook=hook)
    assert hook.fired
    assert device.transport.download_offsets == [0, cut_after]
    assert device.transport.bytes_received < 1.1 * len(IMAGE)
    assert_updated(device)


@pytest.mark.parametrize("drop_after", [4096, 20000, 30000])
def test_dropped_link_backs_off_and_resumes(device, drop_after):
    device.transport.fail_download_after = drop_after
    sleeps: list[float] = []
    agent = device.power_on()
    agent.run(max_cycles=4, sleep=sleeps.append)
    assert device.transport.download_offsets[0] == 0 and len(device.transport.download_offsets) == 2
    resumed_at = device.transport.download_offsets[1]
    assert resumed_at >= drop_after - 4096 and resumed_at > 0
    assert device.transport.bytes_received < 1.1 * len(IMAGE)
    assert sleeps[0] > 0  # the failed cycle backed off before trying again
    assert_updated(device)


def test_a_token_that_expires_before_the_resume_is_renewed_by_a_check_in_and_the_bytes_kept(
    device, settings, monkeypatch
):
    settings.OTA_DOWNLOAD_TOKEN_SECONDS = 60
    device.transport.fail_download_after = 12288  # the link drops mid-image
    events: list[str] = []
    agent = device.power_on(hook=events.append)
    agent.run(max_cycles=1, sleep=no_sleep)
    stopped_at = state(device)["download_offset"]
    assert 0 < stopped_at < len(IMAGE)

    def token_expires() -> None:  # between the next check-in and the resume, the server's clock passes 60 s
        later = time.time() + 61
        monkeypatch.setattr(download_tokens, "time", SimpleNamespace(time=lambda: later))

    device.transport.before_download = token_expires
    agent.run(max_cycles=4, sleep=no_sleep)
    # 401 download_token_expired on the resume; a check-in's fresh URL; the resume again from the same byte.
    assert device.transport.download_offsets == [0, stopped_at, stopped_at]
    assert "download:new_url" in events
    assert device.transport.bytes_received < 1.1 * len(IMAGE)
    assert "failed" not in [report["status"] for report in device.transport.reports]
    assert_updated(device)


@pytest.mark.parametrize(
    "event",
    [
        "downloading:sent",
        "downloaded",
        "downloaded:sent",
        "installing",
        "install:partial",
        "installing:sent",
        "rebooting",
        "rebooting:sent",
        "booted",
        "confirming",
        "confirming:sent",
        "succeeded",
    ],
)
def test_power_loss_after_any_phase_still_ends_updated_without_reusing_a_seq(device, event):
    hook = cut_power_at(event)
    run_until_done(device, hook=hook)
    assert hook.fired == 1
    assert_updated(device)


def test_failing_health_check_falls_back_and_reports_rolled_back(device):
    checked: list[str] = []

    def unhealthy(image: bytes, slot: str) -> bool:
        checked.append(slot)
        return image != IMAGE

    run_until_done(device, health_check=unhealthy)
    assert checked == ["b"]
    deployment = Deployment.objects.get(device=device.model)
    assert deployment.status == DeploymentStatus.ROLLED_BACK
    last = device.transport.reports[-1]
    assert last["status"] == "rolled_back" and last["failure_class"] == "boot"
    saved = state(device)
    assert saved["active_slot"] == "a" and saved["trial_slot"] is None and saved["deployment"] is None
    assert (device.dir / "slot_a.img").read_bytes() == FACTORY_IMAGE
    assert_seqs_fresh(device)
    # The old slot keeps running and the finished deployment is not taken up again.
    agent = device.power_on(health_check=unhealthy)
    agent.run(max_cycles=2, sleep=no_sleep)
    assert agent.booted_slot == "a" and device.transport.reports[-1]["status"] == "rolled_back"


def test_new_slot_that_never_finishes_booting_is_given_up_after_the_boot_count(device):
    hook = cut_power_at("booted", times=10)  # the new image hangs every boot before its health check
    run_until_done(device, hook=hook)
    assert hook.fired == 2
    assert Deployment.objects.get(device=device.model).status == DeploymentStatus.ROLLED_BACK
    assert state(device)["active_slot"] == "a"
    assert (device.dir / "slot_a.img").read_bytes() == FACTORY_IMAGE
    assert_seqs_fresh(device)


def test_staged_image_is_encrypted_at_rest_with_the_device_key(device):
    hook = cut_power_at("downloaded")
    with pytest.raises(PowerLoss):
        device.power_on(hook=hook).run(max_cycles=2, sleep=no_sleep)
    staged = (device.dir / "staged.enc").read_bytes()
    assert not (device.dir / "download.part").exists()  # the plaintext is gone
    assert IMAGE[:64] not in staged and IMAGE[20000:20064] not in staged and IMAGE[-64:] not in staged
    for path in device.dir.iterdir():
        assert IMAGE[1000:1064] not in path.read_bytes(), path
    key = (device.dir / "device.key").read_bytes()
    sha = hashlib.sha256(IMAGE).hexdigest()
    assert AESGCM(key).decrypt(staged[:12], staged[12:], sha.encode()) == IMAGE
    run_until_done(device)
    assert_updated(device)


def test_wrong_credentials_are_a_final_error(device):
    device.transport.auth_headers = {"Authorization": f"Device {device.model.serial}:wrong"}
    with pytest.raises(TransportError) as caught:
        device.power_on().step()
    assert caught.value.status == 401 and not caught.value.retryable


@pytest.mark.django_db(transaction=False)
def test_backoff_grows_exponentially_with_jitter_and_honours_retry_after():
    rng = random.Random(3)
    delays = [backoff_delay(n, base=1, cap=60, rng=rng) for n in range(1, 10)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(60, 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert len({round(d, 6) for d in delays}) == len(delays)
    assert backoff_delay(1, rng=rng, retry_after=42) == 42


@pytest.mark.django_db(transaction=False)
def test_the_agent_runs_without_django():
    code = (
        "import sys, devices.agent.__main__\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('django', 'rest_framework')], 'django imported'\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
    out = subprocess.run(
        [sys.executable, "-m", "devices.agent", "--help"], check=True, cwd=root, capture_output=True, text=True
    )
    assert "--state-dir" in out.stdout


def test_image_that_fails_verification_is_never_installed(device, fleet, settings):
    from devices.firmware.storage import artifact_path

    artifact_path(fleet["new"].artifact.sha256).write_bytes(b"X" * len(IMAGE))  # same length, other bytes
    agent = device.power_on()
    agent.run(max_cycles=2, sleep=no_sleep)
    failed = device.transport.reports[-1]
    assert failed["status"] == "failed" and failed["failure_class"] == "verify"
    assert Deployment.objects.get(device=device.model).status in (DeploymentStatus.FAILED, DeploymentStatus.PENDING)
    saved = state(device)
    assert saved["active_slot"] == "a" and saved["slots"]["b"]["present"] is False and saved["deployment"] is None
    assert not (device.dir / "slot_b.img").exists() and not (device.dir / "staged.enc").exists()
    assert not (device.dir / "download.part").exists()
    assert agent.booted_slot == "a"


@pytest.mark.django_db(transaction=False)
@pytest.mark.parametrize(
    ("code", "headers", "retryable", "retry_after"),
    [(429, {"Retry-After": "7"}, True, 7.0), (503, {}, True, None), (500, {}, True, None), (400, {}, False, None)],
)
def test_http_errors_are_classified(code, headers, retryable, retry_after):
    import email.message
    import io
    import urllib.error

    from devices.agent.transport import _from_http_error

    message = email.message.Message()
    for name, value in headers.items():
        message[name] = value
    error = _from_http_error(urllib.error.HTTPError("http://x/", code, "boom", message, io.BytesIO(b"{}")))
    assert (error.status, error.retryable, error.retry_after) == (code, retryable, retry_after)


@pytest.mark.django_db(transaction=False)
def test_unreachable_server_is_retryable(tmp_path):
    from devices.agent import HttpTransport

    transport = HttpTransport("http://127.0.0.1:9", "TCU-1", "secret", timeout=2)
    with pytest.raises(TransportError) as caught:
        transport.post_json("/device/v1/checkin/", {})
    assert caught.value.retryable and caught.value.status is None
