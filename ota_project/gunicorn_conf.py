"""The project's one gunicorn configuration: `gunicorn -c ota_project/gunicorn_conf.py ota_project.wsgi`.

`make run`, the fleet drills, the benchmarks and production all serve the web app with it; only environment
variables change it (README "Configuration"). gthread workers: a device's long ranged download holds one thread
of a worker, not the worker, and idle keep-alive connections hold no thread at all. Workers default to the cores
this process may run on (at least two, so one can restart while the other serves), threads to 8 per worker.
Static files go through whitenoise inside the app; response bodies that are files go out through sendfile
(gunicorn's default, left on). Persistent database connections with health checks come from the Django settings
(`CONN_MAX_AGE`, `CONN_HEALTH_CHECKS`): one per request thread, reused across requests.
"""

from __future__ import annotations

import os
from pathlib import Path


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# The checkout this file belongs to is on sys.path first, whatever the caller's working directory.
chdir = str(Path(__file__).resolve().parent.parent)
wsgi_app = "ota_project.wsgi"
bind = [address.strip() for address in os.environ.get("OTA_WEB_BIND", "127.0.0.1:8000").split(",") if address.strip()]
worker_class = "gthread"
workers = _int("OTA_WEB_WORKERS", max(2, len(os.sched_getaffinity(0))))
threads = _int("OTA_WEB_THREADS", 8)
backlog = 2048  # a fleet's check-ins arrive in bursts: queue them rather than refuse them
keepalive = _int("OTA_WEB_KEEPALIVE_SECONDS", 5)
# gthread: a worker's main loop heartbeats while its threads serve, so this only catches a hung worker, not a slow
# download; on SIGTERM, requests in flight get graceful_timeout to finish.
timeout = _int("OTA_WEB_TIMEOUT_SECONDS", 60)
graceful_timeout = _int("OTA_WEB_GRACEFUL_TIMEOUT_SECONDS", 30)
# A worker is replaced after this many requests (0: never), staggered by up to 10% so they never restart together.
max_requests = _int("OTA_WEB_MAX_REQUESTS", 50_000)
max_requests_jitter = max_requests // 10
# The heartbeat file in memory, not on a disk that can stall the arbiter's liveness check.
worker_tmp_dir = "/dev/shm" if Path("/dev/shm").is_dir() else None
# Access log: empty (the default) is off, `-` is stdout, anything else a file. Errors always go to stderr.
accesslog = os.environ.get("OTA_WEB_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("OTA_WEB_LOG_LEVEL", "info")
proc_name = "ota-web"
# gunicornc's control socket: off unless given a path (its default path is one per user, which several servers on
# one machine, such as a drill next to `make run`, would fight over).
control_socket = os.environ.get("OTA_WEB_CONTROL_SOCKET", "")
control_socket_disable = not control_socket


# /metrics: each worker writes its request histograms to files in PROMETHEUS_MULTIPROC_DIR (default
# DATA_DIR/prometheus) and a scrape sums them (prometheus_client's multiprocess mode; see ota_project/metrics.py).
# Set when the master starts, before it forks a worker (workers import prometheus_client after the fork and inherit
# it); not at import, so reading this file changes no one's environment. Emptied then, so a restart does not add
# the previous run's samples; a dead worker's files are marked so its live gauges drop out.
_data_dir = Path(os.environ.get("OTA_DATA_DIR") or Path(chdir) / ".data")


def on_starting(server: object) -> None:
    # The workers' share of the device API's abuse limits (devices.edge.abuse) divides by the number of workers this
    # master actually runs (OTA_WEB_WORKERS above, or a command line's -w): exported before any worker is forked.
    os.environ["OTA_WEB_WORKERS"] = str(getattr(getattr(server, "cfg", None), "workers", workers))
    directory = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_data_dir / "prometheus")))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def child_exit(server: object, worker: object) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(getattr(worker, "pid", 0))


# What a worker buffered in memory (devices.edge.quiet: the check-ins it answered from memory) is written when it
# exits (restart after max_requests, SIGTERM, HUP), not lost with it: the apps answer this signal.
def worker_exit(server: object, worker: object) -> None:
    from ota_project.signals import worker_exiting

    worker_exiting.send_robust(sender=None)
