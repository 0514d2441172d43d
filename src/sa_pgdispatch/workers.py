"""Start and stop a role's pg_cron workers, and read the background-worker budget.

pg_cron keeps its jobs in one database of the server (``cron.database_name``). When
pgdispatch lives there, :func:`start_workers` is ``SELECT pgdispatch.start(n)``. When it
lives in another database of the same server (an *app database*, as on RDS where pg_cron
sits in ``postgres``), the role's workers are scheduled from pg_cron's database with
``cron.schedule_in_database()``: the app database records what the workers should be and
returns the statements (``pgdispatch.cron_statements()``), which run on a connection to
``cron_url`` as the same role.

Each function takes the connections :mod:`sa_pgdispatch.install` takes (the app database)
and runs inside that connection's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from ._connections import Connectable, error_message, raw_connection
from .errors import WorkerError

__all__ = [
    "WorkerBudget",
    "cron_statements",
    "run_in_cron_database",
    "start_workers",
    "stop_workers",
    "worker_budget",
]

_SCHEDULE_IN_DATABASE = "cron.schedule_in_database(text, text, text, text, text, boolean)"


@dataclass(frozen=True)
class WorkerBudget:
    """Background workers of the server, as ``pgdispatch.worker_budget()`` reports them.

    Matters in pg_cron's background-worker mode, where every long-lived pgdispatch
    worker and watchdog holds one of ``max_worker_processes``.
    """

    max_worker_processes: int
    #: None when other sessions' backend types are hidden from pgdispatch's owner
    used: int | None
    free: int | None
    pgdispatch_workers: int | None
    #: None when pg_cron's settings are hidden from pgdispatch's owner
    max_running_jobs: int | None
    #: pgdispatch workers and watchdogs that pg_cron has scheduled, every role's (running
    #: or not): what start() counts against max_worker_processes and max_running_jobs
    scheduled: int | None = None


def libpq_dsn(url: str) -> str:
    """A libpq connection string for *url* (a SQLAlchemy or libpq URL, or a DSN)."""
    if "://" not in url:
        return url  # key=value DSN
    parsed = make_url(url)
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise WorkerError(f"cron_url must be a PostgreSQL URL, not {parsed.drivername}://")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def _scalar(raw: psycopg.Connection[Any], sql: str, params: Sequence[object] = ()) -> Any:
    with raw.cursor() as cur:
        cur.execute(sql, params)
        row = cur.fetchone()
        return row[0] if row else None


def cron_statements(
    conn: Connectable, action: str = "start", workers: int | None = None
) -> list[str]:
    """The statements that carry out *action* (``start``, ``stop``, ``uninstall``) for the
    connected role's workers of this app database, to run in pg_cron's database.

    Also records the role's intent in the app database (see ``pgdispatch.cron_statements``).
    """
    with raw_connection(conn, WorkerError) as raw, raw.cursor() as cur:
        try:
            cur.execute("SELECT * FROM pgdispatch.cron_statements(%s, %s)", (action, workers))
        except psycopg.Error as exc:
            raise WorkerError(error_message(exc)) from exc
        return [str(row[0]) for row in cur.fetchall()]


def run_in_cron_database(
    raw: psycopg.Connection[Any], cron_url: str, statements: list[str]
) -> None:
    """Run *statements* in pg_cron's database as the role connected on *raw*."""
    role = _scalar(raw, "SELECT current_user")
    app_db = _scalar(raw, "SELECT current_database()")
    try:
        cron = psycopg.connect(libpq_dsn(cron_url), autocommit=True)
    except psycopg.Error as exc:
        raise WorkerError(f"cannot connect to pg_cron's database ({cron_url!r}): {exc}") from exc
    with cron:
        cron_role = _scalar(cron, "SELECT current_user")
        if cron_role != role:
            raise WorkerError(
                f"cron_url connects as {cron_role}, but the workers are {role}'s: pg_cron runs a "
                f"job as the role that scheduled it, so connect to pg_cron's database as {role}"
            )
        has_cron = _scalar(cron, "SELECT count(*) FROM pg_extension WHERE extname = 'pg_cron'")
        if not has_cron:
            cron_db = _scalar(cron, "SELECT current_database()")
            raise WorkerError(
                f"cron_url's database {cron_db} has no pg_cron extension: it must be pg_cron's "
                "database (cron.database_name)"
            )
        try:
            with cron.transaction(), cron.cursor() as cur:
                for statement in statements:
                    cur.execute(statement.encode())
        except psycopg.errors.InsufficientPrivilege as exc:
            raise WorkerError(
                f"{error_message(exc)}: {role} may not schedule pg_cron jobs in database {app_db}. "
                f"An administrator grants it once, in pg_cron's database: GRANT USAGE ON SCHEMA "
                f"cron TO {role}; GRANT EXECUTE ON FUNCTION {_SCHEDULE_IN_DATABASE} TO {role}; "
                f"and {role} needs CONNECT on database {app_db}"
            ) from exc
        except psycopg.Error as exc:
            raise WorkerError(f"in pg_cron's database: {error_message(exc)}") from exc


def start_workers(
    conn: Connectable, workers: int | None = None, *, cron_url: str | None = None
) -> None:
    """Schedule the connected role's pg_cron workers (``workers`` of them; default: as
    many as it has, else ``settings.default_workers``) and enable them.

    With ``cron_url`` (pg_cron's database, same role) the workers of this app database are
    scheduled there. Raises :class:`WorkerError` when they cannot be.
    """
    with raw_connection(conn, WorkerError) as raw:
        if cron_url is None:
            try:
                with raw.cursor() as cur:
                    cur.execute("SELECT pgdispatch.start(%s)", (workers,))
            except psycopg.Error as exc:
                raise WorkerError(error_message(exc)) from exc
            return
        statements = cron_statements(raw, "start", workers)
        run_in_cron_database(raw, cron_url, statements)


def stop_workers(
    conn: Connectable,
    *,
    cron_url: str | None = None,
    wait: timedelta | None = timedelta(minutes=1),
) -> None:
    """Stop the connected role's workers: wait for the jobs they are running to finish
    (their outcomes committed), keep them from starting others, and unschedule them.

    ``wait`` bounds the wait (``None``: as long as it takes); when jobs still run after
    it, nothing is stopped and :class:`WorkerError` says which (see
    ``pgdispatch.stop(wait)``). With ``cron_url``: this app database's workers, there
    (the wait is a minute)."""
    with raw_connection(conn, WorkerError) as raw:
        if cron_url is None:
            try:
                with raw.cursor() as cur:
                    cur.execute("SELECT pgdispatch.stop(%s::interval)", (wait,))
            except psycopg.Error as exc:
                raise WorkerError(error_message(exc)) from exc
            return
        statements = cron_statements(raw, "stop")
        run_in_cron_database(raw, cron_url, statements)


def unschedule_for_uninstall(raw: psycopg.Connection[Any], cron_url: str) -> None:
    """Unschedule every pgdispatch job of this app database that the role may remove (a
    superuser: every role's), before pgdispatch is dropped from it."""
    run_in_cron_database(raw, cron_url, cron_statements(raw, "uninstall"))


def worker_budget(conn: Connectable) -> WorkerBudget:
    """The server's background workers: ``max_worker_processes``, used, free, how many of
    them are pgdispatch's, pg_cron's ``cron.max_running_jobs`` (None if unreadable), and
    how many pgdispatch workers and watchdogs pg_cron has scheduled."""
    with raw_connection(conn, WorkerError) as raw, raw.cursor() as cur:
        cur.execute(
            "SELECT max_worker_processes, used, free, pgdispatch_workers, max_running_jobs,"
            " scheduled FROM pgdispatch.worker_budget()"
        )
        row = cur.fetchone()
        if row is None:
            raise WorkerError("pgdispatch.worker_budget() returned no row")
        values = [None if v is None else int(v) for v in row]
        return WorkerBudget(int(row[0]), values[1], values[2], values[3], values[4], values[5])
