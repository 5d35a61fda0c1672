"""`python manage.py fleet_drill --scenario NAME --devices N [--seed S] [--json]`: a rollout drill on the real stack.

Exit status: 0 when every acceptance check of the report held, 1 when one failed (the checks are printed, or listed
under "checks" in the JSON report), and the usual CommandError status when the drill could not run at all."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from rollouts.drill.progress import ProgressBar
from rollouts.drill.run import SCENARIOS, DrillError, DrillOptions, run_drill, validate_options

SUMMARY_KEYS = (
    "rollout_status",
    "waves_completed",
    "halted",
    "updated",
    "failed",
    "timed_out",
    "rolled_back",
    "offline",
    "exposed_to_bad_release",
    "bad_release_installed_outside_pilot",
    "seconds_to_halt",
    "seconds_to_restore",
    "bytes_needed",
    "bytes_downloaded",
    "resumed_downloads",
    "lost_deployments",
    "duplicated_deployments",
    "doubly_held_devices",
    "seconds_threshold_to_last_offer",
    "bricked_devices",
    "worker_kills",
    "process_restarts",
    "audit_chain_ok",
    "wall_clock_seconds",
)


class Command(BaseCommand):
    help = (
        "Run a fleet drill: provision drill users, devices and releases through the services, start the Temporal "
        "dev server, a worker and the web app under gunicorn, put N reference agents behind a fault proxy, run an approved "
        "rollout and report what the database and the devices say; exit 1 if an acceptance check failed. Scenarios: "
        + ", ".join(SCENARIOS)
        + "."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
        parser.add_argument("--devices", type=int, default=None, help="Fleet size (default: the scenario's).")
        parser.add_argument("--seed", type=int, default=1, help="Seed of every fault and of the images.")
        parser.add_argument("--json", action="store_true", help="Print exactly one JSON object on stdout.")
        parser.add_argument("--image-bytes", type=int, default=None, help="Image size (default: by fleet size).")
        parser.add_argument("--poll-seconds", type=int, default=None, help="Idle poll interval (default: by size).")
        parser.add_argument(
            "--web-processes", type=int, default=2, help="gunicorn workers of the web server behind the proxy."
        )
        parser.add_argument(
            "--temporal-address",
            default=None,
            help="Use this Temporal server instead of starting a dev server of the drill's own.",
        )
        parser.add_argument(
            "--scheduled-start-seconds",
            type=int,
            default=None,
            help="Schedule the drill's change this many seconds ahead and let its timer start the rollout "
            "(default: start at once).",
        )
        parser.add_argument("--timeout", type=float, default=900.0, help="Give up after this many seconds.")
        parser.add_argument("--workdir", type=Path, default=None, help="Keep device states and logs here.")

    def handle(self, *args: Any, **options: Any) -> None:
        scenario = SCENARIOS[options["scenario"]]
        as_json = options["json"]
        drill = DrillOptions(
            scenario=scenario.name,
            devices=options["devices"] or scenario.default_devices,
            seed=options["seed"],
            image_bytes=options["image_bytes"],
            poll_seconds=options["poll_seconds"],
            web_processes=options["web_processes"],
            temporal_address=options["temporal_address"],
            timeout_seconds=options["timeout"],
            scheduled_start_seconds=options["scheduled_start_seconds"],
            workdir=options["workdir"],
            keep_workdir=options["workdir"] is not None,
            say=self._say_to_stderr if as_json else self._say,
            progress=ProgressBar(sys.stderr),
        )
        try:
            validate_options(drill)
        except DrillError as exc:
            raise CommandError(str(exc)) from exc
        # The agents log every step; a drill of thousands keeps only warnings about its own machinery.
        logging.getLogger("devices.agent").setLevel(logging.CRITICAL)
        # SIGTERM ends the drill like Ctrl-C: the stack and the fleet are stopped on the way out.
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            report = run_drill(drill)
        except DrillError as exc:
            raise CommandError(f"drill failed: {exc}") from exc
        if as_json:
            self.stdout.write(json.dumps(report, default=str))
        else:
            self._say(f"\nDrill {report['scenario']} with {report['devices']} devices:")
            for key in SUMMARY_KEYS:
                self._say(f"  {key:<38} {report.get(key)}")
            if report.get("offline_serials"):
                self._say(f"  offline devices: {', '.join(report['offline_serials'])}")
            for event in report.get("process_events") or []:
                self._say(f"  {event['at']} {event['process']} {event['event']} (pid {event['pid']})")
        say = self._say_to_stderr if as_json else self._say
        say("Acceptance checks:")
        for check in report["checks"]:
            say(f"  [{'ok' if check['ok'] else 'FAILED'}] {check['name']}: {check['value']}")
        self.stdout.flush()
        # Temporal's client threads can crash at interpreter exit (sdk-python#300): leave without teardown.
        sys.stderr.flush()
        os._exit(0 if report["checks_passed"] else 1)

    def _say(self, message: str) -> None:
        self.stdout.write(message)
        self.stdout.flush()

    def _say_to_stderr(self, message: str) -> None:
        sys.stderr.write(f"{message}\n")
        sys.stderr.flush()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
