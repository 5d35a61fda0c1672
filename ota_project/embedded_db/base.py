"""Django database backend for the embedded default: PostgreSQL's, naming the fix when the server is not running.

Settings select it (`ENGINE = "ota_project.embedded_db"`) only when DATABASE_URL is unset. Connecting to a stopped
embedded server would otherwise fail with psycopg's "No such file or directory" about a socket path.
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.postgresql import base as postgresql

from ota_project import embedded_db


class DatabaseWrapper(postgresql.DatabaseWrapper):
    """PostgreSQL on the embedded server's unix socket; ImproperlyConfigured when that server is down."""

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        try:
            return super().get_new_connection(conn_params)
        except psycopg.OperationalError as err:
            if embedded_db.is_running(settings.DATA_DIR):
                raise
            raise ImproperlyConfigured(
                f"DATABASE_URL is unset and the embedded PostgreSQL in {embedded_db.pgdata(settings.DATA_DIR)} is "
                "not running. Start it with `python manage.py embedded_db start` (`make run` does), or set "
                "DATABASE_URL to a PostgreSQL server."
            ) from err
