"""Demo data for the embedded default: users for every role, a fleet, releases, changes in several states and a
rollout history (one completed, one halted and rolled back).

Everything goes through the same services people use, so the demo's decision record is a real one.
Idempotent: a second run only prints the users again.
"""

from __future__ import annotations

import json
import random
import secrets
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from approvals import services as change_services
from approvals.choices import ChangeStatus
from approvals.models import ChangeRequest, ChangeTemplate
from approvals.plans import RolloutPlan, default_plan
from devices import services as device_services
from devices.choices import SIMULATED_TAG
from devices.firmware.models import FirmwareRelease
from devices.firmware.services import release_create_from_chunks
from devices.importer import import_rows
from devices.models import Device
from ota_project.roles import Role
from rollouts.demo import history as demo_history


@dataclass(frozen=True)
class DemoUser:
    username: str
    roles: tuple[str, ...]
    superuser: bool = False


DEMO_USERS = (
    DemoUser("rita", (Role.REQUESTER,)),
    DemoUser("rob", (Role.REQUESTER,)),
    DemoUser("carl", (Role.CAB_MEMBER,)),
    DemoUser("cora", (Role.CAB_MEMBER, Role.CAB_CHAIR)),
    DemoUser("eddie", (Role.CAB_MEMBER, Role.EMERGENCY_CAB)),
    DemoUser("sam", (Role.SECURITY_OFFICER,)),
    DemoUser("olga", (Role.OPERATOR,)),
    DemoUser("anna", (Role.AUDITOR,)),
    DemoUser("admin", (), superuser=True),
)
HARDWARE_MODELS = (
    ("tcu-4g-r2", "tcu-4g", "r2", "ecdsa-p256", ["boot_ok", "modem_attach", "gnss_fix"], 150),
    ("tcu-5g-r1", "tcu-5g", "r1", "ed25519", ["boot_ok", "modem_attach", "can_bus"], 100),
    ("tcu-sat-r1", "tcu-sat", "r1", "hybrid-ecdsa-p256+ml-dsa-65", ["boot_ok", "backend_reachable"], 50),
)
REGIONS = (
    ("eu-west", "Western Europe", "Europe/Paris"),
    ("eu-north", "Nordics", "Europe/Stockholm"),
    ("na-east", "North America East", "America/New_York"),
    ("apac", "Asia Pacific", "Asia/Singapore"),
)
# `make run` runs a simulated fleet of these devices (simulate_fleet picks the tag); one approved change targets
# exactly them, with short soaks, so a newcomer can start it and watch it live.
# The security officer who runs the development key ceremony of `seed_demo` (image repository root).
DEMO_SECURITY_OFFICER = "sam"
SIMULATED_MODEL = "tcu-5g-r1"
SIMULATED_DEVICES = 25
DEMO_POLL_SECONDS = 15
VEHICLE_TYPES = ("heavy_truck", "light_commercial", "bus", "passenger_car")


def _credentials_file() -> Path:
    return Path(settings.DATA_DIR) / "demo-credentials.txt"


def _ensure_users() -> dict[str, tuple[Any, str]]:
    """Create the demo users once with random passwords kept in .data/ (never committed)."""
    path = _credentials_file()
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    users = {}
    user_model = get_user_model()
    for demo in DEMO_USERS:
        password = known.get(demo.username) or secrets.token_urlsafe(12)
        user, created = user_model.objects.get_or_create(
            username=demo.username,
            defaults={
                "is_staff": demo.superuser,
                "is_superuser": demo.superuser,
                # The change timers' e-mails (reminders, escalations, held starts) print on the console in the demo.
                "email": f"{demo.username}@demo.invalid",
            },
        )
        if created or demo.username not in known:
            user.set_password(password)
            user.save()
        user.groups.set([Group.objects.get(name=role) for role in demo.roles])
        known[demo.username] = password
        users[demo.username] = (user, password)
    path.write_text(json.dumps(known, indent=2))
    path.chmod(0o600)
    return users


def _release(actor: Any, version: str, counter: int, models: list[str], seed: int) -> FirmwareRelease:
    return release_create_from_chunks(
        actor=actor,
        chunks=[random.Random(seed).randbytes(256 * 1024)],
        version=version,
        release_counter=counter,
        hardware_models=models,
        artifact_name=f"tcu-fw-{version}.bin",
        source_revision=f"{seed:07x}a1b2c3d4e5f6",
        builder="demo-builder-1",
        sbom_ref=f"sha256:{'0' * 63}{seed}",
        notes=f"Demo release {version}",
    )


def _fleet(operator: Any) -> None:
    for name, family, revision, scheme, checks, _ in HARDWARE_MODELS:
        device_services.hardware_model_create(
            actor=operator,
            name=name,
            family=family,
            revision=revision,
            signing_scheme=scheme,
            validation_checks=checks,
            partition_layout={"scheme": "ab", "slots": ["a", "b"], "slot_size_bytes": 256 * 1024 * 1024},
        )
    for code, name, zone in REGIONS:
        # The demo's devices poll often, so a newcomer sees offers taken within seconds (production: minutes).
        device_services.region_create(
            actor=operator, code=code, name=name, time_zone=zone, poll_interval_seconds=DEMO_POLL_SECONDS
        )
    rng = random.Random(7)
    rows = []
    number = 0
    for name, _, _, _, _, count in HARDWARE_MODELS:
        for i in range(count):
            number += 1
            rows.append(
                (
                    number,
                    {
                        "serial": f"TCU{number:08d}",
                        "hardware_model": name,
                        "region": REGIONS[rng.randrange(len(REGIONS))][0],
                        "vehicle_type": rng.choice(VEHICLE_TYPES),
                        "usage_profile": rng.choice(["urban", "highway", "mixed", "depot"]),
                        "tags": (["pilot"] if i % 15 == 0 else [])
                        + ([SIMULATED_TAG] if name == SIMULATED_MODEL and i < SIMULATED_DEVICES else []),
                        "network_capabilities": ["lte", "satellite"] if name == "tcu-sat-r1" else ["lte"],
                        "installed_version": "1.0.0",
                        "installed_release_counter": 1,
                    },
                )
            )
    report = import_rows(actor=operator, rows=rows, sha256="demo-fleet")
    if report.errors:
        raise RuntimeError(f"demo fleet rows are invalid: {report.errors[:5]}")
    now = timezone.now()
    for device in Device.objects.order_by("serial")[5:10]:
        device_services.device_record_report(device=device, version="1.0.1", release_counter=1, at=now)
    for device in Device.objects.order_by("-serial")[:2]:
        device_services.device_quarantine(actor=operator, device=device, reason="Enclosure tamper switch tripped")


def _live_demo_plan() -> RolloutPlan:
    """Minutes instead of hours: a pilot gate to promote by hand, then two automatic waves."""
    plan = default_plan()
    waves = tuple(
        # the live fleet is 25 devices
        replace(wave, soak_seconds=soak, min_sample=5 if wave.name == "fleet" else 2)
        for wave, soak in zip(plan.waves, (60, 60, 120), strict=True)
    )
    return replace(plan, waves=waves, monitor_interval_seconds=10)


def _changes(users: dict[str, Any]) -> tuple[ChangeRequest, ChangeRequest]:
    """Changes in every state of the CAB's life cycle; returns two approved ones for the rollout history."""
    rita, rob = users["rita"], users["rob"]
    old = FirmwareRelease.objects.get(version="1.0.0")
    new = FirmwareRelease.objects.get(version="1.1.0")
    now = timezone.now()
    answers = {
        "safety_relevant": False,
        "component": "connectivity",
        "tested_on_all_models": True,
        "rollback_tested": True,
        "security_fix": False,
    }
    base = {
        "justification": "Units lose LTE after a tunnel handover and need a reboot to recover.",
        "release": new,
        "rollback_release": old,
        "impact_analysis": "One reboot per unit, scheduled while parked.",
        "test_evidence_summary": "HIL run #412 on both hardware models; 72 h soak on 20 bench units.",
        "requested_window_start": now - timedelta(hours=1),
        "requested_window_end": now + timedelta(days=14),
        "rollout_plan": default_plan(),
        "risk_answers": answers,
    }

    def file(author: Any, title: str, scope: dict[str, Any], **extra: Any) -> ChangeRequest:
        return change_services.change_create(actor=author, title=title, target_scope=scope, **{**base, **extra})

    def submit(change: ChangeRequest) -> ChangeRequest:
        return change_services.change_submit(actor=change.author, change=change)

    file(rita, "Draft: GNSS cold-start improvement", {"hardware_models": ["tcu-4g-r2"], "regions": ["apac"]})
    submit(
        file(rob, "Modem reconnect fix for the Nordics", {"hardware_models": ["tcu-5g-r1"], "regions": ["eu-north"]})
    )
    halfway = submit(
        file(
            rita,
            "Modem reconnect fix for 4G units in Western Europe",
            {"hardware_models": ["tcu-4g-r2"], "regions": ["eu-west"]},
        )
    )
    change_services.approval_grant(actor=users["carl"], change=halfway, revision=1, comment="Soak data convincing.")
    approved = submit(
        file(
            rita,
            "Modem reconnect fix for the simulated 5G test fleet",
            {"tags": [SIMULATED_TAG]},
            rollout_plan=_live_demo_plan(),
        )
    )
    change_services.approval_grant(actor=users["carl"], change=approved, revision=1)
    change_services.approval_grant(actor=users["cora"], change=approved, revision=1, comment="OK for this window.")
    rejected = submit(
        file(
            rob,
            "Bootloader refresh for all 4G units",
            {"hardware_models": ["tcu-4g-r2"]},
            risk_answers={**answers, "component": "bootloader", "rollback_tested": False},
        )
    )
    change_services.approval_reject(
        actor=users["cora"], change=rejected, revision=1, comment="Bootloader changes need a tested rollback first."
    )
    sent_back = submit(
        file(rob, "Connectivity fix for APAC 5G units", {"hardware_models": ["tcu-5g-r1"], "regions": ["apac"]})
    )
    change_services.approval_request_changes(
        actor=users["carl"], change=sent_back, revision=1, comment="Attach the HIL report for the APAC carrier profile."
    )
    emergency = submit(
        file(
            rita,
            "Emergency: certificate pinning fix (CVE-2026-0420)",
            {"hardware_models": ["tcu-4g-r2"], "tags": ["pilot"]},
            change_type="emergency",
            emergency_reason="Exploited in the wild; pinning bypass.",
            risk_answers={**answers, "security_fix": True},
        )
    )
    change_services.approval_grant(actor=users["eddie"], change=emergency, revision=1, comment="Approved on call.")
    ChangeTemplate.objects.get_or_create(
        name="Monthly connectivity patch",
        defaults={
            "description": "Pre-approved monthly modem/connectivity patch for the stable channel, up to moderate risk."
        },
    )

    def approve(change: ChangeRequest) -> ChangeRequest:
        for approver in ("carl", "cora", "sam"):  # as many as the policy asks for this change's risk
            if change.status != ChangeStatus.APPROVED:
                change = change_services.approval_grant(
                    actor=users[approver], change=change, revision=1, comment="Evidence reviewed."
                )
        return change

    done = approve(
        submit(
            file(
                rob,
                "Modem reconnect fix for 4G units in North America",
                {"hardware_models": ["tcu-4g-r2"], "regions": ["na-east"]},
            )
        )
    )
    bad = approve(
        submit(
            file(
                rob,
                "Modem power-saving tweak for 4G units outside North America",
                {"hardware_models": ["tcu-4g-r2"], "regions": ["apac", "eu-west", "eu-north"]},
                release=FirmwareRelease.objects.get(version="1.2.0"),
                justification="Cuts idle modem power draw by 18% on parked vehicles.",
            )
        )
    )
    return done, bad


def seed_demo() -> tuple[bool, dict[str, tuple[Any, str]]]:
    """Load the demo data unless it is there already; return (created, users with passwords)."""
    with transaction.atomic():
        users = _ensure_users()
        if FirmwareRelease.objects.exists():
            return False, users
        plain = {name: user for name, (user, _) in users.items()}
        _fleet(plain["olga"])
        _release(plain["rita"], "1.0.0", 1, [m[0] for m in HARDWARE_MODELS], seed=1)
        _release(plain["rob"], "1.1.0", 1, ["tcu-4g-r2", "tcu-5g-r1"], seed=2)
        _release(plain["rob"], "1.2.0", 1, ["tcu-4g-r2"], seed=3)
        done, bad = _changes(plain)
        demo_history.completed_rollout(operator=plain["olga"], change=done)
        demo_history.halted_rollout(operator=plain["olga"], change=bad, failing_share=0.5, seed=11)
        return True, users
