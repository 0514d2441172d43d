"""op.install_pgdispatch / op.uninstall_pgdispatch in an app database apart from pg_cron's.

On the shared server pg_cron runs in its own database; each test makes an app database
``app_<random>`` owned by a new login role that an administrator allowed, in pg_cron's
database, to schedule jobs elsewhere (``cron.schedule_in_database``). The operations
schedule and unschedule the role's workers there through ``cron_url`` (pg_cron's
database, same role): given to the operation, or by the deployment (``-x cron_url=...``,
``$SA_PGDISPATCH_CRON_URL``) so that no revision holds the URL.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy.pool import NullPool

from sa_pgdispatch import jobs
from sa_pgdispatch.alembic import PgdispatchMigrationError, init_project
from sa_pgdispatch.install import installed_version
from sa_pgdispatch.testing.binaries import find_postgres_bin
from sa_pgdispatch.testing.errors import HarnessError
from sa_pgdispatch.testing.server import PgServer

pytestmark = pytest.mark.cron

ALEMBIC = str(Path(sys.executable).with_name("alembic"))
_GRANT = "cron.schedule_in_database(text,text,text,text,text,boolean)"


@dataclass(frozen=True)
class AppDatabase:
    name: str
    role: str
    url: str  # the app database, as role (SQLAlchemy URL)
    dsn: str  # the same, libpq URI
    cron_url: str  # pg_cron's database, as role (SQLAlchemy URL)
    cron_dsn: str  # the same, libpq URI


@pytest.fixture
def app_database(pgdispatch_server: PgServer) -> Iterator[AppDatabase]:
    suffix = uuid.uuid4().hex[:10]
    role, name = f"app_owner_{suffix}", f"app_{suffix}"
    with psycopg.connect(pgdispatch_server.dsn, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(f'CREATE DATABASE "{name}" OWNER "{role}"')
        admin.execute(f'GRANT USAGE ON SCHEMA cron TO "{role}"')
        admin.execute(f'GRANT EXECUTE ON FUNCTION {_GRANT} TO "{role}"')
    try:
        yield AppDatabase(
            name=name,
            role=role,
            url=pgdispatch_server.connect_url(user=role, dbname=name),
            dsn=pgdispatch_server.connect_dsn(user=role, dbname=name),
            cron_url=pgdispatch_server.connect_url(user=role),
            cron_dsn=pgdispatch_server.connect_dsn(user=role),
        )
    finally:
        with psycopg.connect(pgdispatch_server.dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT cron.unschedule(jobid) FROM cron.job WHERE username = %s", (role,)
            )
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE "{role}"')


def _cron_jobs(server: PgServer, role: str) -> set[tuple[str, str]]:
    """(jobname, database) of the role's pg_cron jobs, read in pg_cron's database."""
    with psycopg.connect(server.dsn, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT jobname, database FROM cron.job WHERE username = %s", (role,)
        ).fetchall()
    return {(str(n), str(d)) for n, d in rows}


def _workers_of(app: AppDatabase) -> set[tuple[str, str]]:
    # (job names hold the app database's oid, not its name)
    with psycopg.connect(app.cron_dsn) as conn:
        row = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (app.name,)).fetchone()
    assert row is not None
    return {
        (f"pgdispatch:1@{row[0]}", app.name),
        (f"pgdispatch:watchdog@{row[0]}", app.name),
    }


def _migrate(url: str, run: Callable[[Any], None], **opts: object) -> None:
    """Run ``run(op)`` in a real Alembic MigrationContext on *url*, committed."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            op = Operations(MigrationContext.configure(conn, opts=opts))
            with conn.begin():
                run(op)
    finally:
        engine.dispose()


def test_online_install_and_uninstall_with_cron_url(
    app_database: AppDatabase, pgdispatch_server: PgServer
) -> None:
    app = app_database
    _migrate(app.url, lambda op: op.install_pgdispatch(workers=1, cron_url=app.cron_url))
    assert _cron_jobs(pgdispatch_server, app.role) == _workers_of(app)
    engine = sa.create_engine(app.url, poolclass=NullPool)
    try:
        assert installed_version(engine) is not None
        with engine.connect() as conn:
            enabled = conn.execute(
                sa.text("SELECT workers, enabled FROM pgdispatch.worker WHERE role = current_user")
            ).one()
        assert tuple(enabled) == (1, True)
    finally:
        engine.dispose()

    _migrate(app.url, lambda op: op.uninstall_pgdispatch(cron_url=app.cron_url))
    assert _cron_jobs(pgdispatch_server, app.role) == set()
    engine = sa.create_engine(app.url, poolclass=NullPool)
    try:
        assert installed_version(engine) is None
    finally:
        engine.dispose()


def test_cron_url_from_the_context_option(
    app_database: AppDatabase, pgdispatch_server: PgServer
) -> None:
    """``context.configure(pgdispatch_cron_url=...)``: the revision names no URL."""
    app = app_database
    _migrate(app.url, lambda op: op.install_pgdispatch(), pgdispatch_cron_url=app.cron_url)
    assert _cron_jobs(pgdispatch_server, app.role) == _workers_of(app)
    _migrate(app.url, lambda op: op.uninstall_pgdispatch(), pgdispatch_cron_url=app.cron_url)
    assert _cron_jobs(pgdispatch_server, app.role) == set()


def test_without_cron_url_the_migration_says_how_to_give_one(
    app_database: AppDatabase, pgdispatch_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SA_PGDISPATCH_CRON_URL", raising=False)
    app = app_database
    with pytest.raises(PgdispatchMigrationError, match=r"-x cron_url=.*SA_PGDISPATCH_CRON_URL"):
        _migrate(app.url, lambda op: op.install_pgdispatch())
    # installed without workers, then an uninstall without cron_url is fine (none scheduled)
    _migrate(app.url, lambda op: op.install_pgdispatch(workers=0))
    assert _cron_jobs(pgdispatch_server, app.role) == set()
    _migrate(app.url, lambda op: op.uninstall_pgdispatch())


def test_uninstall_without_cron_url_refuses_while_workers_are_scheduled(
    app_database: AppDatabase, pgdispatch_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SA_PGDISPATCH_CRON_URL", raising=False)
    app = app_database
    _migrate(app.url, lambda op: op.install_pgdispatch(cron_url=app.cron_url))
    with pytest.raises(PgdispatchMigrationError, match="pass cron_url") as info:
        _migrate(app.url, lambda op: op.uninstall_pgdispatch(force=True))
    assert "force_uninstall" not in str(info.value)  # not a queued-jobs refusal
    assert _cron_jobs(pgdispatch_server, app.role) == _workers_of(app)


def _alembic(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ALEMBIC, *args], cwd=root, capture_output=True, text=True, check=False, timeout=120,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
    )


def test_alembic_command_with_cron_url_from_x_argument_and_environment(
    app_database: AppDatabase, pgdispatch_server: PgServer, tmp_path: Path
) -> None:
    """The template's first revision (``op.install_pgdispatch()``) in an app database:
    ``-x cron_url=...`` on upgrade, ``$SA_PGDISPATCH_CRON_URL`` on downgrade."""
    app = app_database
    init_project(tmp_path / "migrations")
    up = _alembic(tmp_path, "-x", f"cron_url={app.cron_url}", "upgrade", "head",
                  DATABASE_URL=app.url)
    assert up.returncode == 0, up.stderr
    assert _cron_jobs(pgdispatch_server, app.role) == _workers_of(app)

    refused = _alembic(tmp_path, "downgrade", "base", DATABASE_URL=app.url)
    assert refused.returncode != 0
    output = refused.stdout + refused.stderr
    assert "FAILED: pg_cron runs in database" in output
    assert "-x cron_url=" in output
    assert "Traceback" not in output

    down = _alembic(tmp_path, "downgrade", "base", DATABASE_URL=app.url,
                    SA_PGDISPATCH_CRON_URL=app.cron_url)
    assert down.returncode == 0, down.stderr
    assert _cron_jobs(pgdispatch_server, app.role) == set()


def _psql() -> str:
    found = shutil.which("psql")
    if found:
        return found
    try:
        candidate = find_postgres_bin() / "psql"
    except HarnessError as exc:
        pytest.skip(f"no psql: {exc}")
    if not candidate.exists():
        pytest.skip("no psql")
    return str(candidate)


def _psql_pipeline(sql: str) -> str:
    """The shell command of the offline script's "With psql:" comment."""
    lines = sql.splitlines()
    start = next(i for i, line in enumerate(lines) if line.rstrip().endswith("With psql:"))
    command = []
    for line in lines[start + 1:]:
        text = line.removeprefix("--").strip()
        command.append(text)
        if not text.endswith("\\"):
            break
    return "\n".join(command)


def _run_pipeline(pipeline: str, app: AppDatabase) -> None:
    psql = _psql()
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", pipeline.replace("psql ", f"{psql} ")],
        capture_output=True, text=True, check=False, timeout=60,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
             "APP_DATABASE_URL": app.dsn, "CRON_DATABASE_URL": app.cron_dsn},
    )
    assert done.returncode == 0, done.stderr


def test_offline_scripts_and_their_instructions_work(
    app_database: AppDatabase, pgdispatch_server: PgServer, tmp_path: Path
) -> None:
    """``alembic upgrade head --sql`` with a cron_url starts no workers and says how to
    start them; the script plus its own psql instructions give the same workers as the
    online migration, and the downgrade script plus its instructions remove them."""
    app = app_database
    init_project(tmp_path / "migrations")
    up = _alembic(tmp_path, "upgrade", "head", "--sql", DATABASE_URL=app.url,
                  SA_PGDISPATCH_CRON_URL=app.cron_url)
    assert up.returncode == 0, up.stderr
    # (the install script's function bodies call pgdispatch.start(); no statement does)
    assert "SELECT pgdispatch.start(" not in up.stdout
    assert "SELECT * FROM pgdispatch.cron_statements('start', 1);" in up.stdout
    with psycopg.connect(app.dsn, autocommit=True) as conn:
        conn.execute(up.stdout.encode())
    assert _cron_jobs(pgdispatch_server, app.role) == set()
    _run_pipeline(_psql_pipeline(up.stdout), app)
    assert _cron_jobs(pgdispatch_server, app.role) == _workers_of(app)

    (revision,) = (tmp_path / "migrations" / "versions").glob("*.py")
    rev = revision.name.split("_")[0]
    down = _alembic(tmp_path, "downgrade", f"{rev}:base", "--sql", DATABASE_URL=app.url,
                    SA_PGDISPATCH_CRON_URL=app.cron_url)
    assert down.returncode == 0, down.stderr
    assert "SELECT * FROM pgdispatch.cron_statements('uninstall');" in down.stdout
    assert (down.stdout.index("prepare_uninstall")
            < down.stdout.index("cron_statements('uninstall')")
            < down.stdout.index("DROP SCHEMA pgdispatch CASCADE;"))
    _run_pipeline(_psql_pipeline(down.stdout), app)  # before the script, as it says
    assert _cron_jobs(pgdispatch_server, app.role) == set()
    with psycopg.connect(app.dsn, autocommit=True) as conn:
        conn.execute(down.stdout.encode())
        assert conn.execute("SELECT to_regnamespace('pgdispatch')").fetchone() == (None,)


@pytest.mark.e2e
@pytest.mark.slow
def test_workers_scheduled_from_pg_cron_database_run_the_app_database_jobs(
    app_database: AppDatabase,
) -> None:
    """The scheduled workers really run in the app database, as its role (on pg_cron 1.4
    the first one starts at the next minute boundary)."""
    app = app_database
    _migrate(app.url, lambda op: op.install_pgdispatch(cron_url=app.cron_url))
    engine = sa.create_engine(app.url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            job_id = conn.execute(sa.text(
                "SELECT pgdispatch.dispatch('SELECT current_database()::text || '':'' || "
                "session_user', capture => true)"
            )).scalar_one()
        started = time.monotonic()
        job = jobs.wait(engine, int(job_id), timeout=90)
        assert job.state is jobs.JobState.SUCCEEDED, (job, time.monotonic() - started)
        assert re.search(rf"{app.name}:{app.role}", str(job.result))
    finally:
        engine.dispose()
    _migrate(app.url, lambda op: op.uninstall_pgdispatch(force=True, cron_url=app.cron_url))
