"""Downloads through real servers: gunicorn's sendfile path, a cut transfer freeing its slot, and nginx sending the
bytes after the app authorised them (X-Accel-Redirect), all over real sockets with resume and If-Range."""

from __future__ import annotations

import getpass
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from approvals.audit.choices import SecurityEventKind
from approvals.audit.models import SecurityEvent
from devices.edge.nginx import nginx_device_site, nginx_main_conf
from devices.firmware.models import FirmwareArtifact
from devices.firmware.storage import artifact_path
from devices.models import Device, Region
from ota_project.db import database_url
from ota_project.net import free_port
from rollouts.choices import DeploymentStatus
from rollouts.models import Deployment
from tests.device_api.conftest import checkin_body, download_url
from tests.support.servers import logged_requests, process_start, process_stop

pytestmark = [pytest.mark.django_db(transaction=True)]

REPO_ROOT = Path(__file__).resolve().parents[2]
BIG = 32 * 1024 * 1024  # larger than loopback socket buffers: a cut client really interrupts sendfile
CHECKIN = "/device/v1/checkin/"


class Server:
    """A running gunicorn (and optionally nginx in front of it); `port` is where devices connect."""

    def __init__(self, port: int, probe_log: Path, access_log: Path | None = None, app_port: int = 0, app_pid: int = 0):
        self.port = port
        self.probe_log = probe_log
        self.access_log = access_log
        self.app_port = app_port or port
        self.app_pid = app_pid  # gunicorn's master

    def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None = None, *, timeout: float = 30
    ) -> tuple[Any, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, url, body=body, headers=headers)
            response = connection.getresponse()
            return response, response.read()
        finally:
            connection.close()

    def app_requests(self, fragment: str) -> int:
        """How many requests reached gunicorn whose request line contains `fragment` (its access log)."""
        return logged_requests(self.access_log, fragment)

    def direct(self, url: str, headers: dict[str, str]) -> int:
        """A GET straight to gunicorn's port, past nginx."""
        connection = http.client.HTTPConnection("127.0.0.1", self.app_port, timeout=30)
        try:
            connection.request("GET", url, headers=headers)
            response = connection.getresponse()
            response.read()
            return int(response.status)
        finally:
            connection.close()

    def sendfiles(self) -> list[dict[str, Any]]:
        if not self.probe_log.exists():
            return []
        return [json.loads(line) for line in self.probe_log.read_text().splitlines()]


@pytest.fixture
def token_key(monkeypatch) -> str:
    key = secrets.token_urlsafe(32)
    monkeypatch.setenv("OTA_DOWNLOAD_TOKEN_KEY", key)  # the test process issues tokens the server verifies
    return key


@pytest.fixture
def proxy_secret(monkeypatch) -> str:
    secret = secrets.token_urlsafe(32)
    monkeypatch.setenv("OTA_DEVICE_PROXY_SECRET", secret)  # nginx's vouch header carries it (devices.edge.vouch)
    return secret


@pytest.fixture
def serve(settings, tmp_path, token_key, proxy_secret) -> Iterator[Any]:
    """serve(accel=False) -> a Server: gunicorn on the test database, with nginx in front when accel=True."""
    processes: list[subprocess.Popen[bytes]] = []

    def _serve(*, accel: bool = False, recheck_seconds: int = 5) -> Server:
        app_port = free_port()
        probe_log = tmp_path / "sendfile.jsonl"
        access_log = tmp_path / "access.log"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "ota_project.settings",
            "DATABASE_URL": database_url(),
            "OTA_ARTIFACT_ROOT": str(settings.ARTIFACT_ROOT),
            "OTA_DOWNLOAD_TOKEN_KEY": token_key,
            "OTA_CACHE_URL": "",  # one worker: its in-process cache holds the region's download slots
            "TEMPORAL_ENABLED": "false",
            "OTA_DEVICE_AUTH": "secret",  # these speak to gunicorn directly with the development credential
            "SENDFILE_PROBE_LOG": str(probe_log),
            "OTA_ARTIFACT_ACCEL_REDIRECT": "/_ota_artifacts/" if accel else "",
            "OTA_DOWNLOAD_RECHECK_SECONDS": str(recheck_seconds),
        }
        gunicorn = [
            str(Path(sys.executable).with_name("gunicorn")),
            "ota_project.wsgi",
            "--config",
            str(REPO_ROOT / "tests" / "support" / "gunicorn_sendfile_probe.py"),
            "--worker-class",
            "gthread",
            "--workers",
            "1",
            "--threads",
            "8",
            "--bind",
            f"127.0.0.1:{app_port}",
            "--access-logfile",
            str(access_log),
        ]
        app = process_start(gunicorn, env, tmp_path / "gunicorn.log", app_port)
        processes.append(app)
        if not accel:
            return Server(app_port, probe_log)
        nginx_dir = tmp_path / "nginx"
        nginx_dir.mkdir()
        port = free_port()
        site = nginx_device_site(
            listen=f"127.0.0.1:{port}",
            upstream=f"127.0.0.1:{app_port}",
            artifact_root=Path(settings.ARTIFACT_ROOT),
            proxy_secret=proxy_secret,
        )
        user = getpass.getuser() if os.geteuid() == 0 else ""  # root's workers would otherwise be `nobody`
        (nginx_dir / "nginx.conf").write_text(nginx_main_conf(workdir=nginx_dir, servers=[site], user=user))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        argv = [nginx, "-c", str(nginx_dir / "nginx.conf"), "-p", str(nginx_dir), "-e", str(nginx_dir / "error.log")]
        processes.append(process_start(argv, env, nginx_dir / "stdout.log", port))
        return Server(port, probe_log, access_log, app_port, app.pid)

    yield _serve
    for process in reversed(processes):
        process_stop(process)


def _big_image(sha: str) -> bytes:
    """Put a 32 MiB image where the offered release's sha256 says (content is test data) and record its size."""
    image = os.urandom(BIG)
    artifact_path(sha).write_bytes(image)
    FirmwareArtifact.objects.filter(sha256=sha).update(size_bytes=BIG)
    return image


def _offer(server: Server, auth: str) -> dict[str, Any]:
    response, body = server.request(
        "POST",
        CHECKIN,
        {"Authorization": auth, "Content-Type": "application/json"},
        json.dumps(checkin_body()).encode(),
    )
    assert response.status == 200, body
    offer: dict[str, Any] = json.loads(body)["offer"]
    assert offer is not None
    return offer


def _auth(device_client, device: Device) -> str:
    return str(device_client(device)._credentials["HTTP_AUTHORIZATION"])


def _target(offer: dict[str, Any]) -> str:
    url = urlsplit(offer["artifact"]["url"])
    return f"{url.path}?{url.query}"


def test_ranges_under_gunicorn_go_through_sendfile_from_the_range_start(serve, pilot, running, device_client, sha):
    image = _big_image(sha)
    server = serve()
    auth = _auth(device_client, pilot)
    target = _target(_offer(server, auth))
    received = b""
    for end in (999_999, 5_000_000, BIG + 10):  # resume from where the last range stopped
        response, body = server.request(
            "GET", target, {"Authorization": auth, "Range": f"bytes={len(received)}-{end}", "If-Range": f'"{sha}"'}
        )
        assert response.status == 206
        assert response.getheader("Content-Range") == f"bytes {len(received)}-{min(end, BIG - 1)}/{BIG}"
        assert response.getheader("ETag") == f'"{sha}"' and response.getheader("Accept-Ranges") == "bytes"
        received += body
    assert received == image
    whole, body = server.request("GET", target, {"Authorization": auth, "Range": "bytes=7-", "If-Range": '"stale"'})
    assert whole.status == 200 and body == image  # If-Range names another image: the whole one
    refused, body = server.request("GET", target, {"Authorization": auth, "Range": f"bytes={BIG}-"})
    assert refused.status == 416 and json.loads(body)["error"]["code"] == "range_not_satisfiable"
    assert refused.getheader("Content-Range") == f"bytes */{BIG}"
    # The kernel sent every body, from the descriptor positioned at the range's start, exactly the range's length.
    assert [(s["used"], s["offset"], s["length"], s["error"]) for s in server.sendfiles()] == [
        (True, 0, 1_000_000, None),
        (True, 1_000_000, 4_000_001, None),
        (True, 5_000_001, BIG - 5_000_001, None),
        (True, 0, BIG, None),
    ]


def _cut_after(server: Server, target: str, auth: str, nbytes: int) -> None:
    """Start a whole download, read `nbytes`, then reset the connection (a vehicle losing its link)."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n\r\n".encode())
    got = 0
    while got < nbytes:
        chunk = sock.recv(65536)
        assert chunk
        got += len(chunk)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not a polite FIN
    sock.close()


def _status_within(server: Server, target: str, auth: str, wanted: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while True:
        response, _ = server.request("GET", target, {"Authorization": auth, "Range": "bytes=0-0"})
        if response.status == wanted or time.monotonic() > deadline:
            return int(response.status)
        time.sleep(0.1)


def test_a_cut_sendfile_transfer_gives_its_download_slot_back(serve, pilot, running, device_client, sha):
    _big_image(sha)
    Region.objects.filter(pk=pilot.region_id).update(max_concurrent_downloads=1)
    server = serve()
    auth = _auth(device_client, pilot)
    target = _target(_offer(server, auth))
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n\r\n".encode())
    assert b" 200 " in sock.recv(65536)  # streaming, never read on: the one slot is taken
    response, _ = server.request("GET", target, {"Authorization": auth, "Range": "bytes=0-0"})
    assert response.status == 429
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # the link drops mid-sendfile
    assert _status_within(server, target, auth, 206, seconds=5) == 206  # the slot came back
    _cut_after(server, target, auth, 4 * 1024 * 1024)
    assert _status_within(server, target, auth, 206, seconds=5) == 206  # and again after a cut mid-image
    cut = [s for s in server.sendfiles() if s["error"]]
    assert [(s["offset"], s["length"]) for s in cut] == [(0, BIG), (0, BIG)]  # both were cut inside sendfile


def test_nginx_sends_the_bytes_the_app_authorised(serve, pilot, other_pilot, running, device_client, sha):
    image = _big_image(sha)
    server = serve(accel=True)
    auth = _auth(device_client, pilot)
    target = _target(_offer(server, auth))
    received = b""
    for end in (999_999, BIG + 10):
        response, body = server.request(
            "GET", target, {"Authorization": auth, "Range": f"bytes={len(received)}-{end}", "If-Range": f'"{sha}"'}
        )
        assert response.status == 206, body[:200]
        assert response.getheader("Content-Range") == f"bytes {len(received)}-{min(end, BIG - 1)}/{BIG}"
        assert response.getheader("ETag") == f'"{sha}"'
        assert response.getheader("Cache-Control") == "private, max-age=0, must-revalidate"
        received += body
    assert received == image
    for headers in ({"Range": "bytes=7-", "If-Range": '"stale"'}, {"Range": "bytes=0-1,5-6"}, {}):
        response, body = server.request("GET", target, {"Authorization": auth, **headers})
        assert response.status == 200 and body == image  # the app decided "whole image"; nginx keeps to it
    refused, body = server.request("GET", target, {"Authorization": auth, "Range": f"bytes={BIG}-"})
    assert refused.status == 416 and json.loads(body)["error"]["code"] == "range_not_satisfiable"
    assert server.sendfiles() == []  # gunicorn sent no image bytes: nginx did
    stranger = _auth(device_client, other_pilot)
    forbidden, body = server.request("GET", target, {"Authorization": stranger})
    assert forbidden.status == 403 and json.loads(body)["error"]["code"] == "download_token_invalid"
    internal, _ = server.request("GET", f"/_ota_artifacts/whole/{sha[:2]}/{sha}", {})
    assert internal.status == 404  # the internal locations answer only the app's redirects
    assert SecurityEvent.objects.filter(kind=SecurityEventKind.DEVICE_ARTIFACT_REFUSED).count() == 1


def _refusals() -> list[SecurityEvent]:
    return list(SecurityEvent.objects.filter(kind=SecurityEventKind.DEVICE_ARTIFACT_REFUSED).order_by("pk"))


def test_nginx_reuses_the_apps_vouch_within_the_bound_and_never_for_another_credential(
    serve, pilot, other_pilot, running, device_client, sha
):
    image = _big_image(sha)
    server = serve(accel=True, recheck_seconds=30)
    auth = _auth(device_client, pilot)
    target = _target(_offer(server, auth))
    for start in (0, 4096, BIG - 10):
        response, body = server.request("GET", target, {"Authorization": auth, "Range": f"bytes={start}-{start + 9}"})
        assert response.status == 206 and body == image[start : start + 10]
        assert response.msg.get_all("ETag") == [f'"{sha}"']
    # One vouch from the app, then nginx alone: no range reached the app's artifact path.
    assert server.app_requests(f"/artifacts/{sha}/vouch/") == 1
    assert server.app_requests(f"/artifacts/{sha}/?") == 0
    # The owner's cached vouch does not answer for another device's credential with the same URL.
    stranger = _auth(device_client, other_pilot)
    forbidden, body = server.request("GET", target, {"Authorization": stranger, "Range": "bytes=0-9"})
    assert forbidden.status == 403 and json.loads(body)["error"]["code"] == "download_token_invalid"
    (event,) = _refusals()
    assert event.device_serial == other_pilot.serial and "download_token_invalid" in event.message
    again, body = server.request("GET", target, {"Authorization": stranger, "Range": "bytes=0-9"})
    assert again.status == 403  # refusals are never cached: each one reaches the app and is recorded
    assert SecurityEvent.objects.get(pk=event.pk).count == 2
    # 416 and a stale If-Range answer as before, from the cached vouch too.
    refused, body = server.request("GET", target, {"Authorization": auth, "Range": f"bytes={BIG}-"})
    assert refused.status == 416 and json.loads(body)["error"]["code"] == "range_not_satisfiable"
    assert refused.msg.get_all("Content-Range") == [f"bytes */{BIG}"]
    assert refused.msg.get_all("ETag") == [f'"{sha}"'] and refused.getheader("Content-Type") == "application/json"
    whole, body = server.request("GET", target, {"Authorization": auth, "Range": "bytes=7-9", "If-Range": '"old"'})
    assert whole.status == 200 and body == image


def test_a_cached_vouch_stops_within_the_recheck_bound_after_a_withdrawal(serve, pilot, running, device_client, sha):
    _big_image(sha)
    server = serve(accel=True, recheck_seconds=3)
    auth = _auth(device_client, pilot)
    target = _target(_offer(server, auth))
    decided = time.time()  # the app's rules verdict is taken at the first range, after this
    response, _ = server.request("GET", target, {"Authorization": auth, "Range": "bytes=0-0"})
    assert response.status == 206
    Deployment.objects.filter(device=pilot).update(status=DeploymentStatus.CANCELLED)  # withdrawn
    statuses = []
    while time.time() < decided + 6:
        response, _ = server.request("GET", target, {"Authorization": auth, "Range": "bytes=1-1"})
        statuses.append((round(time.time() - decided, 2), response.status))
        if response.status != 206:
            break
        time.sleep(0.1)
    after, status = statuses[-1]
    assert status == 404 and after <= 3.0 + 0.5, statuses  # within OTA_DOWNLOAD_RECHECK_SECONDS of the last check
    assert len(statuses) > 1, statuses  # a vouch was reused meanwhile (the bound, not a per-range database read)
    assert _refusals()[-1].message == "An image was requested that is not offered to this device."


def _workers(master: int) -> list[int]:
    """gunicorn's workers: the processes whose parent is its master (/proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == master:
            children.append(int(stat.parent.name))
    return children


def test_nginx_renews_a_vouch_in_the_background_before_it_runs_out(serve, pilot, running, device_client, sha):
    """The ranges of a vouch's last second are served while one request renews it: no range waits on the app at
    a renewal (here the app cannot answer at all then), and the renewal reaches the app."""
    image = _big_image(sha)
    server = serve(accel=True, recheck_seconds=4)  # reuse 3 s from the first range: 2 fresh, then 1 renewing
    auth = _auth(device_client, pilot)
    target = _target(_offer(server, auth))
    time.sleep(1.05 - time.time() % 1)  # start early in a second, so nginx's whole seconds are the app's
    second = int(time.time())

    def ranges_until(moment: float) -> None:
        while time.time() < moment:
            response, body = server.request("GET", target, {"Authorization": auth, "Range": "bytes=5-9"}, timeout=3)
            assert response.status == 206 and body == image[5:10]
            time.sleep(0.1)

    ranges_until(second + 2.8)  # the fresh part (nginx's whole seconds `second` to `second + 2`)
    assert server.app_requests(f"/artifacts/{sha}/vouch/") == 1
    frozen = _workers(server.app_pid)
    assert frozen
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)  # the app answers nothing until SIGCONT
    try:
        time.sleep(max(0.0, second + 3.05 - time.time()))
        ranges_until(second + 3.8)  # the renewing second, within the first vouch's bound (second + 4)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    # The renewal was asked in that second and reached the app once it could answer; no range took the full path.
    assert server.app_requests(f"/artifacts/{sha}/vouch/") == 2
    assert server.app_requests(f"/artifacts/{sha}/?") == 0


def test_an_expired_token_through_nginx_is_refused_and_recorded(serve, pilot, running, device_client, sha):
    _big_image(sha)
    server = serve(accel=True, recheck_seconds=30)
    auth = _auth(device_client, pilot)
    _offer(server, auth)
    url = download_url(pilot, sha, now=time.time() - 3600)
    refused, body = server.request("GET", url, {"Authorization": auth, "Range": "bytes=0-9"})
    assert refused.status == 401 and json.loads(body)["error"]["code"] == "download_token_expired"
    assert "download_token_expired" in _refusals()[-1].message


def test_the_vouch_answers_only_nginx(serve, pilot, running, device_client, sha, proxy_secret):
    _big_image(sha)
    server = serve(accel=True, recheck_seconds=30)
    auth = _auth(device_client, pilot)
    target = _target(_offer(server, auth))
    vouch = target.replace("/?token=", "/vouch/?token=")
    for headers in ({}, {"X-OTA-Vouch-Auth": "guessed"}):
        assert server.direct(vouch, {"Authorization": auth, **headers}) == 404
    assert server.direct(vouch, {"Authorization": auth, "X-OTA-Vouch-Auth": proxy_secret}) == 200
    assert server.request("GET", vouch, {"Authorization": auth})[0].status == 404  # nginx: only its internal one
    assert not SecurityEvent.objects.exists()


def test_reuse_never_reaches_the_bound_in_nginx_whole_seconds():
    from devices.edge.vouch import reuse_seconds

    for now, until in ((100.0, 105.0), (100.9, 105.0), (100.1, 104.95), (100.5, 101.2), (100.0, 99.0)):
        seconds = reuse_seconds(until=until, now=now)
        # nginx stores at its whole-second clock (<= now) and serves while that clock is <= stored + seconds.
        assert seconds == 0 or int(now) + seconds + 1 <= until
    assert reuse_seconds(until=105.0, now=100.0) == 4


def test_a_vouch_renews_within_its_reuse_and_refusals_are_kept_by_no_one():
    from devices.edge.vouch import REFRESH_SECONDS, _answer, reuse_split

    for seconds in range(8):
        fresh, stale = reuse_split(seconds)
        assert fresh + stale == seconds and 0 <= stale <= REFRESH_SECONDS  # nginx serves no yes past the bound
        assert fresh >= 1 or seconds == 0
    answer = _answer(200, reuse_seconds=4)
    # Cache-Control first: nginx before 1.23 skips a Cache-Control read after X-Accel-Expires.
    assert [k for k in answer.headers if k in ("Cache-Control", "X-Accel-Expires")] == [
        "Cache-Control",
        "X-Accel-Expires",
    ]
    assert answer["Cache-Control"] == "max-age=3, stale-while-revalidate=1" and answer["X-Accel-Expires"] == "3"
    for status, seconds in ((200, 0), (403, 0)):
        kept = _answer(status, reuse_seconds=seconds)
        assert kept["X-Accel-Expires"] == "0" and "Cache-Control" not in kept  # nginx stores nothing
