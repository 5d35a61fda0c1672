"""Check-ins over mutual TLS (not a test): run with `make bench-mtls` or
`DATABASE_URL=postgres://postgres@127.0.0.1:5432/ota_bench_mtls python -m bench.checkin_mtls`.

The production shape on loopback: nginx terminating mutual TLS (client certificates from the device CA, verified;
the verified certificate passed to the app with the proxy secret) in front of gunicorn with the project's
configuration, in certificate mode. Measured in the same run, interleaved round by round, through the same nginx
server block and the same TLS connections' settings:
(a) `hello`, a bare Django view, (b) `hello_query`, the same plus one indexed query (bench.urls), and (c) idle
check-ins of provisioned devices (the one-statement path with the certificate identity). wrk cannot present client certificates, so the load comes from this module's own
generator: processes of asyncio keep-alive HTTP/1.1 clients, one device certificate per connection (each
connection is one device; TLS handshakes happen once per connection, as a polling device with keep-alive would).
The generator shares the 2 cores with nginx, gunicorn and PostgreSQL: the absolute rates are what this machine does
with all of them on it. Also reported: how fast `devices provision`'s service issues certificates (the drills'
batch), and that every answer was a 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.db_stats import commits

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ota_project.settings")

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"hello": "/bench/hello/", "hello_query": "/bench/hello-query/", "checkin_idle": "/device/v1/checkin/"}
BODY = json.dumps(
    {
        "slots": {"a": {"version": "1.0.0", "release_counter": 1}, "b": {"version": "0.9.0", "release_counter": 0}},
        "active_slot": "a",
        "boot_count": 12,
        "health": {"modem_attach": True, "gnss_fix": True},
    }
).encode()


def _setup() -> None:
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    if not str(connection.settings_dict["NAME"]).startswith("ota_bench"):
        raise SystemExit(
            f"bench.checkin_mtls runs on a scratch database ota_bench*, not {connection.settings_dict['NAME']}"
        )
    settings.TEMPORAL_ENABLED = False
    settings.OTA_DEVICE_AUTH = "certificate"
    call_command("migrate", verbosity=0)


def provision(devices: int, work: Path) -> tuple[list[Path], float]:
    """`devices` idle devices, provisioned in one batch; their identity directories and the issuing time."""
    from bench.fleet import build_fleet
    from devices.certificates import device_certificates_provision
    from devices.models import Device
    from devices.pki import ca_ensure, device_identity_write, server_pins

    tag = uuid.uuid4().hex[:6]
    build_fleet(devices, tag=f"m{tag}", single_wave=True)
    fleet = list(Device.objects.filter(hardware_model__name=f"bench-m{tag}").order_by("pk"))
    ca_ensure()
    started = time.perf_counter()
    issued = device_certificates_provision(actor=None, devices=fleet)
    elapsed = time.perf_counter() - started
    pins = server_pins()
    return [device_identity_write(work / "identities", pair, pins) for pair in issued], elapsed


def _start(argv: list[str], env: dict[str, str], log: Path, port: int) -> subprocess.Popen[bytes]:
    import socket

    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{argv[0]} exited; see {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{argv[0]} did not listen within 60 s; see {log}")


def start_edge(
    work: Path, *, app_port: int, tls_port: int, workers: int, threads: int
) -> list[subprocess.Popen[bytes]]:
    """gunicorn (bench.settings: the project's plus the hello views) and nginx with the device port's server block,
    proxying /device/ and /bench/ alike."""
    import getpass

    from django.conf import settings

    from devices.edge.identity import device_proxy_secret
    from devices.edge.nginx import nginx_device_tls_site, nginx_main_conf
    from devices.pki import pki_paths, server_certificate_ensure

    server_certificate_ensure(hosts=["127.0.0.1", "localhost"])
    paths = pki_paths()
    site = nginx_device_tls_site(
        listen=f"127.0.0.1:{tls_port}",
        upstream=f"127.0.0.1:{app_port}",
        artifact_root=Path(settings.ARTIFACT_ROOT).resolve(),
        server_certificate=paths.server_certificate.resolve(),
        server_key=paths.server_key.resolve(),
        client_ca_bundle=paths.bundle.resolve(),
        proxy_secret=device_proxy_secret(),
        proxied=("/device/", "/bench/"),
    )
    nginx_dir = work / "nginx"
    nginx_dir.mkdir(parents=True, exist_ok=True)
    user = getpass.getuser() if os.geteuid() == 0 else ""
    (nginx_dir / "nginx.conf").write_text(nginx_main_conf(workdir=nginx_dir, servers=[site], workers=1, user=user))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "OTA_WEB_BIND": f"127.0.0.1:{app_port}",
        "OTA_WEB_WORKERS": str(workers),
        "OTA_WEB_THREADS": str(threads),
        "OTA_WEB_LOG_LEVEL": "warning",
        "OTA_DEVICE_AUTH": "certificate",
        "OTA_DEVICE_PKI_DIR": str(paths.directory),
        "OTA_DEVICE_PROXY_SECRET_FILE": str(settings.DEVICE_PROXY_SECRET_FILE),
        "CONN_MAX_AGE": "600",
        "TEMPORAL_ENABLED": "false",
        "PYTHONPATH": str(ROOT),
    }
    gunicorn = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "ota_project" / "gunicorn_conf.py")]
    processes = [_start(gunicorn, env, work / "gunicorn.log", app_port)]
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    argv = [nginx, "-c", str(nginx_dir / "nginx.conf"), "-p", str(nginx_dir), "-e", str(nginx_dir / "error.log")]
    processes.append(_start(argv, env, nginx_dir / "stdout.log", tls_port))
    return processes


def _request(path: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    )
    return head.encode() + BODY


async def _body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    """The body of one answer: Content-Length, or chunked (nginx re-chunks an answer without a length)."""
    lower = head.lower()
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return await reader.readexactly(int(line[15:]))
    if b"transfer-encoding: chunked" not in lower:
        raise RuntimeError(f"an answer without a length: {head[:200]!r}")
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def _connection(identity: Path, port: int, path: str, until: float, out: dict[str, Any]) -> None:
    context = ssl.create_default_context(cafile=str(identity / "ca.pem"))
    context.load_cert_chain(str(identity / "device.pem"), str(identity / "device-key.pem"))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    request = _request(path)
    try:
        while time.monotonic() < until:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            body = await _body(reader, head)
            out["latencies"].append(time.perf_counter() - started)
            if status != 200 or (path.endswith("/checkin/") and b'"offer":null' not in body):
                out["bad"] += 1
            out["requests"] += 1
    finally:
        writer.close()


def _load_process(identities: list[str], port: int, path: str, seconds: float, queue: Any) -> None:
    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {"requests": 0, "bad": 0, "latencies": []}
        until = time.monotonic() + seconds
        await asyncio.gather(*(_connection(Path(i), port, path, until, out) for i in identities))
        return out

    result = asyncio.run(run())
    latencies = sorted(result.pop("latencies"))
    result["p50"] = latencies[len(latencies) // 2] if latencies else 0.0
    result["p99"] = latencies[int(len(latencies) * 0.99)] if latencies else 0.0
    queue.put(result)


def load(
    identities: list[Path], port: int, path: str, *, seconds: float, processes: int, connections: int
) -> dict[str, Any]:
    """`connections` keep-alive TLS connections (each its own device) over `processes` processes, for `seconds`."""
    queue: Any = multiprocessing.Queue()
    shares = [
        [str(identities[i % len(identities)]) for i in range(p, connections, processes)] for p in range(processes)
    ]
    started = time.perf_counter()
    workers = [multiprocessing.Process(target=_load_process, args=(s, port, path, seconds, queue)) for s in shares if s]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=seconds + 60) for _ in workers]
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    requests = sum(r["requests"] for r in results)
    bad = sum(r["bad"] for r in results)
    if bad:
        raise RuntimeError(f"{path}: {bad} answers were not the expected 200")
    return {
        "requests": requests,
        "per_s": requests / min(elapsed, seconds + 1.0),
        "p50_ms": round(1000 * max(r["p50"] for r in results), 2),
        "p99_ms": round(1000 * max(r["p99"] for r in results), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=2000, help="provisioned in one batch (the drill's size)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="gthread threads per worker")
    parser.add_argument("--app-port", type=int, default=8792)
    parser.add_argument("--tls-port", type=int, default=8793)
    args = parser.parse_args(argv)
    _setup()
    work = Path(tempfile.mkdtemp(prefix="bench-mtls-"))
    identities, issuing = provision(args.devices, work)
    processes = start_edge(
        work, app_port=args.app_port, tls_port=args.tls_port, workers=args.workers, threads=args.threads
    )
    try:
        # Warm-up: every worker connects to the database, and every connection's device checks in once.
        load(
            identities,
            args.tls_port,
            TARGETS["checkin_idle"],
            seconds=2,
            processes=args.load_processes,
            connections=args.connections,
        )
        load_before = os.getloadavg()
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in TARGETS}
        for _ in range(args.rounds):
            for name, path in TARGETS.items():
                before = commits()
                result = load(
                    identities,
                    args.tls_port,
                    path,
                    seconds=args.seconds,
                    processes=args.load_processes,
                    connections=args.connections,
                )
                result["db_transactions_per_request"] = (commits() - before) / max(1, result["requests"])
                runs[name].append(result)
    finally:
        for process in reversed(processes):
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    best = {name: max(results, key=lambda r: r["per_s"]) for name, results in runs.items()}
    report = {
        "server": f"nginx (1 worker, mutual TLS, ssl_verify_client on) -> gunicorn gthread {args.workers}x{args.threads}",
        "load": (
            f"{args.connections} keep-alive TLS connections (one device certificate each) from {args.load_processes} "
            f"asyncio processes, {args.seconds:g} s, {args.rounds} interleaved rounds"
        ),
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "provisioned_devices": args.devices,
        "provision_seconds": round(issuing, 2),
        "provision_per_s": round(args.devices / issuing),
        "best_per_s": {name: round(result["per_s"]) for name, result in best.items()},
        "ratio_checkin_to_hello": round(best["checkin_idle"]["per_s"] / best["hello"]["per_s"], 3),
        "ratio_checkin_to_hello_query": round(best["checkin_idle"]["per_s"] / best["hello_query"]["per_s"], 3),
        "latency_ms_of_best": {name: {"p50": r["p50_ms"], "p99": r["p99_ms"]} for name, r in best.items()},
        "runs_per_s": {name: [round(r["per_s"]) for r in results] for name, results in runs.items()},
        "db_transactions_per_request": {
            name: [round(r["db_transactions_per_request"], 3) for r in results] for name, results in runs.items()
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
