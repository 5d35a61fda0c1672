"""The embedded PostgreSQL of `make run`: initialised once, started once, found again after a crash, stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg

from ota_project import embedded_db


def _wait_dead(pid: int) -> None:
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]:
        assert time.monotonic() < deadline, f"process {pid} did not die"
        time.sleep(0.05)


def test_start_initialises_listens_only_on_a_socket_in_the_data_dir_and_creates_the_database(embedded_data_dir):
    found = embedded_db.start(embedded_data_dir)
    assert found.running
    assert found.socket_dir == embedded_data_dir.resolve() / "postgres"
    assert (found.socket_dir / ".s.PGSQL.5432").is_socket()
    with psycopg.connect(found.url.replace("postgres://", "postgresql://")) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("ota",)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("",)  # no TCP port to clash with


def test_a_second_start_finds_the_server_running(embedded_data_dir):
    first = embedded_db.start(embedded_data_dir)
    second = embedded_db.start(embedded_data_dir)
    assert second.pid == first.pid


def test_start_after_a_crash_ignores_the_stale_postmaster_pid(embedded_data_dir):
    crashed = embedded_db.start(embedded_data_dir).pid
    assert crashed is not None
    os.kill(crashed, signal.SIGKILL)
    _wait_dead(crashed)
    assert (embedded_db.pgdata(embedded_data_dir) / "postmaster.pid").exists()
    assert not embedded_db.is_running(embedded_data_dir)
    restarted = embedded_db.start(embedded_data_dir)
    assert restarted.running and restarted.pid != crashed


def test_a_postmaster_pid_naming_another_program_is_not_a_running_server(embedded_data_dir):
    embedded_db.start(embedded_data_dir)
    embedded_db.stop(embedded_data_dir)
    # After a reboot the PID in a stale postmaster.pid may belong to something else; PostgreSQL would refuse.
    with subprocess.Popen(["sleep", "60"]) as other:
        pid_file = embedded_db.pgdata(embedded_data_dir) / "postmaster.pid"
        pid_file.write_text(f"{other.pid}\n{embedded_db.pgdata(embedded_data_dir)}\n0\n5432\n\n\n  0 0\nready\n")
        try:
            assert not embedded_db.is_running(embedded_data_dir)
            assert embedded_db.start(embedded_data_dir).running
        finally:
            other.kill()


def test_stop_stops_the_server_and_is_a_no_op_the_second_time(embedded_data_dir):
    pid = embedded_db.start(embedded_data_dir).pid
    assert pid is not None
    assert embedded_db.stop(embedded_data_dir) is True
    _wait_dead(pid)
    assert not embedded_db.is_running(embedded_data_dir)
    assert embedded_db.stop(embedded_data_dir) is False


def test_url_names_the_socket_directory_whether_or_not_the_server_runs(tmp_path):
    assert embedded_db.url(tmp_path) == f"postgres://postgres@/ota?host={tmp_path.resolve()}/postgres"


def test_a_data_dir_too_deep_for_a_unix_socket_puts_the_socket_in_a_private_temp_dir(tmp_path):
    deep = tmp_path / ("d" * 100)
    assert embedded_db.socket_dir(deep) != embedded_db.pgdata(deep)
    assert len(str(embedded_db.socket_dir(deep) / ".s.PGSQL.5432")) <= 100
