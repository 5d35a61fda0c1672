"""Prometheus metrics of the web processes: request latency histograms (by route name) and the scrape's access rule.

Multi-process: gunicorn runs several workers; with PROMETHEUS_MULTIPROC_DIR set (ota_project/gunicorn_conf.py sets
it to DATA_DIR/prometheus and empties it when the server starts) each worker writes its samples to files there and
a scrape sums them (prometheus_client's multiprocess mode). Without it (runserver, tests) the histograms live in the
process's default registry. The variable must be set before prometheus_client is imported.

Cardinality stays bounded: a request is labelled by its route's name (`api:rollout-detail`), never its raw path;
requests that match no route share the label `unmatched`; methods outside the usual verbs share `other`.
The fleet's gauges (rollouts, waves, deployments, devices, queues) are computed at scrape time by
rollouts.metrics, which also serves /metrics.
"""

from __future__ import annotations

import functools
import hmac
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, resolve
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from ota_project.files import run_time_secret

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
# Seconds: a check-in takes milliseconds, a page tens of them, an export or upload seconds.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUEST_LATENCY = Histogram(
    "ota_http_request_duration_seconds",
    "Time to answer an HTTP request, by route name, method and status class.",
    ["route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)


@functools.lru_cache(maxsize=4096)
def _route_of_path(path: str) -> str:
    # Cached: a device's check-in path is answered before routing thousands of times a second. Bounded, so a
    # scanner's random paths only evict entries (and all share the label `unmatched`).
    try:
        return resolve(path).view_name or UNMATCHED
    except Resolver404:
        return UNMATCHED


def route_name(request: HttpRequest) -> str:
    """The name of the route that answered (namespaced view name), or `unmatched`; never the raw path."""
    match = getattr(request, "resolver_match", None)
    if match is not None:
        return match.view_name or UNMATCHED
    # Answered before routing (the device short path) or not found: resolve for the label only.
    return _route_of_path(request.path_info)


# The labelled histogram per (route, method, status class), so a request skips `labels()` (its locking and checks);
# bounded like the labels themselves.
_series: dict[tuple[str, str, int], Any] = {}


class RequestMetricsMiddleware:
    """Observe every request's duration in REQUEST_LATENCY (first in the chain, so it times everything below)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - started
        method = request.method if request.method in METHODS else "other"
        key = (route_name(request), method, response.status_code // 100)
        series = _series.get(key)
        if series is None:  # first request of this route, method and status class in this process
            series = _series.setdefault(key, REQUEST_LATENCY.labels(key[0], method, f"{key[2]}xx"))
        series.observe(elapsed)
        return response


def multiprocess_directory() -> Path | None:
    """Where the workers' sample files are (None: single-process mode)."""
    configured = os.environ.get(MULTIPROC_ENV)
    return Path(configured) if configured else None


def process_metrics(directory: Path | None = None) -> bytes:
    """The request histograms in the text format: summed over every worker's files in multi-process mode."""
    directory = directory or multiprocess_directory()
    if directory is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return generate_latest(registry)


def metrics_token() -> bytes:
    """The scrape's bearer token: OTA_METRICS_TOKEN, else the file OTA_METRICS_TOKEN_FILE (made on first use)."""
    return run_time_secret(Path(settings.METRICS_TOKEN_FILE), settings.METRICS_TOKEN)


def metrics_token_valid(request: HttpRequest) -> bool:
    """True when the request carries `Authorization: Bearer <token>` with the scrape token (constant-time)."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented or len(presented) > 512:
        return False
    return hmac.compare_digest(presented.strip().encode(), metrics_token())
