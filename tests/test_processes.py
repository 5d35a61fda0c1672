"""The one process supervisor of `make run` and the drill (ota_project.processes) on real child processes: what
dies or is killed comes back after its delay and the record says when; a death ends a run without restarts; the
stop signal reaches each child once, the `stops_last` ones after the others; and the web app under gunicorn with
the project's configuration is killed and restarted whole, master and workers."""

from __future__ import annotations

import functools
import os
import runpy
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ota_project import processes
from ota_project.db import database_url
from ota_project.net import free_port
from ota_project.processes import Child, ProcessError, Supervisor, web_server
from tests.temporal_support import wait_until


def python_child(
    tmp_path: Path, name: str, code: str, ready_mark: str | None = None, *, restartable: bool = False
) -> Child:
    child = Child(name, [sys.executable, "-u", "-c", code], {}, tmp_path / f"{name}.log", restartable=restartable)
    if ready_mark is not None:
        child.ready_check = lambda: child.logged_since_start(ready_mark)
    return child


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


@pytest.fixture
def supervised():
    started: list[Supervisor] = []

    def _make(*children: Child, restart_after: float = 0.2) -> Supervisor:
        supervisor = Supervisor(restart_after=restart_after, say=lambda message: None)
        for child in children:
            supervisor.start(child)
        started.append(supervisor)
        return supervisor.watch()

    yield _make
    for supervisor in started:
        supervisor.stop_all()


def test_a_killed_process_is_restarted_after_the_delay_it_was_given_and_each_step_is_recorded(tmp_path, supervised):
    code = "import time; print('polling', flush=True); time.sleep(60)"
    worker = python_child(tmp_path, "worker", code, "polling", restartable=True)
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
    web = python_child(tmp_path, "web", "import sys, time; time.sleep(0.3); sys.exit(3)", restartable=True)
    supervisor = supervised(web)
    wait_until(lambda: [e.event for e in supervisor.events][:2] == ["died", "restarted"], 10, "death and restart")
    died = supervisor.events[0]
    assert died.process == "web" and died.detail == "exit status 3"
    assert supervisor.gave_up is None


def test_a_crash_looping_process_is_given_up_after_the_restart_budget(tmp_path, supervised, monkeypatch):
    monkeypatch.setattr(processes, "MAX_RESTARTS", 2)
    broken = python_child(tmp_path, "worker", "raise SystemExit(1)", restartable=True)
    supervisor = supervised(broken, restart_after=0.05)
    wait_until(lambda: supervisor.gave_up is broken, 10, "the supervisor to give up")
    assert [e.event for e in supervisor.events].count("restarted") == 2
    assert [e.event for e in supervisor.events].count("died") == 3


def test_without_restarts_the_first_death_ends_the_wait_and_is_recorded_once(tmp_path):
    supervisor = Supervisor(say=lambda message: None)
    steady = supervisor.start(python_child(tmp_path, "worker", "import time; time.sleep(60)"))
    supervisor.start(python_child(tmp_path, "web", "import sys; print('port taken'); sys.exit(4)"))
    try:
        with pytest.raises(ProcessError, match="web exited with code 4") as raised:
            supervisor.wait()
        assert "port taken" in str(raised.value)  # the log tail says why
        assert steady.alive  # stopping the others is the launcher's call (stop_all)
        supervisor.tick()
        assert [(e.process, e.event) for e in supervisor.events] == [("web", "died")]
    finally:
        supervisor.stop_all()
    assert not steady.alive


def test_the_stop_signal_reaches_each_child_once_and_the_last_ones_stop_after_the_others(tmp_path):
    # Each child counts the SIGINTs it receives and writes the count and the time when it exits; the worker takes
    # 0.5 s to finish, and the server (stops_last) must not see the signal before the worker is gone.
    code = (
        "import signal, sys, time\n"
        "count = 0\n"
        "def on_int(signum, frame):\n"
        "    global count\n"
        "    count += 1\n"
        "signal.signal(signal.SIGINT, on_int)\n"
        "print('up', flush=True)\n"
        "while not count:\n"
        "    time.sleep(0.01)\n"
        "time.sleep(float(sys.argv[1]))\n"
        "print(f'stopped {count} {time.time()}', flush=True)\n"
    )
    server = Child("temporal", [sys.executable, "-u", "-c", code, "0"], {}, tmp_path / "temporal.log", stops_last=True)
    worker = Child("worker", [sys.executable, "-u", "-c", code, "0.5"], {}, tmp_path / "worker.log")
    supervisor = Supervisor(say=lambda message: None)
    for child in (server, worker):
        child.ready_check = functools.partial(child.logged_since_start, "up")
        supervisor.start(child)
        supervisor.wait_ready(child, child.name)
    supervisor.on_signal(signal.SIGINT, None)
    supervisor.on_signal(signal.SIGINT, None)  # a second Ctrl-C is not forwarded again
    supervisor.stop_all()

    def stopped(child: Child) -> tuple[int, float]:
        _, count, at = child.log_tail().split("\n")[-2].split()  # the last line: "stopped COUNT TIME"
        return int(count), float(at)

    (server_count, server_at), (worker_count, worker_at) = stopped(server), stopped(worker)
    assert server_count == worker_count == 1
    assert server_at > worker_at


def test_a_kill_takes_the_whole_process_group_down(tmp_path, supervised):
    # Like gunicorn: a leader that forked a helper into its own process group.
    code = (
        "import subprocess, sys, time\n"
        "helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('helper', helper.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    leader = python_child(tmp_path, "web", code, "helper", restartable=True)
    supervisor = supervised(leader, restart_after=30)
    wait_until(leader.ready_check, 10, "the helper")
    group = leader.pid
    assert group is not None
    assert len(group_members(group)) == 2
    supervisor.kill("web", restart_after=30)
    wait_until(lambda: not group_members(group), 5, "the whole group to die")


def test_the_web_app_runs_under_gunicorn_and_is_killed_and_restarted_whole(tmp_path, supervised):
    port = free_port()
    env = {**os.environ, "OTA_WEB_WORKERS": "2", "OTA_WEB_THREADS": "4", "OTA_DATA_DIR": str(tmp_path)}
    web = web_server("web", "127.0.0.1", port, env=env, log_path=tmp_path / "web.log")
    web.restartable = True
    supervisor = supervised(web, restart_after=0.2)
    supervisor.wait_ready(web, "gunicorn")

    def login_page() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=30) as response:
            return response.status

    assert login_page() == 200
    first = web.pid
    assert first is not None
    wait_until(lambda: len(group_members(first)) == 3, 30, "the master and its two workers")
    log = web.log_tail()
    assert "Using worker: gthread" in log and "Listening at: http://127.0.0.1:" in log
    assert "Control socket" not in log  # a per-user path that servers side by side would fight over

    supervisor.kill("web", restart_after=0.2)
    wait_until(lambda: not group_members(first), 5, "the master and the workers to die together")
    wait_until(lambda: [e.event for e in supervisor.events] == ["killed", "restarted", "ready"], 30, "the restart")
    assert login_page() == 200  # the same port again (SO_REUSEADDR), a new master
    assert web.pid != first

    second = web.pid
    assert second is not None
    supervisor.stop_all()
    assert not group_members(second)


def test_the_gunicorn_configuration_is_read_from_the_environment(monkeypatch):
    for name in ("OTA_WEB_WORKERS", "OTA_WEB_THREADS", "OTA_WEB_ACCESS_LOG", "OTA_WEB_BIND", "OTA_WEB_MAX_REQUESTS"):
        monkeypatch.delenv(name, raising=False)
    defaults = runpy.run_path(str(processes.GUNICORN_CONF))
    assert defaults["worker_class"] == "gthread"
    assert defaults["workers"] == max(2, len(os.sched_getaffinity(0)))
    assert defaults["threads"] == 8
    assert defaults["accesslog"] is None  # off unless asked for
    assert defaults["bind"] == ["127.0.0.1:8000"]
    assert defaults["max_requests_jitter"] == defaults["max_requests"] // 10 > 0
    assert "sendfile" not in defaults  # gunicorn's default: on
    assert Path(defaults["chdir"]) == processes.REPO_ROOT
    assert defaults["control_socket_disable"] is True

    monkeypatch.setenv("OTA_WEB_WORKERS", "5")
    monkeypatch.setenv("OTA_WEB_THREADS", "16")
    monkeypatch.setenv("OTA_WEB_ACCESS_LOG", "-")
    monkeypatch.setenv("OTA_WEB_BIND", "0.0.0.0:8000, [::]:8000")
    monkeypatch.setenv("OTA_WEB_MAX_REQUESTS", "0")
    tuned = runpy.run_path(str(processes.GUNICORN_CONF))
    assert (tuned["workers"], tuned["threads"], tuned["accesslog"]) == (5, 16, "-")
    assert tuned["bind"] == ["0.0.0.0:8000", "[::]:8000"]
    assert tuned["max_requests"] == tuned["max_requests_jitter"] == 0


@pytest.mark.django_db(transaction=True)
def test_under_gunicorn_metrics_sum_the_request_histograms_of_every_worker(tmp_path, supervised, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    runpy.run_path(str(processes.GUNICORN_CONF))
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ  # reading the configuration changes no environment
    port = free_port()
    env = {
        **os.environ, "OTA_WEB_WORKERS": "2", "OTA_WEB_THREADS": "2", "OTA_DATA_DIR": str(tmp_path),
        "OTA_METRICS_TOKEN": "gunicorn-test-token",
        "DATABASE_URL": database_url(),  # the test database: the scrape's gauges read it
    }  # fmt: skip
    stale = tmp_path / "prometheus" / "histogram_999999.db"
    stale.parent.mkdir()
    stale.write_bytes(b"left over from an earlier run")
    web = web_server("web", "127.0.0.1", port, env=env, log_path=tmp_path / "web.log")
    supervisor = supervised(web)
    supervisor.wait_ready(web, "gunicorn")
    assert not stale.exists()  # emptied at start: an earlier run's samples are not added
    for _ in range(12):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=30) as response:
            assert response.status == 200
    scrape = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer gunicorn-test-token"}
    )
    with urllib.request.urlopen(scrape, timeout=30) as response:
        text = response.read().decode()
    count = 'ota_http_request_duration_seconds_count{method="GET",route="login",status="2xx"} 12.0'
    assert count in text, [line for line in text.splitlines() if 'route="login"' in line]
    assert list((tmp_path / "prometheus").glob("histogram_*.db"))  # the workers write to the shared directory
    supervisor.stop_all()
