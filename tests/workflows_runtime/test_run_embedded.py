"""`manage.py run_embedded` (what `make run` ends with) starts everything, serves, and stops everything on Ctrl-C,
the embedded PostgreSQL included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from ota_project import embedded_db
from ota_project.net import free_port, port_answers
from tests.temporal_support import REPO_ROOT, wait_until


def _children_of(pid: int) -> set[int]:
    """Direct children of `pid`, read from /proc."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # fields after the parenthesised command name: state, ppid, ...
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _postgres_processes_of(pgdata: Path) -> list[int]:
    """PostgreSQL processes (postmaster and backends) working in `pgdata`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")) == pgdata:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_run_embedded_starts_database_temporal_worker_and_web_and_stops_them_all_on_sigint(embedded_data_dir):
    tmp_path = embedded_data_dir
    web_port, temporal_port, ui_port, device_port = free_port(), free_port(), free_port(), free_port()
    environment = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env = {
        **environment,  # no DATABASE_URL: the embedded PostgreSQL in OTA_DATA_DIR, as `make run` has it
        "OTA_DATA_DIR": str(tmp_path),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{temporal_port}",
        "TEMPORAL_NAMESPACE": "default",
        "TEMPORAL_TASK_QUEUE": "ota-rollouts",
        "PYTHONUNBUFFERED": "1",
    }
    manage = [sys.executable, str(REPO_ROOT / "manage.py")]
    # What `make run` does before run_embedded: the token, start the database, migrate (run_embedded reuses the
    # server). The device CA's issuing key goes into that token when nginx's configuration is generated.
    subprocess.run([*manage, "softhsm_setup"], env=env, cwd=REPO_ROOT, check=True, timeout=120)
    subprocess.run([*manage, "embedded_db", "start"], env=env, cwd=REPO_ROOT, check=True, timeout=120)
    database_pid = embedded_db.status(tmp_path).pid
    assert database_pid is not None
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], env=env, cwd=REPO_ROOT, check=True, timeout=300)
    log_path = tmp_path / "run_embedded.log"
    with log_path.open("wb") as log:
        launcher = subprocess.Popen(
            [
                *manage,
                "run_embedded",
                "--host",
                "127.0.0.1",
                "--port",
                str(web_port),
                "--temporal-ui-port",
                str(ui_port),
                "--device-port",
                str(device_port),
            ],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def output() -> str:
        return log_path.read_text(errors="replace")

    try:

        def banner_printed() -> bool:
            assert launcher.poll() is None, f"run_embedded exited early:\n{output()}"
            return "  Web app:" in output()

        wait_until(banner_printed, 90, "run_embedded to print its banner", interval=0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=10) as response:
            assert response.status == 200
        assert port_answers("127.0.0.1", temporal_port)
        wait_until(lambda: port_answers("127.0.0.1", ui_port), 30, "the Temporal UI")
        assert f"http://127.0.0.1:{ui_port}/namespaces/default/workflows" in output()
        assert f"http://127.0.0.1:{web_port}/" in output()
        wait_until(lambda: "temporal_worker: polling task queue ota-rollouts" in output(), 60, "the worker to poll")
        assert (tmp_path / "temporal.db").exists()
        assert embedded_db.status(tmp_path).pid == database_pid  # reused, not restarted
        assert f"postgres://postgres@/ota?host={tmp_path}/postgres" in output()
        # The device port: nginx with mutual TLS, its configuration and the device CA generated into the data dir.
        assert port_answers("127.0.0.1", device_port)
        assert f"https://127.0.0.1:{device_port}/device/v1/" in output()
        assert (tmp_path / "nginx" / "nginx.conf").exists() and (tmp_path / "pki" / "ca-bundle.pem").exists()
        children = _children_of(launcher.pid)
        assert len(children) == 4, output()  # temporal dev server, worker, web, nginx
        # The web app is gunicorn's master with its gthread workers (grandchildren), its access log on the terminal.
        assert "Using worker: gthread" in output()
        wait_until(lambda: '"GET / HTTP/1.1" ' in output(), 10, "the access log line")
        grandchildren = set().union(*(_children_of(pid) for pid in children))
        assert len(grandchildren) >= 2, output()

        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=90) == 0, output()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()

    assert not [pid for pid in children | grandchildren if _alive(pid)], output()
    assert not port_answers("127.0.0.1", web_port)
    assert not port_answers("127.0.0.1", device_port)
    assert not port_answers("127.0.0.1", temporal_port)
    assert "temporal_worker: stopped" in output()
    assert "run_embedded: stopped the embedded PostgreSQL" in output()
    assert "run_embedded: stopped" in output()
    assert not embedded_db.is_running(tmp_path)
    assert not _postgres_processes_of(embedded_db.pgdata(tmp_path)), "a PostgreSQL process outlived run_embedded"


def test_a_management_command_names_the_fix_when_the_embedded_database_is_not_running(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env["OTA_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "manage.py"), "migrate", "--noinput"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "embedded_db start" in result.stderr
