"""The drill stack as a process manager: what dies or is killed comes back after its delay, and the record says
when (rollouts.drill.stack.Supervisor on real child processes)."""

from __future__ import annotations

import sys
import time

import pytest

from rollouts.drill import stack as stack_module
from rollouts.drill.stack import Child, Supervisor
from tests.temporal_support import wait_until


def python_child(tmp_path, name: str, code: str, ready_mark: str | None = None) -> Child:
    child = Child(name, [sys.executable, "-u", "-c", code], {}, tmp_path / f"{name}.log")
    if ready_mark is not None:
        child.ready_check = lambda: child.logged_since_start(ready_mark)
    return child


@pytest.fixture
def supervised(tmp_path):
    started: list[Supervisor] = []

    def _make(*children: Child, restart_after: float = 0.2) -> Supervisor:
        for child in children:
            child.start()
        supervisor = Supervisor(children, restart_after=restart_after).start()
        started.append(supervisor)
        return supervisor

    yield _make
    for supervisor in started:
        supervisor.stop()
        for child in supervisor.children:
            child.kill()


def test_a_killed_process_is_restarted_after_the_delay_it_was_given_and_each_step_is_recorded(tmp_path, supervised):
    worker = python_child(tmp_path, "worker", "import time; print('polling', flush=True); time.sleep(60)", "polling")
    supervisor = supervised(worker)
    first_pid = worker.pid
    wait_until(lambda: worker.logged_since_start("polling"), 10, "the first process")
    killed_at = time.monotonic()
    supervisor.kill("worker", restart_after=1.0)
    assert not worker.alive  # SIGKILL, reaped at once
    wait_until(lambda: [e.event for e in supervisor.events] == ["killed", "restarted", "ready"], 15, "the restart")
    assert time.monotonic() - killed_at >= 1.0
    killed, restarted, ready = supervisor.events
    assert killed.pid == first_pid and restarted.pid == ready.pid == worker.pid != first_pid
    assert killed.at < restarted.at <= ready.at
    assert (restarted.at - killed.at).total_seconds() >= 1.0
    assert worker.alive and worker.restarts == 1
    # The restarted process logs to the same file; readiness counted only its own line.
    assert (tmp_path / "worker.log").read_text().count("polling") == 2


def test_a_process_that_dies_on_its_own_is_recorded_with_its_exit_status_and_restarted(tmp_path, supervised):
    web = python_child(tmp_path, "web-0", "import sys, time; time.sleep(0.3); sys.exit(3)")
    supervisor = supervised(web)
    wait_until(lambda: [e.event for e in supervisor.events][:2] == ["died", "restarted"], 10, "death and restart")
    died = supervisor.events[0]
    assert died.process == "web-0" and died.detail == "exit status 3"
    assert supervisor.gave_up is None


def test_a_crash_looping_process_is_given_up_after_the_restart_budget(tmp_path, supervised, monkeypatch):
    monkeypatch.setattr(stack_module, "MAX_RESTARTS", 2)
    broken = python_child(tmp_path, "worker", "raise SystemExit(1)")
    supervisor = supervised(broken, restart_after=0.05)
    wait_until(lambda: supervisor.gave_up is broken, 10, "the supervisor to give up")
    assert [e.event for e in supervisor.events].count("restarted") == 2
    assert [e.event for e in supervisor.events].count("died") == 3
