"""The cluster under an :class:`~sa_pgdispatch.testing.EphemeralPostgres`: its private
temporary directory and the PostgreSQL programs run on it (``initdb``, single-user
``postgres``, ``pg_ctl start`` / ``stop``).

When the current process is root, the cluster is owned by and the programs run as the
unprivileged OS user :data:`HARNESS_USER` (created if missing). Clusters not removed are
removed at interpreter exit (``atexit``) and on SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from sa_pgdispatch.testing.errors import HarnessError

__all__ = ["HARNESS_USER", "TEMP_PREFIX", "Cluster", "StopMode"]

#: Unprivileged OS user the server runs as when the harness runs as root.
HARNESS_USER = "sa_pgdispatch"
#: Prefix of the temporary directories holding ephemeral clusters.
TEMP_PREFIX = "sa-pgdispatch-"

StopMode = Literal["smart", "fast", "immediate"]

_CONF_FILE = "sa_pgdispatch.conf"
# A Unix socket path must fit in sun_path (107 bytes + NUL on Linux).
_MAX_SOCKET_DIR_LEN = 107 - len("/.s.PGSQL.65535")
_LOG_TAIL_LINES = 40


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by whoever adopted it) is not running.
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return status.rpartition(")")[2].split()[0] != "Z"


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _world_traversable(path: Path) -> bool:
    for part in (path, *path.parents):
        try:
            mode = part.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


def _ensure_harness_user() -> tuple[int, int]:
    """uid and gid of :data:`HARNESS_USER`, creating the system user when missing."""
    try:
        entry = pwd.getpwnam(HARNESS_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        result = subprocess.run(
            [
                useradd,
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                HARNESS_USER,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        try:  # another process may have created it at the same time
            entry = pwd.getpwnam(HARNESS_USER)
        except KeyError:
            raise HarnessError(
                f"running as root, PostgreSQL must run as an unprivileged user, but "
                f"`useradd {HARNESS_USER}` failed (exit {result.returncode}): "
                f"{result.stderr.strip()}"
            ) from None
    return entry.pw_uid, entry.pw_gid


# ---------------------------------------------------------------------------------------
# the safety net: clusters not removed are removed at exit and on SIGTERM

_LIVE: set[Cluster] = set()
_LIVE_LOCK = threading.Lock()
_PREVIOUS_SIGTERM: Any = None
_SIGTERM_INSTALLED = False


def _remove_live_clusters() -> None:
    with _LIVE_LOCK:
        clusters = list(_LIVE)
    for cluster in clusters:
        with contextlib.suppress(Exception):
            cluster.remove(mode="immediate")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _remove_live_clusters()
    previous = _PREVIOUS_SIGTERM
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_safety_net() -> None:
    """Remove live clusters at interpreter exit and on SIGTERM."""
    global _PREVIOUS_SIGTERM, _SIGTERM_INSTALLED
    if _SIGTERM_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_IGN,):
        _SIGTERM_INSTALLED = True
        return
    _PREVIOUS_SIGTERM = previous if callable(previous) else None
    signal.signal(signal.SIGTERM, _on_sigterm)
    _SIGTERM_INSTALLED = True


atexit.register(_remove_live_clusters)


# ---------------------------------------------------------------------------------------
# the cluster


class Cluster:
    """A private temporary directory (data directory, Unix socket, server log) made at
    construction, and the PostgreSQL programs of *bin_dir* run on it.

    The directory is short enough for the socket path and reachable by the server's OS
    user; it is removed by :meth:`remove` (or by the safety net).
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.run_as: tuple[int, int] | None = None
        if os.geteuid() == 0:
            self.run_as = _ensure_harness_user()
        self._base: Path | None = self._make_base_dir()
        with _LIVE_LOCK:
            _LIVE.add(self)
        _install_safety_net()

    @property
    def base(self) -> Path:
        """The temporary directory holding everything (data, socket, log)."""
        if self._base is None:
            raise HarnessError("the server has not been started (or was cleaned up)")
        return self._base

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log_path(self) -> Path:
        return self.base / "postgres.log"

    @property
    def os_user(self) -> str:
        """The OS user the server runs as."""
        uid = self.run_as[0] if self.run_as is not None else os.geteuid()
        return pwd.getpwuid(uid).pw_name

    def postmaster_pid(self) -> int | None:
        """PID of the running postmaster, or ``None`` when the server is not running."""
        if self._base is None:
            return None
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first_line.strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    @property
    def running(self) -> bool:
        return self.postmaster_pid() is not None

    # -- process plumbing ------------------------------------------------------------

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        if self._base is not None:
            env["HOME"] = str(self._base)
        return env

    def run(
        self, args: list[str], *, input: str | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        """Run a program as the server's OS user, in the cluster's directory."""
        user = group = None
        extra_groups: list[int] | None = None
        if self.run_as is not None:
            user, group = self.run_as
            extra_groups = []
        try:
            return subprocess.run(
                args,
                input=input,
                capture_output=True,
                text=True,
                env=self._child_env(),
                cwd=str(self._base) if self._base is not None else None,
                timeout=timeout,
                check=False,
                user=user,
                group=group,
                extra_groups=extra_groups,
            )
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(
                f"{args[0]} timed out after {timeout}s{self.log_excerpt()}"
            ) from exc
        except OSError as exc:
            raise HarnessError(f"cannot run {args[0]}: {exc}") from exc

    def _chown(self, path: Path) -> None:
        if self.run_as is not None:
            os.chown(path, *self.run_as)

    def log_excerpt(self, offset: int = 0) -> str:
        """The last lines the server logged after *offset*, as a message suffix."""
        if self._base is None:
            return ""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        lines = text.splitlines()[-_LOG_TAIL_LINES:]
        if not lines:
            return ""
        return f"\n--- last lines of {self.log_path} ---\n" + "\n".join(lines)

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    # -- creation --------------------------------------------------------------------

    def _make_base_dir(self) -> Path:
        parent = Path(tempfile.gettempdir())
        too_long = len(str(parent)) + len(TEMP_PREFIX) + 10 > _MAX_SOCKET_DIR_LEN
        if too_long or (self.run_as is not None and not _world_traversable(parent)):
            # The server user must reach its directory; the socket path must be short.
            parent = Path("/tmp")  # a private 0700 mkdtemp dir is made below it
        base = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent))
        self._chown(base)
        return base

    def initdb(self, superuser: str) -> None:
        """``initdb`` (trust authentication, UTF8) with a ``pg_hba.conf`` that trusts the
        Unix socket and loopback only, and a postgresql.conf that includes the settings
        :meth:`write_config` writes."""
        initdb = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            superuser,
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]
        result = self.run([*initdb, "--locale=C.UTF-8"])
        if result.returncode != 0 and "locale" in (result.stderr + result.stdout).lower():
            shutil.rmtree(self.data_dir, ignore_errors=True)
            result = self.run([*initdb, "--locale=C"])
        if result.returncode != 0:
            raise HarnessError(
                f"initdb failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
            )

        with (self.data_dir / "postgresql.conf").open("a") as fh:
            fh.write(f"\n# Settings of the sa_pgdispatch test harness\ninclude '{_CONF_FILE}'\n")
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(
            "# sa_pgdispatch test harness: trust, loopback and Unix socket only\n"
            "# TYPE  DATABASE  USER  ADDRESS       METHOD\n"
            "local   all       all                 trust\n"
            "host    all       all   127.0.0.1/32  trust\n"
            "host    all       all   ::1/128       trust\n"
        )
        self._chown(hba)

    def create_database(self, dbname: str) -> None:
        """``CREATE DATABASE`` in single-user mode, with no library preloaded (before
        pg_cron's launcher ever starts: it would otherwise fail, and retry, until the
        database exists). Needs the settings file (:meth:`write_config`)."""
        statement = 'CREATE DATABASE "{}";\n'.format(dbname.replace('"', '""'))
        single = self.run(
            [
                str(self.bin_dir / "postgres"),
                "--single",
                "-D",
                str(self.data_dir),
                "-c",
                "shared_preload_libraries=",
                "-c",
                "log_min_messages=error",
                "postgres",
            ],
            input=statement,
        )
        if single.returncode != 0 or "ERROR:" in single.stderr:
            raise HarnessError(
                f"PostgreSQL failed to start in single-user mode to create database "
                f"{dbname!r} (exit {single.returncode}):\n{single.stdout}{single.stderr}"
            )

    def write_config(self, config: Mapping[str, str]) -> None:
        """(Re)write the settings file postgresql.conf includes."""
        lines = [f"{key} = {_conf_quote(value)}" for key, value in config.items()]
        path = self.data_dir / _CONF_FILE
        header = "# Written by sa_pgdispatch.testing; rewritten at each start\n"
        path.write_text(header + "\n".join(lines) + "\n")
        self._chown(path)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> str | None:
        """``pg_ctl start``, waiting until the server accepts connections; ``None`` once
        it does, else why not (pg_ctl's exit status and output, and what the server
        logged meanwhile)."""
        offset = self._log_size()
        result = self.run(
            [
                str(self.bin_dir / "pg_ctl"),
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                "120",
                "-s",
            ]
        )
        if result.returncode == 0:
            return None
        return (
            f"(pg_ctl exit {result.returncode}): "
            f"{(result.stdout + result.stderr).strip()}{self.log_excerpt(offset)}"
        )

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server, keeping the data directory; no-op when not running."""
        if self._base is None or not self.running:
            return
        result = self.run(
            [
                str(self.bin_dir / "pg_ctl"),
                "stop",
                "-D",
                str(self.data_dir),
                "-m",
                mode,
                "-w",
                "-t",
                "120",
                "-s",
            ]
        )
        if result.returncode != 0 and self.running:
            raise HarnessError(
                f"pg_ctl stop -m {mode} failed (exit {result.returncode}): "
                f"{(result.stdout + result.stderr).strip()}{self.log_excerpt()}"
            )

    def remove(self, mode: StopMode = "fast") -> None:
        """Stop the server (killing the postmaster if pg_ctl cannot) and remove the
        directory. Safe to call more than once."""
        base = self._base
        if base is None:
            with _LIVE_LOCK:
                _LIVE.discard(self)
            return
        try:
            self.stop(mode)
        except HarnessError:
            with contextlib.suppress(HarnessError):
                self.stop("immediate")
        pid = self.postmaster_pid()
        if pid is not None:  # pg_ctl could not stop it: kill the postmaster we started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(base, ignore_errors=True)
        if base.exists():
            shutil.rmtree(base)  # raise the real error
        self._base = None
        with _LIVE_LOCK:
            _LIVE.discard(self)
