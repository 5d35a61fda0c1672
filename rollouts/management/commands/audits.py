"""`python manage.py audits run [KIND ...]` runs recurring audits now (all of them by default), as their Temporal
schedules would; `python manage.py audits list [--kind KIND] [--all]` prints the open (or every) finding (also the signing expiry
audit's, which `image_repository expiry-audit` runs).

For the 3 a.m. operator: the schedules `audit-<kind>` run these by themselves; run one by hand after fixing what it
flagged to see the finding resolve without waiting for the next firing."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.audit.choices import AuditKind
from approvals.audit.findings import audit_finding_list
from rollouts.audits import AUDITS, audit_run


class Command(BaseCommand):
    help = "Run the recurring audits now, or list their findings."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="command", required=True)
        run = commands.add_parser("run", help="Run audits now (all when no kind is given).")
        run.add_argument("kinds", nargs="*", metavar="KIND", help=", ".join(AUDITS))
        listing = commands.add_parser("list", help="Print open findings.")
        listing.add_argument("--kind", choices=AuditKind.values, default="")
        listing.add_argument("--all", action="store_true", help="Include resolved findings.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["command"] == "run":
            unknown = sorted(set(options["kinds"]) - set(AUDITS))
            if unknown:
                raise CommandError(f"Unknown audit {', '.join(unknown)}; one of {', '.join(AUDITS)}")
            for kind in options["kinds"] or list(AUDITS):
                synced = audit_run(kind=kind)
                self.stdout.write(
                    f"{kind}: {synced.open} open ({synced.critical} critical); opened {synced.opened}, "
                    f"resolved {synced.resolved}"
                )
            return
        if options["command"] == "list":
            for finding in audit_finding_list(kind=options["kind"], include_resolved=options["all"]).iterator():
                state = f"resolved {finding.resolved_at:%Y-%m-%d %H:%M}" if finding.resolved_at else "open"
                self.stdout.write(
                    f"{finding.severity:8} {finding.kind:16} {finding.subject_type}:{finding.subject} "
                    f"{finding.code} ({state}) {finding.message}"
                )
            return
        raise CommandError(f"Unknown command {options['command']!r}")
