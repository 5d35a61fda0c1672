"""Fleet drills: rehearse a rollout end to end on the real stack with a simulated fleet and real network faults.

A drill provisions its own world through the services people use (drill users for every role, hardware models,
regions, devices with credentials, releases from real images, a change request with a time-compressed plan,
approved by two CAB members and the security officer), starts the real stack (Temporal dev server, worker, web
processes), puts the fault proxy and N reference agents in front of it, starts the rollout as the drill operator
and watches it to its end. The report is computed from the database and from the devices' own disks, never
from what the scenario intended. Time is compressed by configuration only (soak, deadlines, poll interval).

Chaos scenarios add faults to the stack itself (issue #9): the Temporal worker SIGKILLed at a chosen step and
restarted by the stack's supervisor, the database connections of every process terminated mid-wave, two
operators starting overlapping changes at the same instant over HTTP. Their figures (lost, duplicated and
doubly-held deployments, seconds from the failure threshold to the last offer of the failing release) and the
acceptance checks come from rollouts.drill.checks.

This module is where the drill crosses apps (approvals, devices, rollouts, workflows); the other modules of
rollouts.drill hold the app-independent parts (fleet, proxy, faults, stack, report).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import secrets
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.db import close_old_connections, connection
from django.db.models import Count, Max
from django.test.utils import override_settings
from django.utils import timezone
from rest_framework.authtoken.models import Token

from approvals import services as change_services
from approvals.audit.models import DecisionRecord
from approvals.audit.records import chain_verify
from approvals.choices import ChangeStatus
from approvals.models import ChangeRequest
from approvals.plans import RolloutPlan, plan_parse
from devices import services as device_services
from devices.agent.verify import Trust
from devices.certificates import device_ca_ensure, device_certificates_provision
from devices.firmware.director.ceremony import director_dev_ceremony
from devices.firmware.director.models import DirectorRoot
from devices.firmware.director.services import director_initialised
from devices.firmware.models import FirmwareRelease
from devices.firmware.repository.ceremony import dev_ceremony
from devices.firmware.repository.models import ImageMetadata, ImageRole
from devices.firmware.repository.selectors import image_repository_initialised
from devices.firmware.services import release_create_from_chunks
from devices.importer import import_rows
from devices.models import Device, TelemetrySample
from devices.pki import device_identity_write, server_pins
from devices.scope import scope_devices
from ota_project.net import free_port
from ota_project.roles import Role
from rollouts import rollout_services
from rollouts.choices import (
    DEPLOYMENT_FAILURES,
    DEPLOYMENT_IN_PROGRESS,
    DEPLOYMENT_TERMINAL,
    ROLLOUT_TERMINAL,
    DeploymentKind,
    DeploymentStatus,
    RolloutStatus,
    WaveStatus,
)
from rollouts.drill.checks import (
    Check,
    DeploymentFact,
    FinishedReport,
    acceptance_checks,
    doubly_held,
    duplicated_deployments,
    is_failure,
    last_offer_at,
    lost_deployments,
    seconds_between,
    threshold_crossed_at,
)
from rollouts.drill.faults import DeviceFaults, plan_fates
from rollouts.drill.fleet import DeviceSpec, Fleet, FleetSettings
from rollouts.drill.progress import ProgressBar
from rollouts.drill.proxy import FaultProxy, NetworkFaults
from rollouts.drill.report import assemble, fleet_facts
from rollouts.drill.stack import Stack
from rollouts.models import Deployment, Rollout
from workflows.types import Gate

SETTLE_SECONDS = 120.0  # after the rollout ended: time for the last devices to report
PROGRESS_SECONDS = 1.0
START_SECONDS = 90.0  # a rollout still scheduled after this long: the workflow is failing (see the worker log)
CHAOS_TICK_SECONDS = 0.25  # chaos scenarios watch closer: a fault is injected right after the step it targets
SAMPLE_SECONDS = 0.5  # doubly-held devices are sampled at most this often
ROLLBACK_REASON = "Drill: operator rolls back mid-rollout (rollback rehearsal)"
HELD_REASON = "Drill: the rollout was held as inconclusive; the drill accepts no partial evidence"
# Chaos faults (Scenario.chaos)
KILL_AT_ASSIGNMENT = "kill-worker-at-assignment"
KILL_IN_HALT = "kill-worker-in-halt"
KILL_MID_WAVE = "kill-worker-mid-wave"
DROP_DB_CONNECTIONS = "drop-db-connections"
RACING_STARTS = "racing-starts"
WORKER_KILLS = (KILL_AT_ASSIGNMENT, KILL_IN_HALT, KILL_MID_WAVE)
WORKER_START_SECONDS = 10  # a restarted worker polls again within this (Django set-up, Temporal connection)
DB_DROP_ROUNDS = 3
DB_DROP_SPACING_SECONDS = 3.0
TERMINATE_BACKENDS = (
    "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


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
    expected_status: str = RolloutStatus.COMPLETED
    chaos: str = ""  # one of the chaos faults above
    restart_after_seconds: float = 5.0  # a killed process is started again this long after the kill
    stall_activity: str = ""  # the drill's worker holds this activity's first attempt (rollouts.drill.stall)
    stall_seconds: float = 60.0
    pilot_share: float = 0.01
    pilot_min_sample: int | None = None  # default: min(pilots, 10)
    pilot_spread_seconds: int = 0  # pace the offers of the pilot over this long (0: all at once)
    # A silent regression: the new image installs and boots fine everywhere, but units of the first hardware model
    # take this many times longer to get a GPS fix on it (1.0: none). Devices then report boot KPIs after every
    # power-on (the baseline), and the plan gates on the GPS time to fix.
    gps_regression: float = 1.0
    health_gates: tuple[dict[str, Any], ...] = ()


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
            expected_status=RolloutStatus.ROLLED_BACK,
        ),
        Scenario(
            "silent-regression",
            "the new image installs and boots fine on every device but takes 2.5x longer to get a GPS fix on one "
            "hardware model: the health gate halts the pilot on the signal and rolls it back; nobody outside the pilot "
            "installs it",
            300,
            gps_regression=2.5,
            health_gates=({"indicator": "gps_fix_s", "tolerance": 0.1, "significance": 0.01, "min_sample": 10},),
            expected_status=RolloutStatus.ROLLED_BACK,
            pilot_share=0.1,
        ),
        Scenario(
            "flaky-network",
            "10% of connections dropped, 300 ms latency with jitter, 20% of downloads cut mid-stream",
            500,
            # Mutual TLS end to end: the proxy cannot read the request, so it cuts long answers (image downloads)
            # after the handshake and a check-in's answer could have passed (16 KiB).
            network=NetworkFaults(
                latency_seconds=0.3, jitter_seconds=0.2, drop_rate=0.1, cut_rate=0.2, cut_match=b"", cut_skip=16 * 1024
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
            expected_status=RolloutStatus.ROLLED_BACK,
        ),
        Scenario(
            "worker-killed-at-assignment",
            "the Temporal worker is SIGKILLed as soon as the pilot's deployments are in the database, and restarted "
            "5 s later: the rollout completes, nobody is lost or assigned twice",
            500,
            chaos=KILL_AT_ASSIGNMENT,
        ),
        Scenario(
            "worker-killed-in-halt",
            "a bad release fails the pilot (20% of the fleet, offered over 30 s); the worker is SIGKILLed inside the "
            "halt step and restarted 20 s later: the failing release must stop being offered at once all the same",
            500,
            faults=DeviceFaults(bad_boot_share=0.3),
            bad_release=True,
            expected_status=RolloutStatus.ROLLED_BACK,
            chaos=KILL_IN_HALT,
            restart_after_seconds=20.0,
            stall_activity="rollouts.rollout_halt",
            pilot_share=0.2,
            pilot_min_sample=5,
            pilot_spread_seconds=30,
        ),
        Scenario(
            "worker-killed-mid-wave",
            "the worker is SIGKILLed during the healthy pilot wave's soak and restarted 10 s later: the rollout "
            "completes",
            500,
            chaos=KILL_MID_WAVE,
            restart_after_seconds=10.0,
        ),
        Scenario(
            "db-connections-dropped",
            "every PostgreSQL connection of the web server and the worker is terminated 3 times, 3 s apart, "
            "during the fleet wave: the devices ride it out and the rollout completes",
            500,
            chaos=DROP_DB_CONNECTIONS,
        ),
        Scenario(
            "racing-starts",
            "two operators start two approved changes with overlapping scopes at the same instant through the "
            "API: exactly one start may succeed, no device may hold two active deployments",
            500,
            chaos=RACING_STARTS,
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
    # Schedule the change this many seconds ahead and let its ChangeWorkflow's timer start the rollout (None: the
    # drill operator presses Start at once).
    scheduled_start_seconds: int | None = None
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
    if options.scheduled_start_seconds is not None:
        if not 1 <= options.scheduled_start_seconds <= 3600:
            raise DrillError("--scheduled-start-seconds must be from 1 to 3600")
        if scenario.chaos == RACING_STARTS:
            raise DrillError("--scheduled-start-seconds does not combine with a scenario that races starts")
    return scenario


# --- sizing: time compressed by configuration ------------------------------------------------------------------


def poll_seconds_for(devices: int) -> int:
    """Idle check-in interval: about 40 check-ins per second for the whole fleet, 2 to 30 s."""
    return max(2, min(30, math.ceil(devices / 40)))


def image_bytes_for(devices: int) -> int:
    return 256 * 1024 if devices <= 200 else 128 * 1024 if devices <= 1000 else 64 * 1024


def pilot_count(devices: int, share: float = 0.01) -> int:
    return max(3, round(devices * share))


VERIFICATION_SECONDS = 6  # what full verification adds to one update on the drill's links (see drill_plan)
# What attestation adds: the check-in that gets the offer first attests over a fresh nonce (one more round trip), and
# so does every check-in after an answer a flaky link lost (the agent never reuses a nonce).
ATTESTATION_SECONDS = 4
# What a lossy link adds: a dropped or cut connection costs the agent its backoff (0.3 s doubling, jittered, up to
# about 10 s after five misses in a row), and a device can meet several in one update; without the margin a pilot
# device still retrying at the end of the soak leaves the wave inconclusive (seen in 1 of ~5 full runs).
LOSSY_LINK_SECONDS = 20


def drill_plan(devices: int, poll: int, scenario: Scenario) -> RolloutPlan:
    """pilot -> fleet, soaks of seconds, deadlines sized to the poll interval and the fleet."""
    soak_covers_deadline = scenario.soak_covers_deadline
    pilots = pilot_count(devices, scenario.pilot_share)
    # Generous: the whole wave must be offered and downloaded within it (a pending deployment's deadline covers
    # both), at the rate this machine serves; only devices that never show up should miss it.
    download = max(120, 4 * poll + devices // 5)
    # A wave is judged at the end of its soak on at least min_sample finished devices: the soak covers one poll
    # interval (devices learn of the wave when they check in) plus an update's own time.
    # An update's own time includes its verification: five more round trips (root probe, timestamp, snapshot,
    # targets, the director before installing), each one a dropped or cut connection away from a retry on a flaky
    # link.
    soak = poll + (8 if devices <= 100 else 15) + VERIFICATION_SECONDS + ATTESTATION_SECONDS
    if scenario.network.drop_rate or scenario.network.cut_rate:
        soak += LOSSY_LINK_SECONDS
    if soak_covers_deadline:
        download = max(30, 3 * poll + devices // 4)  # online devices must all make it; the offline ones time out
        soak = download + 5
    if scenario.chaos in WORKER_KILLS:
        # A soak runs on while the worker is down, and devices are offered nothing until the restarted worker
        # records the wave as running: compressed to seconds, the outage would eat the soak and leave the wave
        # inconclusive. Real soaks last hours; the drill's soak outlasts the outage instead.
        soak += math.ceil(scenario.restart_after_seconds) + WORKER_START_SECONDS
    # A wave passes only when every device succeeded: a rollout that completes at 90% leaves the rest pending for
    # good (a completed rollout offers nothing more). Where devices are expected to stay away, the soak outlasts
    # the download deadline instead, so they are timed out (failures, within the 10% the plan tolerates) first.
    success = 0.9 if soak_covers_deadline else 1.0
    wave = {"soak_seconds": soak, "success_threshold": success, "failure_threshold": 0.1, "promotion": "auto"}
    # Two waves: the pilot (about 1%) gates the fleet. Every wave costs a poll interval of discovery and a soak,
    # and this machine's budget (1,000 devices in under 5 minutes) has room for the one gate that matters.
    pilot_sample = min(pilots, 10 if scenario.pilot_min_sample is None else scenario.pilot_min_sample)
    waves: list[dict[str, Any]] = [
        {"name": "pilot", "cohort": {"kind": "pilot"}, "min_sample": pilot_sample, **wave},
        {"name": "fleet", "cohort": {"kind": "percent", "value": 100}, "min_sample": 5, **wave},
    ]
    pacing = {}
    if scenario.pilot_spread_seconds:
        # The pilot's offers spread over pilot_spread_seconds (the soak covers them): the wave can fail while some
        # pilots still wait for their offer, and the halt must stop those at once.
        pacing = {"pacing": {"devices_per_minute": math.ceil(pilots * 60 / scenario.pilot_spread_seconds)}}
        for wave_plan in waves:
            wave_plan["soak_seconds"] += scenario.pilot_spread_seconds
    return plan_parse(
        {
            **pacing,
            "waves": waves,
            "abort_policy": "halt_and_rollback",
            "monitor_interval_seconds": 1 if devices <= 100 else 2,
            "deadlines": {"download_seconds": download, "install_seconds": 60 + poll, "confirm_seconds": 60 + poll},
            "retries": {"download": 3, "install": 1},
            **({"health_gates": list(scenario.health_gates)} if scenario.health_gates else {}),
        }
    )


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
    # racing-starts: a second approved change whose scope overlaps the first, and the API tokens of the two
    # operators who race (name -> token)
    rival_change: Any = None
    tokens: dict[str, str] = field(default_factory=dict)


def _user(run_id: str, name: str, role: str) -> User:
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


def provision(options: DrillOptions, plan: RolloutPlan, say: Callable[[str], None], identity_root: Path) -> World:
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
    tokens: dict[str, str] = {}
    if SCENARIOS[options.scenario].chaos == RACING_STARTS:
        for name in ("otto", "opal"):  # two operators on call who both press "start", each with an API token
            users[name] = _user(run_id, name, Role.OPERATOR)
            # What POST /api/v1/auth/token/ hands out; made here because the drill's users have no password.
            tokens[name] = Token.objects.get_or_create(user=users[name])[0].key
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
    # "r" first: an all-digit run id with a leading zero (e.g. 012345) is not a valid semver pre-release part.
    old_version, new_version = f"1.0.0-drill.r{run_id}", f"1.1.0-drill.r{run_id}"
    pilots = pilot_count(options.devices, SCENARIOS[options.scenario].pilot_share)
    stride = options.devices / pilots
    pilot_numbers = {int(i * stride) for i in range(pilots)}
    rows: list[tuple[int, dict[str, Any]]] = []
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
    roots = signed_chain(users["security"], say)
    devices = list(
        Device.objects.filter(hardware_model__name__in=models).select_related("hardware_model").order_by("serial")
    )
    device_ids = [device.pk for device in devices]
    # Certificates from the device CA in one batch (one token session, one decision record), written where each
    # agent reads its identity; each agent also gets both trust roots of the signed update chain.
    device_ca_ensure()
    started = time.monotonic()
    issued = device_certificates_provision(actor=operator, devices=devices)
    pins = server_pins()
    identities = identity_root / f"drill-{run_id}"
    specs = [
        DeviceSpec(
            pair.serial,
            device_identity_write(identities, pair, pins),
            device.hardware_model.name,
            old_version,
            1,
            Trust(device.serial, device.hardware_model.name, *roots),
        )
        for device, pair in zip(devices, issued, strict=True)
    ]
    pilot_serials = {row["serial"] for number, row in rows if "pilot" in row["tags"]}
    say(f"issued {len(specs)} device certificates in {time.monotonic() - started:.1f} s")
    requester = users["requester"]
    old = _release(requester, old_version, 1, models, images["old"], run_id)
    new = _release(
        requester, new_version, 1, models, images["new"], run_id
    )  # same security epoch: 1.0 stays a valid rollback
    change = _approved_change(options, users, run_id, {"hardware_models": models}, new, old, plan)
    rival = None
    if tokens:
        # The second change targets one hardware model: every one of its devices is also in the first change's scope.
        rival = _approved_change(options, users, run_id, {"hardware_models": models[:1]}, new, old, plan)
    say(f"change {change.pk} approved; releases {old_version} -> {new_version}")
    return World(run_id, users, models, specs, pilot_serials, old, new, images, change, device_ids, rival, tokens)


def signed_chain(officer: User, say: Callable[[str], None]) -> tuple[bytes, bytes]:
    """The image repository and the director (started by the DEVELOPMENT key ceremony when the database has
    neither yet), and the first root of each: what every drill vehicle is provisioned with, so each one verifies
    its offers fully."""
    if not image_repository_initialised():
        dev_ceremony(actor=officer)
        say("image repository started by the development key ceremony")
    if not director_initialised():
        director_dev_ceremony(actor=officer)
        say("director started by the development key ceremony")
    image_root = ImageMetadata.objects.get(role=ImageRole.ROOT, version=1)
    director_root = DirectorRoot.objects.get(version=1)
    return bytes(image_root.content), bytes(director_root.content)


def _approved_change(
    options: DrillOptions,
    users: dict[str, Any],
    run_id: str,
    scope: dict[str, Any],
    new: FirmwareRelease,
    old: FirmwareRelease,
    plan: RolloutPlan,
) -> ChangeRequest:
    """A change for `scope`, submitted by the drill requester and approved by as many drill approvers as needed."""
    requester = users["requester"]
    now = timezone.now()
    change = change_services.change_create(
        actor=requester,
        title=f"Fleet drill {run_id}: {options.scenario}",
        justification="Rollback drill: rehearse the rollout and the recovery path on a simulated fleet.",
        release=new,
        rollback_release=old,
        target_scope=scope,
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
    return change


# --- running -------------------------------------------------------------------------------------------------------


class Drill:
    """One drill run: provision, start the stack and the fleet, run the rollout, report."""

    def __init__(self, options: DrillOptions):
        self.options = options
        self.scenario = validate_options(options)
        self.poll = options.poll_seconds or poll_seconds_for(options.devices)
        self.plan = drill_plan(options.devices, self.poll, self.scenario)
        self.say = options.say
        self.rollback_requested_at: Any = None
        self.held_reason = ""
        self.held: set[int] = set()  # rollouts the drill operator aborted because they were held as inconclusive
        self.rollout_ids: list[int] = []
        self.watch_timed_out = False
        # chaos: what was injected, and what the doubly-held samples saw
        self.fault_fired_at: datetime | None = None
        self.fault_steps: list[dict[str, Any]] = []
        self.racing: dict[str, Any] | None = None
        self.doubly_held_seen: set[int] = set()
        self.doubly_held_most = 0
        self.doubly_held_samples = 0
        self._sampled_at = 0.0
        self._stall_mark: Path | None = None

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        workdir = self.options.workdir or Path(
            tempfile.mkdtemp(prefix="ota-drill-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
        )
        workdir.mkdir(parents=True, exist_ok=True)
        stack: Stack | None = None
        fleet: Fleet | None = None
        try:
            # Provisioning files, submits and approves the change before the drill's own Temporal exists: its
            # change workflow starts when the drill schedules or starts it, on the drill's task queue.
            with override_settings(TEMPORAL_ENABLED=False):
                world = provision(self.options, self.plan, self.say, workdir / "identities")
            task_queue = f"ota-drill-{world.run_id}"
            stack = Stack(
                workdir,
                task_queue=task_queue,
                poll_seconds=self.poll,
                web_processes=self.options.web_processes,
                temporal_address=self.options.temporal_address,
                worker_argv=self._worker_argv(workdir),
            ).start(self.say)
            fleet = self._fleet(world, stack, workdir)
            fleet.start()
            assert fleet.proxy is not None  # the drill's fleet always talks through the fault proxy
            self.say(f"fleet of {len(world.specs)} agents started behind {fleet.proxy.url}")
            with override_settings(
                TEMPORAL_ADDRESS=stack.temporal_address, TEMPORAL_TASK_QUEUE=task_queue, TEMPORAL_ENABLED=True
            ):
                if self.scenario.chaos == RACING_STARTS:
                    self.rollout_ids = self._race_starts(world, stack)
                elif self.options.scheduled_start_seconds is not None:
                    self.rollout_ids = [self._scheduled_start(world, self.options.scheduled_start_seconds)]
                else:
                    rollout = rollout_services.rollout_start(actor=world.users["operator"], change=world.change)
                    self.rollout_ids = [rollout.pk]
                self.say(f"rollout {', '.join(map(str, self.rollout_ids))} started")
                self._watch(world, stack, fleet, started)
            fleet.stop()
            if fleet.error is not None:
                raise DrillError(f"the fleet stopped with an error: {fleet.error!r}")
            report = self._report(world, fleet, stack)
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

    def _scheduled_start(self, world: World, seconds: int) -> int:
        """Schedule the change `seconds` ahead as the drill operator and wait for its timer to start the rollout."""
        start = timezone.now() + timedelta(seconds=seconds)
        change_services.change_schedule(actor=world.users["operator"], change=world.change, start=start)
        self.say(f"change {world.change.pk} scheduled to start at {start:%H:%M:%S} UTC; waiting for its timer")
        deadline = time.monotonic() + seconds + 120
        while time.monotonic() < deadline:
            rollout = Rollout.objects.filter(change=world.change).first()
            if rollout is not None:
                self.say(f"the timer started rollout {rollout.pk} at {rollout.created_at:%H:%M:%S} UTC")
                return rollout.pk
            world.change.refresh_from_db()
            if world.change.start_held_at is not None:
                raise DrillError(f"the scheduled start was held: {world.change.start_held_reason}")
            time.sleep(0.5)
        raise DrillError(f"the change's timer did not start its rollout within {seconds + 120} s")

    def _worker_argv(self, workdir: Path) -> list[str] | None:
        """The drill's own worker entry point (with its fault hook) when the scenario stalls an activity."""
        if not self.scenario.stall_activity:
            return None
        self._stall_mark = workdir / "stall-mark.json"
        return [
            sys.executable,
            "-m",
            "rollouts.drill.worker",
            "--stall",
            self.scenario.stall_activity,
            "--stall-seconds",
            str(self.scenario.stall_seconds),
            "--stall-mark",
            str(self._stall_mark),
        ]

    @property
    def _regresses(self) -> bool:
        """The new release is silently worse on one hardware model (the scenario's signal regression)."""
        return self.scenario.gps_regression != 1.0

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
            [("127.0.0.1", stack.tls_port)],  # nginx's device port: TLS passes the proxy end to end
            self.scenario.network,
            seed=self.options.seed,
            port=free_port(),
        )
        fleet_settings = FleetSettings(
            server_url=f"https://{proxy.host}:{proxy.port}",
            state_root=workdir / "devices",
            factory_image=world.images["old"],
            seed=self.options.seed,
            ramp_seconds=min(float(self.poll), 10.0),
            bad_sha256=hashlib.sha256(world.images["new"]).hexdigest() if self.scenario.bad_release else None,
            regressed_sha256=hashlib.sha256(world.images["new"]).hexdigest() if self._regresses else None,
            regressed_model=world.models[0],
            gps_factor=self.scenario.gps_regression,
            boot_samples=bool(self.scenario.health_gates),
        )
        return Fleet(world.specs, fates, fleet_settings, proxy=proxy)

    def _watch(self, world: World, stack: Stack, fleet: Fleet, started: float) -> None:
        """Follow the rollouts to their end (and the fleet until it settled); the operator acts when the scenario
        says, the chaos fault fires when its moment comes, and devices holding two open deployments are sampled."""
        deadline = started + self.options.timeout_seconds
        ended_at: float | None = None
        watching = time.monotonic()
        online = sum(1 for device in fleet.devices if not device.fate.offline)
        tick = CHAOS_TICK_SECONDS if self.scenario.chaos else PROGRESS_SECONDS
        while True:
            time.sleep(tick)
            close_old_connections()
            dead = stack.dead()
            if dead is not None:
                raise DrillError(f"{dead.name} is gone for good (not restarted):\n{dead.log_tail()}")
            if fleet.error is not None:
                raise DrillError(f"the fleet stopped with an error: {fleet.error!r}")
            self._sample_doubly_held()
            rollouts = list(Rollout.objects.filter(pk__in=self.rollout_ids).order_by("pk"))
            first = rollouts[0]
            deployments = Deployment.objects.filter(rollout_id__in=self.rollout_ids)
            counts = dict(deployments.values_list("status").annotate(n=Count("id")).order_by())
            label = f"{first.status} wave {first.current_wave + 1}/{len(self.plan.waves)}"
            done = counts.get(DeploymentStatus.SUCCEEDED, 0)
            self.options.progress.update(done, online, label)
            if first.status == RolloutStatus.SCHEDULED and time.monotonic() - watching > START_SECONDS:
                worker = next(child for child in stack.children if child.name == "worker")
                raise DrillError(f"the rollout never started its first wave; worker log:\n{worker.log_tail()}")
            for rollout in rollouts:
                self._abort_if_held(rollout, world)
            if self.scenario.operator_rollback and self.rollback_requested_at is None:
                self._maybe_roll_back(first, world)
            if self.scenario.chaos:
                self._chaos(first, stack)
            if all(rollout.status in ROLLOUT_TERMINAL for rollout in rollouts):
                if ended_at is None:
                    ended_at = time.monotonic()
                    for rollout in rollouts:
                        self.say(f"rollout {rollout.pk} {rollout.status}: {rollout.status_reason}")
                open_deployments = deployments.exclude(status__in=DEPLOYMENT_TERMINAL).count()
                if (open_deployments == 0 and fleet.busy() == 0) or time.monotonic() - ended_at > SETTLE_SECONDS:
                    self.options.progress.update(done, online, label, force=True)
                    return
            if time.monotonic() > deadline:
                # The report still comes out (the checks say the rollout did not end): a hang is a finding too.
                self.watch_timed_out = True
                self.say(
                    f"no outcome within {self.options.timeout_seconds:.0f} s: rollout {first.status} "
                    f"wave {first.current_wave}: {first.status_reason}"
                )
                return

    def _abort_if_held(self, rollout: Rollout, world: World) -> None:
        if rollout.status != RolloutStatus.AWAITING_PROMOTION or rollout.gate != Gate.INCONCLUSIVE:
            return
        if rollout.pk in self.held:
            return
        # The runbook: promote only on evidence one accepts. A drill accepts none: it aborts, and reports.
        self.held.add(rollout.pk)
        self.held_reason = rollout.status_reason
        rollout_services.rollout_act(actor=world.users["operator"], rollout=rollout, action="abort", reason=HELD_REASON)
        self.say(f"rollout {rollout.pk} held as inconclusive, the drill operator aborted it: {rollout.status_reason}")

    def _sample_doubly_held(self) -> None:
        """One sample of the devices holding more than one open deployment (across all the drill's rollouts)."""
        now = time.monotonic()
        if now - self._sampled_at < SAMPLE_SECONDS:
            return
        self._sampled_at = now
        rows = (
            Deployment.objects.filter(rollout_id__in=self.rollout_ids)
            .exclude(status__in=DEPLOYMENT_TERMINAL)
            .values_list("device_id", "id")
        )
        held = doubly_held(rows)
        self.doubly_held_samples += 1
        self.doubly_held_seen |= held
        self.doubly_held_most = max(self.doubly_held_most, len(held))

    # --- chaos ---------------------------------------------------------------------------------------------------

    def _fault(self, step: str, **details: Any) -> None:
        now = datetime.now(UTC)
        if self.fault_fired_at is None:
            self.fault_fired_at = now
        self.fault_steps.append({"at": now.isoformat(), "step": step, **details})
        self.say(f"chaos: {step} {details}" if details else f"chaos: {step}")

    def _chaos(self, rollout: Rollout, stack: Stack) -> None:
        """Inject the scenario's fault once its moment has come (each fault fires once per drill)."""
        chaos = self.scenario.chaos
        restart_after = self.scenario.restart_after_seconds
        if chaos == KILL_AT_ASSIGNMENT and self.fault_fired_at is None:
            # Right after the pilot's deployments were committed: the worker may not even have reported the activity.
            if Deployment.objects.filter(rollout=rollout, wave__index=0).exists():
                event = stack.kill("worker", restart_after=restart_after)
                self._fault("worker SIGKILLed after the pilot was assigned", pid=event.pid)
        elif chaos == KILL_IN_HALT and self.fault_fired_at is None:
            # The drill's worker writes the mark when it enters the halt step (and holds it there).
            if self._stall_mark is not None and self._stall_mark.exists():
                event = stack.kill("worker", restart_after=restart_after)
                mark = json.loads(self._stall_mark.read_text())
                self._fault("worker SIGKILLed inside the halt step", pid=event.pid, activity=mark.get("activity"))
        elif chaos == KILL_MID_WAVE and self.fault_fired_at is None:
            # The pilot wave is soaking: some of its devices already succeeded, the verdict is still to come.
            if (
                rollout.current_wave == 0
                and Deployment.objects.filter(
                    rollout=rollout, wave__index=0, status=DeploymentStatus.SUCCEEDED
                ).exists()
            ):
                event = stack.kill("worker", restart_after=restart_after)
                self._fault("worker SIGKILLed during the pilot's soak", pid=event.pid)
        elif chaos == DROP_DB_CONNECTIONS:
            self._drop_connections(rollout)

    def _drop_connections(self, rollout: Rollout) -> None:
        """DB_DROP_ROUNDS rounds, DB_DROP_SPACING_SECONDS apart, once the fleet wave's devices are updating."""
        rounds = sum(1 for step in self.fault_steps if step["step"] == "database connections terminated")
        if rounds >= DB_DROP_ROUNDS:
            return
        if self.fault_fired_at is None:
            if (
                rollout.current_wave < 1
                or not Deployment.objects.filter(
                    rollout=rollout, wave__index=1, status__in=DEPLOYMENT_IN_PROGRESS
                ).exists()
            ):
                return
        elif (datetime.now(UTC) - self.fault_fired_at).total_seconds() < rounds * DB_DROP_SPACING_SECONDS:
            return
        with connection.cursor() as cursor:
            cursor.execute(TERMINATE_BACKENDS)
            terminated = sum(1 for _pid, done in cursor.fetchall() if done)
        self._fault("database connections terminated", connections=terminated, round=rounds + 1)

    def _race_starts(self, world: World, stack: Stack) -> list[int]:
        """Two operators start the two overlapping changes at the same instant, over HTTP, each on its own
        connection to the web server (gunicorn serves them on two threads at once, in one worker or two)."""
        racers = [("otto", world.change), ("opal", world.rival_change)]
        barrier = threading.Barrier(len(racers))
        answers: list[dict[str, Any]] = [{} for _ in racers]

        def race(index: int, name: str, change: Any) -> None:
            barrier.wait()
            sent = datetime.now(UTC)
            status, body = _post_json(
                stack.web_port, "/api/v1/rollouts/", {"change": change.pk}, token=world.tokens[name]
            )
            answers[index] = {
                "operator": f"drill-{world.run_id}-{name}",
                "change": change.pk,
                "sent_at": sent.isoformat(),
                "http_status": status,
                "rollout_id": body.get("id") if status == 201 else None,
                "detail": "" if status == 201 else str(body.get("detail") or body)[:300],
            }

        threads = [
            threading.Thread(target=race, args=(index, name, change), name=f"racer-{name}")
            for index, (name, change) in enumerate(racers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        started = [answer["rollout_id"] for answer in answers if answer["rollout_id"] is not None]
        self.racing = {"starts": answers, "starts_succeeded": len(started)}
        self.say(f"racing starts: {[(a['operator'], a['http_status']) for a in answers]}")
        if not started:
            raise DrillError(f"neither racing start succeeded: {answers}")
        return sorted(started)

    def _maybe_roll_back(self, rollout: Rollout, world: World) -> None:
        """The rehearsal: once the second wave has updated devices, the operator rolls back (the API's path)."""
        last_wave = len(self.plan.waves) - 1
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

    def _report(self, world: World, fleet: Fleet, stack: Stack) -> dict[str, Any]:
        self._sampled_at = 0.0
        self._sample_doubly_held()  # and once more at the very end
        rollout = Rollout.objects.get(pk=self.rollout_ids[0])
        deployments = Deployment.objects.filter(rollout=rollout)
        updates = deployments.filter(kind=DeploymentKind.UPDATE)
        rollbacks = deployments.filter(kind=DeploymentKind.ROLLBACK)
        new_version = world.new.version
        images = {world.old.version: world.old.artifact.sha256, new_version: world.new.artifact.sha256}
        outcomes = fleet.outcomes(images)
        bytes_needed = sum(device.bytes_needed for device in fleet.devices)
        bad_version = new_version if self.scenario.bad_release or self._regresses else None
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
        facts = {**facts, **self._chaos_figures(world, fleet, stack)}
        offline_db = Device.objects.filter(pk__in=world.device_ids, last_seen_at__isnull=True)
        waves = list(rollout.waves.order_by("index").values_list("status", flat=True))
        pilot_signals = rollout.waves.filter(index=0).values_list("signals", flat=True).first()
        return {
            "scenario": self.scenario.name,
            "devices": len(world.specs),
            "seed": self.options.seed,
            "run_id": world.run_id,
            "rollout_id": rollout.pk,
            "rollout_status": rollout.status,
            "new_release": new_version,
            "rollback_release": world.old.version,
            "waves_planned": len(self.plan.waves),
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
            "lost_deployments": facts["lost_deployments"],
            "duplicated_deployments": facts["duplicated_deployments"],
            "doubly_held_devices": facts["doubly_held_devices"],
            "doubly_held_most_at_once": facts["doubly_held_most_at_once"],
            "doubly_held_samples": facts["doubly_held_samples"],
            "rollout_ended": facts["rollout_ended"],
            "rollouts": facts["rollouts"],
            "threshold_crossed_at": facts["threshold_crossed_at"],
            "last_offer_of_failing_release_at": facts["last_offer_of_failing_release_at"],
            "seconds_threshold_to_last_offer": facts["seconds_threshold_to_last_offer"],
            "offers_of_failing_release_after_threshold": facts["offers_of_failing_release_after_threshold"],
            "bad_release_sha256": world.new.artifact.sha256 if self.scenario.bad_release else None,
            "silent_regression": self._regresses,
            # The pilot's health gates as last read (verdict and, per model and indicator, n, means, p-value).
            "pilot_signal_gate": pilot_signals,
            "signal_gate_records": DecisionRecord.objects.filter(
                object_type="rollout", object_id=str(rollout.pk), action="rollout.signal_gate"
            ).count(),
            "chaos": self.scenario.chaos or None,
            "chaos_steps": self.fault_steps,
            "racing": self.racing,
            "process_events": [event.as_dict() for event in stack.events],
            "worker_kills": sum(1 for e in stack.events if e.process == "worker" and e.event == "killed"),
            "process_restarts": sum(1 for e in stack.events if e.event == "restarted"),
            "watch_timed_out": self.watch_timed_out,
            "bricked_devices": facts["bricked_devices"],
            "bricked_serials": facts["bricked_serials"],
            "power_losses": facts["power_losses"],
            "agent_errors": facts["agent_errors"],
            "devices_still_busy": facts["still_busy"],
            # Every offer a vehicle took was verified against both repositories first; none was refused as untrusted.
            "verified_offers": sum(device.verified for device in fleet.devices),
            "untrusted_refusals": deployments.filter(failure_class="untrusted").count(),
            # Full verification on every agent: no image reached a slot without the signed target of its offer.
            "unverified_installs": sum(device.unverified_installs for device in fleet.devices),
            "verification_metadata_bytes": sum(
                getattr(device.transport, "metadata_bytes", 0) for device in fleet.devices
            ),
            "telemetry_samples": TelemetrySample.objects.filter(device_id__in=world.device_ids).count(),
            "network": fleet.proxy.counters.as_dict() if fleet.proxy else {},
            "poll_seconds": self.poll,
            "plan": {
                "waves": [w.name for w in self.plan.waves],
                "soak_seconds": self.plan.waves[0].soak_seconds,
                "deadlines": self.plan.deadlines.to_json(),
            },
            "held_as_inconclusive": self.held_reason or None,
            "audit_chain_ok": chain_verify().ok,
        }

    def _chaos_figures(self, world: World, fleet: Fleet, stack: Stack) -> dict[str, Any]:
        """Lost, duplicated and doubly-held deployments over every rollout of the drill, and how long the failing
        release was still offered after its wave crossed the failure threshold (rollouts.drill.checks)."""
        rollouts = list(Rollout.objects.filter(pk__in=self.rollout_ids).select_related("change").order_by("pk"))
        facts = [
            DeploymentFact(*row)
            for row in Deployment.objects.filter(rollout_id__in=self.rollout_ids).values_list(
                "rollout_id", "device_id", "kind", "status"
            )
        ]
        ended = all(rollout.status in ROLLOUT_TERMINAL for rollout in rollouts)
        lost: int | None = 0
        for rollout in rollouts:
            in_scope = set(
                scope_devices(rollout.change.scope).filter(pk__in=world.device_ids).values_list("pk", flat=True)
            )
            mine = lost_deployments(
                rollout_status=rollout.status,
                in_scope=in_scope,
                deployments=[fact for fact in facts if fact.rollout_id == rollout.pk],
            )
            lost = None if lost is None or mine is None else lost + mine
        crossed = last_offer = None
        after = 0
        if self.scenario.bad_release:
            wave_plan = self.plan.waves[0]
            pilot = Deployment.objects.filter(rollout=rollouts[0], kind=DeploymentKind.UPDATE, wave__index=0)
            reports = [
                FinishedReport(finished_at, is_failure(status))
                for finished_at, status in pilot.filter(
                    finished_at__isnull=False, status__in=[DeploymentStatus.SUCCEEDED, *DEPLOYMENT_FAILURES]
                ).values_list("finished_at", "status")
                if finished_at is not None  # always: the query excludes the others
            ]
            crossed = threshold_crossed_at(
                reports,
                total=pilot.count(),
                min_sample=wave_plan.min_sample,
                failure_threshold=wave_plan.failure_threshold,
            )
            bad_sha256 = world.new.artifact.sha256
            last_offer = last_offer_at(fleet.offers, bad_sha256)
            if crossed is not None:
                after = sum(1 for offer in fleet.offers if offer.sha256 == bad_sha256 and offer.at > crossed)
        return {
            "rollout_ended": ended and not self.watch_timed_out,
            "rollouts": [
                {"rollout_id": r.pk, "change": r.change_id, "status": r.status, "reason": r.status_reason}
                for r in rollouts
            ],
            "lost_deployments": lost,
            "duplicated_deployments": duplicated_deployments(facts),
            "doubly_held_devices": len(self.doubly_held_seen),
            "doubly_held_most_at_once": self.doubly_held_most,
            "doubly_held_samples": self.doubly_held_samples,
            "threshold_crossed_at": crossed.isoformat() if crossed else None,
            "last_offer_of_failing_release_at": last_offer.isoformat() if last_offer else None,
            "seconds_threshold_to_last_offer": seconds_between(crossed, last_offer),
            "offers_of_failing_release_after_threshold": after if self.scenario.bad_release else None,
        }


def _post_json(port: int, path: str, payload: dict[str, Any], *, token: str | None = None) -> tuple[int, dict]:
    """POST JSON to the web server of the drill's stack; (HTTP status, decoded body)."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Token {token}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(payload).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        body = {"detail": raw[:300].decode(errors="replace")}
    return status, body if isinstance(body, dict) else {"detail": body}


def drill_checks(report: dict[str, Any]) -> list[Check]:
    """The acceptance checks of a drill report (its scenario says which outcome it expects)."""
    return acceptance_checks(report, expected_status=SCENARIOS[report["scenario"]].expected_status)


def run_drill(options: DrillOptions) -> dict[str, Any]:
    """Run one drill and return its report with its acceptance checks (raises DrillError when it could not run)."""
    report = Drill(options).run()
    checks = drill_checks(report)
    report["checks"] = [check.as_dict() for check in checks]
    report["checks_passed"] = all(check.ok for check in checks)
    return report
