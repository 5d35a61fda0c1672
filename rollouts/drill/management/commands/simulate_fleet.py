"""`python manage.py simulate_fleet`: a small simulated fleet checking in forever against a running web server.

`make run` starts it (through run_embedded) so a newcomer sees devices check in, take offers and report. Each
device is a reference agent (asyncio transport, all in one process) with its state under
$OTA_DATA_DIR/simulated-fleet/<serial>. Each speaks mutual TLS with a device certificate provisioned through the
certificate service (devices.certificates) into $OTA_DATA_DIR/simulated-fleet/identities/<serial> and kept, so a
restart continues where the devices were; an identity whose certificate is no longer the device's active one is
renewed (or provisioned again after a revocation). SIGINT or SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from devices.agent import Agent, AsyncHttpTransport, PowerLoss, TransportError
from devices.agent.tls import TlsIdentity
from devices.agent.verify import Trust
from devices.certificates import device_ca_ensure, device_certificate_renew, device_certificates_provision
from devices.choices import SIMULATED_TAG, CertificateStatus, DeviceStatus
from devices.firmware.director.models import DirectorRoot
from devices.firmware.repository.models import ImageMetadata, ImageRole
from devices.models import Device, DeviceCertificate
from devices.pki import certificate_fingerprint, device_identity_write, server_pins
from ota_project.roles import Role
from rollouts.drill.faults import DeviceFate, probe_for

SUMMARY_SECONDS = 60.0
WAIT_SECONDS = 5.0
IDENTITIES = "identities"


class NotReady(Exception):
    """Nothing to simulate yet (no active devices, no operator): wait and look again."""


class CountingTransport(AsyncHttpTransport):
    """The agent's asyncio transport, counting check-ins for the summary line."""

    checkins = 0

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = await super().post_json(path, body)
        if path.endswith("/checkin/"):
            CountingTransport.checkins += 1
        return answer


def trust_roots() -> tuple[bytes, bytes] | None:
    """The first root of the image repository and of the director, what each vehicle is provisioned with; None
    while either does not exist (then the vehicles only check the offer's sha256: the legacy path)."""
    image_root = ImageMetadata.objects.filter(role=ImageRole.ROOT, version=1).first()
    director_root = DirectorRoot.objects.filter(version=1).first()
    if image_root is None or director_root is None:
        return None
    return bytes(image_root.content), bytes(director_root.content)


class Command(BaseCommand):
    help = (
        "Run a small simulated fleet (reference agents in one asyncio loop) against a running web server, forever. "
        "Credentials are issued through the credential service by an operator. Ctrl-C stops it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--devices", type=int, default=25, help="How many active devices to simulate (1-200).")
        parser.add_argument("--server", default="https://127.0.0.1:8443", help="The device port (nginx, mutual TLS).")
        parser.add_argument("--operator", default=None, help="Username issuing certificates (default: an operator).")
        parser.add_argument("--state-dir", type=Path, default=None, help="Default: $OTA_DATA_DIR/simulated-fleet.")
        parser.add_argument("--seed", type=int, default=1)

    def handle(self, *args: Any, **options: Any) -> None:
        count = options["devices"]
        if not 1 <= count <= 200:
            raise CommandError("--devices must be from 1 to 200 (use fleet_drill for large fleets)")
        root: Path = options["state_dir"] or Path(settings.DATA_DIR) / "simulated-fleet"
        root.mkdir(parents=True, exist_ok=True)
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        ready = self._wait_for_fleet(count, root, options["operator"], stop)
        if ready is None:
            self._say("simulate_fleet: stopped")
            return
        devices, identities = ready
        logging.getLogger("devices.agent").setLevel(logging.ERROR)
        self._say(f"simulate_fleet: {len(devices)} devices checking in at {options['server']} (state in {root})")
        self.roots = trust_roots()
        asyncio.run(self._run(devices, identities, root, options["server"], options["seed"]))
        self._say("simulate_fleet: stopped")

    def _wait_for_fleet(
        self, count: int, root: Path, operator_name: str | None, stop: threading.Event
    ) -> tuple[list[Device], dict[str, TlsIdentity]] | None:
        """Active devices with certificates; waits (saying why) while there are none or no operator to issue them."""
        said = ""
        while not stop.is_set():
            active = Device.objects.filter(status=DeviceStatus.ACTIVE).select_related("hardware_model")
            # Devices tagged `simulated` first (the demo's live change targets them), then the others by serial.
            tagged = list(active.filter(tags__name=SIMULATED_TAG).order_by("serial")[:count])
            rest = active.exclude(pk__in=[d.pk for d in tagged]).order_by("serial")[: count - len(tagged)]
            devices = tagged + list(rest)
            try:
                if not devices:
                    raise NotReady("no active devices yet (make run loads the demo fleet)")
                return devices, self._identities(devices, root, operator_name)
            except NotReady as exc:
                if str(exc) != said:
                    said = str(exc)
                    self._say(f"simulate_fleet: waiting: {exc}")
            stop.wait(WAIT_SECONDS)
        return None

    def _identities(self, devices: list[Device], root: Path, operator_name: str | None) -> dict[str, TlsIdentity]:
        """Reuse each device's kept identity while its certificate is the device's active one; renew one whose
        files are gone or stale, provision the devices with none (one batch)."""
        directory = root / IDENTITIES
        active = dict(
            DeviceCertificate.objects.filter(device__in=devices, status=CertificateStatus.ACTIVE).values_list(
                "device_id", "fingerprint"
            )
        )
        operator: User | None = None
        device_ca_ensure()  # normally made by `make run`'s nginx step already
        pins = server_pins()
        unprovisioned = [device for device in devices if device.pk not in active]
        for device in devices:
            if device.pk not in active or _kept_fingerprint(directory / device.serial) == active[device.pk]:
                continue
            operator = operator or self._operator(operator_name)
            renewal = device_certificate_renew(actor=operator, device=device, reason="simulated fleet restarted")
            device_identity_write(directory, renewal.issued, pins)
        if unprovisioned:
            operator = operator or self._operator(operator_name)
            for issued in device_certificates_provision(actor=operator, devices=unprovisioned):
                device_identity_write(directory, issued, pins)
        return {device.serial: TlsIdentity.from_directory(directory / device.serial) for device in devices}

    def _operator(self, username: str | None) -> User:
        users = get_user_model().objects.filter(is_active=True, groups__name=Role.OPERATOR)
        user = users.filter(username=username).first() if username else users.order_by("pk").first()
        if user is None:
            raise NotReady(
                f"no active operator {'named ' + repr(username) if username else 'exists'} to issue credentials"
            )
        return user

    async def _run(
        self, devices: list[Device], identities: dict[str, TlsIdentity], root: Path, server: str, seed: int
    ) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        rng = random.Random(seed)
        lives = [
            self._live(device, identities[device.serial], root, server, rng.randrange(2**31), stop)
            for device in devices
        ]
        lives.append(self._summarise(len(devices), stop))
        await asyncio.gather(*lives)

    async def _live(
        self, device: Device, identity: TlsIdentity, root: Path, server: str, seed: int, stop: asyncio.Event
    ) -> None:
        rng = random.Random(seed)
        transport = CountingTransport(server, timeout=20, tls=identity)
        fate = DeviceFate(device.serial, device.hardware_model.name, kpi_seed=seed)

        def hook(event: str) -> None:
            if event in ("downloading", "installing", "rebooting", "succeeded", "rolled_back", "failed", "abandoned"):
                self._say(f"simulate_fleet: {device.serial} {event}")

        try:
            await asyncio.wait_for(stop.wait(), timeout=rng.uniform(0, 5))
            return
        except TimeoutError:
            pass
        while not stop.is_set():
            agent = Agent(
                root / device.serial,
                transport,
                hook=hook,
                probe=probe_for(fate),
                version=device.installed_version,
                release_counter=device.installed_release_counter,
                factory_image=f"factory image {device.installed_version} {device.serial}\n".encode(),
                rng=random.Random(rng.randrange(2**31)),
                backoff_cap=60,
                trust=Trust(device.serial, device.hardware_model.name, *self.roots) if self.roots else None,
            )
            try:
                await agent.arun(stop=stop)
            except (PowerLoss, TransportError, OSError) as exc:
                self._say(f"simulate_fleet: {device.serial} restarting after {exc!r}")
                await asyncio.sleep(5)

    async def _summarise(self, count: int, stop: asyncio.Event) -> None:
        started = time.monotonic()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=SUMMARY_SECONDS)
            except TimeoutError:
                minutes = (time.monotonic() - started) / 60
                self._say(
                    f"simulate_fleet: {count} devices, {CountingTransport.checkins} check-ins in {minutes:.0f} min"
                )

    def _say(self, message: str) -> None:
        self.stdout.write(message)
        self.stdout.flush()


def _kept_fingerprint(directory: Path) -> str:
    """The fingerprint of the certificate kept in an identity directory ("" when there is none)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        certificate = x509.load_pem_x509_certificates((directory / "device.pem").read_bytes())[0]
        (directory / "device-key.pem").stat()
    except (OSError, ValueError, IndexError):
        return ""
    return certificate_fingerprint(certificate.public_bytes(Encoding.DER))
