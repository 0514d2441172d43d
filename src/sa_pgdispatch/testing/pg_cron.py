"""pg_cron (and pg_tle) on a test server: the settings that load it and choose how it
runs jobs (:data:`CronMode`), and :func:`check_pg_cron`, which checks a running server
does run it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import psycopg

from sa_pgdispatch.testing.connect import redacted
from sa_pgdispatch.testing.errors import HarnessError

__all__ = [
    "CRON_MODES",
    "ENV_CRON_MODE",
    "CronMode",
    "check_pg_cron",
    "cron_settings",
    "resolve_cron_mode",
]

#: Environment variable choosing how pg_cron runs jobs on ephemeral servers: ``libpq``
#: (default: a client connection per job, over ``cron.host``) or ``bgw`` (background
#: workers, ``cron.use_background_workers = on``, as managed services run it).
ENV_CRON_MODE = "SA_PGDISPATCH_CRON_MODE"

CronMode = Literal["libpq", "bgw"]
#: The values of :data:`ENV_CRON_MODE` / ``EphemeralPostgres(cron_mode=...)``.
CRON_MODES: tuple[CronMode, ...] = ("libpq", "bgw")

# bgw mode: every running job and every long-lived worker of the tests is a background
# worker, and they count against max_worker_processes (default 8, shared with parallel
# query). pg_cron caps cron.max_running_jobs at max_worker_processes - 1.
_BGW_MAX_WORKER_PROCESSES = 64
_BGW_MAX_RUNNING_JOBS = 60
_BGW_SPARE_WORKERS = 4  # launcher + a few parallel-query/other workers


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


def cron_settings(
    cron_mode: CronMode,
    *,
    dbname: str,
    socket_dir: str,
    pg_tle: bool,
    settings: Mapping[str, str],
) -> dict[str, str]:
    """The server settings that load pg_cron (and pg_tle when the installation has it)
    and make it run jobs from *dbname* in *cron_mode*; *settings* are the caller's own
    (they are applied after these: this only leaves out what they set)."""
    config = {
        "shared_preload_libraries": "pg_cron,pg_tle" if pg_tle else "pg_cron",
        "cron.database_name": dbname,
        # In libpq mode pg_cron connects for each job: use our socket. (Ignored
        # in bgw mode; kept so that both modes show the same cron.host.)
        "cron.host": socket_dir,
    }
    if cron_mode == "bgw":
        config["cron.use_background_workers"] = "on"
        workers = settings.get("max_worker_processes")
        if workers is None:
            config["max_worker_processes"] = str(_BGW_MAX_WORKER_PROCESSES)
        if "cron.max_running_jobs" not in settings:
            # pg_cron >= 1.5 defaults it to min(5, max_worker_processes - 1) in bgw
            # mode and rejects more than max_worker_processes - 1.
            limit = int(workers) if workers is not None else _BGW_MAX_WORKER_PROCESSES
            running = min(_BGW_MAX_RUNNING_JOBS, limit - _BGW_SPARE_WORKERS)
            config["cron.max_running_jobs"] = str(max(1, min(running, limit - 1)))
    return config


def check_pg_cron(dsn: str, *, create: bool, cron_mode: CronMode | None = None) -> str:
    """Check the server behind *dsn* runs pg_cron jobs from that database.

    Creates the extension when it is missing and *create* is true. With *cron_mode*,
    also checks that pg_cron runs jobs that way (superuser DSNs only). Returns the
    installed pg_cron version; raises :class:`HarnessError` saying what is wrong.
    """
    shown = redacted(dsn)
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
