"""Throwaway PostgreSQL servers with pg_cron, for tests, demos and benchmarks.

:class:`EphemeralPostgres` runs a private cluster from the local PostgreSQL binaries
in a temporary directory; :class:`ExistingServer` wraps a server you already have
(``SA_PGDISPATCH_TEST_DSN``). Both expose the same connection attributes (see
:class:`PgServer`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import quote, urlencode

import psycopg
from psycopg import conninfo

from sa_pgdispatch.testing.binaries import (
    find_postgres_bin,
    has_pg_tle,
    pg_cron_default_version,
    pg_major,
    require_pg_cron,
)
from sa_pgdispatch.testing.errors import HarnessError

from ..errors import ArgumentError

__all__ = [
    "CRON_MODES",
    "ENV_CRON_MODE",
    "ENV_TEST_DSN",
    "HARNESS_USER",
    "TEMP_PREFIX",
    "ConninfoMixin",
    "CronMode",
    "EphemeralPostgres",
    "ExistingServer",
    "PgServer",
    "StopMode",
    "check_pg_cron",
    "resolve_cron_mode",
    "server_from_env",
]

#: Environment variable with a libpq DSN of an existing server to test against.
ENV_TEST_DSN = "SA_PGDISPATCH_TEST_DSN"
#: Environment variable choosing how pg_cron runs jobs on ephemeral servers: ``libpq``
#: (default: a client connection per job, over ``cron.host``) or ``bgw`` (background
#: workers, ``cron.use_background_workers = on``, as managed services run it).
ENV_CRON_MODE = "SA_PGDISPATCH_CRON_MODE"
#: Unprivileged OS user the server runs as when the harness runs as root.
HARNESS_USER = "sa_pgdispatch"
#: Prefix of the temporary directories holding ephemeral clusters.
TEMP_PREFIX = "sa-pgdispatch-"

StopMode = Literal["smart", "fast", "immediate"]
CronMode = Literal["libpq", "bgw"]
#: The values of :data:`ENV_CRON_MODE` / ``EphemeralPostgres(cron_mode=...)``.
CRON_MODES: tuple[CronMode, ...] = ("libpq", "bgw")

# bgw mode: every running job and every long-lived worker of the tests is a background
# worker, and they count against max_worker_processes (default 8, shared with parallel
# query). pg_cron caps cron.max_running_jobs at max_worker_processes - 1.
_BGW_MAX_WORKER_PROCESSES = 64
_BGW_MAX_RUNNING_JOBS = 60
_BGW_SPARE_WORKERS = 4  # launcher + a few parallel-query/other workers

_SUPERUSER = "postgres"
_CONF_FILE = "sa_pgdispatch.conf"
# A Unix socket path must fit in sun_path (107 bytes + NUL on Linux).
_MAX_SOCKET_DIR_LEN = 107 - len("/.s.PGSQL.65535")
_LOG_TAIL_LINES = 40


@runtime_checkable
class PgServer(Protocol):
    """What every backend provides: where the server is and how to reach it."""

    @property
    def dsn(self) -> str:
        """libpq connection string (URI) for the superuser and the pg_cron database."""

    @property
    def url(self) -> str:
        """SQLAlchemy URL (``postgresql+psycopg://...``) equivalent to :attr:`dsn`."""

    @property
    def host(self) -> str:
        """Host name or Unix socket directory."""

    @property
    def port(self) -> int:
        """Port number."""

    @property
    def dbname(self) -> str:
        """The database pg_cron runs in (``cron.database_name``)."""

    @property
    def superuser(self) -> str:
        """The role of :attr:`dsn`."""

    def connect_dsn(
        self, user: str | None = None, dbname: str | None = None, password: str | None = None
    ) -> str:
        """libpq URI for another role and/or database on this server."""

    def connect_url(
        self, user: str | None = None, dbname: str | None = None, password: str | None = None
    ) -> str:
        """SQLAlchemy URL for another role and/or database on this server."""


def _build_uri(scheme: str, params: Mapping[str, str]) -> str:
    """A libpq/SQLAlchemy URI with host and port as query parameters.

    Putting ``host`` in the query lets it be a Unix socket directory; both libpq and
    SQLAlchemy's psycopg dialect accept that form.
    """
    user = params.get("user", "")
    password = params.get("password")
    userinfo = quote(user, safe="")
    if password is not None:
        userinfo += ":" + quote(password, safe="")
    dbname = quote(params.get("dbname", ""), safe="")
    query = {k: v for k, v in params.items() if k not in ("user", "password", "dbname")}
    qs = urlencode(query, safe="/", quote_via=quote)
    authority = f"{userinfo}@" if userinfo else ""
    return f"{scheme}://{authority}/{dbname}" + (f"?{qs}" if qs else "")


class ConninfoMixin:
    """Connection helpers shared by the backends (this module's and
    :class:`~sa_pgdispatch.testing.containers.DockerPostgres`); subclasses provide
    ``_params()``."""

    def _params(self) -> dict[str, str]:
        raise NotImplementedError

    def connect_dsn(
        self, user: str | None = None, dbname: str | None = None, password: str | None = None
    ) -> str:
        params = self._params()
        if user is not None and user != params.get("user"):
            params["user"] = user
            params.pop("password", None)
        if dbname is not None:
            params["dbname"] = dbname
        if password is not None:
            params["password"] = password
        return _build_uri("postgresql", params)

    def connect_url(
        self, user: str | None = None, dbname: str | None = None, password: str | None = None
    ) -> str:
        dsn = self.connect_dsn(user=user, dbname=dbname, password=password)
        return "postgresql+psycopg" + dsn[len("postgresql") :]

    @property
    def dsn(self) -> str:
        return self.connect_dsn()

    @property
    def url(self) -> str:
        return self.connect_url()


def _redacted(dsn: str) -> str:
    """*dsn* with its password (if any) replaced, for messages."""
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<invalid DSN>"
    if params.get("password") is None:
        return dsn
    params["password"] = "***"
    return _build_uri("postgresql", {k: str(v) for k, v in params.items() if v is not None})


def resolve_cron_mode(mode: str | None = None) -> CronMode:
    """*mode*, else ``$SA_PGDISPATCH_CRON_MODE``, else ``libpq``; checked."""
    source = "cron_mode"
    if mode is None:
        mode = os.environ.get(ENV_CRON_MODE) or None
        source = f"${ENV_CRON_MODE}"
    if mode is None:
        return "libpq"
    chosen = mode.strip().lower()
    if chosen == "libpq":
        return "libpq"
    if chosen == "bgw":
        return "bgw"
    raise HarnessError(
        f"invalid pg_cron mode {mode!r} (from {source}): expected 'libpq' (pg_cron "
        "connects with libpq for each job, the default) or 'bgw' (jobs run in background "
        "workers, cron.use_background_workers = on)"
    )


def check_pg_cron(dsn: str, *, create: bool, cron_mode: CronMode | None = None) -> str:
    """Check the server behind *dsn* runs pg_cron jobs from that database.

    Creates the extension when it is missing and *create* is true. With *cron_mode*,
    also checks that pg_cron runs jobs that way (superuser DSNs only). Returns the
    installed pg_cron version; raises :class:`HarnessError` saying what is wrong.
    """
    shown = _redacted(dsn)
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=15) as conn:
            row = conn.execute(
                "SELECT current_database(),"
                " current_setting('shared_preload_libraries'),"
                " current_setting('cron.database_name', true),"
                " (SELECT extversion FROM pg_extension WHERE extname = 'pg_cron')"
            ).fetchone()
            assert row is not None
            database, preload, cron_db, version = row
            libraries = [lib.strip() for lib in str(preload).split(",")]
            if "pg_cron" not in libraries:
                raise HarnessError(
                    f"the server at {shown} does not preload pg_cron "
                    f"(shared_preload_libraries = {preload!r}). Add "
                    f"shared_preload_libraries = 'pg_cron' and cron.database_name = '{database}' "
                    "to postgresql.conf and restart it."
                )
            if cron_db != database:
                raise HarnessError(
                    f"pg_cron on the server at {shown} runs jobs from database {cron_db!r}, "
                    f"but the DSN points at {database!r}: point the DSN at {cron_db!r} or set "
                    f"cron.database_name = '{database}'."
                )
            if version is None:
                if not create:
                    raise HarnessError(
                        f"database {database!r} at {shown} has no pg_cron extension: "
                        "run CREATE EXTENSION pg_cron in it."
                    )
                try:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
                except psycopg.Error as exc:
                    raise HarnessError(
                        f"database {database!r} at {shown} has no pg_cron extension and it "
                        f"could not be created: {exc}".strip()
                    ) from exc
                version = conn.execute(
                    "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'"
                ).fetchone()
                assert version is not None
                version = version[0]
            if cron_mode is not None:
                _check_cron_mode(conn, shown, cron_mode)
            return str(version)
    except psycopg.OperationalError as exc:
        raise HarnessError(f"cannot connect to {shown}: {exc}".strip()) from exc


def _check_cron_mode(conn: psycopg.Connection[Any], shown: str, cron_mode: CronMode) -> None:
    row = conn.execute(
        "SELECT current_setting('cron.use_background_workers', true),"
        " current_setting('max_worker_processes')::int,"
        " current_setting('cron.max_running_jobs', true)"
    ).fetchone()
    assert row is not None
    bgw_setting, max_workers, max_running = row
    if bgw_setting is None:
        if cron_mode == "bgw":
            raise HarnessError(
                f"pg_cron at {shown} has no cron.use_background_workers setting (too old "
                "for background workers): use libpq mode or a newer pg_cron"
            )
        return
    actual: CronMode = "bgw" if bgw_setting == "on" else "libpq"
    if actual != cron_mode:
        raise HarnessError(
            f"pg_cron at {shown} runs jobs in {actual} mode "
            f"(cron.use_background_workers = {bgw_setting}), not {cron_mode} mode"
        )
    if actual == "bgw" and max_workers < 2:
        raise HarnessError(
            f"pg_cron at {shown} runs jobs in background workers but max_worker_processes "
            f"= {max_workers} leaves none for jobs (cron.max_running_jobs = {max_running})"
        )


# ---------------------------------------------------------------------------------------
# Existing server (SA_PGDISPATCH_TEST_DSN)


class ExistingServer(ConninfoMixin):
    """A server that already runs, given by a libpq DSN (URI or ``key=value`` form).

    The DSN's database must be pg_cron's database (``cron.database_name``) and the
    server must preload pg_cron. :meth:`validate` checks that (and creates the
    extension when it is missing and the role may); it is called by
    :func:`server_from_env`. It cannot be stopped or restarted by the harness.
    """

    def __init__(self, dsn: str) -> None:
        try:
            parsed = conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise HarnessError(f"invalid DSN {dsn!r}: {exc}") from exc
        self._given_dsn = dsn
        self._parsed: dict[str, str] = {k: str(v) for k, v in parsed.items() if v is not None}
        self.pg_cron_version: str | None = None

    def _params(self) -> dict[str, str]:
        return dict(self._parsed)

    @property
    def dsn(self) -> str:
        return self._given_dsn

    @property
    def host(self) -> str:
        return self._parsed.get("host") or os.environ.get("PGHOST", "localhost")

    @property
    def port(self) -> int:
        return int(self._parsed.get("port") or os.environ.get("PGPORT", "5432"))

    @property
    def dbname(self) -> str:
        return self._parsed.get("dbname") or self.superuser

    @property
    def superuser(self) -> str:
        return self._parsed.get("user") or os.environ.get("PGUSER") or pwd.getpwuid(os.getuid())[0]

    def validate(self, *, create_extension: bool = True) -> ExistingServer:
        """Check pg_cron (see the class docstring); returns ``self``."""
        self.pg_cron_version = check_pg_cron(self._given_dsn, create=create_extension)
        return self

    def __repr__(self) -> str:
        return f"ExistingServer(host={self.host!r}, port={self.port}, dbname={self.dbname!r})"


def server_from_env() -> ExistingServer | None:
    """The validated server of ``$SA_PGDISPATCH_TEST_DSN``, or ``None`` when it is unset."""
    dsn = os.environ.get(ENV_TEST_DSN)
    if not dsn:
        return None
    return ExistingServer(dsn).validate()


# ---------------------------------------------------------------------------------------
# Ephemeral server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


_LIVE: set[EphemeralPostgres] = set()
_LIVE_LOCK = threading.Lock()
_PREVIOUS_SIGTERM: Any = None
_SIGTERM_INSTALLED = False


def _cleanup_live_servers() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        with contextlib.suppress(Exception):
            server.cleanup(mode="immediate")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _cleanup_live_servers()
    previous = _PREVIOUS_SIGTERM
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_safety_net() -> None:
    """Clean up ephemeral servers at interpreter exit and on SIGTERM."""
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


atexit.register(_cleanup_live_servers)


class EphemeralPostgres(ConninfoMixin):
    """A private PostgreSQL cluster with pg_cron, in a temporary directory.

    ``start()`` runs ``initdb`` (first time only), starts the server with ``pg_ctl``
    and creates ``dbname`` with the pg_cron extension in it. The server listens on
    127.0.0.1 and on a Unix socket in its own directory, with ``trust`` auth.
    When the current process is root, the cluster is owned by and the server runs as
    the unprivileged OS user ``sa_pgdispatch`` (created if missing).

    ``pg_bin`` (default: :func:`~.binaries.find_postgres_bin`, ``$SA_PGDISPATCH_PG_BIN``)
    chooses the PostgreSQL installation; when it has pg_tle, pg_tle is preloaded too
    (not created). ``cron_mode`` (default ``$SA_PGDISPATCH_CRON_MODE``, else ``libpq``)
    chooses how pg_cron runs jobs: ``libpq`` connects over the Unix socket
    (``cron.host``); ``bgw`` runs them in background workers
    (``cron.use_background_workers = on``, ``max_worker_processes = 64``,
    ``cron.max_running_jobs = 60`` unless *settings* say otherwise).

    ``stop()``/``start()`` keep the data directory; ``cleanup()`` stops the server and
    removes the directory. As a context manager it starts on enter and cleans up on
    exit. Servers not cleaned up are cleaned up at interpreter exit (``atexit``) and
    on SIGTERM.
    """

    def __init__(
        self,
        *,
        dbname: str = "pgdispatch",
        settings: Mapping[str, str] | None = None,
        durable: bool = False,
        pg_bin: Path | None = None,
        port: int | None = None,
        cron_mode: str | None = None,
        superuser: str = _SUPERUSER,
    ) -> None:
        if settings and ("port" in settings or "unix_socket_directories" in settings):
            raise ArgumentError(
                "pass port=... instead of settings['port']; the socket dir is fixed"
            )
        self._cron_mode = resolve_cron_mode(cron_mode)
        self._installed_pg_cron: str | None = None
        self._has_pg_tle: bool | None = None
        self._dbname = dbname
        self._superuser = superuser
        self._settings = dict(settings or {})
        self.durable = durable
        self._pg_bin = pg_bin
        self._fixed_port = port is not None
        self._port = port if port is not None else 0
        self._base: Path | None = None
        self._cleaned = False
        self._run_as: tuple[int, int] | None = None

    # -- attributes ------------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        """The PostgreSQL ``bin`` directory in use."""
        if self._pg_bin is None:
            self._pg_bin = find_postgres_bin()
        return self._pg_bin

    @property
    def pg_major(self) -> int:
        return pg_major(self.bin_dir)

    @property
    def cron_mode(self) -> CronMode:
        """How pg_cron runs jobs: ``libpq`` (client connections) or ``bgw`` (workers)."""
        return self._cron_mode

    @property
    def pg_cron_version(self) -> str | None:
        """pg_cron's extension version: the installed one once started, else the
        ``default_version`` of the installation's control file (``None`` if missing).

        This is the SQL version (``1.6`` for pg_cron 1.6.0-1.6.7), as in
        ``pg_extension.extversion``.
        """
        if self._installed_pg_cron is not None:
            return self._installed_pg_cron
        return pg_cron_default_version(self.bin_dir)

    @property
    def has_pg_tle(self) -> bool:
        """Whether the installation has pg_tle (then it is in shared_preload_libraries)."""
        if self._has_pg_tle is None:
            self._has_pg_tle = has_pg_tle(self.bin_dir)
        return self._has_pg_tle

    @property
    def base_dir(self) -> Path:
        """The temporary directory holding everything (data, socket, log)."""
        if self._base is None:
            raise HarnessError("the server has not been started (or was cleaned up)")
        return self._base

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def host(self) -> str:
        """The Unix socket directory."""
        return str(self.base_dir)

    @property
    def port(self) -> int:
        return self._port

    @property
    def dbname(self) -> str:
        return self._dbname

    @property
    def superuser(self) -> str:
        return self._superuser

    @property
    def os_user(self) -> str:
        """The OS user the server runs as."""
        uid = self._run_as[0] if self._run_as is not None else os.geteuid()
        return pwd.getpwuid(uid).pw_name

    def _params(self) -> dict[str, str]:
        return {
            "user": self._superuser,
            "dbname": self._dbname,
            "host": self.host,
            "port": str(self._port),
        }

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

    def _run(
        self, args: list[str], *, input: str | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        user = group = None
        extra_groups: list[int] | None = None
        if self._run_as is not None:
            user, group = self._run_as
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
                f"{args[0]} timed out after {timeout}s{self._log_excerpt()}"
            ) from exc
        except OSError as exc:
            raise HarnessError(f"cannot run {args[0]}: {exc}") from exc

    def _chown(self, path: Path) -> None:
        if self._run_as is not None:
            os.chown(path, *self._run_as)

    def _log_excerpt(self, offset: int = 0) -> str:
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

    # -- cluster creation ------------------------------------------------------------

    def _make_base_dir(self) -> Path:
        parent = Path(tempfile.gettempdir())
        too_long = len(str(parent)) + len(TEMP_PREFIX) + 10 > _MAX_SOCKET_DIR_LEN
        if too_long or (self._run_as is not None and not _world_traversable(parent)):
            # The server user must reach its directory; the socket path must be short.
            parent = Path("/tmp")  # a private 0700 mkdtemp dir is made below it
        base = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent))
        self._chown(base)
        return base

    def _create_cluster(self) -> None:
        bin_dir = self.bin_dir
        require_pg_cron(bin_dir)
        if os.geteuid() == 0:
            self._run_as = _ensure_harness_user()
        self._base = self._make_base_dir()
        with _LIVE_LOCK:
            _LIVE.add(self)
        _install_safety_net()

        initdb = [
            str(bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            self._superuser,
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]
        result = self._run([*initdb, "--locale=C.UTF-8"])
        if result.returncode != 0 and "locale" in (result.stderr + result.stdout).lower():
            shutil.rmtree(self.data_dir, ignore_errors=True)
            result = self._run([*initdb, "--locale=C"])
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

        if self._dbname != self._superuser:
            # Create the database in single-user mode, before pg_cron's launcher ever
            # starts: the launcher would otherwise fail (and retry) until it exists.
            self._write_config()
            statement = 'CREATE DATABASE "{}";\n'.format(self._dbname.replace('"', '""'))
            single = self._run(
                [
                    str(bin_dir / "postgres"),
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
                    f"{self._dbname!r} (exit {single.returncode}):\n{single.stdout}{single.stderr}"
                )

    def _config(self) -> dict[str, str]:
        socket_dir = str(self.base_dir)
        config = {
            "listen_addresses": "127.0.0.1",
            "port": str(self._port),
            "unix_socket_directories": socket_dir,
            "shared_preload_libraries": "pg_cron,pg_tle" if self.has_pg_tle else "pg_cron",
            "cron.database_name": self._dbname,
            # In libpq mode pg_cron connects for each job: use our socket. (Ignored
            # in bgw mode; kept so that both modes show the same cron.host.)
            "cron.host": socket_dir,
            "max_connections": "100",
            "log_min_messages": "warning",
            "log_line_prefix": "%m [%p] %u@%d ",
        }
        if self._cron_mode == "bgw":
            config["cron.use_background_workers"] = "on"
            workers = self._settings.get("max_worker_processes")
            if workers is None:
                config["max_worker_processes"] = str(_BGW_MAX_WORKER_PROCESSES)
            if "cron.max_running_jobs" not in self._settings:
                # pg_cron >= 1.5 defaults it to min(5, max_worker_processes - 1) in bgw
                # mode and rejects more than max_worker_processes - 1.
                limit = int(workers) if workers is not None else _BGW_MAX_WORKER_PROCESSES
                running = min(_BGW_MAX_RUNNING_JOBS, limit - _BGW_SPARE_WORKERS)
                config["cron.max_running_jobs"] = str(max(1, min(running, limit - 1)))
        if not self.durable:
            config.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        config.update(self._settings)
        return config

    def _write_config(self) -> None:
        if not self._port:
            self._port = _free_port()
        lines = [f"{key} = {_conf_quote(value)}" for key, value in self._config().items()]
        path = self.data_dir / _CONF_FILE
        header = "# Written by sa_pgdispatch.testing; rewritten at each start\n"
        path.write_text(header + "\n".join(lines) + "\n")
        self._chown(path)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> EphemeralPostgres:
        """Start the server (creating the cluster the first time); returns ``self``."""
        if self._cleaned:
            raise HarnessError("this server was cleaned up; create a new EphemeralPostgres")
        if self.running:
            return self
        if self._base is None:
            self._create_cluster()
        attempts = 1 if self._fixed_port else 3
        for attempt in range(1, attempts + 1):
            self._write_config()
            offset = self._log_size()
            result = self._run(
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
                break
            excerpt = self._log_excerpt(offset)
            if attempt < attempts and "could not bind" in excerpt:
                self._port = _free_port()  # somebody took the port in the meantime
                continue
            raise HarnessError(
                f"PostgreSQL failed to start (pg_ctl exit {result.returncode}): "
                f"{(result.stdout + result.stderr).strip()}{excerpt}"
            )
        try:
            self._installed_pg_cron = check_pg_cron(
                self.dsn, create=True, cron_mode=self._cron_mode
            )
        except HarnessError as exc:
            raise HarnessError(f"{exc}{self._log_excerpt()}") from exc
        return self

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server, keeping its data directory; no-op when not running."""
        if self._base is None or not self.running:
            return
        result = self._run(
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
                f"{(result.stdout + result.stderr).strip()}{self._log_excerpt()}"
            )

    def restart(self, mode: StopMode = "immediate") -> EphemeralPostgres:
        """Stop (``immediate`` by default: a crash, followed by recovery) and start again."""
        self.stop(mode)
        return self.start()

    def cleanup(self, mode: StopMode = "fast") -> None:
        """Stop the server and remove its directory. Safe to call more than once."""
        base = self._base
        if base is None:
            self._cleaned = True
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
        self._cleaned = True
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def __enter__(self) -> EphemeralPostgres:
        try:
            return self.start()
        except BaseException:
            self.cleanup(mode="immediate")
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        where = self._base if self._base is not None else "not created"
        return (
            f"EphemeralPostgres(dbname={self._dbname!r}, port={self._port}, "
            f"cron_mode={self._cron_mode!r}, dir={where})"
        )
