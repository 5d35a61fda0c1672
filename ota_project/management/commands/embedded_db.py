"""`python manage.py embedded_db start|stop|status|url`: the embedded PostgreSQL of `make run` (data in .data/)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ota_project import embedded_db


class Command(BaseCommand):
    help = (
        "Control the embedded PostgreSQL server in OTA_DATA_DIR/postgres (unix socket only): start (initialise "
        "once, start, wait, create the database; a running server is left as is), stop, status, url."
    )
    requires_system_checks: list[str] = []  # runs before the database exists

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["start", "stop", "status", "url"])

    def handle(self, *args: Any, **options: Any) -> None:
        data_dir = Path(settings.DATA_DIR)
        action = options["action"]
        if action == "url":
            self.stdout.write(embedded_db.url(data_dir))
            return
        if action == "status":
            found = embedded_db.status(data_dir)
            state = f"running (pid {found.pid})" if found.running else "stopped"
            self.stdout.write(f"embedded PostgreSQL in {found.pgdata}: {state}; {found.url}")
            if not found.running:
                raise CommandError("not running", returncode=3)  # pg_ctl status's code for "not running"
            return
        if action == "start":
            if os.environ.get("DATABASE_URL"):
                self.stdout.write("DATABASE_URL is set: the embedded PostgreSQL is not needed, not starting it")
                return
            try:
                found = embedded_db.start(data_dir)
            except embedded_db.EmbeddedDbError as err:
                raise CommandError(str(err)) from err
            self.stdout.write(f"embedded PostgreSQL running (pid {found.pid}): {found.url}")
            return
        stopped = embedded_db.stop(data_dir)
        self.stdout.write("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
