"""A Celery worker keeps its database connection across tasks (a telemetry task must not open a PostgreSQL
connection and plan its prepared statements again each time), and Django's own rule still closes an obsolete or
broken one around every task a worker runs, never around an eager task (it runs inside its caller's transaction)."""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import pytest
from celery.fixups.django import DjangoWorkerFixup  # type: ignore[attr-defined]  # not in the stubs
from celery.signals import task_postrun, task_prerun
from django.db import connection

from ota_project.celery import app

pytestmark = pytest.mark.django_db(transaction=True)


class _Task:
    """What the signals receive of a task: its request (eager or run by a worker)."""

    def __init__(self, *, eager: bool):
        self.request = SimpleNamespace(is_eager=eager)


def test_celerys_django_fixup_keeps_the_connection_between_tasks():
    connection.ensure_connection()
    raw = connection.connection
    fixup = DjangoWorkerFixup(app)
    for _ in range(10):  # before and after five tasks
        fixup.close_database()
    assert connection.connection is raw


@pytest.mark.parametrize("signal", [task_prerun, task_postrun])
@pytest.mark.parametrize(("eager", "closes"), [(False, 1), (True, 0)])
def test_around_a_worker_task_django_closes_an_obsolete_connection_never_around_an_eager_one(signal, eager, closes):
    task = _Task(eager=eager)
    with mock.patch("django.db.close_old_connections") as close_old:
        signal.send(sender=task, task=task, task_id="t", args=(), kwargs={})
    assert close_old.call_count == closes
    assert all(call == mock.call() for call in close_old.call_args_list)
