"""A private PostgreSQL cluster with pg_cron, for tests, demos and benchmarks
(:class:`EphemeralPostgres`); its directory and processes are a
:class:`~.cluster.Cluster`, its pg_cron settings come from :mod:`.pg_cron`."""

from __future__ import annotations

import os
import pwd
import socket
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from sa_pgdispatch.testing.binaries import (
    find_postgres_bin,
    has_pg_tle,
    pg_cron_default_version,
    pg_major,
    require_pg_cron,
)
from sa_pgdispatch.testing.cluster import Cluster, StopMode
from sa_pgdispatch.testing.connect import ConninfoMixin
from sa_pgdispatch.testing.errors import HarnessError
from sa_pgdispatch.testing.pg_cron import (
    CronMode,
    check_pg_cron,
    cron_settings,
    resolve_cron_mode,
)

from ..errors import ArgumentError

__all__ = ["EphemeralPostgres"]

_SUPERUSER = "postgres"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        self._cluster: Cluster | None = None
        self._cleaned = False

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
    def _created(self) -> Cluster:
        if self._cluster is None:
            raise HarnessError("the server has not been started (or was cleaned up)")
        return self._cluster

    @property
    def base_dir(self) -> Path:
        """The temporary directory holding everything (data, socket, log)."""
        return self._created.base

    @property
    def data_dir(self) -> Path:
        return self._created.data_dir

    @property
    def log_path(self) -> Path:
        return self._created.log_path

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
        if self._cluster is None:
            return pwd.getpwuid(os.geteuid()).pw_name
        return self._cluster.os_user

    def _params(self) -> dict[str, str]:
        return {
            "user": self._superuser,
            "dbname": self._dbname,
            "host": self.host,
            "port": str(self._port),
        }

    def postmaster_pid(self) -> int | None:
        """PID of the running postmaster, or ``None`` when the server is not running."""
        return None if self._cluster is None else self._cluster.postmaster_pid()

    @property
    def running(self) -> bool:
        return self.postmaster_pid() is not None

    # -- configuration ---------------------------------------------------------------

    def _config(self, cluster: Cluster) -> dict[str, str]:
        socket_dir = str(cluster.base)
        config = {
            "listen_addresses": "127.0.0.1",
            "port": str(self._port),
            "unix_socket_directories": socket_dir,
            **cron_settings(
                self._cron_mode,
                dbname=self._dbname,
                socket_dir=socket_dir,
                pg_tle=self.has_pg_tle,
                settings=self._settings,
            ),
            "max_connections": "100",
            "log_min_messages": "warning",
            "log_line_prefix": "%m [%p] %u@%d ",
        }
        if not self.durable:
            config.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        config.update(self._settings)
        return config

    def _write_config(self, cluster: Cluster) -> None:
        if not self._port:
            self._port = _free_port()
        cluster.write_config(self._config(cluster))

    def _create_cluster(self) -> Cluster:
        require_pg_cron(self.bin_dir)
        cluster = self._cluster = Cluster(self.bin_dir)
        cluster.initdb(self._superuser)
        if self._dbname != self._superuser:
            self._write_config(cluster)
            cluster.create_database(self._dbname)
        return cluster

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> EphemeralPostgres:
        """Start the server (creating the cluster the first time); returns ``self``."""
        if self._cleaned:
            raise HarnessError("this server was cleaned up; create a new EphemeralPostgres")
        if self.running:
            return self
        cluster = self._cluster if self._cluster is not None else self._create_cluster()
        attempts = 1 if self._fixed_port else 3
        for attempt in range(1, attempts + 1):
            self._write_config(cluster)
            failure = cluster.start()
            if failure is None:
                break
            if attempt < attempts and "could not bind" in failure:
                self._port = _free_port()  # somebody took the port in the meantime
                continue
            raise HarnessError(f"PostgreSQL failed to start {failure}")
        try:
            self._installed_pg_cron = check_pg_cron(
                self.dsn, create=True, cron_mode=self._cron_mode
            )
        except HarnessError as exc:
            raise HarnessError(f"{exc}{cluster.log_excerpt()}") from exc
        return self

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server, keeping its data directory; no-op when not running."""
        if self._cluster is not None:
            self._cluster.stop(mode)

    def restart(self, mode: StopMode = "immediate") -> EphemeralPostgres:
        """Stop (``immediate`` by default: a crash, followed by recovery) and start again."""
        self.stop(mode)
        return self.start()

    def cleanup(self, mode: StopMode = "fast") -> None:
        """Stop the server and remove its directory. Safe to call more than once."""
        if self._cluster is not None:
            self._cluster.remove(mode)
            self._cluster = None
        self._cleaned = True

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
        where = self._cluster.base if self._cluster is not None else "not created"
        return (
            f"EphemeralPostgres(dbname={self._dbname!r}, port={self._port}, "
            f"cron_mode={self._cron_mode!r}, dir={where})"
        )
