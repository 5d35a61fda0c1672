"""Benchmark fixtures: a synthetic fleet of N devices and an approved change over it, built fast but through
the services where the rules live (devices are bulk-inserted: the importer is benchmarked elsewhere)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from approvals import services as change_services
from approvals.plans import default_plan, plan_parse
from devices.firmware.services import release_create
from devices.firmware.storage import receive_stream, release_temp
from devices.models import Device, HardwareModel, Region, Tag

ANSWERS = {
    "safety_relevant": False,
    "component": "application",
    "tested_on_all_models": True,
    "rollback_tested": True,
    "security_fix": False,
}


def bench_user(name: str, *roles: str) -> Any:
    user, _ = get_user_model().objects.get_or_create(username=name)
    user.groups.set(Group.objects.filter(name__in=roles))
    return user


def build_fleet(devices: int, *, tag: str, single_wave: bool = False) -> dict[str, Any]:
    """`devices` active devices on 1.0.0 (1% tagged pilot), two releases, and an approved change over them."""
    model, _ = HardwareModel.objects.get_or_create(
        name=f"bench-{tag}", defaults={"family": "bench", "revision": "r1", "partition_layout": {"scheme": "ab"}}
    )
    region, _ = Region.objects.get_or_create(code="bench", defaults={"name": "Bench", "time_zone": "UTC"})
    pilot, _ = Tag.objects.get_or_create(name="pilot")
    Device.objects.bulk_create(
        (
            Device(
                serial=f"B{tag}-{i:07d}",
                hardware_model=model,
                region=region,
                vehicle_type="heavy_truck",
                installed_version="1.0.0",
                installed_release_counter=1,
            )
            for i in range(devices)
        ),
        batch_size=5000,
    )
    ids = list(Device.objects.filter(hardware_model=model).values_list("pk", flat=True)[: max(1, devices // 100)])
    Device.tags.through.objects.bulk_create([Device.tags.through(device_id=i, tag_id=pilot.pk) for i in ids])
    requester = bench_user("bench-requester", "requester")
    releases = []
    for version, counter in (("1.0.0", 1), (f"2.0.0-{tag}", 1)):
        release = (
            _release(requester, version, counter, model.name) if version != "1.0.0" else _old_release(requester, model)
        )
        releases.append(release)
    gate = {
        "soak_seconds": 20,
        "min_sample": 1,
        "success_threshold": 0.9,
        "failure_threshold": 0.1,
        "promotion": "auto",
    }
    waves = [
        {"name": "pilot", "cohort": {"kind": "pilot"}, **gate},
        *[{"name": f"w{i}", "cohort": {"kind": "percent", "value": 25}, **gate} for i in (1, 2, 3)],
        {"name": "rest", "cohort": {"kind": "percent", "value": 100}, **gate},
    ]
    plan = plan_parse(
        {
            "waves": waves[-1:] if single_wave else waves,
            "abort_policy": default_plan().abort_policy,
            "monitor_interval_seconds": 1,
        }
    )
    now = timezone.now()
    change = change_services.change_create(
        actor=requester,
        title=f"bench {tag}",
        justification="benchmark",
        release=releases[1],
        rollback_release=releases[0],
        target_scope={"hardware_models": [model.name]},
        impact_analysis="none",
        requested_window_start=now - timedelta(hours=1),
        requested_window_end=now + timedelta(days=1),
        rollout_plan=plan,
        risk_answers=ANSWERS,
    )
    change = change_services.change_submit(actor=requester, change=change)
    for name in ("bench-cab-1", "bench-cab-2", "bench-cab-3"):
        if change.status != "approved":
            change = change_services.approval_grant(
                actor=bench_user(name, "cab_member", "security_officer"), change=change, revision=change.revision
            )
    return {"change": change, "model": model, "operator": bench_user("bench-operator", "operator")}


def _release(actor: Any, version: str, counter: int, model: str) -> Any:
    received = receive_stream([version.encode() * 64], max_bytes=1 << 20)
    try:
        return release_create(
            actor=actor,
            version=version,
            release_counter=counter,
            hardware_models=[model],
            received=received,
            artifact_name=f"bench-{version}.bin",
            source_revision="abcdef0",
            builder="bench",
        )
    finally:
        release_temp(received)


def _old_release(actor: Any, model: HardwareModel) -> Any:
    from devices.firmware.models import FirmwareRelease

    existing = FirmwareRelease.objects.filter(version="1.0.0").first()
    if existing:
        existing.hardware_models.add(model)
        return existing
    return _release(actor, "1.0.0", 1, model.name)
