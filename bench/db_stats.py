"""What the benchmarked server's database did, read from PostgreSQL's own statistics."""

from __future__ import annotations

import time


def commits() -> int:
    """Transactions the database committed so far (each autocommit statement is one): the difference over a
    measurement is what it cost the database. Statistics are flushed within a second: this waits that long."""
    from django.db import connection

    time.sleep(1.1)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])
