"""A new user's walkthrough, with real ``alembic`` commands on a server of its own.

init_project -> models with a DispatchTrigger -> ``alembic revision --autogenerate``
-> ``alembic upgrade head`` -> an INSERT dispatches a job that runs -> ``alembic check``
-> a changed ``when`` migrates in place -> ``alembic downgrade`` refuses while jobs are
queued, succeeds forced, and leaves nothing behind -> ``alembic upgrade head --sql``
applied with psql to a fresh server gives the same schema.

The tests run in file order and share one project and one server (the steps of one
story); the server is this module's own because the story downgrades to base.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from sa_pgdispatch.alembic import init_project
from sa_pgdispatch.install import (
    InstallError,
    available_versions,
    installed_version,
    latest_version,
)
from sa_pgdispatch.testing import EphemeralPostgres

pytestmark = [pytest.mark.slow, pytest.mark.db]  # servers of its own

ALEMBIC = str(Path(sys.executable).with_name("alembic"))

MODELS = '''\
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sa_pgdispatch.triggers import DispatchTrigger


class Base(DeclarativeBase):
    pass


class Profile(Base):
    __tablename__ = "profiles"
    __table_args__ = (
        DispatchTrigger(
            "profiles_welcome",
            "public.send_welcome",
            on=("insert",),
            when={when!r},
            priority=5,
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    active: Mapped[bool]
'''

# The side effect lives outside the models (and outside the compared schema).
SIDE_EFFECT = """
CREATE SCHEMA IF NOT EXISTS effects;
CREATE TABLE IF NOT EXISTS effects.welcome_log (profile_id int, name text);
CREATE OR REPLACE FUNCTION public.send_welcome(payload jsonb) RETURNS void
LANGUAGE sql AS $$
  INSERT INTO effects.welcome_log VALUES ((payload->>'id')::int, payload->>'name')
$$;
"""

# What the migrations make, read from the catalogs: user tables and their columns,
# triggers with their full definitions, every object in schema pgdispatch.
CATALOG = """
SELECT 'table', c.relname || ':' || string_agg(
         a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE n.nspname = 'public' AND c.relkind = 'r'
 GROUP BY c.relname
UNION ALL
SELECT 'trigger', pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE NOT t.tgisinternal AND c.relnamespace <> 'cron'::regnamespace
UNION ALL
SELECT 'pgdispatch ' || c.relkind::text, c.relname::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'pgdispatch'
UNION ALL
SELECT 'pgdispatch ' || p.prokind::text, p.oid::regprocedure::text
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pgdispatch'
UNION ALL
SELECT 'pgdispatch version', value FROM pgdispatch.meta WHERE key = 'version'
ORDER BY 1, 2
"""


@dataclass
class Project:
    """The user's project directory and the database it migrates."""

    root: Path
    server: EphemeralPostgres
    revisions: list[str] = field(default_factory=list)
    head_catalog: list[tuple[Any, ...]] = field(default_factory=list)

    def alembic(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DATABASE_URL": self.server.url}
        result = subprocess.run(
            [ALEMBIC, *args], cwd=self.root, env=env, capture_output=True, text=True,
            check=False, timeout=120,
        )
        if check and result.returncode != 0:
            pytest.fail(f"alembic {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def write_models(self, when: str) -> None:
        (self.root / "models.py").write_text(MODELS.format(when=when))

    def autogenerate(self, message: str) -> str:
        before = set((self.root / "migrations" / "versions").glob("*.py"))
        self.alembic("revision", "--autogenerate", "-m", message)
        (new,) = set((self.root / "migrations" / "versions").glob("*.py")) - before
        self.revisions.append(new.name.split("_")[0])
        return new.read_text()

    def sql(self, query: str, *, autocommit: bool = True) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.server.dsn, autocommit=autocommit) as conn:
            cur = conn.execute(query)
            return cur.fetchall() if cur.description else []


def _stop_workers(project: Project) -> None:
    """``pgdispatch.stop()``, then wait until no worker of ours still runs (a worker
    that pg_cron started finishes its batch and exits within about a second)."""
    project.sql("SELECT pgdispatch.stop()")
    deadline = time.monotonic() + 30
    while project.sql(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid::bigint BETWEEN 1885824113 AND 1885824129 AND pid <> pg_backend_pid()"
    ):
        assert time.monotonic() < deadline, "pgdispatch workers still run 30 s after stop()"
        time.sleep(0.2)


def _catalog(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(CATALOG).fetchall()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    root = tmp_path_factory.mktemp("myproject")
    with EphemeralPostgres() as server:
        init_project(root / "migrations", install_revision=False,
                     metadata="models:Base.metadata")
        yield Project(root, server)


def test_autogenerate_installs_pgdispatch_and_creates_the_trigger(project: Project) -> None:
    project.write_models(when="NEW.active")
    text = project.autogenerate("profiles")
    upgrade, downgrade = text.split("def downgrade()")
    calls = re.findall(r"op\.(\w+)\(", upgrade)
    assert calls == ["install_pgdispatch", "create_table", "create_dispatch_trigger"]
    flat = " ".join(upgrade.split())
    assert "op.create_dispatch_trigger( 'profiles_welcome', 'profiles', 'public.send_welcome'," in (
        flat
    )
    assert "when='NEW.active'" in upgrade
    assert "priority=5" in upgrade
    assert "info=" not in text  # the DispatchTrigger objects stay out of create_table
    assert re.findall(r"op\.(\w+)\(", downgrade) == [
        "drop_dispatch_trigger", "drop_table", "uninstall_pgdispatch"
    ]
    assert "function='public.send_welcome'" in downgrade


def test_upgrade_head_creates_everything(project: Project) -> None:
    project.alembic("upgrade", "head")
    assert project.sql("SELECT pgdispatch.version()") == [(latest_version(),)]
    (definition,) = project.sql(
        "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'profiles_welcome'"
    )
    assert "EXECUTE FUNCTION pgdispatch.trigger('public.send_welcome', 'priority=5')" in (
        definition[0]
    )
    # op.install_pgdispatch() started the migrating role's pg_cron workers
    jobs = {row[0] for row in project.sql("SELECT jobname FROM cron.job")}
    assert jobs == {"pgdispatch:1", "pgdispatch:watchdog"}


def test_check_passes_after_upgrade(project: Project) -> None:
    result = project.alembic("check")
    assert "No new upgrade operations detected" in result.stdout


def test_insert_dispatches_a_job_that_runs(project: Project) -> None:
    # Deterministic: no background worker, drain in this session.
    _stop_workers(project)
    project.sql(SIDE_EFFECT)
    project.sql("INSERT INTO profiles VALUES (1, 'ada', true), (2, 'off', false)")
    assert project.sql("SELECT state, priority FROM pgdispatch.jobs") == [("queued", 5)]
    project.sql("CALL pgdispatch.work(drain => true)")
    assert project.sql("SELECT profile_id, name FROM effects.welcome_log") == [(1, "ada")]
    assert project.sql("SELECT state FROM pgdispatch.jobs") == [("succeeded",)]


def test_changed_when_is_replaced_in_place(project: Project) -> None:
    project.write_models(when="NEW.active AND NEW.name <> 'bot'")
    text = project.autogenerate("skip bots")
    upgrade, downgrade = text.split("def downgrade()")
    assert re.findall(r"op\.(\w+)\(", upgrade) == ["replace_dispatch_trigger"]
    assert "when=\"NEW.active AND NEW.name <> 'bot'\"" in upgrade
    # the downgrade restores the definition as the database had it
    assert re.findall(r"op\.(\w+)\(", downgrade) == ["replace_dispatch_trigger"]
    assert "when='new.active'," in downgrade
    assert "'when': 'new.active'," in upgrade  # existing=, for the reverse
    oid_before = project.sql("SELECT oid FROM pg_trigger WHERE tgname = 'profiles_welcome'")

    project.alembic("upgrade", "head")
    (definition,) = project.sql(
        "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'profiles_welcome'"
    )
    assert "WHEN ((new.active AND ((new.name)::text <> 'bot'::text)))" in definition[0]
    # CREATE OR REPLACE TRIGGER (PostgreSQL >= 14) keeps the trigger
    assert project.sql("SELECT oid FROM pg_trigger WHERE tgname = 'profiles_welcome'") == (
        oid_before
    )
    project.sql("INSERT INTO profiles VALUES (3, 'bot', true), (4, 'bob', true)")
    project.sql("CALL pgdispatch.work(drain => true)")
    assert sorted(project.sql("SELECT profile_id FROM effects.welcome_log")) == [(1,), (4,)]
    assert "No new upgrade operations detected" in project.alembic("check").stdout
    project.head_catalog = _catalog(project.server.dsn)


def test_downgrade_refuses_to_uninstall_with_queued_jobs(project: Project) -> None:
    project.sql("INSERT INTO profiles VALUES (5, 'eve', true)")  # queued, no worker
    result = project.alembic("downgrade", "base", check=False)
    assert result.returncode != 0
    assert (  # alembic prints "FAILED: ..." on stdout for a CommandError, no traceback
        "FAILED: pgdispatch: 1 unfinished job(s) are queued or running; refusing to uninstall"
    ) in result.stdout
    assert "alembic -x force_uninstall=true downgrade" in result.stdout
    assert "Traceback" not in result.stderr
    # transaction_per_migration: the second revision's downgrade is done, the first's
    # (drop trigger, drop table, uninstall) was rolled back as a whole
    current = project.alembic("current").stdout
    assert project.revisions[0] in current
    (definition,) = project.sql(
        "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'profiles_welcome'"
    )
    assert "WHEN (new.active)" in definition[0]  # the replace was reversed
    assert project.sql("SELECT count(*) FROM pgdispatch.jobs WHERE state = 'queued'") == [(1,)]


def test_forced_downgrade_leaves_nothing_behind(project: Project) -> None:
    # the job queued above is still there (no worker runs): only force can uninstall
    assert project.sql("SELECT count(*) FROM pgdispatch.jobs WHERE state = 'queued'") == [(1,)]
    project.alembic("-x", "force_uninstall=true", "downgrade", "base")
    assert project.sql("SELECT to_regnamespace('pgdispatch')") == [(None,)]
    assert project.sql(  # pg_cron's own trigger on cron.job aside
        "SELECT tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        " WHERE NOT t.tgisinternal AND c.relnamespace <> 'cron'::regnamespace"
    ) == []
    assert project.sql("SELECT count(*) FROM cron.job") == [(0,)]
    assert project.sql("SELECT to_regclass('public.profiles')") == [(None,)]
    assert project.sql("SELECT count(*) FROM alembic_version") == [(0,)]
    assert project.sql("SELECT count(*) FROM pg_proc WHERE proname LIKE 'pgdispatch%'") == [(0,)]


def test_upgrade_again_then_plain_downgrade_after_the_queue_drained(project: Project) -> None:
    project.alembic("upgrade", "head")
    _stop_workers(project)
    project.sql("INSERT INTO profiles VALUES (6, 'joe', true)")
    project.sql("CALL pgdispatch.work(drain => true)")
    assert project.sql("SELECT state FROM pgdispatch.jobs") == [("succeeded",)]
    # workers scheduled (and perhaps running) again: the downgrade must remove them
    project.sql("SELECT pgdispatch.start(1)")
    project.alembic("downgrade", "base")
    assert project.sql("SELECT to_regnamespace('pgdispatch')") == [(None,)]
    assert project.sql("SELECT count(*) FROM cron.job") == [(0,)]


def test_offline_sql_applied_with_psql_gives_the_same_schema(project: Project) -> None:
    assert project.head_catalog, "the online head catalog was not recorded"
    sql = project.alembic("upgrade", "head", "--sql").stdout
    assert sql.count("BEGIN;") == len(project.revisions)  # transaction_per_migration
    assert "DROP TRIGGER profiles_welcome ON profiles;" in sql  # replace, offline
    script = project.root / "upgrade.sql"
    script.write_text(sql)
    with EphemeralPostgres() as fresh:
        psql = fresh.bin_dir / "psql"
        result = subprocess.run(
            [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", fresh.dsn, "-f", str(script)],
            capture_output=True, text=True, check=False, timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert _catalog(fresh.dsn) == project.head_catalog
        with psycopg.connect(fresh.dsn) as conn:
            jobs = {r[0] for r in conn.execute("SELECT jobname FROM cron.job")}
            version = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert jobs == {"pgdispatch:1", "pgdispatch:watchdog"}
    assert version == [(project.revisions[-1],)]


def test_revision_files_compile(project: Project) -> None:
    """The generated files are valid Python as written (what a reviewer reads)."""
    files = sorted((project.root / "migrations" / "versions").glob("*.py"))
    assert len(files) == len(project.revisions)
    for path in files:
        compile(path.read_text(), str(path), "exec")


def test_upgrade_pgdispatch_online(project: Project) -> None:
    """op.upgrade_pgdispatch() runs the versioned upgrade scripts, keeping queued jobs."""
    versions = available_versions()
    if len(versions) < 2:
        pytest.skip("a single pgdispatch version ships: nothing to upgrade")
    engine = sa.create_engine(project.server.url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        op = Operations(MigrationContext.configure(connection=conn))
        op.install_pgdispatch(version=versions[0], workers=0)  # type: ignore[attr-defined]
        conn.execute(sa.text("SELECT pgdispatch.fire('SELECT 1')"))
        op.upgrade_pgdispatch()  # type: ignore[attr-defined]
        assert installed_version(conn) == versions[-1]
        assert conn.scalar(sa.text("SELECT count(*) FROM pgdispatch.job")) == 1
        with pytest.raises(InstallError, match="unfinished job"), conn.begin_nested():
            op.uninstall_pgdispatch()  # type: ignore[attr-defined]
        op.uninstall_pgdispatch(force=True)  # type: ignore[attr-defined]
        assert installed_version(conn) is None
    engine.dispose()
