"""The ``sa-pgdispatch`` command: install, look at and drive pgdispatch from a shell.

``sa-pgdispatch [--url URL] COMMAND ...``; the URL may also come from
``$SA_PGDISPATCH_URL`` or ``$DATABASE_URL`` (``postgresql://`` and ``postgres://`` are
read as ``postgresql+psycopg://``; other drivers are refused: :mod:`sa_pgdispatch.urls`).
In an app database apart from pg_cron's, ``--cron-url`` (or ``$SA_PGDISPATCH_CRON_URL``)
is pg_cron's database for the same role, where install/uninstall/start/stop schedule
the workers. The global options go before or after the command. Tables are drawn with
rich in a terminal and printed as plain aligned text otherwise (pipes, logs, CI). See
docs/cli.md.

What the commands share (exit codes, URLs, option types) is in
:mod:`sa_pgdispatch._cli_common`; ``status`` and ``stats`` are in
:mod:`sa_pgdispatch._cli_status`.

Exit codes: 0 success; 1 failure (a pgdispatch or database error, ``wait`` on a job
that failed or was cancelled, ``demo`` with a missing side effect); 2 usage error
(including no database URL); 3 database unreachable or pgdispatch not installed;
4 ``wait`` timed out; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TextIO

import sqlalchemy as sa
from alembic.util import CommandError
from rich.live import Live
from sqlalchemy import exc as sa_exc

from . import jobs as jobs_api
from ._cli_common import (
    CRON_URL_ENV_VAR,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    URL_ENV_VARS,
    normalize_url,
)
from ._cli_common import VIA_TEXT as _VIA_TEXT
from ._cli_common import cron_url_of as _cron_url
from ._cli_common import engine_of as _engine
from ._cli_common import int_type as _int_type
from ._cli_common import metadata_type as _metadata_type
from ._cli_common import require_installed as _require_installed
from ._cli_common import resolve_cron_url as resolve_cron_url
from ._cli_common import resolve_url as resolve_url
from ._cli_common import seconds_type as _seconds_type
from ._cli_status import cmd_stats, cmd_status
from ._output import Output, duration, json_text, shorten
from .errors import JobTimeout, NotInstalled, PgDispatchError, UsageError, WorkerError
from .install import VIAS, InstallError, install, installed_version, installed_via, uninstall
from .workers import start_workers, stop_workers

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

