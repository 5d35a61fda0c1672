"""Full-size fleet drills (not a test): the acceptance outcomes of issues #4 and #9, each drill in its own process.

Run on PostgreSQL with a scratch database, e.g.
`DATABASE_URL=postgres://postgres@127.0.0.1:5432/ota_drill_bench python -m bench.drill [--only healthy ...]`.
It migrates the database, runs `manage.py fleet_drill --json` once per scenario (sizes of the issue, plus a
1,000-device healthy drill for the 5-minute budget), checks each report against the expected outcome and
writes every report, with its wall-clock seconds and verdict, to bench/results/drill-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# (label, scenario, devices)
RUNS = (
    ("healthy-1000", "healthy", 1000),
    ("bad-release-2000", "bad-release", 2000),
    ("flaky-network-500", "flaky-network", 500),
    ("power-loss-500", "power-loss", 500),
    ("offline-devices-500", "offline-devices", 500),
    ("abort-rollback-500", "abort-rollback", 500),
    ("worker-killed-at-assignment-500", "worker-killed-at-assignment", 500),
    ("worker-killed-in-halt-500", "worker-killed-in-halt", 500),
    ("worker-killed-mid-wave-500", "worker-killed-mid-wave", 500),
    ("db-connections-dropped-500", "db-connections-dropped", 500),
    ("racing-starts-500", "racing-starts", 500),
    ("healthy-500", "healthy", 500),
)
CLEAN = ("lost_deployments", "duplicated_deployments", "bricked_devices")


def expectations(label: str, report: dict[str, Any]) -> list[str]:
    """The issue's acceptance checks for this run; returns what did not hold."""
    devices = report["devices"]
    checks: list[tuple[str, bool]] = [("audit chain ok", report["audit_chain_ok"] is True)]
    checks += [(f"{key} == 0", report[key] == 0) for key in CLEAN]
    scenario = report["scenario"]
    if scenario == "healthy":
        checks.append(("every device updated", report["updated"] == devices))
        if devices == 1000:
            checks.append(("under 5 minutes", report["wall_clock_seconds"] < 300))
    elif scenario == "bad-release":
        checks += [
            ("halted in the pilot wave", report["halted"] is True and report["halted_wave"] == 0),
            ("nobody outside the pilot installed it", report["bad_release_installed_outside_pilot"] == 0),
            ("every exposed device on a good image", report["exposed_ending_on_bad_release"] == 0),
        ]
    elif scenario == "flaky-network":
        online = devices - report["offline"]
        checks += [
            ("every online device updated", report["updated"] == online),
            ("bytes downloaded <= 1.10 x needed", report["bytes_downloaded"] <= 1.10 * report["bytes_needed"]),
        ]
    elif scenario == "power-loss":
        checks.append(("power lost on 10%", report["power_losses"] == round(devices * 0.1)))
        checks.append(("all updated or on the old image", report["updated"] + report["failed"] == devices))
    elif scenario == "offline-devices":
        checks += [
            ("offline devices listed", len(report["offline_serials"]) == report["offline"] > 0),
            ("offline devices timed out", report["timed_out"] == report["offline"]),
            ("the rest updated", report["updated"] == devices - report["offline"]),
        ]
    elif scenario == "abort-rollback":
        checks += [
            ("rolled back", report["rollout_status"] == "rolled_back"),
            ("every updated device restored", report["updated"] == 0 and report["seconds_to_restore"] is not None),
        ]
    return [name for name, ok in checks if not ok]


def run(label: str, scenario: str, devices: int, seed: int) -> dict[str, Any]:
    argv = [sys.executable, "manage.py", "fleet_drill", "--scenario", scenario, "--devices", str(devices)]
    argv += ["--seed", str(seed), "--json", "--timeout", "1500"]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    seconds = round(time.monotonic() - started, 1)
    try:
        report = json.loads(done.stdout)  # exit 1 still prints the report: an acceptance check failed
    except ValueError:
        return {"label": label, "scenario": scenario, "devices": devices, "error": done.stderr[-2000:]}
    report["label"] = label
    report["process_wall_clock_seconds"] = seconds
    # The outcome for this run, then every acceptance check of the drill itself that failed.
    failed = expectations(label, report)
    failed += [f"check: {check['name']}" for check in report.get("checks", []) if not check["ok"]]
    report["failed_expectations"] = failed
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.drill")
    parser.add_argument("--only", nargs="*", default=None, help="Labels to run (default: all).")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / f"drill-{date.today()}.json")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ota_project.settings")
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, check=True)
    results = []
    for label, scenario, devices in RUNS:
        if args.only and label not in args.only:
            continue
        report = run(label, scenario, devices, args.seed)
        results.append(report)
        summary = {k: report.get(k) for k in ("label", "wall_clock_seconds", "failed_expectations", "error")}
        print(json.dumps(summary), flush=True)
        args.output.write_text(json.dumps({"machine": f"{os.cpu_count()} cores", "drills": results}, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
