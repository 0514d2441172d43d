"""sa_pgdispatch.install on a server of its own: install as a non-superuser database
owner, idempotence, upgrades keep queued jobs, uninstall refuses and cleans up,
clear errors without pg_cron or in the wrong database."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, text

from sa_pgdispatch.install import (
    InstallError,
    available_versions,
    install,
    install_sql,
    installed_version,
    latest_version,
    uninstall,
    upgrade_path,
)
from sa_pgdispatch.testing import EphemeralPostgres

pytestmark = pytest.mark.cron


@pytest.fixture(scope="module")
def server() -> Iterator[EphemeralPostgres]:
    with EphemeralPostgres() as pg:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("CREATE ROLE app_owner LOGIN")
            conn.execute(f'ALTER DATABASE "{pg.dbname}" OWNER TO app_owner')
            conn.execute("GRANT USAGE ON SCHEMA cron TO app_owner")
            conn.execute("CREATE DATABASE elsewhere OWNER app_owner")
        yield pg


@pytest.fixture
def owner(server: EphemeralPostgres) -> Iterator[Engine]:
    engine = create_engine(server.connect_url(user="app_owner"))
    yield engine
    with engine.begin() as conn:
        uninstall(conn, force=True)
    engine.dispose()


def test_versions_and_scripts() -> None:
    versions = available_versions()
    assert versions[0] == "0.1.0"
    assert latest_version() == versions[-1]
    assert upgrade_path(versions[0], versions[-1])[0] == versions[0]
    assert "CREATE SCHEMA pgdispatch" in install_sql(workers=None)
    assert install_sql(workers=2).rstrip().endswith("SELECT pgdispatch.start(2);")
    with pytest.raises(InstallError):
        upgrade_path("9.9.9", versions[-1])


def test_non_superuser_owner_installs_dispatches_and_uninstalls(owner: Engine) -> None:
    with owner.begin() as conn:
        assert installed_version(conn) is None
        assert (
            conn.execute(
                text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            ).scalar()
            is False
        )
        assert install(conn) == latest_version()
        assert install(conn) == latest_version()  # idempotent: a no-op
        assert installed_version(conn) == latest_version()
        assert (
            conn.execute(
                text("SELECT count(*) FROM cron.job WHERE username = 'app_owner'")
            ).scalar()
            == 2
        )  # one worker and the watchdog
        conn.execute(text("CREATE TABLE t (v text)"))
        conn.execute(text("SELECT pgdispatch.fire('INSERT INTO t VALUES (''ok'')')"))
    with owner.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("CALL pgdispatch.work(drain => true)"))
        assert conn.execute(text("SELECT v FROM t")).scalar() == "ok"
        conn.execute(text("DROP TABLE t"))


def test_uninstall_refuses_with_queued_jobs_and_cleans_up_when_forced(owner: Engine) -> None:
    with owner.begin() as conn:
        install(conn)
        conn.execute(text("SELECT pgdispatch.dispatch('SELECT 1', delay => '1 hour')"))
        conn.execute(text("CREATE TABLE t (id int)"))
        conn.execute(text("SELECT pgdispatch.definer_trigger_function('public')"))
        conn.execute(
            text(
                "CREATE TRIGGER d AFTER INSERT ON t FOR EACH ROW "
                "EXECUTE FUNCTION pgdispatch.trigger('public.nothing')"
            )
        )
    with pytest.raises(InstallError, match="unfinished job"), owner.begin() as conn:
        uninstall(conn)
    with owner.begin() as conn:
        assert uninstall(conn, force=True) is True
        assert installed_version(conn) is None
        assert conn.execute(text("SELECT count(*) FROM cron.job")).scalar() == 0
        assert (
            conn.execute(text("SELECT to_regproc('public.pgdispatch_definer_trigger')")).scalar()
            is None
        )
        assert (
            conn.execute(text("SELECT count(*) FROM pg_trigger WHERE tgname = 'd'")).scalar() == 0
        )
        assert uninstall(conn) is False  # nothing left to remove
        conn.execute(text("DROP TABLE t"))


def test_uninstall_refuses_while_dispatch_triggers_exist(owner: Engine) -> None:
    with owner.begin() as conn:
        install(conn, workers=None)
        conn.execute(text("CREATE TABLE t2 (id int)"))
        conn.execute(
            text(
                "CREATE TRIGGER d AFTER INSERT ON t2 FOR EACH ROW "
                "EXECUTE FUNCTION pgdispatch.trigger('public.nothing')"
            )
        )
    with (
        pytest.raises(InstallError, match="dispatch triggers still use pgdispatch: d on t2"),
        owner.begin() as conn,
    ):
        uninstall(conn)
    with owner.begin() as conn:
        conn.execute(text("DROP TABLE t2"))


def test_install_in_a_database_apart_from_pg_cron_says_what_to_do(
    server: EphemeralPostgres,
) -> None:
    """pg_cron runs in another database of the server: installing here is an app
    database's install, whose workers need pg_cron's database (cron_url)."""
    engine = create_engine(server.connect_url(user="app_owner", dbname="elsewhere"))
    try:
        with (
            pytest.raises(InstallError, match="pg_cron runs in database") as raised,
            engine.begin() as conn,
        ):
            install(conn)
        assert "pass cron_url" in str(raised.value)
    finally:
        engine.dispose()


def test_upgrade_keeps_queued_jobs(owner: Engine) -> None:
    versions = available_versions()
    if len(versions) < 2:
        pytest.skip("only one schema version exists: no upgrade path to test")
    previous = versions[-2]
    with owner.begin() as conn:
        install(conn, version=previous, workers=None)
        conn.execute(text("CREATE TABLE up (v text)"))
        conn.execute(text("SELECT pgdispatch.fire('INSERT INTO up VALUES (''survived'')')"))
        conn.execute(text("SELECT pgdispatch.stop()"))
    with owner.begin() as conn:
        assert install(conn) == versions[-1]  # upgrades in place
        assert installed_version(conn) == versions[-1]
        assert (
            conn.execute(
                text("SELECT count(*) FROM pgdispatch.jobs WHERE state = 'queued'")
            ).scalar()
            == 1
        )
    with owner.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("CALL pgdispatch.work(drain => true)"))
        assert conn.execute(text("SELECT v FROM up")).scalar() == "survived"
        conn.execute(text("DROP TABLE up"))
