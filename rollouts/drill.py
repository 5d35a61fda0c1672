"""Fleet drills: rehearse a rollout end to end on the real stack with a simulated fleet and real network faults.

A drill provisions its own world through the services people use (drill users for every role, hardware models,
regions, devices with credentials, releases from real images, a change request with a time-compressed plan,
approved by two CAB members and the security officer), starts the real stack (Temporal dev server, worker, web
processes), puts the fault proxy and N reference agents in front of it, starts the rollout as the drill operator
and watches it to its end. The report is computed from the database and from the devices' own disks, never
from what the scenario intended. Time is compressed by configuration only (soak, deadlines, poll interval).

This module is where the drill crosses apps (approvals, devices, rollouts, workflows); devices.drill holds the
app-independent parts (fleet, proxy, faults, stack, report).
"""

from __future__ import annotations

import hashlib
import math
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import close_old_connections
from django.db.models import Count, Max
from django.test.utils import override_settings
from django.utils import timezone

from approvals import services as change_services
from approvals.choices import ChangeStatus
from approvals.records import chain_verify
from devices import services as device_services
from devices.credentials import device_credential_issue
from devices.drill.faults import DeviceFaults, plan_fates
from devices.drill.fleet import DeviceSpec, Fleet, FleetSettings
from devices.drill.progress import ProgressBar
from devices.drill.proxy import FaultProxy, NetworkFaults
from devices.drill.report import assemble, fleet_facts
from devices.drill.stack import Stack
from devices.importer import import_rows
from devices.models import Device, TelemetrySample
from ota_project.net import free_port
from ota_project.roles import Role
from rollouts import rollout_services
from rollouts.choices import (
    DEPLOYMENT_TERMINAL,
    ROLLOUT_TERMINAL,
    DeploymentKind,
    DeploymentStatus,
    RolloutStatus,
    WaveStatus,
)
from rollouts.models import Deployment, FirmwareRelease, Rollout
from rollouts.services import release_create_from_chunks

SETTLE_SECONDS = 120.0  # after the rollout ended: time for the last devices to report
PROGRESS_SECONDS = 1.0
START_SECONDS = 90.0  # a rollout still scheduled after this long: the workflow is failing (see the worker log)
ROLLBACK_REASON = "Drill: operator rolls back mid-rollout (rollback rehearsal)"
HELD_REASON = "Drill: the rollout was held as inconclusive; the drill accepts no partial evidence"


@dataclass(frozen=True)
class Scenario:
    """A drill scenario: its faults and what the operator does."""

    name: str
    summary: str
    default_devices: int
    network: NetworkFaults = NetworkFaults()
    faults: DeviceFaults = DeviceFaults()
    bad_release: bool = False
    operator_rollback: bool = False
    # Soak past the download deadline, so devices that never show up are timed out before a wave is judged.
    soak_covers_deadline: bool = False


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("healthy", "a good release on a healthy fleet and network: every device updates", 500),
        Scenario(
            "bad-release",
            "the new image fails its boot health check on 30% of one hardware model: the pilot halts and rolls back",
            2000,
            faults=DeviceFaults(bad_boot_share=0.3),
            bad_release=True,
        ),
        Scenario(
            "flaky-network",
            "10% of connections dropped, 300 ms latency with jitter, 20% of downloads cut mid-stream",
            500,
            network=NetworkFaults(
                latency_seconds=0.3, jitter_seconds=0.2, drop_rate=0.1, cut_rate=0.2, cut_match=b"GET "
            ),
        ),
        Scenario("power-loss", "10% of the devices lose power during the install", 500, faults=DeviceFaults(0.1)),
        Scenario(
            "offline-devices",
            "5% of the devices stay offline for the whole rollout: they time out and are listed",
            500,
            faults=DeviceFaults(offline_share=0.05),
            soak_covers_deadline=True,
        ),
        Scenario(
            "abort-rollback",
            "the operator rolls the rollout back in its second wave: every updated device returns to the old release",
            500,
            operator_rollback=True,
        ),
    )
}


class DrillError(RuntimeError):
    """The drill could not run (bad options, a part of the stack died, no outcome in time)."""


@dataclass
class DrillOptions:
    """What to run; everything time-related is derived from the fleet size unless given."""

    scenario: str
    devices: int
    seed: int = 1
    image_bytes: int | None = None
    poll_seconds: int | None = None
    web_processes: int = 2
    temporal_address: str | None = None  # None: start a dev server of the drill's own
    timeout_seconds: float = 900.0
    workdir: Path | None = None
    keep_workdir: bool = False
    say: Callable[[str], None] = lambda message: None
    progress: ProgressBar = field(default_factory=lambda: ProgressBar(enabled=False))


def validate_options(options: DrillOptions) -> Scenario:
    """The scenario, or DrillError naming what is wrong."""
    scenario = SCENARIOS.get(options.scenario)
    if scenario is None:
        raise DrillError(f"unknown scenario {options.scenario!r}; one of: {', '.join(SCENARIOS)}")
    if not 10 <= options.devices <= 5000:
        raise DrillError("--devices must be from 10 to 5000")
    if options.image_bytes is not None and not 1024 <= options.image_bytes <= 4 * 1024 * 1024:
        raise DrillError("--image-bytes must be from 1 KiB to 4 MiB")
    if options.poll_seconds is not None and not 1 <= options.poll_seconds <= 600:
        raise DrillError("--poll-seconds must be from 1 to 600")
    if not 1 <= options.web_processes <= 8:
        raise DrillError("--web-processes must be from 1 to 8")
    return scenario


# --- sizing: time compressed by configuration ------------------------------------------------------------------


def poll_seconds_for(devices: int) -> int:
    """Idle check-in interval: about 40 check-ins per second for the whole fleet, 2 to 30 s."""
    return max(2, min(30, math.ceil(devices / 40)))


def image_bytes_for(devices: int) -> int:
    return 256 * 1024 if devices <= 200 else 128 * 1024 if devices <= 1000 else 64 * 1024


def pilot_count(devices: int) -> int:
    return max(3, round(devices * 0.01))


def drill_plan(devices: int, poll: int, *, soak_covers_deadline: bool = False) -> dict[str, Any]:
    """pilot -> fleet, soaks of seconds, deadlines sized to the poll interval and the fleet."""
    pilots = pilot_count(devices)
    # Generous: the whole wave must be offered and downloaded within it (a pending deployment's deadline covers
    # both), at the rate this machine serves; only devices that never show up should miss it.
    download = max(120, 4 * poll + devices // 5)
    # A wave is judged at the end of its soak on at least min_sample finished devices: the soak covers one poll
    # interval (devices learn of the wave when they check in) plus an update's own time.
    soak = poll + (8 if devices <= 100 else 15)
    if soak_covers_deadline:
        download = max(30, 3 * poll + devices // 4)  # online devices must all make it; the offline ones time out
        soak = download + 5
    # A wave passes only when every device succeeded: a rollout that completes at 90% leaves the rest pending for
    # good (a completed rollout offers nothing more). Where devices are expected to stay away, the soak outlasts
    # the download deadline instead, so they are timed out (failures, within the 10% the plan tolerates) first.
    success = 0.9 if soak_covers_deadline else 1.0
    wave = {"soak_seconds": soak, "success_threshold": success, "failure_threshold": 0.1, "promotion": "auto"}
    # Two waves: the pilot (about 1%) gates the fleet. Every wave costs a poll interval of discovery and a soak,
    # and this machine's budget (1,000 devices in under 5 minutes) has room for the one gate that matters.
    waves = [
        {"name": "pilot", "cohort": {"kind": "pilot"}, "min_sample": min(pilots, 10), **wave},
        {"name": "fleet", "cohort": {"kind": "percent", "value": 100}, "min_sample": 5, **wave},
    ]
    return {
        "waves": waves,
        "abort_policy": "halt_and_rollback",
        "monitor_interval_seconds": 1 if devices <= 100 else 2,
        "deadlines": {"download_seconds": download, "install_seconds": 60 + poll, "confirm_seconds": 60 + poll},
        "retries": {"download": 3, "install": 1},
    }


# --- the drill's world, built through the services ---------------------------------------------------------------


@dataclass
class World:
    """What the drill provisioned."""

    run_id: str
    users: dict[str, Any]
    models: list[str]
    specs: list[DeviceSpec]
    pilot_serials: set[str]
    old: FirmwareRelease
    new: FirmwareRelease
    images: dict[str, bytes]
    change: Any
    device_ids: list[int]


def _user(run_id: str, name: str, role: str) -> Any:
    user = get_user_model().objects.create_user(username=f"drill-{run_id}-{name}", password=None)
    user.groups.set([Group.objects.get(name=role)])
    return user


def _release(actor: Any, version: str, counter: int, models: list[str], image: bytes, run_id: str) -> FirmwareRelease:
    return release_create_from_chunks(
        actor=actor,
        chunks=[image],
        version=version,
        release_counter=counter,
        hardware_models=models,
        artifact_name=f"drill-{run_id}-{version}.bin",
        source_revision=hashlib.sha1(f"{run_id}:{version}".encode()).hexdigest(),
        builder="fleet-drill",
        notes=f"Fleet drill {run_id}",
    )


def provision(options: DrillOptions, plan: dict[str, Any], say: Callable[[str], None]) -> World:
    """Users, hardware models, regions, devices with credentials, releases and an approved change."""
    run_id = secrets.token_hex(3)
    rng = random.Random(f"world:{options.seed}")
    users = {
        "requester": _user(run_id, "rita", Role.REQUESTER),
        "cab_1": _user(run_id, "carl", Role.CAB_MEMBER),
        "cab_2": _user(run_id, "cora", Role.CAB_MEMBER),
        "security": _user(run_id, "sam", Role.SECURITY_OFFICER),
        "operator": _user(run_id, "olga", Role.OPERATOR),
    }
    operator = users["operator"]
    models = [f"drill-{run_id}-tcu-4g", f"drill-{run_id}-tcu-5g"]
    for name in models:
        device_services.hardware_model_create(
            actor=operator,
            name=name,
            family=name.rsplit("-", 1)[0],
            revision="r1",
            partition_layout={"scheme": "ab", "slots": ["a", "b"], "slot_size_bytes": 64 * 1024 * 1024},
        )
    regions = [(f"drill-{run_id}-eu", "Europe/Paris"), (f"drill-{run_id}-na", "America/New_York")]
    for code, zone in regions:
        device_services.region_create(actor=operator, code=code, name=f"Drill {code}", time_zone=zone)
    size = options.image_bytes or image_bytes_for(options.devices)
    images = {
        "old": random.Random(f"old:{options.seed}").randbytes(size),
        "new": random.Random(f"new:{options.seed}:{run_id}").randbytes(size),
    }
    old_version, new_version = f"1.0.0-drill.{run_id}", f"1.1.0-drill.{run_id}"
    pilots = pilot_count(options.devices)
    stride = options.devices / pilots
    pilot_numbers = {int(i * stride) for i in range(pilots)}
    rows = []
    for number in range(options.devices):
        rows.append(
            (
                number + 1,
                {
                    "serial": f"DRILL-{run_id}-{number:05d}",
                    "hardware_model": models[0] if number % 5 < 3 else models[1],
                    "region": regions[number % 2][0],
                    "vehicle_type": rng.choice(["heavy_truck", "light_commercial", "bus", "passenger_car"]),
                    "tags": ["pilot"] if number in pilot_numbers else [],
                    "network_capabilities": ["lte"],
                    "installed_version": old_version,
                    "installed_release_counter": 1,
                },
            )
        )
    report = import_rows(actor=operator, rows=rows, sha256=hashlib.sha256(f"drill:{run_id}".encode()).hexdigest())
    if report.errors:
        raise DrillError(f"the drill's device rows are invalid: {report.errors[:3]}")
    say(f"provisioned {options.devices} devices ({pilots} pilots) on {', '.join(models)}")
    specs = []
    device_ids = []
    for device in Device.objects.filter(hardware_model__name__in=models).select_related("hardware_model"):
        secret = device_credential_issue(actor=operator, device=device)
        specs.append(DeviceSpec(device.serial, secret, device.hardware_model.name, old_version, 1))
        device_ids.append(device.pk)
    specs.sort(key=lambda spec: spec.serial)
    pilot_serials = {row["serial"] for number, row in rows if "pilot" in row["tags"]}
    say(f"issued {len(specs)} device credentials")
    requester = users["requester"]
    old = _release(requester, old_version, 1, models, images["old"], run_id)
    new = _release(requester, new_version, 2, models, images["new"], run_id)
    now = timezone.now()
    change = change_services.change_create(
        actor=requester,
        title=f"Fleet drill {run_id}: {options.scenario}",
        justification="Rollback drill: rehearse the rollout and the recovery path on a simulated fleet.",
        release=new,
        rollback_release=old,
        target_scope={"hardware_models": models},
        impact_analysis="Simulated fleet only; one reboot per simulated unit.",
        test_evidence_summary="Drill images generated for this run.",
        requested_window_start=now - timedelta(minutes=5),
        requested_window_end=now + timedelta(days=1),
        rollout_plan=plan,
        risk_answers={
            "safety_relevant": False,
            "component": "connectivity",
            "tested_on_all_models": True,
            "rollback_tested": True,
            "security_fix": False,
        },
    )
    change = change_services.change_submit(actor=requester, change=change)
    for approver in ("cab_1", "cab_2", "security"):  # as many as the policy asks for this change's risk
        if change.status != ChangeStatus.APPROVED:
            change = change_services.approval_grant(
                actor=users[approver], change=change, revision=change.revision, comment="Drill evidence reviewed."
            )
    if change.status != ChangeStatus.APPROVED:
        raise DrillError(f"the drill change is {change.status} after every drill approver approved it")
    say(f"change {change.pk} approved; releases {old_version} -> {new_version}")
    return World(run_id, users, models, specs, pilot_serials, old, new, images, change, device_ids)


# --- running -------------------------------------------------------------------------------------------------------


class Drill:
    """One drill run: provision, start the stack and the fleet, run the rollout, report."""

    def __init__(self, options: DrillOptions):
        self.options = options
        self.scenario = validate_options(options)
        self.poll = options.poll_seconds or poll_seconds_for(options.devices)
        self.plan = drill_plan(options.devices, self.poll, soak_covers_deadline=self.scenario.soak_covers_deadline)
        self.say = options.say
        self.rollback_requested_at: Any = None
        self.held_reason = ""

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        workdir = self.options.workdir or Path(
            tempfile.mkdtemp(prefix="ota-drill-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
        )
        workdir.mkdir(parents=True, exist_ok=True)
        stack: Stack | None = None
        fleet: Fleet | None = None
        try:
            world = provision(self.options, self.plan, self.say)
            task_queue = f"ota-drill-{world.run_id}"
            stack = Stack(
                workdir,
                task_queue=task_queue,
                poll_seconds=self.poll,
                web_processes=self.options.web_processes,
                temporal_address=self.options.temporal_address,
            ).start(self.say)
            fleet = self._fleet(world, stack, workdir)
            fleet.start()
            self.say(f"fleet of {len(world.specs)} agents started behind {fleet.proxy.url}")
            with override_settings(
                TEMPORAL_ADDRESS=stack.temporal_address, TEMPORAL_TASK_QUEUE=task_queue, TEMPORAL_ENABLED=True
            ):
                rollout = rollout_services.rollout_start(actor=world.users["operator"], change=world.change)
                self.say(f"rollout {rollout.pk} started")
                self._watch(rollout.pk, world, stack, fleet, started)
            fleet.stop()
            if fleet.error is not None:
                raise DrillError(f"the fleet stopped with an error: {fleet.error!r}")
            report = self._report(world, fleet, rollout.pk)
            report["wall_clock_seconds"] = round(time.monotonic() - started, 1)
            return assemble(report)
        finally:
            self.options.progress.close()
            if fleet is not None:
                fleet.stop()
            if stack is not None:
                stack.stop()
            close_old_connections()
            if not self.options.keep_workdir and self.options.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)

    def _fleet(self, world: World, stack: Stack, workdir: Path) -> Fleet:
        faults = self.scenario.faults
        if self.scenario.bad_release:
            faults = replace(faults, bad_boot_model=world.models[0])
        fates = plan_fates(
            [(spec.serial, spec.hardware_model) for spec in world.specs],
            faults,
            seed=self.options.seed,
            strata=world.pilot_serials,
        )
        proxy = FaultProxy(
            [("127.0.0.1", port) for port in stack.web_ports],
            self.scenario.network,
            seed=self.options.seed,
            port=free_port(),
        )
        fleet_settings = FleetSettings(
            server_url=proxy.url,
            state_root=workdir / "devices",
            factory_image=world.images["old"],
            seed=self.options.seed,
            ramp_seconds=min(float(self.poll), 10.0),
            bad_sha256=hashlib.sha256(world.images["new"]).hexdigest() if self.scenario.bad_release else None,
        )
        return Fleet(world.specs, fates, fleet_settings, proxy=proxy)

    def _watch(self, rollout_id: int, world: World, stack: Stack, fleet: Fleet, started: float) -> None:
        """Follow the rollout to its end (and the fleet until it settled); the operator acts when the scenario says."""
        deadline = started + self.options.timeout_seconds
        ended_at: float | None = None
        watching = time.monotonic()
        online = sum(1 for device in fleet.devices if not device.fate.offline)
        while True:
            time.sleep(PROGRESS_SECONDS)
            close_old_connections()
            dead = stack.dead()
            if dead is not None:
                raise DrillError(f"{dead.name} died during the drill:\n{dead.log_tail()}")
            if fleet.error is not None:
                raise DrillError(f"the fleet stopped with an error: {fleet.error!r}")
            rollout = Rollout.objects.get(pk=rollout_id)
            deployments = Deployment.objects.filter(rollout_id=rollout_id)
            counts = dict(deployments.values_list("status").annotate(n=Count("id")).order_by())
            label = f"{rollout.status} wave {rollout.current_wave + 1}/{len(self.plan['waves'])}"
            done = counts.get(DeploymentStatus.SUCCEEDED, 0)
            self.options.progress.update(done, online, label)
            if rollout.status == RolloutStatus.SCHEDULED and time.monotonic() - watching > START_SECONDS:
                worker = next(child for child in stack.children if child.name == "worker")
                raise DrillError(f"the rollout never started its first wave; worker log:\n{worker.log_tail()}")
            if (
                rollout.status == RolloutStatus.AWAITING_PROMOTION
                and rollout.gate == "inconclusive"
                and not self.held_reason
            ):
                # The runbook: promote only on evidence one accepts. A drill accepts none: it aborts, and reports.
                self.held_reason = rollout.status_reason
                rollout_services.rollout_act(
                    actor=world.users["operator"], rollout=rollout, action="abort", reason=HELD_REASON
                )
                self.say(f"rollout held as inconclusive, the drill operator aborted it: {rollout.status_reason}")
            if self.scenario.operator_rollback and self.rollback_requested_at is None:
                self._maybe_roll_back(rollout, world)
            if rollout.status in ROLLOUT_TERMINAL:
                if ended_at is None:
                    ended_at = time.monotonic()
                    self.say(f"rollout {rollout.status}: {rollout.status_reason}")
                open_deployments = deployments.exclude(status__in=DEPLOYMENT_TERMINAL).count()
                if (open_deployments == 0 and fleet.busy() == 0) or time.monotonic() - ended_at > SETTLE_SECONDS:
                    self.options.progress.update(done, online, label, force=True)
                    return
            if time.monotonic() > deadline:
                raise DrillError(
                    f"no outcome within {self.options.timeout_seconds:.0f} s: rollout {rollout.status} "
                    f"wave {rollout.current_wave}: {rollout.status_reason}"
                )

    def _maybe_roll_back(self, rollout: Rollout, world: World) -> None:
        """The rehearsal: once the second wave has updated devices, the operator rolls back (the API's path)."""
        last_wave = len(self.plan["waves"]) - 1
        if rollout.status != RolloutStatus.RUNNING or rollout.current_wave < 1:
            return
        updated_in_wave = Deployment.objects.filter(
            rollout=rollout, wave__index=rollout.current_wave, status=DeploymentStatus.SUCCEEDED
        ).count()
        if rollout.current_wave < last_wave and updated_in_wave == 0:
            return
        if rollout.current_wave == last_wave and updated_in_wave < 3:
            return
        self.rollback_requested_at = timezone.now()
        rollout_services.rollout_act(
            actor=world.users["operator"], rollout=rollout, action="rollback", reason=ROLLBACK_REASON
        )
        self.say(f"operator asked for a rollback in wave {rollout.current_wave + 1}")

    # --- the report ----------------------------------------------------------------------------------------------

    def _report(self, world: World, fleet: Fleet, rollout_id: int) -> dict[str, Any]:
        rollout = Rollout.objects.get(pk=rollout_id)
        deployments = Deployment.objects.filter(rollout=rollout)
        updates = deployments.filter(kind=DeploymentKind.UPDATE)
        rollbacks = deployments.filter(kind=DeploymentKind.ROLLBACK)
        new_version = world.new.version
        images = {world.old.version: world.old.artifact.sha256, new_version: world.new.artifact.sha256}
        outcomes = fleet.outcomes(images)
        bytes_needed = sum(device.bytes_needed for device in fleet.devices)
        bad_version = new_version if self.scenario.bad_release else None
        facts = fleet_facts(
            outcomes,
            new_version=new_version,
            bad_version=bad_version,
            pilot_serials=world.pilot_serials,
            bytes_needed=bytes_needed,
        )
        by_status = dict(updates.values_list("status").annotate(n=Count("id")).order_by())
        succeeded_devices = set(
            updates.filter(status=DeploymentStatus.SUCCEEDED).values_list("device__serial", flat=True)
        )
        restored_devices = set(
            rollbacks.filter(status=DeploymentStatus.SUCCEEDED).values_list("device__serial", flat=True)
        )
        # On the new release by the database's account: updated and not rolled back since.
        db_on_new = succeeded_devices - restored_devices
        on_new = {o.serial for o in outcomes if o.active_version == new_version and o.active_image_verified}
        rolled_back_by_deployment = len(restored_devices)
        fell_back = by_status.get(DeploymentStatus.ROLLED_BACK, 0)
        took_image = updates.filter(
            status__in=[*rollout_services.TOOK_NEW_IMAGE, DeploymentStatus.ROLLED_BACK]
        ).values_list("device__serial", "wave__index")
        exposed_db = {serial for serial, _ in took_image} if bad_version else set()
        outside_pilot_db = {serial for serial, wave in took_image if wave != 0} if bad_version else set()
        wrote_bad = {o.serial for o in outcomes if bad_version and bad_version in o.installed_versions}
        restore_from = rollout.halted_at or self.rollback_requested_at
        restore = None
        if restore_from is not None:
            needing = rollbacks.count()
            last = rollbacks.aggregate(last=Max("finished_at"))["last"]
            restored = rollbacks.filter(status=DeploymentStatus.SUCCEEDED).count()
            if needing == restored and not facts["exposed_ending_on_bad_release"]:
                restore = round(((last or restore_from) - restore_from).total_seconds(), 1)
        duplicated = sum(
            n - 1
            for n in deployments.values("device_id", "kind").annotate(n=Count("id")).values_list("n", flat=True)
            if n > 1
        )
        lost = deployments.exclude(status__in=DEPLOYMENT_TERMINAL).count()
        if rollout.status == RolloutStatus.COMPLETED:
            lost += Device.objects.filter(pk__in=world.device_ids).exclude(pk__in=updates.values("device_id")).count()
        if rollout.status == RolloutStatus.ROLLED_BACK:
            needing_rollback = updates.filter(status__in=rollout_services.TOOK_NEW_IMAGE).values("device_id")
            lost += needing_rollback.exclude(device_id__in=rollbacks.values("device_id")).count()
        offline_db = Device.objects.filter(pk__in=world.device_ids, last_seen_at__isnull=True)
        waves = list(rollout.waves.order_by("index").values_list("status", flat=True))
        return {
            "scenario": self.scenario.name,
            "devices": len(world.specs),
            "seed": self.options.seed,
            "run_id": world.run_id,
            "rollout_id": rollout.pk,
            "rollout_status": rollout.status,
            "new_release": new_version,
            "rollback_release": world.old.version,
            "waves_planned": len(self.plan["waves"]),
            "waves_completed": sum(1 for s in waves if s in (WaveStatus.PASSED, WaveStatus.PROMOTED)),
            "halted": rollout.halted_at is not None,
            "halted_wave": rollout.current_wave if rollout.halted_at is not None else None,
            "updated": len(on_new & db_on_new),
            "deployments_succeeded": by_status.get(DeploymentStatus.SUCCEEDED, 0),
            "updated_disagreements": len(on_new ^ db_on_new),
            "failed": by_status.get(DeploymentStatus.FAILED, 0),
            "timed_out": by_status.get(DeploymentStatus.TIMED_OUT, 0),
            "cancelled": by_status.get(DeploymentStatus.CANCELLED, 0),
            "rolled_back": fell_back + rolled_back_by_deployment,
            "fell_back_on_device": fell_back,
            "rollback_deployments": rollbacks.count(),
            "rollback_deployments_succeeded": rolled_back_by_deployment,
            "offline": len(facts["offline_serials"]),
            "offline_serials": facts["offline_serials"],
            "offline_never_seen_by_server": offline_db.count(),
            "exposed_to_bad_release": len(wrote_bad | exposed_db),
            "bad_release_installed_outside_pilot": len(
                outside_pilot_db | (wrote_bad - world.pilot_serials) if bad_version else set()
            ),
            "exposed_ending_on_bad_release": facts["exposed_ending_on_bad_release"],
            "seconds_to_halt": (
                round((rollout.halted_at - rollout.created_at).total_seconds(), 1) if rollout.halted_at else None
            ),
            "seconds_to_restore": restore,
            "bytes_needed": facts["bytes_needed"],
            "bytes_downloaded": facts["bytes_downloaded"],
            "download_overhead_ratio": facts["download_overhead_ratio"],
            "resumed_downloads": facts["resumed_downloads"],
            "downloads": facts["downloads"],
            "lost_deployments": lost,
            "duplicated_deployments": duplicated,
            "bricked_devices": facts["bricked_devices"],
            "bricked_serials": facts["bricked_serials"],
            "power_losses": facts["power_losses"],
            "agent_errors": facts["agent_errors"],
            "devices_still_busy": facts["still_busy"],
            "telemetry_samples": TelemetrySample.objects.filter(device_id__in=world.device_ids).count(),
            "network": fleet.proxy.counters.as_dict(),
            "poll_seconds": self.poll,
            "plan": {
                "waves": [w["name"] for w in self.plan["waves"]],
                "soak_seconds": self.plan["waves"][0]["soak_seconds"],
                "deadlines": self.plan["deadlines"],
            },
            "held_as_inconclusive": self.held_reason or None,
            "audit_chain_ok": chain_verify().ok,
        }


def run_drill(options: DrillOptions) -> dict[str, Any]:
    """Run one drill and return its report (raises DrillError when it could not run)."""
    return Drill(options).run()
