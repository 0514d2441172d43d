"""``sa-pgdispatch status`` and ``sa-pgdispatch stats``: what pgdispatch and pg_cron look
like from the database (versions, pg_cron's mode, the background worker budget, the
workers per role, pg_cron's jobs and failed runs, read in pg_cron's database through
``--cron-url`` for an app database apart from it) and the queue's numbers."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.rows import namedtuple_row
from sqlalchemy import exc as sa_exc

from . import jobs as jobs_api
from ._cli_common import CRON_URL_ENV_VAR, EXIT_OK
from ._cli_common import VIA_TEXT as _VIA_TEXT
from ._cli_common import cron_url_of as _cron_url
from ._cli_common import engine_of as _engine
from ._cli_common import require_installed as _require_installed
from ._output import Output, duration, shorten
from .errors import PgDispatchError
from .install import installed_via
from .workers import libpq_dsn, worker_budget

__all__ = ["cmd_stats", "cmd_status"]


_CRON_JOBS = sa.text(
    "SELECT j.jobid, j.jobname, j.username, j.schedule, j.active"
    " FROM cron.job j WHERE j.jobname LIKE 'pgdispatch:%' ORDER BY j.username, j.jobname"
)
_WORKERS = sa.text(
    """
    SELECT coalesce(r.rolname, w.role) AS role, w.workers, w.enabled, w.schedule,
           (SELECT count(*) FROM pg_locks l
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
               AND l.classid::bigint BETWEEN 1885824114 AND 1885824113 + 16
               AND l.objid::bigint = (w.role_id::oid::bigint & 4294967295)) AS alive,
           (SELECT count(*) FROM pg_locks l
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
               AND l.classid::bigint = 1885824113
               AND l.objid::bigint = (w.role_id::oid::bigint & 4294967295)) AS watchdog
      FROM pgdispatch.worker w LEFT JOIN pg_roles r ON r.oid = w.role_id  -- (its current name)
     ORDER BY 1
    """
)
_CRON_FAILURES = sa.text(
    """
    SELECT d.start_time, j.jobname, d.status, d.return_message
      FROM cron.job_run_details d JOIN cron.job j ON j.jobid = d.jobid
     WHERE j.jobname LIKE 'pgdispatch:%' AND d.status = 'failed'
     ORDER BY d.start_time DESC LIMIT :limit
    """
)
_SERVER = sa.text(
    "SELECT current_database(), current_user, current_setting('server_version'),"
    " CASE WHEN pg_has_role('pg_read_all_settings', 'MEMBER')"
    " THEN current_setting('cron.host', true) ELSE '(hidden from this role)' END"
)
_CRON_INFO = sa.text(
    "SELECT version, background_workers, second_schedules, database_name"
    " FROM pgdispatch.cron_info()"
)


# The same, read in pg_cron's database for an app database (psycopg: % is %%).
_REMOTE_CRON_JOBS = (
    "SELECT j.jobid, j.jobname, j.username, j.schedule, j.active FROM cron.job j"
    " WHERE j.jobname LIKE 'pgdispatch:%%' AND j.database = %s ORDER BY j.username, j.jobname"
)
_REMOTE_CRON_FAILURES = (
    "SELECT d.start_time, j.jobname, d.status, d.return_message"
    "  FROM cron.job_run_details d JOIN cron.job j ON j.jobid = d.jobid"
    " WHERE j.jobname LIKE 'pgdispatch:%%' AND j.database = %s AND d.status = 'failed'"
    " ORDER BY d.start_time DESC LIMIT %s"
)


@dataclass
class _RemoteCron:
    """pg_cron as seen from its own database, for an app database apart from it."""

    version: str | None = None
    background_workers: bool | None = None
    jobs: list[Any] = field(default_factory=list)
    failures: list[Any] = field(default_factory=list)
    error: str | None = None


def _read_remote_cron(cron_url: str, database: str, failures: int) -> _RemoteCron:
    """pg_cron's version and mode, and this database's pgdispatch jobs and failed runs,
    read in pg_cron's database (``--cron-url``); ``error`` says why not."""
    try:
        with psycopg.connect(libpq_dsn(cron_url), autocommit=True,
                             row_factory=namedtuple_row) as cron:
            row = cron.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'"
            ).fetchone()
            if row is None:
                name = cron.execute("SELECT current_database()").fetchone()
                return _RemoteCron(error=f"--cron-url's database {name[0] if name else '?'} "
                                   "has no pg_cron")
            remote = _RemoteCron(version=str(row[0]))
            try:
                setting = cron.execute(
                    "SELECT current_setting('cron.use_background_workers', true)"
                ).fetchone()
            except psycopg.errors.InsufficientPrivilege:
                setting = None
            if setting is not None and setting[0] is not None:
                remote.background_workers = setting[0] == "on"
            remote.jobs = cron.execute(_REMOTE_CRON_JOBS, (database,)).fetchall()
            remote.failures = cron.execute(_REMOTE_CRON_FAILURES, (database, failures)).fetchall()
            return remote
    except psycopg.Error as exc:
        return _RemoteCron(error=f"cannot read pg_cron's database: {shorten(str(exc), 120)}")


def _known(value: object) -> object:
    return "unknown" if value is None else value


def _budget_rows(conn: sa.Connection) -> list[tuple[str, object]]:
    """The server's background workers (``pgdispatch.worker_budget()``); "unknown" for
    what this role cannot see."""
    try:
        with conn.begin_nested():
            budget = worker_budget(conn)
    except (PgDispatchError, psycopg.Error, sa_exc.DBAPIError) as exc:
        return [("background workers", f"unknown ({shorten(str(exc), 80)})")]
    return [
        ("background workers (used / max_worker_processes)",
         f"{_known(budget.used)} / {budget.max_worker_processes}"),
        ("free background workers", _known(budget.free)),
        ("pgdispatch's background workers", _known(budget.pgdispatch_workers)),
        ("cron.max_running_jobs", _known(budget.max_running_jobs)),
        ("pgdispatch workers and watchdogs scheduled", _known(budget.scheduled)),
    ]


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    engine = _engine(args)
    version = _require_installed(engine)
    cron_url = _cron_url(args)
    via = installed_via(engine)
    with engine.connect() as conn:
        database, user, server, cron_host = conn.execute(_SERVER).one()
        cron_version, bgw, seconds, cron_db = conn.execute(_CRON_INFO).one()
        here = cron_version is not None
        remote = (
            _read_remote_cron(cron_url, database, args.failures)
            if not here and cron_url is not None else None
        )
        if here:
            where = f"{cron_version}, in this database"
        else:
            where = (f"runs in database {cron_db}, not in this one: this database's workers "
                     "are scheduled there (cron.schedule_in_database)")
            if remote is not None and remote.version is not None:
                where = f"{remote.version}, {where}"
                bgw = remote.background_workers
        if here or (remote is not None and remote.version is not None):
            mode = "unknown (hidden from this role)" if bgw is None else (
                "background workers" if bgw else "libpq")
        else:
            mode = "unknown (pass --cron-url)"
        if bgw and seconds is False:
            mode += (
                " (BROKEN for long jobs on pg_cron < 1.5: set cron.use_background_workers = off)"
            )
        out.table(
            "pgdispatch",
            ["", ""],
            [
                ("database", f"{database} as {user} (PostgreSQL {server})"),
                ("pgdispatch", version),
                ("installed via", f"{via} ({_VIA_TEXT[via]})" if via else "-"),
                ("pg_cron", where),
                ("pg_cron mode", mode),
                ("cron.host", cron_host if not bgw else "-"),
                ("cron.database_name", cron_db),
                *_budget_rows(conn),
            ],
        )
        workers = conn.execute(_WORKERS).all()
        out.table(
            "workers per role",
            ["role", "slots", "enabled", "schedule", "running now", "watchdog"],
            [
                (w.role, w.workers, "yes" if w.enabled else "no (stopped)", w.schedule,
                 f"{w.alive}/{w.workers}", "yes" if w.watchdog else "no")
                for w in workers
            ],
        )
        if here:
            cron_jobs: Sequence[Any] = conn.execute(_CRON_JOBS).all()
            failures: Sequence[Any] = conn.execute(
                _CRON_FAILURES, {"limit": args.failures}
            ).all()
        elif remote is None or remote.error is not None:
            why = remote.error if remote is not None else (
                f"pass --cron-url (or set ${CRON_URL_ENV_VAR}) to list this database's")
            out.line(f"pg_cron jobs: in database {cron_db}; {why}")
            return _status_queue(engine, out)
        else:
            cron_jobs, failures = remote.jobs, remote.failures
        out.table(
            "pg_cron jobs",
            ["jobid", "jobname", "user", "schedule", "active"],
            [(j.jobid, j.jobname, j.username, j.schedule, j.active) for j in cron_jobs],
        )
        out.table(
            f"recent pg_cron run failures (last {args.failures})",
            ["started", "jobname", "status", "message"],
            [(f.start_time, f.jobname, f.status, shorten(f.return_message or "", 80))
             for f in failures],
        )
    return _status_queue(engine, out)


def _status_queue(engine: sa.Engine, out: Output) -> int:
    _print_stats(out, jobs_api.stats(engine), title="queue")
    return EXIT_OK


def _print_stats(out: Output, s: jobs_api.JobStats, *, title: str = "jobs") -> None:
    rows: list[tuple[str, object]] = [(st.value, s.counts[st]) for st in jobs_api.JobState]
    rows += [
        ("due now", s.due),
        ("oldest due job waiting", duration(s.oldest_due_age)),
        ("finished in the last minute", s.finished_last_minute),
        ("throughput (last minute)", f"{s.throughput:.2f} jobs/s"),
        (f"run time p50 / p95 ({duration(s.window)})",
         f"{duration(s.p50_run_time)} / {duration(s.p95_run_time)}"),
        (f"start latency p50 / p95 ({duration(s.window)})",
         f"{duration(s.p50_start_latency)} / {duration(s.p95_start_latency)}"),
    ]
    out.table(title, ["", ""], rows)


def cmd_stats(args: argparse.Namespace, out: Output) -> int:
    engine = _engine(args)
    _require_installed(engine)
    _print_stats(out, jobs_api.stats(engine, window=timedelta(seconds=args.window)))
    return EXIT_OK
