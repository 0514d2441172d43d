"""The ``sa-pgdispatch`` command: install, look at and drive pgdispatch from a shell.

``sa-pgdispatch [--url URL] COMMAND ...``; the URL may also come from
``$SA_PGDISPATCH_URL`` or ``$DATABASE_URL`` (``postgresql://`` and ``postgres://`` are
read as ``postgresql+psycopg://``; other drivers are refused: :mod:`sa_pgdispatch.urls`).
In an app database apart from pg_cron's, ``--cron-url`` (or ``$SA_PGDISPATCH_CRON_URL``)
is pg_cron's database for the same role, where install/uninstall/start/stop schedule
the workers. The global options go before or after the command. Tables are drawn with
rich in a terminal and printed as plain aligned text otherwise (pipes, logs, CI). See
docs/cli.md.

Exit codes: 0 success; 1 failure (a pgdispatch or database error, ``wait`` on a job
that failed or was cancelled, ``demo`` with a missing side effect); 2 usage error
(including no database URL); 3 database unreachable or pgdispatch not installed;
4 ``wait`` timed out; 130 interrupted.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TextIO

import psycopg
import sqlalchemy as sa
from alembic.util import CommandError
from psycopg.rows import namedtuple_row
from rich.live import Live
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import NullPool

from . import jobs as jobs_api
from ._output import Output, duration, json_text, shorten
from .errors import JobTimeout, NotInstalled, PgDispatchError, UsageError, WorkerError
from .install import VIAS, InstallError, install, installed_version, installed_via, uninstall
from .urls import UrlError
from .urls import normalize_url as _normalize_url
from .workers import libpq_dsn, start_workers, stop_workers, worker_budget

__all__ = [
    "CRON_URL_ENV_VAR",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "URL_ENV_VARS",
    "build_parser",
    "main",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130

URL_ENV_VARS = ("SA_PGDISPATCH_URL", "DATABASE_URL")
#: The environment variable read for ``--cron-url`` (pg_cron's database, same role).
CRON_URL_ENV_VAR = "SA_PGDISPATCH_CRON_URL"


# ---------------------------------------------------------------------------------------
# Connection


def normalize_url(raw: str) -> str:
    """``postgresql://`` / ``postgres://`` -> ``postgresql+psycopg://``; other drivers
    and databases are a usage error (the rule of :mod:`sa_pgdispatch.urls`)."""
    try:
        url = _normalize_url(raw)
    except UrlError as exc:
        raise UsageError(str(exc)) from None
    return url.render_as_string(hide_password=False)


def resolve_url(given: str | None, environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    if given:
        return normalize_url(given)
    for name in URL_ENV_VARS:
        if env.get(name):
            return normalize_url(env[name])
    raise UsageError(
        "no database URL: pass --url or set SA_PGDISPATCH_URL (or DATABASE_URL), "
        "e.g. postgresql://user@localhost/dbname"
    )


def resolve_cron_url(given: str | None, environ: dict[str, str] | None = None) -> str | None:
    """``--cron-url``, else ``$SA_PGDISPATCH_CRON_URL``, else None (pgdispatch lives in
    pg_cron's database). A PostgreSQL URL (any driver: it is used through libpq) or a
    libpq ``key=value`` string."""
    env = os.environ if environ is None else environ
    value = given or env.get(CRON_URL_ENV_VAR) or None
    if value is None:
        return None
    try:
        libpq_dsn(value)
    except (WorkerError, sa_exc.ArgumentError) as exc:
        raise UsageError(f"invalid --cron-url / ${CRON_URL_ENV_VAR}: {exc}") from None
    return value


def _cron_url(args: argparse.Namespace) -> str | None:
    return resolve_cron_url(getattr(args, "cron_url", None))


def _engine(args: argparse.Namespace) -> sa.Engine:
    return sa.create_engine(resolve_url(args.url), poolclass=NullPool)


def _require_installed(engine: sa.Engine) -> str:
    version = installed_version(engine)
    if version is None:
        raise NotInstalled(
            f"pgdispatch is not installed in {engine.url.database!r}: run `sa-pgdispatch install`"
        )
    return version


# ---------------------------------------------------------------------------------------
# Commands


def cmd_install(args: argparse.Namespace, out: Output) -> int:
    engine = _engine(args)
    # --workers: a fresh install starts that many (default 1); on an existing or older
    # install, an explicit --workers N (N >= 1) (re)starts N after the upgrade, in the
    # same transaction; without it the role keeps the workers it has.
    workers = 1 if args.workers is None else args.workers
    cron_url = _cron_url(args)
    with engine.begin() as conn:
        before = installed_version(conn)
        version = install(
            conn, version=args.version, workers=workers or None, cron_url=cron_url, via=args.via
        )
        via = installed_via(conn)
        started = workers if before is None else (args.workers or 0)
        if before is not None and started:
            start_workers(conn, started, cron_url=cron_url)
    suffix = f" ({_VIA_TEXT.get(via, via)})" if via else ""
    suffix += f"; {started} pg_cron worker(s) started" if started else ""
    if before == version:
        out.line(f"pgdispatch {version} is already installed{suffix}")
    elif before is None:
        out.line(f"installed pgdispatch {version}{suffix}")
    else:
        out.line(f"upgraded pgdispatch {before} -> {version}{suffix}")
    return EXIT_OK


# how each install path shows in install's and status's output
_VIA_TEXT = {
    "sql": "plain SQL",
    "extension": "native extension",
    "pg_tle": "pg_tle extension",
}


def cmd_uninstall(args: argparse.Namespace, out: Output) -> int:
    engine = _engine(args)
    if uninstall(engine, force=args.force, cron_url=_cron_url(args)):
        out.line("uninstalled pgdispatch" + (" (forced)" if args.force else ""))
    else:
        out.line("pgdispatch is not installed: nothing to do")
    return EXIT_OK


def cmd_start(args: argparse.Namespace, out: Output) -> int:
    engine = _engine(args)
    _require_installed(engine)
    with engine.begin() as conn:
        role = conn.execute(sa.text("SELECT current_user")).scalar_one()
        start_workers(conn, args.workers, cron_url=_cron_url(args))
        count = conn.execute(
            sa.text("SELECT workers FROM pgdispatch.worker"
                    " WHERE role_id = to_regrole(quote_ident(current_user))")
        ).scalar_one()
    out.line(f"started {count} pg_cron worker(s) and a watchdog for role {role}")
    return EXIT_OK


def cmd_stop(args: argparse.Namespace, out: Output) -> int:
    engine = _engine(args)
    _require_installed(engine)
    with engine.begin() as conn:
        role = conn.execute(sa.text("SELECT current_user")).scalar_one()
        stop_workers(conn, cron_url=_cron_url(args), wait=timedelta(seconds=args.wait))
    out.line(f"stopped the pg_cron workers of role {role} (the jobs they ran finished); "
             "dispatched jobs wait until `sa-pgdispatch start`")
    return EXIT_OK


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


_JOB_HEADERS = [
    "id", "state", "role", "command", "tries", "created", "latency", "run time", "error",
]


def _job_rows(items: Sequence[jobs_api.Job]) -> list[tuple[object, ...]]:
    return [
        (
            j.id,
            j.state.value,
            j.role,
            shorten(j.command, 48),
            f"{j.attempts}/{j.max_attempts}",
            j.created_at,
            j.start_latency,
            j.run_time,
            shorten(str((j.error or {}).get("message", "")), 40) or None,
        )
        for j in items
    ]


def cmd_jobs(args: argparse.Namespace, out: Output) -> int:
    engine = _engine(args)
    _require_installed(engine)
    states = args.state or None

    def fetch() -> list[tuple[object, ...]]:
        return _job_rows(jobs_api.list_jobs(engine, state=states, limit=args.limit))

    title = f"recent jobs ({', '.join(states) if states else 'all states'}, limit {args.limit})"
    if args.watch is None:
        out.table(title, _JOB_HEADERS, fetch())
        return EXIT_OK
    iterations = 0
    if out.rich:
        with Live(out.render_table(title, _JOB_HEADERS, fetch()), console=out.console,
                  auto_refresh=False) as live:
            while True:
                iterations += 1
                if args.iterations and iterations >= args.iterations:
                    break
                time.sleep(args.watch)
                live.update(out.render_table(title, _JOB_HEADERS, fetch()), refresh=True)
        return EXIT_OK
    while True:
        iterations += 1
        out.line(f"--- {datetime.now().astimezone():%H:%M:%S}")
        out.table(title, _JOB_HEADERS, fetch())
        if args.iterations and iterations >= args.iterations:
            return EXIT_OK
        time.sleep(args.watch)


def cmd_wait(args: argparse.Namespace, out: Output) -> int:
    engine = _engine(args)
    _require_installed(engine)
    job = jobs_api.get(engine, args.job_id)
    started = time.monotonic()
    last_state = None

    def report(j: jobs_api.Job) -> None:
        nonlocal last_state
        if j.state != last_state:
            out.line(f"job {j.id}: {j.state.value} ({time.monotonic() - started:.1f} s)")
            last_state = j.state

    timeout = args.timeout if args.timeout > 0 else None
    try:
        if out.rich:
            with out.console.status(f"job {job.id}: {job.state.value}") as status:
                report(job)

                def show(j: jobs_api.Job) -> None:
                    report(j)
                    elapsed = time.monotonic() - started
                    status.update(f"job {j.id}: {j.state.value}  {elapsed:.1f} s")

                job = _wait_reporting(engine, job, timeout, show)
        else:
            report(job)
            job = _wait_reporting(engine, job, timeout, report)
    except JobTimeout as exc:
        out.line(str(exc))
        return EXIT_TIMEOUT
    report(job)
    out.table(None, ["", ""], [
        ("state", job.state.value),
        ("attempts", f"{job.attempts}/{job.max_attempts}"),
        ("start latency", duration(job.start_latency)),
        ("run time", duration(job.run_time)),
        ("rows affected", job.rows_affected),
        *([("result", shorten(json_text(job.result), 200))] if job.capture else []),
        *[(f"error {k}", v) for k, v in (job.error or {}).items()],
    ])
    return EXIT_OK if job.state is jobs_api.JobState.SUCCEEDED else EXIT_FAILURE


def _wait_reporting(
    engine: sa.Engine,
    job: jobs_api.Job,
    timeout: float | None,
    on_change: Callable[[jobs_api.Job], object],
) -> jobs_api.Job:
    """Like jobs.wait, reporting every state seen (queued -> running -> ...)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.01
    while not job.finished:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise JobTimeout(job, timeout or 0.0)
        time.sleep(delay if remaining is None else min(delay, remaining))
        delay = min(delay * 1.5, 0.25)
        job = jobs_api.get(engine, job.id)
        on_change(job)
    return job


def cmd_drain(args: argparse.Namespace, out: Output) -> int:
    from .testing.drain import drain

    engine = _engine(args)
    _require_installed(engine)
    with engine.connect() as conn:
        role = conn.execute(sa.text("SELECT current_user")).scalar_one()
        conn.rollback()
        finished = drain(conn)
    out.line(f"drained: {finished} job(s) of role {role} finished")
    return EXIT_OK


def cmd_init(args: argparse.Namespace, out: Output) -> int:
    from .alembic import init_project

    url = normalize_url(args.url) if args.url else None
    ini = init_project(
        args.directory,
        url=url,
        install_revision=not args.no_install_revision,
        metadata=args.metadata,
    )
    out.line(f"wrote {ini} and the migration environment in {args.directory}")
    out.line("next: set SA_PGDISPATCH_URL (or sqlalchemy.url in alembic.ini), then run")
    out.line(f"  alembic -c {ini} upgrade head")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    from .demo import run_demo

    url = normalize_url(args.url) if args.url else None
    ok = run_demo(url=url, profiles=args.profiles, out=out)
    return EXIT_OK if ok else EXIT_FAILURE


# ---------------------------------------------------------------------------------------
# Parser
#
# Option values are checked by their type functions, so that a bad one is a usage error
# (exit 2, argparse's message naming the option) before anything connects or prints.


def _int_type(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"at least {minimum}" if maximum is None else f"{minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def _seconds_type(*, zero: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            wanted = "0 or more" if zero else "more than 0"
            raise argparse.ArgumentTypeError(f"must be a number of seconds, {wanted}; got {text}")
        return value

    parse.__name__ = "seconds"
    return parse


def _metadata_type(text: str) -> str:
    """``module:attribute`` specs, separated by commas or spaces (as init_project takes)."""
    specs = text.replace(",", " ").split()
    if not specs:
        raise argparse.ArgumentTypeError("expected MODULE:ATTR, e.g. myapp.models:Base.metadata")
    for spec in specs:
        module, sep, attribute = spec.partition(":")
        if not sep or not module or not attribute:
            raise argparse.ArgumentTypeError(
                f"expected MODULE:ATTR (e.g. myapp.models:Base.metadata), got {spec!r}"
            )
    return text


def _global_options(*, top: bool) -> argparse.ArgumentParser:
    """The options accepted before and after the command (``--url``, ``--cron-url``,
    ``--plain``).

    The top-level parser's copies hold the defaults; a command's copies default to
    SUPPRESS, so that they leave a value given before the command alone. Each call makes
    new Action objects: argparse shares a parent's actions with the parsers built from
    it, and a ``set_defaults()`` on one would change the defaults of all.
    """
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--url",
        default=None if top else argparse.SUPPRESS,
        help="database URL (default: $SA_PGDISPATCH_URL, then $DATABASE_URL)",
    )
    options.add_argument(
        "--cron-url",
        metavar="URL",
        default=None if top else argparse.SUPPRESS,
        help="when pgdispatch lives in another database than pg_cron's (an app database): "
        "a URL of pg_cron's database (cron.database_name) for the same role, where the "
        "workers are scheduled (default: $SA_PGDISPATCH_CRON_URL)",
    )
    options.add_argument(
        "--plain",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="plain text output even in a terminal",
    )
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sa-pgdispatch",
        description="Install, inspect and drive pgdispatch (asynchronous SQL side effects "
        "on pg_cron).",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage, 3 database unreachable or pgdispatch "
        "not installed, 4 wait timed out, 130 interrupted. See docs/cli.md.",
        parents=[_global_options(top=True)],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    command_options = _global_options(top=False)

    def add(name: str, help: str, func: Callable[[argparse.Namespace, Output], int]
            ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[command_options])
        p.set_defaults(func=func)
        return p

    p = add("install", "install (or upgrade) pgdispatch in the database", cmd_install)
    p.add_argument("--workers", type=_int_type(0, 16), default=None, metavar="N",
                   help="pg_cron workers to start for the connected role (default 1 on a "
                   "fresh install, and on an existing one the workers are left as they are; "
                   "0: none until the first dispatch)")
    p.add_argument("--version", default=None, help="pgdispatch version (default: latest)")
    p.add_argument("--via", choices=VIAS, default="sql",
                   help="how a fresh install gets into the database: sql (plain SQL, the "
                   "default), extension (CREATE EXTENSION from the server's extension "
                   "directory: make -C sql install) or pg_tle (registered with pg_tle by a "
                   "member of pgtle_admin, then CREATE EXTENSION); an existing install is "
                   "upgraded the way it was installed")

    p = add("uninstall", "remove pgdispatch, its pg_cron jobs and definer functions",
            cmd_uninstall)
    p.add_argument("--force", action="store_true",
                   help="also when jobs are queued or dispatch triggers exist (drops them)")

    p = add("start", "schedule the connected role's pg_cron workers (again)", cmd_start)
    p.add_argument("--workers", type=_int_type(1, 16), default=None, metavar="N",
                   help="how many (default: as many as the role has, else "
                   "settings.default_workers)")

    p = add("stop", "stop the connected role's pg_cron workers once their running jobs "
            "finish", cmd_stop)
    p.add_argument("--wait", type=_seconds_type(zero=True), default=60.0, metavar="SECONDS",
                   help="how long to wait for running jobs to finish (default 60; 0: do not "
                   "wait); after it nothing is stopped")

    p = add("status", "versions, pg_cron mode, workers per role, recent failures, queue",
            cmd_status)
    p.add_argument("--failures", type=_int_type(0), default=5, metavar="N",
                   help="recent pg_cron run failures to show (default 5)")

    p = add("jobs", "a table of recent jobs", cmd_jobs)
    p.add_argument("--state", action="append", choices=[s.value for s in jobs_api.JobState],
                   help="only jobs in this state (repeatable)")
    p.add_argument("--limit", type=_int_type(1), default=20, help="rows (default 20)")
    p.add_argument("--watch", type=_seconds_type(zero=False), nargs="?", const=1.0, default=None,
                   metavar="SECONDS",
                   help="refresh every SECONDS (default 1) until Ctrl-C")
    p.add_argument("--iterations", type=_int_type(0), default=0, metavar="N",
                   help="with --watch: stop after N refreshes (default: never)")

    p = add("stats", "counts per state, oldest due job, throughput, run time percentiles",
            cmd_stats)
    p.add_argument("--window", type=_seconds_type(zero=False), default=300, metavar="SECONDS",
                   help="window of the percentiles (default 300)")

    p = add("wait", "wait for a job to finish, showing its progress", cmd_wait)
    p.add_argument("job_id", type=int, metavar="JOB_ID")
    p.add_argument("--timeout", type=_seconds_type(zero=True), default=60, metavar="SECONDS",
                   help="give up after SECONDS (default 60; 0: never); exit 4")

    add("drain", "run every due job of the connected role now, in this session", cmd_drain)

    p = add("init", "write an Alembic environment wired for pgdispatch", cmd_init)
    p.add_argument("directory", metavar="DIR", help="the migration directory to create")
    p.add_argument("--no-install-revision", action="store_true",
                   help="no first revision installing pgdispatch")
    p.add_argument("--metadata", type=_metadata_type, default=None, metavar="MODULE:ATTR",
                   help="your models' MetaData for autogenerate, e.g. myapp.models:Base.metadata")

    p = add("demo", "a throwaway server (or --url), an app, jobs run by real pg_cron workers",
            cmd_demo)
    p.add_argument("--profiles", type=_int_type(1), default=10, metavar="N",
                   help="profiles inserted in each mode (default 10)")
    return parser


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    out = Output(stdout, rich=False if args.plain else None)
    err = Output(sys.stderr, rich=False)
    try:
        return int(args.func(args, out))
    except UsageError as exc:
        err.line(f"sa-pgdispatch: {exc}")
        return EXIT_USAGE
    except NotInstalled as exc:
        err.line(f"sa-pgdispatch: {exc}")
        return EXIT_UNAVAILABLE
    except sa_exc.OperationalError as exc:
        err.line(f"sa-pgdispatch: cannot reach the database: {exc.orig or exc}".strip())
        return EXIT_UNAVAILABLE
    except CommandError as exc:  # alembic (init)
        err.line(f"sa-pgdispatch: {exc}")
        return EXIT_FAILURE
    except (PgDispatchError, InstallError, sa_exc.DBAPIError) as exc:
        message = str(exc.orig) if isinstance(exc, sa_exc.DBAPIError) else str(exc)
        if isinstance(exc, InstallError | WorkerError) and "pass cron_url" in message:
            message += f" (here: --cron-url URL, or ${CRON_URL_ENV_VAR})"
        err.line(f"sa-pgdispatch: {message}".strip())
        return EXIT_FAILURE
    except KeyboardInterrupt:
        err.line("sa-pgdispatch: interrupted")
        return EXIT_INTERRUPTED

