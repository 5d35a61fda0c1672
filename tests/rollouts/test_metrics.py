"""GET /metrics: bearer token only; the fleet's gauges on a known dataset, parsed with Prometheus's own parser;
request histograms labelled by route name; worker files summed in multi-process mode."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from approvals.audit.choices import AuditKind, SecurityEventKind
from approvals.audit.findings import Finding, findings_sync
from approvals.audit.models import SecurityEvent
from devices.choices import DeviceStatus
from devices.models import Device, TelemetryBatch
from ota_project.metrics import process_metrics
from rollouts.choices import DeploymentKind, DeploymentStatus, RolloutStatus, WaveStatus
from rollouts.models import Deployment, Rollout, Wave
from tests.factories import ChangeRequestFactory, UserFactory

pytestmark = pytest.mark.django_db
TOKEN = "scrape-token-for-tests"


@pytest.fixture
def token(settings):
    settings.METRICS_TOKEN = TOKEN
    return TOKEN


def scrape(token: str = TOKEN) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert answer.status_code == 200, answer.content
    assert answer["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(answer.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def rollout(fleet, status: str, version: str | None = None) -> Rollout:
    release = fleet["new"]
    return Rollout.objects.create(
        change=ChangeRequestFactory.create(release=release, rollback_release=fleet["old"]), release=release,
        rollback_release=fleet["old"], plan={}, plan_hash="0" * 64, status=status,
        started_by=UserFactory.create(roles=["operator"]), current_wave=1 if status == RolloutStatus.RUNNING else 0,
    )  # fmt: skip


def test_metrics_refuse_scrapes_without_the_token_and_record_them(token):
    for header in ("", "Bearer wrong", f"Basic {token}"):
        answer = Client().get("/metrics", headers={"Authorization": header} if header else None)
        assert answer.status_code == 401 and answer["WWW-Authenticate"].startswith("Bearer")
        assert b"ota_" not in answer.content
    events = SecurityEvent.objects.filter(kind=SecurityEventKind.API_AUTH_FAILED, source="metrics")
    assert sum(event.count for event in events) == 3
    assert Client().post("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 405


def test_metrics_token_comes_from_a_run_time_file_when_no_environment_token(settings, tmp_path):
    settings.METRICS_TOKEN = ""
    settings.METRICS_TOKEN_FILE = tmp_path / "metrics_token"
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer guess").status_code == 401
    made = settings.METRICS_TOKEN_FILE.read_text().strip()
    assert len(made) >= 40 and oct(settings.METRICS_TOKEN_FILE.stat().st_mode & 0o777) == "0o600"
    assert Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {made}").status_code == 200


def test_gauges_show_the_known_fleet(fleet, token, settings):
    settings.OTA_AUDIT_STALE_DEVICE_DAYS = 7
    now = timezone.now()
    Device.objects.update(last_seen_at=now)
    devices = list(Device.objects.filter(hardware_model=fleet["model"]).order_by("pk"))
    Device.objects.filter(pk=devices[0].pk).update(status=DeviceStatus.QUARANTINED, status_reason="tampered enclosure")
    Device.objects.filter(pk=devices[1].pk).update(reported_version="9.9", reported_at=now)  # drifted
    Device.objects.filter(pk__in=[devices[2].pk, devices[3].pk]).update(last_seen_at=now - timedelta(days=8))
    running = rollout(fleet, RolloutStatus.RUNNING)
    pilot = Wave.objects.create(rollout=running, index=0, name="pilot", status=WaveStatus.PROMOTED)
    Wave.objects.create(rollout=running, index=1, name="fleet", status=WaveStatus.RUNNING)
    for device, status in zip(devices[:5], ["succeeded", "succeeded", "failed", "offered", "installing"], strict=True):
        Deployment.objects.create(rollout=running, wave=pilot, device=device, release=fleet["new"], status=status)
    done = rollout(fleet, RolloutStatus.COMPLETED)
    done_wave = Wave.objects.create(rollout=done, index=0, name="all", status=WaveStatus.PROMOTED)
    Deployment.objects.create(
        rollout=done, wave=done_wave, device=devices[6], release=fleet["new"], status=DeploymentStatus.SUCCEEDED
    )  # finished rollouts are not in the deployment gauges
    rollout(fleet, RolloutStatus.HALTED)
    TelemetryBatch.objects.create(device=devices[0], batch_id="b1", received_at=now - timedelta(seconds=120),
                                  sample_count=3)  # fmt: skip
    TelemetryBatch.objects.create(device=devices[0], batch_id="b2", received_at=now, sample_count=1, processed_at=now)
    findings_sync(
        kind=AuditKind.CERTIFICATES,
        findings=[Finding("device_certificate", "ab", "expired", "critical", "expired")],
        now=now,
    )

    samples = scrape()

    assert value(samples, "ota_rollouts", status="running") == 1
    assert value(samples, "ota_rollouts", status="completed") == 1
    assert value(samples, "ota_rollouts", status="halted") == 1
    assert value(samples, "ota_rollouts", status="aborted") == 0
    assert value(samples, "ota_waves", status="running") == 1 and value(samples, "ota_waves", status="promoted") == 1
    assert value(samples, "ota_rollout_current_wave", rollout=str(running.pk), release="1.1.0", status="running") == 1
    for status, count in (("succeeded", 2), ("failed", 1), ("offered", 1), ("installing", 1), ("pending", 0)):
        assert value(samples, "ota_deployments", rollout=str(running.pk), kind="update", status=status) == count
    assert not any(name == "ota_deployments" and ("rollout", str(done.pk)) in labels for name, labels in samples)
    assert value(samples, "ota_devices", status="active", hardware_model="tcu-4g-r2") == 19
    assert value(samples, "ota_devices", status="quarantined", hardware_model="tcu-4g-r2") == 1
    assert value(samples, "ota_devices", status="active", hardware_model="tcu-5g-r1") == 80
    assert value(samples, "ota_devices", status="revoked", hardware_model="tcu-5g-r1") == 0
    assert value(samples, "ota_devices_drifted", hardware_model="tcu-4g-r2") == 1
    assert value(samples, "ota_devices_not_seen", hardware_model="tcu-4g-r2") == 2
    assert value(samples, "ota_devices_not_seen", hardware_model="tcu-5g-r1") == 0
    assert value(samples, "ota_telemetry_batches_unprocessed") == 1
    assert 119 <= value(samples, "ota_telemetry_batch_oldest_unprocessed_seconds") < 300
    assert value(samples, "ota_audit_findings_open", audit="certificates", severity="critical") == 1
    assert value(samples, "ota_audit_findings_open", audit="stale_devices", severity="warning") == 0
    assert value(samples, "ota_metrics_collect_seconds") > 0
    assert DeploymentKind.ROLLBACK not in {
        dict(labels).get("kind") for name, labels in samples if name == "ota_deployments"
    }


def test_request_latency_is_labelled_by_route_name_never_by_raw_path(token, operator):
    before = scrape()
    key = (
        "ota_http_request_duration_seconds_count",
        (("method", "GET"), ("route", "web-rollouts:kpis"), ("status", "2xx")),
    )
    client = Client()
    client.force_login(operator)
    assert client.get("/rollouts/kpis/").status_code == 200
    assert client.get("/no/such/page/12345/").status_code == 404
    assert client.get("/fleet/devices/TCU-NOPE/").status_code == 404
    after = scrape()
    assert after[key] == before.get(key, 0) + 1
    routes = {dict(labels).get("route") for name, labels in after if name.startswith("ota_http_request_duration")}
    assert "unmatched" in routes and "web-fleet:device" in routes
    assert not any("/" in route for route in routes if route)  # never a raw path: bounded cardinality


def test_multiprocess_mode_sums_every_worker_files(tmp_path):
    """Two processes observe with PROMETHEUS_MULTIPROC_DIR set; one scrape reads both (gunicorn workers)."""
    code = (
        "from prometheus_client import Histogram\n"
        "h = Histogram('ota_http_request_duration_seconds', 'x', ['route', 'method', 'status'])\n"
        "h.labels('api:me', 'GET', '2xx').observe(0.01)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _worker in range(2):
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    families = {f.name: f for f in text_string_to_metric_families(process_metrics(tmp_path).decode())}
    counts = [
        s.value for s in families["ota_http_request_duration_seconds"].samples
        if s.name.endswith("_count") and s.labels["route"] == "api:me"
    ]  # fmt: skip
    assert counts == [2.0]


def test_the_grafana_dashboard_uses_only_metrics_the_endpoint_exposes(fleet, token, operator):
    import json
    import re
    from pathlib import Path

    running = rollout(fleet, RolloutStatus.RUNNING)
    wave = Wave.objects.create(rollout=running, index=0, name="pilot", status=WaveStatus.RUNNING)
    Deployment.objects.create(rollout=running, wave=wave, device=Device.objects.order_by("pk")[0], release=fleet["new"])
    client = Client()
    client.force_login(operator)
    client.get("/rollouts/kpis/")
    exposed = {name for name, _labels in scrape()}
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docs/grafana/ota-dashboard.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in re.findall(r"\bota_[a-z_]+", target["expr"])
    }
    assert len(used) >= 10 and used <= exposed, used - exposed
