"""GET /metrics: the fleet's gauges, computed at scrape time, and the web processes' request histograms.

Gauges come from a custom collector that runs a handful of aggregate queries per scrape (never one per row), so a
scrape costs the same for ten devices or a million rows of deployments: rollouts by status; waves of active
rollouts by status and each active rollout's current wave; deployments of active rollouts by rollout, kind and
status; devices by status and hardware model (with drifted and not-seen ones); the telemetry batch queue; open
audit findings. Celery's broker queue and Temporal's task queues are not scraped here: Redis/RabbitMQ and Temporal
export their own metrics (README "Metrics and Grafana").

Access: only with `Authorization: Bearer <token>` (ota_project.metrics.metrics_token); anything else is answered
401 and counted as an `api_auth_failed` security event. The endpoint is never linked from a page.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, Min, Q
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from approvals.audit.choices import AuditKind, FindingSeverity, SecurityEventKind
from approvals.audit.models import AuditFinding
from approvals.audit.security import security_event
from devices.choices import DeviceStatus
from devices.models import DRIFT_Q, Device, HardwareModel, TelemetryBatch
from ota_project.metrics import METRICS_CONTENT_TYPE, metrics_token_valid, process_metrics
from rollouts.choices import ROLLOUT_ACTIVE, DeploymentStatus, RolloutStatus, WaveStatus
from rollouts.models import Deployment, Rollout, Wave


class FleetCollector(Collector):
    """The fleet's gauges from a few aggregate queries (one scrape, one snapshot)."""

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        yield from self._rollouts()
        yield from self._deployments()
        yield from self._devices()
        yield from self._queues()
        yield from self._findings()
        duration = GaugeMetricFamily(
            "ota_metrics_collect_seconds", "Time the last scrape spent computing the fleet's gauges."
        )
        duration.add_metric([], time.perf_counter() - started)
        yield duration

    def _rollouts(self) -> Iterator[Metric]:
        by_status = dict(
            Rollout.objects.order_by().values_list("status").annotate(n=Count("id")).values_list("status", "n")
        )
        rollouts = GaugeMetricFamily("ota_rollouts", "Rollouts by status.", labels=["status"])
        for status in RolloutStatus.values:
            rollouts.add_metric([status], by_status.get(status, 0))
        yield rollouts
        waves = GaugeMetricFamily("ota_waves", "Waves of active rollouts by status.", labels=["status"])
        wave_counts = dict(
            Wave.objects.filter(rollout__status__in=ROLLOUT_ACTIVE)
            .order_by()
            .values_list("status")
            .annotate(n=Count("id"))
            .values_list("status", "n")
        )
        for status in WaveStatus.values:
            waves.add_metric([status], wave_counts.get(status, 0))
        yield waves
        current = GaugeMetricFamily(
            "ota_rollout_current_wave",
            "Index of the current wave of each active rollout (0 is the pilot).",
            labels=["rollout", "release", "status"],
        )
        active = Rollout.objects.filter(status__in=ROLLOUT_ACTIVE).order_by("pk")
        for pk, version, status, wave in active.values_list("pk", "release__version", "status", "current_wave"):
            current.add_metric([str(pk), version, status], wave)
        yield current

    def _deployments(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "ota_deployments",
            "Device deployments of active rollouts by rollout, kind (update, rollback) and status.",
            labels=["rollout", "kind", "status"],
        )
        rows = (
            Deployment.objects.filter(rollout__status__in=ROLLOUT_ACTIVE)
            .order_by()
            .values_list("rollout_id", "kind", "status")
            .annotate(n=Count("id"))
        )
        seen: set[tuple[int, str]] = set()
        counts: dict[tuple[int, str, str], int] = {}
        for rollout_id, kind, status, n in rows:
            counts[(rollout_id, kind, status)] = n
            seen.add((rollout_id, kind))
        for rollout_id, kind in sorted(seen):
            for status in DeploymentStatus.values:
                gauge.add_metric([str(rollout_id), kind, status], counts.get((rollout_id, kind, status), 0))
        yield gauge

    def _devices(self) -> Iterator[Metric]:
        stale_before = timezone.now() - timedelta(days=int(settings.OTA_AUDIT_STALE_DEVICE_DAYS))
        rows = (
            Device.objects.order_by()
            .values_list("hardware_model_id", "status")
            .annotate(
                n=Count("id"),
                drifted=Count("id", filter=DRIFT_Q),
                stale=Count(
                    "id",
                    filter=Q(last_seen_at__lt=stale_before) | Q(last_seen_at__isnull=True, created_at__lt=stale_before),
                ),
            )
        )
        models = dict(HardwareModel.objects.values_list("pk", "name"))
        devices = GaugeMetricFamily(
            "ota_devices", "Devices by status and hardware model.", labels=["status", "hardware_model"]
        )
        drifted = GaugeMetricFamily(
            "ota_devices_drifted",
            "Devices whose last report differs from the inventory's installed version, by hardware model.",
            labels=["hardware_model"],
        )
        stale = GaugeMetricFamily(
            "ota_devices_not_seen",
            "Active or quarantined devices not seen for OTA_AUDIT_STALE_DEVICE_DAYS, by hardware model.",
            labels=["hardware_model"],
        )
        per_model: dict[int, dict[str, int]] = {pk: {} for pk in models}
        drift_by_model: dict[int, int] = dict.fromkeys(models, 0)
        stale_by_model: dict[int, int] = dict.fromkeys(models, 0)
        for model_id, status, n, drift, not_seen in rows:
            per_model.setdefault(model_id, {})[status] = n
            drift_by_model[model_id] = drift_by_model.get(model_id, 0) + drift
            if status in (DeviceStatus.ACTIVE, DeviceStatus.QUARANTINED):
                stale_by_model[model_id] = stale_by_model.get(model_id, 0) + not_seen
        for model_id, name in sorted(models.items(), key=lambda item: item[1]):
            for status in DeviceStatus.values:
                devices.add_metric([status, name], per_model[model_id].get(status, 0))
            drifted.add_metric([name], drift_by_model[model_id])
            stale.add_metric([name], stale_by_model[model_id])
        yield devices
        yield drifted
        yield stale

    def _queues(self) -> Iterator[Metric]:
        waiting = TelemetryBatch.objects.filter(processed_at__isnull=True).aggregate(
            n=Count("id"), oldest=Min("received_at")
        )
        batches = GaugeMetricFamily(
            "ota_telemetry_batches_unprocessed", "Telemetry batches received and not yet processed (the Celery queue)."
        )
        batches.add_metric([], waiting["n"])
        yield batches
        age = GaugeMetricFamily(
            "ota_telemetry_batch_oldest_unprocessed_seconds",
            "Age of the oldest unprocessed telemetry batch (0 when none waits).",
        )
        oldest = waiting["oldest"]
        age.add_metric([], (timezone.now() - oldest).total_seconds() if oldest is not None else 0.0)
        yield age

    def _findings(self) -> Iterator[Metric]:
        counts = dict(
            ((kind, severity), n)
            for kind, severity, n in AuditFinding.objects.filter(resolved_at__isnull=True)
            .order_by()
            .values_list("kind", "severity")
            .annotate(n=Count("id"))
        )
        gauge = GaugeMetricFamily(
            "ota_audit_findings_open",
            "Open findings of the recurring audits by audit and severity.",
            labels=["audit", "severity"],
        )
        for kind in AuditKind.values:
            for severity in FindingSeverity.values:
                gauge.add_metric([kind, severity], counts.get((kind, severity), 0))
        yield gauge


def fleet_metrics() -> bytes:
    """The fleet's gauges in the Prometheus text format (a fresh registry per scrape: nothing is cached)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector())
    return generate_latest(registry)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus scrape endpoint: the bearer token, then the request histograms and the fleet's gauges."""
    if not metrics_token_valid(request):
        security_event(
            kind=SecurityEventKind.API_AUTH_FAILED,
            source="metrics",
            message="A /metrics scrape without the metrics token.",
            address=str(request.META.get("REMOTE_ADDR", "") or ""),
        )
        response = HttpResponse("Authentication required.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body = process_metrics() + fleet_metrics()
    response = HttpResponse(body, content_type=METRICS_CONTENT_TYPE)
    response["Cache-Control"] = "no-store"
    return response
