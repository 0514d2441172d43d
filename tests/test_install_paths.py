"""One SQL source, three ways in, and pg_dump keeps the queue.

* ``sql/`` is an extension directory: a control file, a PGXS Makefile, a README.
* pg_tle: a member of pgtle_admin (no superuser) registers the scripts and creates the
  extension at the oldest version, upgrades it with jobs queued (they run after), and
  uninstalls it without a trace (extension, registration, pg_cron jobs). Python,
  ``sa-pgdispatch --via pg_tle``, Alembic online, and Alembic's offline SQL run by psql.
* A native extension: the folder installed with ``make -C sql install`` into a private
  copy of a server tree, ``CREATE EXTENSION``, ``ALTER EXTENSION UPDATE``, uninstall.
* Backups: pg_dump of pg_cron's database (where pgdispatch lives) restored into a new
  server keeps queued jobs, history, settings, dispatch triggers and the job id
  sequence, as plain SQL and as a pg_tle extension; once the role's workers are
  started again the queued jobs run exactly once.

pg_tle is only in the pg15-cron1.6.7 tree of scripts/build-test-trees.sh: without its
vendor sources these tests skip (and fail under CI=true). They run once, in the default
run, on servers of their own (marked ``db``, not ``cron``).
"""

from __future__ import annotations

import io
import itertools
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from sa_pgdispatch import cli
from sa_pgdispatch._resources import sql_dir
from sa_pgdispatch._scripts import dollar_quoted as _dollar_quoted
from sa_pgdispatch.install import (
    VIAS,
    InstallError,
    available_versions,
    install,
    install_sql,
    installed_version,
    installed_via,
    latest_version,
    uninstall,
    uninstall_sql,
    upgrade,
    upgrade_path,
    upgrade_sql,
)
from sa_pgdispatch.testing import EphemeralPostgres
from sa_pgdispatch.testing.drain import drain

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "build-test-trees.sh"
TREE = "pg15-cron1.6.7"  # the tree with pg_tle
OLDEST = available_versions()[0]
LATEST = latest_version()
WAIT_SECONDS = 30


# ------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def tle_bin() -> Path:
    """The bin dir of the PostgreSQL 15 tree with pg_cron 1.6.7 and pg_tle."""
    result = subprocess.run(
        ["bash", str(SCRIPT), TREE], capture_output=True, text=True, timeout=1500, check=False
    )
    if result.returncode == 3 and os.environ.get("CI", "").lower() != "true":
        pytest.skip(f"no {TREE} tree (pg_tle): {result.stderr.strip()}")
    if result.returncode != 0:
        pytest.fail(f"{SCRIPT.name} failed (exit {result.returncode}):\n{result.stderr}")
    for line in result.stdout.splitlines():
        parts = line.split(" ", 2)
        if parts[:2] == ["TREE", TREE] and len(parts) == 3:
            return Path(parts[2])
    pytest.fail(f"{SCRIPT.name} printed no TREE line for {TREE}: {result.stdout!r}")


def _superuser(server: EphemeralPostgres, dbname: str | None = None) -> psycopg.Connection[Any]:
    kw = {"dbname": dbname} if dbname else {}
    return psycopg.connect(server.connect_dsn(**kw), autocommit=True)


def _create_owner(server: EphemeralPostgres, role: str, *, pgtle_admin: bool) -> None:
    """A LOGIN role, no superuser, with CREATE on the database and USAGE on schema cron
    (and pgtle_admin's membership)."""
    with _superuser(server) as su:
        su.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER")
        su.execute(f'GRANT CREATE ON DATABASE "{server.dbname}" TO {role}')
        su.execute(f"GRANT USAGE ON SCHEMA cron TO {role}")
        if pgtle_admin:
            su.execute("CREATE EXTENSION IF NOT EXISTS pg_tle")
            su.execute(f"GRANT pgtle_admin TO {role}")


def _rows(conn: psycopg.Connection[Any], query: str, *params: Any) -> list[tuple[Any, ...]]:
    return conn.execute(query, params or None).fetchall()


def _one(conn: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = conn.execute(query, params or None).fetchone()
    assert row is not None, query
    return row[0]


APP_SCHEMA = """
CREATE SCHEMA app;
CREATE TABLE app.ran (id integer NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION app.record(p jsonb) RETURNS void LANGUAGE sql
  AS $$ INSERT INTO app.ran (id) VALUES ((p->>'id')::integer) $$;
CREATE TABLE app.items (id integer PRIMARY KEY);
CREATE TABLE app.orders (id integer PRIMARY KEY);
CREATE TRIGGER items_dispatch AFTER INSERT ON app.items
  FOR EACH ROW EXECUTE FUNCTION pgdispatch.trigger('app.record');
SELECT pgdispatch.definer_trigger_function('app');
CREATE TRIGGER orders_dispatch AFTER INSERT ON app.orders
  FOR EACH ROW EXECUTE FUNCTION app.pgdispatch_definer_trigger('app.record');
"""


def _dispatch(conn: psycopg.Connection[Any], *ids: int) -> None:
    for i in ids:
        conn.execute(
            "SELECT pgdispatch.dispatch('SELECT app.record($1)',"
            " jsonb_build_object('id', %s::int))",
            (i,),
        )


def _wait_for_runs(conn: psycopg.Connection[Any], expected: set[int]) -> dict[int, int]:
    """Wait until every id in ``expected`` ran (app.ran) and the queue is empty; returns
    how many times each id ran."""
    deadline = time.monotonic() + WAIT_SECONDS
    counts: dict[int, int] = {}
    while time.monotonic() < deadline:
        counts = dict(_rows(conn, "SELECT id, count(*)::int FROM app.ran GROUP BY id"))
        queued = _one(conn, "SELECT count(*) FROM pgdispatch.job")
        if expected <= set(counts) and queued == 0:
            break
        time.sleep(0.2)
    time.sleep(1.5)  # a late duplicate would show now
    return dict(_rows(conn, "SELECT id, count(*)::int FROM app.ran GROUP BY id"))


def _pgdispatch_cron_jobs(server: EphemeralPostgres) -> list[tuple[Any, ...]]:
    with _superuser(server) as su:
        return _rows(
            su,
            "SELECT jobname, username, nodename, nodeport FROM cron.job"
            " WHERE command LIKE 'CALL pgdispatch.%' ORDER BY jobname",
        )


def _tle_registered(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return _rows(
        conn, "SELECT name, default_version FROM pgtle.available_extensions()"
        " WHERE name = 'pgdispatch'"
    )


def _extension(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
    """What psql's \\dx shows for pgdispatch: name, version, schema, owner."""
    return conn.execute(
        "SELECT e.extname, e.extversion, n.nspname, r.rolname FROM pg_extension e"
        " JOIN pg_namespace n ON n.oid = e.extnamespace JOIN pg_roles r ON r.oid = e.extowner"
        " WHERE e.extname = 'pgdispatch'"
    ).fetchone()


def _assert_gone(conn: psycopg.Connection[Any], server: EphemeralPostgres) -> None:
    assert _extension(conn) is None
    assert _one(conn, "SELECT to_regnamespace('pgdispatch')") is None
    assert _pgdispatch_cron_jobs(server) == []


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(list(argv), stdout=out)
    return code, out.getvalue()


# ------------------------------------------------------------------------ the sql/ folder


def _control() -> dict[str, str]:
    values = {}
    for line in (sql_dir() / "pgdispatch.control").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_sql_folder_is_an_extension_directory() -> None:
    control = _control()
    assert control == {
        "comment": control["comment"],
        "default_version": f"'{LATEST}'",
        "schema": "pgdispatch",
        "relocatable": "false",
        "superuser": "false",
        "requires": "'plpgsql'",  # not pg_cron: pgdispatch may live apart from pg_cron
    }
    assert control["comment"].startswith("'")
    assert control["comment"].endswith("'")
    scripts = sorted(p.name for p in sql_dir().glob("pgdispatch--*.sql"))
    assert f"pgdispatch--{OLDEST}.sql" in scripts
    makefile = (sql_dir() / "Makefile").read_text()
    assert re.search(r"^EXTENSION = pgdispatch$", makefile, re.M)
    assert re.search(r"^DATA = .*pgdispatch--\*\.sql", makefile, re.M)
    assert "include $(PGXS)" in makefile
    readme = (sql_dir() / "README.md").read_text()
    for needed in ("dbdev.install(", "create extension", "make -C sql install",
                   "pgdispatch.dispatch("):
        assert needed in readme


def test_scripts_are_extension_scripts() -> None:
    """Nothing CREATE EXTENSION or pg_tle refuses: no top-level transaction control, no
    psql meta-command, no bare CREATE SCHEMA, none of pg_tle's reserved quote tags."""
    for path in sql_dir().glob("pgdispatch--*.sql"):
        text = path.read_text()
        control = r"^(BEGIN|COMMIT|ROLLBACK|START TRANSACTION)[ \t]*;"  # top level
        assert not re.search(control, text, re.M | re.I), path.name
        assert not re.search(r"^\\", text, re.M), path.name
        assert "$_pgtle_i_$" not in text
        assert "$_pgtle_o_$" not in text
        assert not re.search(r"^CREATE SCHEMA", text, re.M), path.name
    full = (sql_dir() / f"pgdispatch--{OLDEST}.sql").read_text()
    for name in ("job", "job_id_seq", "job_history", "cancel_request", "worker",
                 "definer_function", "settings", "meta"):
        assert f"pg_extension_config_dump('pgdispatch.{name}'" in full, name


def test_offline_sql_of_each_path() -> None:
    assert VIAS == ("sql", "extension", "pg_tle")
    with pytest.raises(InstallError, match="via must be one of"):
        install_sql(via="rpm")  # type: ignore[arg-type]
    ext = install_sql(OLDEST, workers=2, via="extension")
    assert ext == (
        f"CREATE EXTENSION pgdispatch VERSION '{OLDEST}';\n\nSELECT pgdispatch.start(2);\n"
    )
    tle = install_sql(workers=None, via="pg_tle")
    assert tle.startswith("SELECT pgtle.uninstall_extension_if_exists('pgdispatch');")
    assert f"SELECT pgtle.install_extension('pgdispatch', '{OLDEST}', " in tle
    assert "ARRAY['plpgsql'], 'pgdispatch');" in tle
    assert f"SELECT pgtle.set_default_version('pgdispatch', '{LATEST}');" in tle
    assert tle.rstrip().endswith(f"CREATE EXTENSION pgdispatch VERSION '{LATEST}';")
    assert "$pgdispatch_sql$" in tle  # the scripts' quote tag, found in none of them
    for path in sql_dir().glob("pgdispatch--*.sql"):
        assert "$pgdispatch_sql$" not in path.read_text()
    if LATEST != OLDEST:
        assert f"pgtle.install_update_path('pgdispatch', '{OLDEST}', " in tle
        up = upgrade_sql(OLDEST, via="pg_tle")
        # registers what is missing only (an update has the versions it was created with)
        for a, b in itertools.pairwise(upgrade_path(OLDEST, LATEST)):
            assert f"AND proname = 'pgdispatch--{a}--{b}.sql') THEN" in up
        assert f"ALTER EXTENSION pgdispatch UPDATE TO '{LATEST}';" in up
        assert "pgdispatch.definer_trigger_function(n.nspname)" in up
        assert upgrade_sql(OLDEST, via="extension").startswith(
            f"ALTER EXTENSION pgdispatch UPDATE TO '{LATEST}';"
        )
    assert upgrade_sql(LATEST, via="pg_tle") == ""
    assert uninstall_sql(via="extension") == (
        "SELECT pgdispatch.prepare_uninstall(force => false);\n"
        "DROP EXTENSION pgdispatch CASCADE;\nDROP SCHEMA IF EXISTS pgdispatch CASCADE;\n"
    )
    assert uninstall_sql(force=True, via="pg_tle").endswith(
        "SELECT pgtle.uninstall_extension_if_exists('pgdispatch');\n"
    )


def test_dollar_quote_tags_never_occur_in_what_they_quote() -> None:
    assert _dollar_quoted("x", "t") == "$t$x$t$"
    assert _dollar_quoted("a $t$ b $t1$", "t") == "$t2$a $t$ b $t1$$t2$"


# ------------------------------------------------------------------------------ pg_tle


@pytest.fixture(scope="module")
def tle_server(tle_bin: Path) -> Iterator[EphemeralPostgres]:
    """A server of the pg_tle tree: pg_tle created (by the superuser), and ``tle_admin``,
    a member of pgtle_admin that is no superuser."""
    with EphemeralPostgres(pg_bin=tle_bin) as server:
        assert server.has_pg_tle
        _create_owner(server, "tle_admin", pgtle_admin=True)
        yield server


@pytest.fixture
def tle_admin(tle_server: EphemeralPostgres) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(tle_server.connect_dsn(user="tle_admin")) as conn:
        assert _one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
        conn.commit()
        yield conn
        conn.rollback()
        uninstall(conn, force=True)
        conn.execute("DROP SCHEMA IF EXISTS app CASCADE")
        conn.commit()


@pytest.mark.db
@pytest.mark.timeout(900)
def test_pg_tle_install_oldest_upgrade_with_queued_jobs_uninstall(
    tle_server: EphemeralPostgres, tle_admin: psycopg.Connection[Any]
) -> None:
    conn = tle_admin
    assert install(conn, version=OLDEST, via="pg_tle", workers=None) == OLDEST
    conn.commit()
    assert installed_via(conn) == "pg_tle"
    assert installed_version(conn) == OLDEST
    assert _extension(conn) == ("pgdispatch", OLDEST, "pgdispatch", "tle_admin")
    assert _tle_registered(conn) == [("pgdispatch", OLDEST)]
    conn.execute(APP_SCHEMA)
    # the role's workers scheduled, then stopped: its jobs stay queued
    conn.execute("SELECT pgdispatch.start(1)")
    conn.execute("SELECT pgdispatch.stop()")
    _dispatch(conn, 1, 2, 3)
    conn.execute("INSERT INTO app.items VALUES (4)")
    conn.execute("INSERT INTO app.orders VALUES (5)")
    conn.commit()
    assert _one(conn, "SELECT count(*) FROM pgdispatch.job") == 5
    body = "SELECT prosrc FROM pg_proc WHERE oid = %s::regprocedure"

    assert upgrade(conn) == LATEST
    conn.commit()
    assert installed_version(conn) == LATEST
    assert installed_via(conn) == "pg_tle"
    assert _extension(conn) == ("pgdispatch", LATEST, "pgdispatch", "tle_admin")
    assert _tle_registered(conn) == [("pgdispatch", LATEST)]  # what a restore creates
    versions = {v for (v,) in _rows(
        conn, "SELECT version FROM pgtle.available_extension_versions() WHERE name = 'pgdispatch'"
    )}
    assert {OLDEST, LATEST} <= versions
    assert _one(conn, "SELECT count(*) FROM pgdispatch.job") == 5  # kept by the upgrade
    # the definer trigger function (not the extension's) was refreshed after the update
    assert _one(conn, body, "app.pgdispatch_definer_trigger()") == _one(
        conn, body, "pgdispatch.trigger()"
    )

    conn.execute("SELECT pgdispatch.start(1)")  # pg_cron's workers run the queue
    conn.commit()
    counts = _wait_for_runs(conn, {1, 2, 3, 4, 5})
    assert counts == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    assert _one(
        conn, "SELECT count(*) FROM pgdispatch.jobs WHERE state = 'succeeded'"
    ) == 5
    conn.commit()

    with pytest.raises(InstallError, match="dispatch triggers"):
        uninstall(conn)
    conn.rollback()
    assert uninstall(conn, force=True) is True
    conn.commit()
    _assert_gone(conn, tle_server)
    assert _tle_registered(conn) == []
    assert _rows(
        conn, "SELECT proname FROM pg_proc WHERE pronamespace = 'pgtle'::regnamespace"
        " AND proname LIKE 'pgdispatch%%'"
    ) == []
    assert _one(conn, "SELECT to_regprocedure('app.pgdispatch_definer_trigger()')") is None
    assert uninstall(conn) is False


@pytest.mark.db
@pytest.mark.timeout(900)
def test_pg_tle_upgrade_under_a_stream_of_jobs(
    tle_server: EphemeralPostgres, tle_admin: psycopg.Connection[Any], upgrade_under_load: Any
) -> None:
    """ALTER EXTENSION UPDATE by a pgtle_admin member (no superuser) while its worker of the
    oldest version runs a batch and jobs flow: each runs once (tests/conftest.py)."""
    assert install(tle_admin, version=OLDEST, via="pg_tle", workers=None) == OLDEST
    tle_admin.commit()
    dsn = tle_server.connect_dsn(user="tle_admin")
    upgrade_under_load(lambda: psycopg.connect(dsn, autocommit=True),
                       lambda: psycopg.connect(dsn, autocommit=True))
    assert installed_via(tle_admin) == "pg_tle"
    assert _extension(tle_admin) == ("pgdispatch", LATEST, "pgdispatch", "tle_admin")


@pytest.mark.db
@pytest.mark.timeout(900)
def test_pg_tle_refusals(tle_server: EphemeralPostgres) -> None:
    with _superuser(tle_server) as su:
        su.execute("CREATE ROLE not_tle_admin LOGIN")
        su.execute(f'GRANT CREATE ON DATABASE "{tle_server.dbname}" TO not_tle_admin')
        su.execute("GRANT USAGE ON SCHEMA cron TO not_tle_admin")
        su.execute("CREATE DATABASE no_tle OWNER tle_admin")
    with psycopg.connect(tle_server.connect_dsn(user="not_tle_admin")) as conn:
        with pytest.raises(InstallError, match="not a member of pgtle_admin"):
            install(conn, via="pg_tle")
        conn.rollback()
        assert installed_version(conn) is None
    with psycopg.connect(tle_server.connect_dsn(user="tle_admin", dbname="no_tle")) as conn:
        with pytest.raises(InstallError, match="pg_tle is not installed in this database"):
            install(conn, via="pg_tle", workers=None)
        conn.rollback()
        # another path's install is upgraded that way; switching paths is refused
        assert install(conn, version=OLDEST, workers=None) == OLDEST
        conn.commit()
        assert installed_via(conn) == "sql"
        with pytest.raises(InstallError, match="installed as plain SQL, not as a pg_tle"):
            install(conn, via="pg_tle")
        conn.rollback()
        assert install(conn) == LATEST
        assert installed_via(conn) == "sql"
        assert uninstall(conn) is True
        conn.commit()


@pytest.mark.db
@pytest.mark.timeout(900)
def test_pg_tle_under_a_database_dev_name(
    tle_server: EphemeralPostgres, tle_admin: psycopg.Connection[Any]
) -> None:
    """Registered as database.dev's client registers a package (dbdev.install(): its
    name, no schema argument, every version and update path, the default version), and
    created by its name: sa_pgdispatch finds it, leaves its upgrades to dbdev, removes it."""
    conn, name = tle_admin, "acme@pgdispatch"
    installs = {p.name: p.read_text() for p in sql_dir().glob("pgdispatch--*.sql")}
    conn.execute(
        "SELECT pgtle.install_extension(%s, %s, 'pgdispatch', %s, ARRAY['plpgsql'])",
        (name, OLDEST, installs[f"pgdispatch--{OLDEST}.sql"]),
    )
    for a, b in itertools.pairwise(upgrade_path(OLDEST, LATEST)):
        conn.execute(
            "SELECT pgtle.install_update_path(%s, %s, %s, %s)",
            (name, a, b, installs[f"pgdispatch--{a}--{b}.sql"]),
        )
    conn.execute("SELECT pgtle.set_default_version(%s, %s)", (name, LATEST))
    conn.execute(f"CREATE EXTENSION \"{name}\" VERSION '{OLDEST}'")
    conn.commit()
    assert installed_via(conn) == "pg_tle"
    assert installed_version(conn) == OLDEST
    if LATEST != OLDEST:
        with pytest.raises(InstallError, match=re.escape(f"select dbdev.install('{name}')")):
            upgrade(conn)
        conn.rollback()
        conn.execute(f"ALTER EXTENSION \"{name}\" UPDATE TO '{LATEST}'")
        conn.commit()
    assert installed_version(conn) == LATEST
    assert uninstall(conn) is True
    conn.commit()
    assert _one(conn, "SELECT count(*) FROM pg_extension WHERE extname = %s", name) == 0
    assert _one(conn, "SELECT to_regnamespace('pgdispatch')") is None
    assert _one(
        conn, "SELECT count(*) FROM pgtle.available_extensions() WHERE name = %s", name
    ) == 0
    conn.commit()


@pytest.mark.db
@pytest.mark.timeout(900)
def test_pg_tle_through_the_command_line(
    tle_server: EphemeralPostgres, tle_admin: psycopg.Connection[Any]
) -> None:
    url = tle_server.connect_url(user="tle_admin")
    code, out = _cli("install", "--url", url, "--via", "pg_tle", "--version", OLDEST,
                     "--workers", "0")
    assert code == 0, out
    assert f"installed pgdispatch {OLDEST} (pg_tle extension)" in out
    code, out = _cli("install", "--url", url)  # upgraded the way it was installed
    assert code == 0, out
    assert f"upgraded pgdispatch {OLDEST} -> {LATEST} (pg_tle extension)" in out
    code, out = _cli("status", "--url", url, "--plain")
    assert code == 0, out
    assert re.search(r"installed via\s+pg_tle \(pg_tle extension\)", out), out
    assert installed_via(tle_admin) == "pg_tle"
    tle_admin.rollback()
    code, out = _cli("install", "--url", url, "--via", "extension")
    assert code == cli.EXIT_FAILURE
    code, out = _cli("uninstall", "--url", url)
    assert code == 0, out
    _assert_gone(tle_admin, tle_server)
    assert _tle_registered(tle_admin) == []
    tle_admin.rollback()


@pytest.mark.db
@pytest.mark.timeout(900)
def test_pg_tle_through_alembic_online(
    tle_server: EphemeralPostgres, tle_admin: psycopg.Connection[Any]
) -> None:
    import sa_pgdispatch.alembic  # noqa: F401  (registers the operations)

    engine = sa.create_engine(tle_server.connect_url(user="tle_admin"))
    try:
        with engine.begin() as conn:
            op: Any = Operations(MigrationContext.configure(connection=conn))
            op.install_pgdispatch(version=OLDEST, workers=0, via="pg_tle")
        with engine.begin() as conn:
            assert installed_via(conn) == "pg_tle"
            assert installed_version(conn) == OLDEST
            op = Operations(MigrationContext.configure(connection=conn))
            op.upgrade_pgdispatch()
        with engine.begin() as conn:
            assert installed_version(conn) == LATEST
            op = Operations(MigrationContext.configure(connection=conn))
            op.uninstall_pgdispatch()
        with engine.begin() as conn:
            assert installed_via(conn) is None
    finally:
        engine.dispose()
    _assert_gone(tle_admin, tle_server)
    assert _tle_registered(tle_admin) == []
    tle_admin.rollback()


def _offline(**kw: Any) -> tuple[Any, io.StringIO]:
    import sa_pgdispatch.alembic  # noqa: F401  (registers the operations)

    buf = io.StringIO()
    ctx = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": buf, **kw}
    )
    return Operations(ctx), buf


def _psql(server: EphemeralPostgres, bin_dir: Path, script: str, user: str) -> None:
    result = subprocess.run(
        [str(bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1",
         "-d", server.connect_dsn(user=user), "-f", "-"],
        input=script, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.db
@pytest.mark.timeout(900)
def test_pg_tle_offline_sql_runs_in_psql(
    tle_server: EphemeralPostgres, tle_bin: Path, tle_admin: psycopg.Connection[Any]
) -> None:
    """Alembic's --sql output for each pg_tle operation, run by psql as tle_admin."""
    op, buf = _offline()
    op.install_pgdispatch(version=OLDEST, workers=1, via="pg_tle")
    script = buf.getvalue()
    assert "pgtle.install_extension(" in script
    _psql(tle_server, tle_bin, script, "tle_admin")
    assert installed_via(tle_admin) == "pg_tle"
    assert installed_version(tle_admin) == OLDEST
    assert len(_pgdispatch_cron_jobs(tle_server)) == 2  # a worker and the watchdog
    tle_admin.rollback()

    op, buf = _offline()
    op.upgrade_pgdispatch(from_version=OLDEST, via="pg_tle")
    _psql(tle_server, tle_bin, buf.getvalue(), "tle_admin")
    assert _extension(tle_admin) == ("pgdispatch", LATEST, "pgdispatch", "tle_admin")
    assert _tle_registered(tle_admin) == [("pgdispatch", LATEST)]
    tle_admin.rollback()

    op, buf = _offline()
    op.uninstall_pgdispatch(via="pg_tle")
    _psql(tle_server, tle_bin, buf.getvalue(), "tle_admin")
    _assert_gone(tle_admin, tle_server)
    assert _tle_registered(tle_admin) == []
    tle_admin.rollback()


# -------------------------------------------------------------------- native extension


@pytest.fixture(scope="module")
def native_bin(tle_bin: Path) -> Iterator[Path]:
    """A private copy of the tree, with sql/ installed into it by ``make -C sql install``
    (the cached tree is shared and stays as it is)."""
    tree_root = tle_bin.parents[3]  # <tree>/lib/postgresql/15/bin
    base = Path(tempfile.mkdtemp(prefix="sa-pgdispatch-native-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)  # the server's OS user reads the tree
        copy = base / tree_root.name
        shutil.copytree(tree_root, copy, symlinks=True)
        bin_dir = copy / tle_bin.relative_to(tree_root)
        pg_config = bin_dir / "pg_config"
        result = subprocess.run(
            ["make", "-C", str(sql_dir()), "install", f"PG_CONFIG={pg_config}"],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        extension_dir = Path(
            subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True,
                           check=True).stdout.strip()
        ) / "extension"
        installed = sorted(p.name for p in extension_dir.glob("pgdispatch*"))
        shipped = sorted(p.name for p in sql_dir().glob("pgdispatch*"))
        assert installed == shipped
        yield bin_dir
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.db
@pytest.mark.timeout(900)
def test_native_extension_install_upgrade_uninstall(native_bin: Path) -> None:
    with EphemeralPostgres(pg_bin=native_bin) as server:
        _create_owner(server, "app", pgtle_admin=False)
        with psycopg.connect(server.connect_dsn(user="app")) as conn:
            available = {v for (v,) in _rows(
                conn, "SELECT version FROM pg_available_extension_versions"
                " WHERE name = 'pgdispatch'"
            )}
            assert set(available_versions()) <= available
            assert install(conn, version=OLDEST, via="extension", workers=None) == OLDEST
            conn.commit()
            assert installed_via(conn) == "extension"
            assert _extension(conn) == ("pgdispatch", OLDEST, "pgdispatch", "app")
            conn.execute(APP_SCHEMA)
            conn.execute("SELECT pgdispatch.start(1)")
            conn.execute("SELECT pgdispatch.stop()")
            _dispatch(conn, 1, 2)
            conn.execute("INSERT INTO app.orders VALUES (3)")
            conn.commit()
            assert upgrade(conn) == LATEST
            conn.commit()
            assert _extension(conn) == ("pgdispatch", LATEST, "pgdispatch", "app")
            assert _one(conn, "SELECT count(*) FROM pgdispatch.job") == 3
            conn.commit()
            assert drain(conn) == 3
            assert dict(_rows(conn, "SELECT id, count(*)::int FROM app.ran GROUP BY id")) == {
                1: 1, 2: 1, 3: 1
            }
            conn.commit()
            assert uninstall(conn, force=True) is True
            conn.commit()
            _assert_gone(conn, server)
            conn.execute("DROP SCHEMA app CASCADE")
            conn.commit()
            # the latest version straight away: the oldest full script + update scripts
            assert install(conn, via="extension", workers=1) == LATEST
            conn.commit()
            assert _extension(conn) == ("pgdispatch", LATEST, "pgdispatch", "app")
            assert len(_pgdispatch_cron_jobs(server)) == 2
            # pg_tle does not register an extension whose files the server has
            with _superuser(server) as su:
                su.execute("CREATE EXTENSION pg_tle")
                su.execute("GRANT pgtle_admin TO app")
            assert uninstall(conn) is True
            conn.commit()
            with pytest.raises(InstallError, match="native extension's files"):
                install(conn, via="pg_tle")
            conn.rollback()
            _assert_gone(conn, server)


@pytest.mark.db
@pytest.mark.timeout(900)
def test_native_extension_upgrade_under_a_stream_of_jobs(
    native_bin: Path, upgrade_under_load: Any
) -> None:
    """ALTER EXTENSION UPDATE from the extension directory while a worker of the oldest
    version runs a batch and jobs flow: each runs once (tests/conftest.py)."""
    with EphemeralPostgres(pg_bin=native_bin) as server:
        _create_owner(server, "app", pgtle_admin=False)
        dsn = server.connect_dsn(user="app")
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert install(conn, version=OLDEST, via="extension", workers=None) == OLDEST
        upgrade_under_load(lambda: psycopg.connect(dsn, autocommit=True),
                           lambda: psycopg.connect(dsn, autocommit=True))
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert _extension(conn) == ("pgdispatch", LATEST, "pgdispatch", "app")


# ----------------------------------------------------------------------------- backups


def _run_tool(bin_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=300,
        check=False,
    )


def _restore(bin_dir: Path, server: EphemeralPostgres, dump: Path, *, extension: bool) -> list[str]:
    """Restore ``dump`` into ``server``'s database as docs/operations.md#backups says;
    returns pg_restore's errors.

    Plain SQL: one pg_restore, as a superuser. An extension: ``CREATE EXTENSION`` makes
    its objects the restoring role's, and pgdispatch's must be its owner's (app), so the
    superuser restores everything but that statement, in two steps around app's
    ``CREATE EXTENSION pgdispatch`` (the registration, for pg_tle, and the schema come
    with the dump's first step)."""
    if not extension:
        result = _run_tool(bin_dir, "pg_restore", "-d", server.dsn, str(dump))
        return [e for e in result.stderr.splitlines() if e.startswith("pg_restore: error:")]
    listed = _run_tool(bin_dir, "pg_restore", "-l", str(dump))
    assert listed.returncode == 0, listed.stderr
    entries = [
        line for line in listed.stdout.splitlines()
        if not re.search(r" (EXTENSION|COMMENT) - (EXTENSION )?pgdispatch(\s|$)", line)
    ]
    assert len(entries) == len(listed.stdout.splitlines()) - 2, listed.stdout
    todo = dump.with_suffix(".list")
    todo.write_text("\n".join(entries) + "\n")
    errors: list[str] = []
    for sections in (["--section=pre-data"], ["--section=data", "--section=post-data"]):
        result = _run_tool(bin_dir, "pg_restore", *sections, "-L", str(todo), "-d", server.dsn,
                           str(dump))
        errors += [e for e in result.stderr.splitlines() if e.startswith("pg_restore: error:")]
        if sections[0] == "--section=pre-data":
            with psycopg.connect(server.connect_dsn(user="app"), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION pgdispatch")
    return errors


# pg_restore's complaints about an extension's rows: a CHECK that a row's role is the
# writing role holds for rows the role writes itself, and a restore writes every role's
# rows as the restoring role; an extension's constraints exist before its rows are loaded
# (plain SQL: pg_dump adds NOT VALID constraints after the data). pgdispatch.worker's
# (see docs/operations.md#backups), and pgdispatch.job's in schema versions that still
# have job_role_is_current_user.


@pytest.mark.db
@pytest.mark.timeout(900)
@pytest.mark.parametrize("via", ["sql", "pg_tle"])
def test_pg_dump_and_restore_into_a_new_server_keeps_the_queue(
    tle_bin: Path, tmp_path: Path, via: str
) -> None:
    dump, globals_sql = tmp_path / "app.dump", tmp_path / "globals.sql"
    with EphemeralPostgres(pg_bin=tle_bin) as old:
        _create_owner(old, "app", pgtle_admin=via == "pg_tle")
        with psycopg.connect(old.connect_dsn(user="app")) as conn:
            install(conn, via=via, workers=1)  # type: ignore[arg-type]
            conn.commit()
        with psycopg.connect(old.connect_dsn(user="app"), autocommit=True) as conn:
            conn.execute("UPDATE pgdispatch.settings SET retention = '3 days', batch_size = 7")
            conn.execute(APP_SCHEMA)
            _dispatch(conn, 1)  # runs on the old server: history
            assert _wait_for_runs(conn, {1}) == {1: 1}
            # Jobs queued at the dump: while this session holds app.ran, the worker that
            # claims them cannot commit one (pg_dump's snapshot sees them queued), and the
            # old server is stopped before it lets go.
            with psycopg.connect(old.connect_dsn(user="app")) as blocker:
                blocker.execute("LOCK TABLE app.ran IN EXCLUSIVE MODE")
                _dispatch(conn, *range(2, 12))
                conn.execute("INSERT INTO app.items VALUES (12)")
                conn.execute("INSERT INTO app.orders VALUES (13)")
                dumped = _run_tool(tle_bin, "pg_dump", "-Fc", "-f", str(dump), "-d", old.dsn)
                assert dumped.returncode == 0, dumped.stderr
                dumped = _run_tool(tle_bin, "pg_dumpall", "--globals-only", "-f",
                                   str(globals_sql), "-d", old.dsn)
                assert dumped.returncode == 0, dumped.stderr
                old_jobs = _pgdispatch_cron_jobs(old)
                conn.close()
                old.stop(mode="immediate")  # before the blocker lets the worker go on
                blocker.close()
    assert {port for *_, port in old_jobs} == {old.port}

    with EphemeralPostgres(pg_bin=tle_bin) as new:
        assert new.port != old.port
        # 1. the roles (pg_dumpall --globals-only: app, and pgtle_admin with its members)
        _run_tool(tle_bin, "psql", "-X", "-q", "-d", new.dsn, "-f", str(globals_sql))
        # 2. the database, as a superuser (pg_cron's and pg_tle's CREATE EXTENSION)
        errors = _restore(tle_bin, new, dump, extension=via != "sql")
        with psycopg.connect(new.connect_dsn(user="app"), autocommit=True) as conn:
            assert installed_version(conn) == LATEST
            assert installed_via(conn) == via
            if via == "pg_tle":
                assert _tle_registered(conn) == [("pgdispatch", LATEST)]
            assert _one(
                conn, "SELECT retention::text || ' ' || batch_size FROM pgdispatch.settings"
            ) == "3 days 7"
            assert _one(conn, "SELECT count(*) FROM pgdispatch.settings") == 1
            queued = {
                i for (i,) in _rows(conn, "SELECT (payload->>'id')::int FROM pgdispatch.job")
            }
            assert queued == set(range(2, 14))
            assert _rows(conn, "SELECT (payload->>'id')::int, state FROM pgdispatch.jobs"
                               " WHERE state <> 'queued'") == [(1, "succeeded")]
            assert sorted(t for (t,) in _rows(
                conn, "SELECT tgname FROM pg_trigger WHERE tgrelid IN"
                " ('app.items'::regclass, 'app.orders'::regclass)"
            )) == ["items_dispatch", "orders_dispatch"]
            assert _rows(conn, "SELECT fn::oid FROM pgdispatch.definer_function") == [
                (_one(conn, "SELECT 'app.pgdispatch_definer_trigger()'::regprocedure::oid"),)
            ]
            # pg_cron's jobs came with pg_cron's database, as the old server scheduled
            # them (its cron.host and port): stop and start each role's workers
            assert [port for *_, port in _pgdispatch_cron_jobs(new)] == [
                old.port for _ in old_jobs
            ]
            conn.execute("SELECT pgdispatch.stop()")
            conn.execute("SELECT pgdispatch.start()")
            assert {port for *_, port in _pgdispatch_cron_jobs(new)} == {new.port}
            counts = _wait_for_runs(conn, set(range(1, 14)))
            assert counts == dict.fromkeys(range(1, 14), 1)  # each job ran exactly once
            # the sequence went on from the dumped jobs; the triggers dispatch
            conn.execute("INSERT INTO app.items VALUES (14)")
            assert _one(conn, "SELECT max(id) FROM pgdispatch.jobs") > _one(
                conn, "SELECT max(id) FROM pgdispatch.jobs WHERE (payload->>'id')::int < 14"
            )
            assert _wait_for_runs(conn, {14})[14] == 1
            if via == "pg_tle":
                assert uninstall(conn, force=True) is True
                _assert_gone(conn, new)
                assert _tle_registered(conn) == []
    assert errors == []
