"""Ranged-download benchmark (not a test): run with `make bench-ranges` or
`DATABASE_URL=postgres://postgres@127.0.0.1:5432/ota_bench_ranges python -m bench.ranges`.

One 64 MiB image in the artifact store, offered to one device; `wrk` (2 threads, 100 connections, a Lua script
that asks for 1 MiB at a random offset per request) runs against four targets in interleaved rounds:
- `nginx`: nginx serving the same file directly (the baseline; no authentication at all);
- `gunicorn`: the device API under gunicorn (gthread): credential, download token, cached rules, kernel sendfile;
- `nginx_vouch`: the device site of devices.edge.nginx (what `devices nginx-config` renders, without TLS): nginx asks
  the app (auth_request), caches its vouch for at most OTA_DOWNLOAD_RECHECK_SECONDS (5) and sends the ranges itself;
- `nginx_vouch_every_range`: the same site with OTA_DOWNLOAD_RECHECK_SECONDS=0: the app vouches for every range
  (what the X-Accel-Redirect path cost: the app authorises each range, nginx sends).
Each target is checked once first (206, the right bytes). Printed as JSON: MB/s and p50/p99 per target and round,
the median per target, and the ratios to nginx. The bench writes its nginx.conf files under
OTA_DATA_DIR/bench-ranges, starts two nginx and three gunicorns itself and stops them at the end.
"""

from __future__ import annotations

import argparse
import getpass
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ota_project.settings")
# The app path without TLS in front: devices use the development mode's secret credential (bench-mtls measures
# the certificate identity through nginx).
os.environ.setdefault("OTA_DEVICE_AUTH", "secret")
os.environ.setdefault("CONN_MAX_AGE", "300")  # persistent connections in the servers started below

MIB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parents[1]
# The app server: the project's one gunicorn configuration, set by its OTA_WEB_* environment (README "Configuration").
GUNICORN = [".venv/bin/gunicorn", "-c", "ota_project/gunicorn_conf.py"]
GUNICORN_ENV = {"OTA_WEB_WORKERS": "2", "OTA_WEB_THREADS": "16", "OTA_WEB_LOG_LEVEL": "warning"}
CHECKIN_BODY = {
    "slots": {"a": {"version": "1.0.0", "release_counter": 1}, "b": {"version": "0.9.0", "release_counter": 0}},
    "active_slot": "a",
    "boot_count": 1,
    "health": {},
}
WRK_SCRIPT = """
local path = "%(path)s"
local span = %(span)d
local last_start = %(last_start)d
local auth = "%(auth)s"
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end
function init(args)
  math.randomseed(os.time() * 100 + seed)
end
function request()
  local start = math.random(0, last_start)
  local headers = {["Range"] = "bytes=" .. start .. "-" .. (start + span - 1)}
  if auth ~= "" then headers["Authorization"] = auth end
  return wrk.format("GET", path, headers)
end
function done(summary, latency, requests)
  io.write(string.format(
    '{"requests": %%d, "bytes": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, "non_2xx": %%d, ' ..
    '"socket_errors": %%d}\\n',
    summary.requests, summary.bytes, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def _setup() -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    if not str(connection.settings_dict["NAME"]).startswith("ota_bench"):
        raise SystemExit(f"bench.ranges runs on a scratch database ota_bench*, not {connection.settings_dict['NAME']}")
    call_command("migrate", verbosity=0)


def _offered_image(size: int) -> tuple[str, str, bytes]:
    """An offered deployment of a `size`-byte image to one device: (sha256, Authorization header, image)."""
    from django.conf import settings

    from bench.fleet import build_fleet
    from devices.credentials import device_credential_issue
    from devices.firmware.models import FirmwareArtifact
    from devices.firmware.storage import artifact_path
    from rollouts import rollout_services as steps
    from rollouts.choices import RolloutStatus
    from rollouts.deployment_services import deployment_offer
    from rollouts.models import Deployment
    from workflows.types import PhaseChange

    settings.TEMPORAL_ENABLED = False
    fleet = build_fleet(1, tag=f"r{int(time.time())}", single_wave=True)
    rollout = steps.rollout_start(actor=fleet["operator"], change=fleet["change"])
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    steps.rollout_phase(PhaseChange(rollout.pk, RolloutStatus.RUNNING, 0))
    device = Deployment.objects.get(rollout=rollout).device
    offered = deployment_offer(device_id=device.pk)
    assert offered is not None, "the bench device got no offer"
    # The image goes where the approved release's sha256 says (the content is bench data: nothing verifies it here).
    sha = offered.release.artifact.sha256
    image = secrets.token_bytes(size)
    path = artifact_path(sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.chmod(0o640)  # the store keeps images read-only
    path.write_bytes(image)
    FirmwareArtifact.objects.filter(sha256=sha).update(size_bytes=size)
    secret = device_credential_issue(actor=fleet["operator"], device=device)
    return sha, f"Device {device.serial}:{secret}", image


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(argv: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        process = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{argv[0]} exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{argv[0]} did not listen on {port}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _get(port: int, target: str, headers: dict[str, str]) -> tuple[int, bytes, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        return response.status, response.read(), str(response.getheader("Content-Range", ""))
    finally:
        connection.close()


def _offer_target(port: int, auth: str) -> str:
    """The artifact URL (path and token) from a real check-in, as a device gets it (the first request of a server:
    it waits for the workers' boot, over 30 s on a loaded machine)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=180)
    try:
        body = json.dumps(CHECKIN_BODY).encode()
        connection.request(
            "POST",
            "/device/v1/checkin/",
            body=body,
            headers={"Authorization": auth, "Content-Type": "application/json"},
        )
        answer = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    url = urlsplit(answer["offer"]["artifact"]["url"])
    return f"{url.path}?{url.query}"


def _wrk(port: int, target: str, auth: str, *, size: int, span: int, seconds: int, connections: int, work: Path) -> Any:
    script = work / f"ranges-{port}.lua"
    script.write_text(WRK_SCRIPT % {"path": target, "span": span, "last_start": size - span, "auth": auth})
    wrk = shutil.which("wrk") or "/usr/bin/wrk"
    argv = [wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script)]
    output = subprocess.run([*argv, f"http://127.0.0.1:{port}"], capture_output=True, text=True, check=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    seconds_run = result["duration_us"] / 1e6
    return {
        "MB_per_s": round(result["bytes"] / seconds_run / 1e6, 1),
        "requests_per_s": round(result["requests"] / seconds_run, 1),
        "p50_ms": round(result["p50_us"] / 1000, 2),
        "p99_ms": round(result["p99_us"] / 1000, 2),
        "non_2xx": result["non_2xx"],
        "socket_errors": result["socket_errors"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--range-kib", type=int, default=1024)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    load_before = [round(x, 2) for x in os.getloadavg()]
    _setup()
    from django.conf import settings

    from devices.edge.nginx import DEFAULT_ACCEL_PREFIX, nginx_device_site, nginx_main_conf
    from devices.firmware.storage import artifact_relative_path

    size, span = args.size_mib * MIB, args.range_kib * 1024
    sha, auth, image = _offered_image(size)
    work = Path(settings.DATA_DIR) / "bench-ranges"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    proxy_secret = secrets.token_urlsafe(32)
    env = {
        **os.environ,
        **GUNICORN_ENV,
        "TEMPORAL_ENABLED": "false",
        "OTA_CACHE_URL": "redis://127.0.0.1:6379/3",
        "OTA_DEVICE_PROXY_SECRET": proxy_secret,
        # One device asking for 100 ranges at once is the load under test here, not abuse (devices.edge.abuse).
        "OTA_DEVICE_RATE_PER_SECOND": "0",
        "OTA_ADDRESS_RATE_PER_SECOND": "0",
    }
    app_port, vouch_app_port, every_app_port, nginx_port, vouch_port, every_port = (_free_port() for _ in range(6))
    artifact_root = Path(settings.ARTIFACT_ROOT)
    direct = (
        f"server {{\n    listen 127.0.0.1:{nginx_port};\n    sendfile on;\n    tcp_nopush on;\n"
        f"    location /static/ {{\n        alias {artifact_root}/;\n    }}\n}}\n"
    )
    user = getpass.getuser() if os.geteuid() == 0 else ""
    sites = {"vouch": (vouch_port, vouch_app_port, "5"), "every": (every_port, every_app_port, "0")}
    for name, (port, upstream_port, _) in sites.items():
        site = nginx_device_site(
            listen=f"127.0.0.1:{port}",
            upstream=f"127.0.0.1:{upstream_port}",
            artifact_root=artifact_root,
            proxy_secret=proxy_secret,
        )
        (work / name).mkdir()
        servers = [direct, site] if name == "vouch" else [site]
        conf = nginx_main_conf(workdir=work / name, servers=servers, workers=2, user=user)
        (work / name / "nginx.conf").write_text(conf)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        app_env = {**env, "OTA_WEB_BIND": f"127.0.0.1:{app_port}"}
        processes.append(_start(GUNICORN, app_env, app_port, work / "app.log"))
        for name, (port, upstream_port, recheck) in sites.items():
            site_env = {
                **env,
                "OTA_WEB_BIND": f"127.0.0.1:{upstream_port}",
                "OTA_ARTIFACT_ACCEL_REDIRECT": DEFAULT_ACCEL_PREFIX,
                "OTA_DOWNLOAD_RECHECK_SECONDS": recheck,
            }
            processes.append(_start(GUNICORN, site_env, upstream_port, work / f"app-{name}.log"))
            nginx = [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(work / name / "nginx.conf")]
            nginx += ["-p", str(work / name), "-e", str(work / name / "error.log")]
            processes.append(_start(nginx, env, port, work / name / "nginx.out"))
        targets = {
            "nginx": (nginx_port, f"/static/{artifact_relative_path(sha)}", ""),
            "gunicorn": (app_port, _offer_target(app_port, auth), auth),
            "nginx_vouch": (vouch_port, _offer_target(vouch_port, auth), auth),
            "nginx_vouch_every_range": (every_port, _offer_target(every_port, auth), auth),
        }
        for name, (port, target, header) in targets.items():
            headers = {"Range": f"bytes={MIB}-{MIB + span - 1}", **({"Authorization": header} if header else {})}
            status, body, content_range = _get(port, target, headers)
            if status != 206 or body != image[MIB : MIB + span]:
                raise SystemExit(f"{name}: answered {status} {content_range!r} with {len(body)} bytes, not the range")
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        names = list(targets)
        for index in range(args.rounds):
            for name in names[index % len(names) :] + names[: index % len(names)]:  # rotate the order per round
                port, target, header = targets[name]
                run = _wrk(
                    port,
                    target,
                    header,
                    size=size,
                    span=span,
                    seconds=args.seconds,
                    connections=args.connections,
                    work=work,
                )
                rounds[name].append(run)
    finally:
        for process in reversed(processes):
            _stop(process)
    median = {
        name: {key: statistics.median(r[key] for r in runs) for key in ("MB_per_s", "p50_ms", "p99_ms", "non_2xx")}
        for name, runs in rounds.items()
    }
    base = median["nginx"]
    report = {
        "setup": {
            "image_mib": args.size_mib,
            "range_kib": args.range_kib,
            "connections": args.connections,
            "seconds_per_run": args.seconds,
            "rounds": args.rounds,
            "gunicorn": " ".join([*(f"{k}={v}" for k, v in GUNICORN_ENV.items()), *GUNICORN]),
            "nginx_workers": 2,
            "load_average_before": load_before,
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "rounds": rounds,
        "median": median,
        "ratios_to_nginx": {
            name: {
                "throughput": round(m["MB_per_s"] / base["MB_per_s"], 3),
                "p99": round(m["p99_ms"] / base["p99_ms"], 3),
            }
            for name, m in median.items()
            if name != "nginx"
        },
        "targets": {"throughput_at_least": 0.7, "p99_at_most": 2.0},
    }
    print(json.dumps(report, indent=2))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
