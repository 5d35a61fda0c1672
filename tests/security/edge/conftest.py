"""The production edge on loopback for the device API's tests through it: gunicorn (the project's configuration, on
the test database) behind nginx terminating mutual TLS, with the device API's fixtures (a running rollout with its
image stored, its two pilots) and the plain fleet in place of the signed chain's fixtures of the same names in
tests/security/conftest.py."""

from __future__ import annotations

import http.client
import secrets
import shutil
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.management import call_command

from devices.agent.tls import TlsIdentity
from devices.agent.transport import HttpTransport
from devices.certificates import device_certificates_provision
from devices.models import Device
from devices.pki import device_identity_write, pki_paths, server_pins
from ota_project.net import free_port
from tests import change_fixtures as _changes
from tests.device_api import conftest as _device_api
from tests.support.servers import gunicorn_env, gunicorn_start, logged_requests, process_start, process_stop

fleet = _changes.fleet
_fresh_download_verdicts = _device_api._fresh_download_verdicts
_no_temporal = _device_api._no_temporal
rollout = _device_api.rollout
assigned = _device_api.assigned
running = _device_api.running
pilot = _device_api.pilot
other_pilot = _device_api.other_pilot
sha = _device_api.sha


def _exchange(
    connection: http.client.HTTPConnection, method: str, target: str, headers: dict[str, str], body: bytes
) -> tuple[int, bytes]:
    """One request on a new `connection` (closed after): the answer's status and body."""
    try:
        connection.request(method, target, body=body or None, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@dataclass
class Edge:
    """gunicorn on `app_port` (loopback) behind nginx terminating mutual TLS on `tls_port`."""

    app_port: int
    tls_port: int
    nginx_dir: Path
    identities: Path
    token_key: str
    access_log: Path

    def app_requests(self, fragment: str) -> int:
        """How many requests reached gunicorn whose request line contains `fragment` (its access log)."""
        return logged_requests(self.access_log, fragment)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def identity(self, device: Device) -> TlsIdentity:
        return TlsIdentity.from_directory(self.identities / device.serial)

    def transport(self, device: Device) -> HttpTransport:
        return HttpTransport(self.server, tls=self.identity(device), timeout=15)

    def raw(
        self, device: Device | None, method: str, target: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, bytes]:
        """One request through nginx with `device`'s certificate (None: none), not through the agent."""
        context = ssl.create_default_context(cafile=str(pki_paths().bundle))
        if device is not None:
            identity = self.identity(device)
            context.load_cert_chain(str(identity.certificate), str(identity.key))
        connection = http.client.HTTPSConnection("127.0.0.1", self.tls_port, context=context, timeout=15)
        return _exchange(connection, method, target, headers, body)

    def direct(self, method: str, target: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
        """A request straight to gunicorn's port, past nginx."""
        connection = http.client.HTTPConnection("127.0.0.1", self.app_port, timeout=15)
        return _exchange(connection, method, target, headers, body)

    def nginx_log(self) -> str:
        path = self.nginx_dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def recheck_seconds() -> str:
    """The app's OTA_DOWNLOAD_RECHECK_SECONDS (1: nginx reuses no vouch; a test parametrizes a longer one)."""
    return "1"


@pytest.fixture
def edge(settings, tmp_path, monkeypatch, running, pilot, other_pilot, recheck_seconds) -> Iterator[Edge]:
    """The production shape on loopback: device CA + server certificate + nginx (ssl_verify_client on) + gunicorn
    in certificate mode on the test database; both pilots provisioned (in the token-held issuing CA)."""
    settings.OTA_DEVICE_AUTH = "certificate"
    settings.OTA_DEVICE_CA_KEY = "token"
    token_key = secrets.token_urlsafe(32)
    monkeypatch.setenv("OTA_DOWNLOAD_TOKEN_KEY", token_key)  # this process issues tokens the server verifies
    app_port, tls_port = free_port(), free_port()
    nginx_dir = tmp_path / "nginx"
    call_command(
        "devices", "nginx-config", "--listen", f"127.0.0.1:{tls_port}", "--upstream", f"127.0.0.1:{app_port}",
        "--out", str(nginx_dir),
    )  # fmt: skip
    identities = tmp_path / "identities"
    pins = server_pins()
    for issued in device_certificates_provision(actor=None, devices=[pilot, other_pilot]):
        device_identity_write(identities, issued, pins)
    env = gunicorn_env(
        settings,
        OTA_DOWNLOAD_TOKEN_KEY=token_key,
        OTA_DEVICE_AUTH="certificate",
        OTA_ARTIFACT_ACCEL_REDIRECT="/_ota_artifacts/",
        OTA_DOWNLOAD_RECHECK_SECONDS=recheck_seconds,
        OTA_WEB_WORKERS="1",
    )
    access_log = tmp_path / "access.log"
    started = [gunicorn_start(env, tmp_path / "gunicorn.log", app_port, "--access-logfile", str(access_log))]
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    argv = [nginx, "-c", str(nginx_dir / "nginx.conf"), "-p", str(nginx_dir), "-e", str(nginx_dir / "error.log")]
    try:
        started.append(process_start(argv, env, nginx_dir / "stdout.log", tls_port))
        yield Edge(app_port, tls_port, nginx_dir, identities, token_key, access_log)
    finally:
        for process in reversed(started):
            process_stop(process)
