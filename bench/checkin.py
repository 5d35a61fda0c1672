"""Check-in benchmark (not a test): run with `make bench-checkin` or
`DATABASE_URL=postgres://postgres@127.0.0.1:5432/ota_bench_checkin python -m bench.checkin`.

One gunicorn server (persistent database connections) serves four things, measured in the same run, interleaved
round by round, by `wrk` POSTing the same check-in body with Authorization headers rotating over many devices:
(a) `hello`, a bare Django view; (b) `hello_query`, the same plus one indexed query (bench.urls, routed only by
bench.settings); (c) idle check-ins (`/device/v1/checkin/` of devices with nothing offered or in flight: after the warm-up, in which
every device checks in once, most are answered from the web process's memory, devices.edge.quiet; a device's first
check-in at each worker still takes the statement); (d)
check-ins of devices holding a live offer (the offer is re-sent through the locking offer path). The best round of
each is compared: c/b, c/a and d/c, with p50/p99 latencies. The load average is reported because the machine is
shared; every answer must be a 2xx and every offered device must still hold its offer at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench.db_stats import commits

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ota_project.settings")
# The app path without TLS in front: devices use the development mode's secret credential (bench-mtls measures
# the certificate identity through nginx).
os.environ.setdefault("OTA_DEVICE_AUTH", "secret")

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LUA = Path(__file__).with_suffix(".lua")
CHECKIN = "/device/v1/checkin/"
TARGETS = {
    "hello": "/bench/hello/",
    "hello_query": "/bench/hello-query/",
    "checkin_idle": CHECKIN,
    "checkin_offer": CHECKIN,
}
BODY = json.dumps(
    {
        "slots": {"a": {"version": "1.0.0", "release_counter": 1}, "b": {"version": "0.9.0", "release_counter": 0}},
        "active_slot": "a",
        "boot_count": 12,
        "health": {"modem_attach": True, "gnss_fix": True},
    }
)


def _setup() -> None:
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    if not str(connection.settings_dict["NAME"]).startswith("ota_bench"):
        raise SystemExit(f"bench.checkin runs on a scratch database ota_bench*, not {connection.settings_dict['NAME']}")
    settings.TEMPORAL_ENABLED = False  # the offers come from the services; no workflow runs in this benchmark
    call_command("migrate", verbosity=0)


def _credentials(devices: Any) -> list[str]:
    from bench.fleet import bench_user
    from devices.credentials import device_credential_issue

    operator = bench_user("bench-operator", "operator")
    return [f"Device {device.serial}:{device_credential_issue(actor=operator, device=device)}" for device in devices]


def build(idle: int, offered: int) -> dict[str, list[str]]:
    """`idle` devices with nothing to do and `offered` devices in a running rollout; their Authorization headers."""
    from bench.fleet import build_fleet
    from devices.models import Device
    from rollouts import rollout_services as steps
    from rollouts.choices import RolloutStatus
    from workflows.types import PhaseChange

    tag = uuid.uuid4().hex[:6]
    build_fleet(idle, tag=f"i{tag}", single_wave=True)
    fleet = build_fleet(offered, tag=f"o{tag}", single_wave=True)
    rollout = steps.rollout_start(actor=fleet["operator"], change=fleet["change"])
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    steps.rollout_phase(PhaseChange(rollout.pk, RolloutStatus.RUNNING, 0))
    return {
        "idle": _credentials(Device.objects.filter(hardware_model__name=f"bench-i{tag}").order_by("pk")),
        "offer": _credentials(Device.objects.filter(hardware_model=fleet["model"]).order_by("pk")),
    }


def server_command(bind: str, workers: int, threads: int) -> tuple[list[str], dict[str, str]]:
    """The gunicorn command line and environment: the project's one configuration, set by OTA_WEB_* variables."""
    env = {"OTA_WEB_BIND": bind, "OTA_WEB_WORKERS": str(workers), "OTA_WEB_THREADS": str(threads)}
    return [str(BIN / "gunicorn"), "-c", str(ROOT / "ota_project" / "gunicorn_conf.py")], {
        **env,
        "OTA_WEB_LOG_LEVEL": "warning",
    }


def _start_server(port: int, workers: int, threads: int, log: Path) -> subprocess.Popen[bytes]:
    argv, web_env = server_command(f"127.0.0.1:{port}", workers, threads)
    env = {
        **os.environ,
        **web_env,
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "CONN_MAX_AGE": "600",
        "PYTHONPATH": str(ROOT),
    }
    server = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            _post(port, TARGETS["hello"], "Device x:y")
            return server
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"gunicorn exited; see {log}") from None
            time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not answer within 60 s; see {log}")


def _post(port: int, path: str, authorization: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=BODY.encode(),
        headers={"Authorization": authorization, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our own server
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def _check_answers(port: int, credentials: dict[str, list[str]]) -> None:
    """Every idle device gets no offer, every offered device gets its offer (this also warms every worker up)."""
    for header in credentials["idle"]:
        if _post(port, CHECKIN, header)["offer"] is not None:
            raise RuntimeError("an idle bench device was offered something")
    for header in credentials["offer"]:
        if _post(port, CHECKIN, header)["offer"] is None:
            raise RuntimeError("an offered bench device got no offer")


def _wrk(port: int, path: str, credentials: Path, *, seconds: int, connections: int, threads: int) -> dict[str, Any]:
    env = {**os.environ, "BENCH_CREDENTIALS": str(credentials), "BENCH_BODY": BODY}
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "-s",
        str(LUA),
        f"http://127.0.0.1:{port}{path}",
    ]
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("BENCH_JSON "))
    result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    if result["non_2xx"] or result["socket_errors"]:
        raise RuntimeError(f"{path}: {result['non_2xx']} non-2xx answers, {result['socket_errors']} socket errors")
    result["per_s"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def _offers_held(offered: int) -> None:
    from rollouts.choices import DeploymentStatus
    from rollouts.models import Deployment

    held = Deployment.objects.filter(status=DeploymentStatus.OFFERED).count()
    if held != offered:
        raise RuntimeError(f"{held} deployments are offered at the end, {offered} expected")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle-devices", type=int, default=1000)
    parser.add_argument("--offer-devices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8, help="per measurement")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="gthread threads per worker")
    parser.add_argument("--port", type=int, default=8791)
    args = parser.parse_args(argv)
    _setup()
    credentials = build(args.idle_devices, args.offer_devices)
    work = Path(tempfile.mkdtemp(prefix="bench-checkin-"))
    files = {}
    for group, headers in credentials.items():
        files[group] = work / f"{group}.txt"
        files[group].write_text("\n".join(headers) + "\n")
    files["hello"] = files["hello_query"] = files["checkin_idle"] = files["idle"]
    files["checkin_offer"] = files["offer"]
    log = Path(os.environ.get("OTA_DATA_DIR", "/tmp")) / "bench-checkin-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    server = _start_server(args.port, args.workers, args.threads, log)
    try:
        _check_answers(args.port, credentials)
        load_before = os.getloadavg()
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in TARGETS}
        for _ in range(args.rounds):
            for name, path in TARGETS.items():
                before = commits()
                result = _wrk(
                    args.port,
                    path,
                    files[name],
                    seconds=args.seconds,
                    connections=args.connections,
                    threads=args.wrk_threads,
                )
                result["db_transactions_per_request"] = (commits() - before) / max(1, result["requests"])
                runs[name].append(result)
        _offers_held(len(credentials["offer"]))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    best = {name: max(results, key=lambda r: r["per_s"]) for name, results in runs.items()}
    rate = {name: result["per_s"] for name, result in best.items()}
    server_argv, server_env = server_command(f"127.0.0.1:{args.port}", args.workers, args.threads)
    report = {
        "server": " ".join([*(f"{k}={v}" for k, v in server_env.items()), "gunicorn", *server_argv[1:]]),
        "load": f"wrk -t{args.wrk_threads} -c{args.connections} -d{args.seconds}s, {args.rounds} interleaved rounds",
        "devices": {"idle": len(credentials["idle"]), "offer": len(credentials["offer"])},
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "best_per_s": {name: round(value) for name, value in rate.items()},
        "ratio_idle_to_hello_query": round(rate["checkin_idle"] / rate["hello_query"], 3),
        "ratio_idle_to_hello": round(rate["checkin_idle"] / rate["hello"], 3),
        "ratio_offer_to_idle": round(rate["checkin_offer"] / rate["checkin_idle"], 3),
        "latency_ms_of_best": {
            name: {"p50": round(r["p50_us"] / 1000, 2), "p99": round(r["p99_us"] / 1000, 2)} for name, r in best.items()
        },
        "runs_per_s": {name: [round(r["per_s"]) for r in results] for name, results in runs.items()},
        # Statements per request as the database counted them (with its own few per second: epoch re-reads,
        # last_seen flushes, the bench's reads): an idle check-in answered from memory costs none.
        "db_transactions_per_request": {
            name: [round(r["db_transactions_per_request"], 3) for r in results] for name, results in runs.items()
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
