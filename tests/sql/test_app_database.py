"""pgdispatch in an app database apart from pg_cron's (``cron.database_name``): workers
scheduled from pg_cron's database with ``cron.schedule_in_database()``, from Python
(``cron_url``) and from SQL alone (``pgdispatch.cron_statements()``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, exc, text

from sa_pgdispatch.errors import WorkerError
from sa_pgdispatch.install import InstallError, install, uninstall
from sa_pgdispatch.workers import start_workers, stop_workers

from .conftest import rows, run

pytestmark = pytest.mark.cron

SCHEDULE_IN_DATABASE = "cron.schedule_in_database(text, text, text, text, text, boolean)"


@dataclass
class App:
    role: str
    database: str
    engine: Engine  # the role, in the app database
    cron_url: str  # the role, in pg_cron's database
    cron: Engine  # the role, in pg_cron's database


def _autocommit(engine: Engine, sql: str) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(sql))


@pytest.fixture
def app(pgdispatch_db: Engine, pgdispatch_server: Any) -> Iterator[App]:
    """A login role owning a new database, allowed to schedule jobs into it."""
    suffix = uuid.uuid4().hex[:8]
    role, database = f"app_{suffix}", f"appdb_{suffix}"
    _autocommit(pgdispatch_db, f'CREATE ROLE "{role}" LOGIN')
    _autocommit(pgdispatch_db, f'CREATE DATABASE "{database}" OWNER "{role}"')
    run(pgdispatch_db, f'GRANT USAGE ON SCHEMA cron TO "{role}"')
    engine = create_engine(pgdispatch_server.connect_url(user=role, dbname=database))
    cron_url = pgdispatch_server.connect_url(user=role)
    cron = create_engine(cron_url)
    try:
        yield App(role, database, engine, cron_url, cron)
    finally:
        engine.dispose()
        cron.dispose()
        unschedule = "SELECT cron.unschedule(jobid) FROM cron.job WHERE username = :r"
        run(pgdispatch_db, unschedule, r=role)
        _autocommit(pgdispatch_db, f'DROP DATABASE "{database}" WITH (FORCE)')
        run(pgdispatch_db, f'REVOKE ALL ON FUNCTION {SCHEDULE_IN_DATABASE} FROM "{role}"')
        run(pgdispatch_db, f'REVOKE ALL ON SCHEMA cron FROM "{role}"')
        _autocommit(pgdispatch_db, f'DROP ROLE "{role}"')


def _grant_schedule_in_database(admin: Engine, role: str) -> None:
    run(admin, f'GRANT EXECUTE ON FUNCTION {SCHEDULE_IN_DATABASE} TO "{role}"')


def _name(app: App, slot: str) -> str:
    """The pg_cron job name of a worker slot (or the watchdog) of the app database: the
    database's oid, not its name (any name fits pg_cron 1.4's 63-byte job names)."""
    oid = run(app.cron, "SELECT oid FROM pg_database WHERE datname = :d", d=app.database)
    return f"pgdispatch:{slot}@{oid}"


def _jobs(app: App) -> dict[str, str]:
    return {
        r["jobname"]: r["database"]
        for r in rows(app.cron, "SELECT jobname, database FROM cron.job ORDER BY jobname")
    }


def _wait_for(engine: Engine, sql: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = run(engine, sql)
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_start_in_an_app_database_names_pg_cron_database_and_the_way_out(
    app: App, pgdispatch_server: Any
) -> None:
    with app.engine.begin() as conn:
        install(conn, workers=None)
    with pytest.raises(exc.DBAPIError) as raised:
        run(app.engine, "SELECT pgdispatch.start()")
    message = str(raised.value)
    assert f"pg_cron runs in database {pgdispatch_server.dbname}, not in {app.database}" in message
    assert "pgdispatch.cron_statements('start')" in message
    assert "cron.schedule_in_database" in message
    # a role that dispatches without workers gets told the same, instead of a job that
    # never runs
    with pytest.raises(exc.DBAPIError, match="has no workers for database"):
        run(app.engine, "SELECT pgdispatch.fire('SELECT 1')")
    # install() with workers wants cron_url
    with app.engine.begin() as conn:
        uninstall(conn)
    with pytest.raises(InstallError, match="pass cron_url"), app.engine.begin() as conn:
        install(conn)


def test_sql_only_statements_schedule_workers_that_run_jobs_here(
    app: App, pgdispatch_db: Engine
) -> None:
    _grant_schedule_in_database(pgdispatch_db, app.role)
    with app.engine.begin() as conn:
        install(conn, workers=None)
    run(app.engine, "CREATE TABLE ran (at timestamptz, db text, who text)")
    statements = [r["s"] for r in rows(app.engine, "SELECT s FROM pgdispatch.cron_statements() s")]
    with psycopg.connect(app.cron_url.replace("postgresql+psycopg", "postgresql")) as cron:
        for statement in statements:
            cron.execute(statement.encode())
    assert _jobs(app) == {
        _name(app, "1"): app.database,
        _name(app, "watchdog"): app.database,
    }
    run(
        app.engine,
        "SELECT pgdispatch.fire('INSERT INTO ran VALUES (clock_timestamp(), "
        "current_database(), current_user)')",
    )
    # every second from pg_cron 1.5; at the next minute on 1.4
    assert _wait_for(app.engine, "SELECT count(*) FROM ran", 75), "the job never ran"
    assert rows(app.engine, "SELECT db, who FROM ran")[0] == {"db": app.database, "who": app.role}
    stop = [r["s"] for r in rows(app.engine, "SELECT s FROM pgdispatch.cron_statements('stop') s")]
    with psycopg.connect(app.cron_url.replace("postgresql+psycopg", "postgresql")) as cron:
        for statement in stop:
            cron.execute(statement.encode())
    assert _jobs(app) == {}


def test_python_install_start_stop_and_uninstall_with_cron_url(
    app: App, pgdispatch_db: Engine, pgdispatch_server: Any
) -> None:
    with pytest.raises(WorkerError, match="schedule_in_database"), app.engine.begin() as conn:
        install(conn, cron_url=app.cron_url)
    _grant_schedule_in_database(pgdispatch_db, app.role)
    with app.engine.begin() as conn:
        install(conn, workers=2, cron_url=app.cron_url)
    assert set(_jobs(app)) == {
        _name(app, slot) for slot in ("1", "2", "watchdog")
    }
    start_workers(app.engine, 1, cron_url=app.cron_url)
    assert set(_jobs(app)) == {
        _name(app, slot) for slot in ("1", "watchdog")
    }
    # a second app database of the same role: jobs of their own, side by side
    other = f"{app.database}_2"
    _autocommit(pgdispatch_db, f'CREATE DATABASE "{other}" OWNER "{app.role}"')
    other_engine = create_engine(pgdispatch_server.connect_url(user=app.role, dbname=other))
    try:
        with other_engine.begin() as conn:
            install(conn, cron_url=app.cron_url)
        assert len(_jobs(app)) == 4
        with other_engine.begin() as conn:
            uninstall(conn, cron_url=app.cron_url)
    finally:
        other_engine.dispose()
        _autocommit(pgdispatch_db, f'DROP DATABASE "{other}" WITH (FORCE)')
    assert set(_jobs(app)) == {
        _name(app, slot) for slot in ("1", "watchdog")
    }
    # the same role's workers for pg_cron's own database leave this database's alone
    run(pgdispatch_db, "SELECT pgdispatch.grant_usage(:r)", r=app.role)
    run(app.cron, "SELECT pgdispatch.start(1)")
    assert len(_jobs(app)) == 4
    run(app.cron, "SELECT pgdispatch.stop()")
    run(pgdispatch_db, "DELETE FROM pgdispatch.worker WHERE role = :r", r=app.role)
    run(pgdispatch_db, "SELECT pgdispatch.revoke_usage(:r)", r=app.role)
    assert set(_jobs(app)) == {
        _name(app, slot) for slot in ("1", "watchdog")
    }
    # the URL must be the same role's
    with pytest.raises(WorkerError, match="connect to pg_cron's database as"):
        start_workers(app.engine, cron_url=pgdispatch_server.url)
    # uninstall without cron_url would leave jobs failing every second in pg_cron
    with pytest.raises(InstallError, match="pass cron_url"), app.engine.begin() as conn:
        uninstall(conn)
    stop_workers(app.engine, cron_url=app.cron_url)
    assert _jobs(app) == {}
    start_workers(app.engine, cron_url=app.cron_url)
    with app.engine.begin() as conn:
        assert uninstall(conn, cron_url=app.cron_url)
    assert _jobs(app) == {}
