"""Helpers of the vehicle's adversarial suite (tests/security/test_vehicle_*.py): run the pilot vehicle, let it
trust the current metadata once, check a refusal from every side, and a man in the middle on real sockets."""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from approvals.audit.models import SecurityEvent
from devices.agent import Agent, PowerLoss
from rollouts.choices import DeploymentStatus
from rollouts.models import Deployment
from tests.security.conftest import OLD_IMAGE, Vehicle


def no_sleep(seconds: float) -> None:
    pass


def run(vehicle: Vehicle, **kwargs: Any) -> Agent:
    agent = vehicle.power_on(**kwargs)
    agent.run(max_cycles=4, sleep=no_sleep)
    return agent


def trust_once(vehicle: Vehicle) -> bytes:
    """A first, legitimate verification (then the power goes): the vehicle now trusts the current metadata and
    the time it verified at. Returns the director metadata it trusts."""

    def cut(event: str) -> None:
        if event == "verified":
            raise PowerLoss(event)

    with pytest.raises(PowerLoss):
        vehicle.power_on(hook=cut).run(max_cycles=1, sleep=no_sleep)
    return (vehicle.dir / "tuf" / "director" / "targets.json").read_bytes()


def untrusted_events(vehicle: Vehicle) -> int:
    return SecurityEvent.objects.filter(kind="device_update_untrusted", device_serial=vehicle.model.serial).count()


def assert_nothing_installed(vehicle: Vehicle, agent: Agent) -> None:
    """No slot written, nothing staged, the factory image still active and booted."""
    assert not any(r["status"] in ("downloaded", "installing", "rebooting") for r in vehicle.transport.reports)
    assert agent.state["slots"]["b"]["present"] is False and agent.state["active_slot"] == "a"
    assert (vehicle.dir / "slot_a.img").read_bytes() == OLD_IMAGE and not (vehicle.dir / "slot_b.img").exists()
    assert not (vehicle.dir / "staged.enc").exists()


def assert_server_saw_the_refusal(vehicle: Vehicle, check: str) -> None:
    """The deployment ended failed/untrusted on the server, and a security event names it with the agent's check."""
    deployment = Deployment.objects.get(pk=vehicle.deployment.pk)
    assert deployment.status == DeploymentStatus.FAILED and deployment.failure_class == "untrusted"
    event = SecurityEvent.objects.get(
        kind="device_update_untrusted",
        device_serial=vehicle.model.serial,
        subject=f"deployment:{vehicle.deployment.pk}",
    )
    assert check in event.message, event.message


def assert_refused(vehicle: Vehicle, agent: Agent, check: str, *, director_before: bytes | None = None) -> None:
    """The refusal as the agent reported it, the server's view, and that nothing was installed or trusted."""
    failed = [r for r in vehicle.transport.reports if r["status"] == "failed"]
    assert failed and failed[-1]["failure_class"] == "untrusted" and check in failed[-1]["detail"], failed
    assert_nothing_installed(vehicle, agent)
    trusted = vehicle.dir / "tuf" / "director" / "targets.json"
    assert (trusted.read_bytes() if trusted.exists() else None) == director_before
    assert_server_saw_the_refusal(vehicle, check)


@dataclass
class EndlessArtifact:
    """What the man in the middle did to the image download."""

    declared_length: int | None  # None: no Content-Length, the bytes never end
    cap: int = 512 * 1024 * 1024  # the most it sends before giving up on the agent hanging up
    sent: int = 0
    answered: int = 0


def _proxy_handler(upstream: urllib.parse.SplitResult, artifact: EndlessArtifact) -> type[BaseHTTPRequestHandler]:
    hop_by_hop = {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection; a body without a length ends at the close

        def log_message(self, *args: Any) -> None:
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            connection = http.client.HTTPConnection(upstream.hostname or "127.0.0.1", upstream.port, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop_by_hop}
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
            finally:
                connection.close()
            self.send_response(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in hop_by_hop:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _endless(self) -> None:
            artifact.answered += 1
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if artifact.declared_length is not None:
                self.send_header("Content-Length", str(artifact.declared_length))
            self.end_headers()
            piece = b"\xa5" * (64 * 1024)
            try:
                while artifact.sent < artifact.cap:
                    self.wfile.write(piece)
                    artifact.sent += len(piece)
            except OSError:
                pass  # the agent hung up

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if "/device/v1/artifacts/" in self.path:
                self._endless()
            else:
                self._forward()

        def do_POST(self) -> None:  # noqa: N802
            self._forward()

    return Handler


@contextmanager
def endless_artifact_proxy(upstream_url: str, artifact: EndlessArtifact) -> Iterator[str]:
    """A real HTTP server between the vehicle and the server: everything passes unchanged (the offer's URLs name
    this proxy's origin, as the Host header says), except image downloads, answered with `artifact`'s bytes."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler(urllib.parse.urlsplit(upstream_url), artifact))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
