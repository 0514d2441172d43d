"""The Alembic operations without a database: reverse(), rendering, offline SQL, template."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import logging.config
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import render_python_code
from alembic.config import CommandLine, Config
from alembic.operations import Operations, ops
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy import MetaData

import sa_pgdispatch
from sa_pgdispatch.alembic import (
    CreateDispatchTriggerOp,
    DispatchTriggerOpError,
    DropDispatchTriggerOp,
    InstallPgdispatchOp,
    ReplaceDispatchTriggerOp,
    TriggerDefinition,
    UninstallPgdispatchOp,
    UpgradePgdispatchOp,
    configure_options,
    database_url,
    include_name,
    init_project,
    load_target_metadata,
    resolve_cron_url,
)
from sa_pgdispatch.errors import PgDispatchError
from sa_pgdispatch.install import (
    InstallError,
    available_versions,
    install_sql,
    uninstall_sql,
    upgrade_sql,
)
from sa_pgdispatch.triggers import (
    DispatchSpec,
    DispatchTriggerError,
    DispatchTriggerInfo,
    IntervalOptionError,
)

ALEMBIC = str(Path(sys.executable).with_name("alembic"))


@pytest.fixture(autouse=True)
def _no_cron_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline operations read $SA_PGDISPATCH_CRON_URL: the caller's must not leak in."""
    monkeypatch.delenv("SA_PGDISPATCH_CRON_URL", raising=False)


def _definition(**kw: Any) -> DispatchSpec:
    return DispatchSpec("app.fn", trigger_name="t", **kw)


def _offline(**opts: object) -> tuple[Operations, io.StringIO]:
    buf = io.StringIO()
    ctx = MigrationContext.configure(
        dialect_name="postgresql",
        opts={"as_sql": True, "output_buffer": buf, **opts},
    )
    return Operations(ctx), buf


def _render(*operations: ops.MigrateOperation) -> str:
    """The rendered calls, without Alembic's "commands auto generated" comments."""
    text = render_python_code(ops.UpgradeOps(ops=list(operations)))
    lines = [line for line in text.splitlines() if not line.strip().startswith("# ###")]
    return textwrap.dedent("\n".join(lines)) + "\n"


# ----------------------------------------------------------------------------- reverse


def test_install_and_uninstall_reverse_into_each_other() -> None:
    install = InstallPgdispatchOp(version="0.1.0", workers=3)
    uninstall = install.reverse()
    assert isinstance(uninstall, UninstallPgdispatchOp)
    assert uninstall.force is False
    back = uninstall.reverse()
    assert isinstance(back, InstallPgdispatchOp)
    assert (back.version, back.workers) == ("0.1.0", 3)


def test_install_and_uninstall_reverses_carry_cron_url() -> None:
    url = "postgresql://app@db/postgres"
    uninstall = InstallPgdispatchOp(workers=2, cron_url=url).reverse()
    assert (uninstall.cron_url, uninstall.workers) == (url, 2)
    back = uninstall.reverse()
    assert (back.cron_url, back.workers) == (url, 2)
    assert InstallPgdispatchOp().reverse().cron_url is None


def test_upgrade_has_no_reverse() -> None:
    with pytest.raises(DispatchTriggerOpError, match="no reverse"):
        UpgradePgdispatchOp("0.2.0").reverse()


def test_create_and_drop_reverse_with_the_full_definition() -> None:
    definition = _definition(
        on=("update", "insert"), columns=["b", "a"], when="NEW.a <> OLD.a",
        delay=dt.timedelta(seconds=5), priority=3, max_attempts=2, timeout="1 minute",
    )
    create = CreateDispatchTriggerOp("t", "tbl", definition, schema="app")
    drop = create.reverse()
    assert isinstance(drop, DropDispatchTriggerOp)
    assert (drop.trigger_name, drop.table_name, drop.schema) == ("t", "tbl", "app")
    assert drop.definition == definition
    again = drop.reverse()
    assert isinstance(again, CreateDispatchTriggerOp)
    assert again.definition == definition
    # normalised: events in canonical order, columns sorted, timedelta as text
    assert definition.on == ("insert", "update")
    assert definition.columns == ("a", "b")
    assert definition.delay == "5 seconds"


def test_drop_without_definition_cannot_be_reversed() -> None:
    drop = DropDispatchTriggerOp("t", "tbl", None)
    with pytest.raises(DispatchTriggerOpError, match="definition is unknown"):
        drop.reverse()


def test_replace_reverse_restores_the_existing_definition() -> None:
    old, new = _definition(when="NEW.a"), _definition(when="NEW.b", priority=9)
    replace = ReplaceDispatchTriggerOp("t", "tbl", new, existing=old)
    back = replace.reverse()
    assert (back.definition, back.existing) == (old, new)
    with pytest.raises(DispatchTriggerOpError, match="existing="):
        ReplaceDispatchTriggerOp("t", "tbl", new).reverse()


def test_truncate_definitions_are_statement_level_and_round_trip_through_info() -> None:
    definition = _definition(on="truncate", for_each="statement")
    assert (definition.on, definition.for_each) == (("truncate",), "statement")
    info = DispatchTriggerInfo(
        name="t",
        table_name="tbl",
        schema="app",
        spec=DispatchSpec("app.fn", on=("truncate",), for_each="statement"),
    )
    assert DropDispatchTriggerOp.from_info(info, schema=None).definition == definition


def test_definitions_are_validated_like_dispatch_triggers() -> None:
    with pytest.raises(DispatchTriggerError):
        _definition(on=("truncate",))
    with pytest.raises(DispatchTriggerError):
        _definition(for_each="statement", on=("insert", "update"))
    with pytest.raises(DispatchTriggerError):
        _definition(when="NEW.a); DROP TABLE x; --")
    with pytest.raises(DispatchTriggerOpError, match="unknown definition"):
        DropDispatchTriggerOp.from_definition("t", "tbl", function="app.fn", colour="red")
    with pytest.raises(DispatchTriggerOpError, match="function="):
        DropDispatchTriggerOp.from_definition("t", "tbl", on=("insert",))


def test_trigger_definition_is_the_spec() -> None:
    """``TriggerDefinition`` (sa_pgdispatch.alembic's name for what an operation carries)
    still imports, and is the one spec type."""
    assert TriggerDefinition is DispatchSpec


# ----------------------------------------------------------------------------- rendering


def test_render_install_uninstall_upgrade() -> None:
    text = _render(
        InstallPgdispatchOp(),
        InstallPgdispatchOp(version="0.1.0", workers=2),
        UninstallPgdispatchOp(),
        UninstallPgdispatchOp(force=True),
        UpgradePgdispatchOp("0.2.0", from_version="0.1.0"),
    )
    assert "op.install_pgdispatch()\n" in text
    assert "op.install_pgdispatch(version='0.1.0', workers=2)" in text
    assert "op.uninstall_pgdispatch()\n" in text
    assert "op.uninstall_pgdispatch(force=True)" in text
    assert "op.upgrade_pgdispatch('0.2.0', from_version='0.1.0')" in text


def test_render_cron_url_and_rebuild_the_same_ops() -> None:
    url = "postgresql://app@db.example/postgres"
    operations = [
        InstallPgdispatchOp(workers=2, cron_url=url),
        UninstallPgdispatchOp(force=True, cron_url=url),
        UninstallPgdispatchOp(cron_url=url),
    ]
    text = _render(*operations)
    assert f"op.install_pgdispatch(workers=2, cron_url={url!r})" in text
    assert f"op.uninstall_pgdispatch(force=True, cron_url={url!r})" in text
    assert f"op.uninstall_pgdispatch(cron_url={url!r})" in text
    assert "cron_url" not in _render(InstallPgdispatchOp(), UninstallPgdispatchOp())

    recorded: list[ops.MigrateOperation] = []

    class Recorder:
        def invoke(self, operation: ops.MigrateOperation) -> None:
            recorded.append(operation)

    class Op:
        def __getattr__(self, name: str) -> object:
            cls = {"install_pgdispatch": InstallPgdispatchOp,
                   "uninstall_pgdispatch": UninstallPgdispatchOp}[name]
            return lambda *a, **kw: getattr(cls, name)(Recorder(), *a, **kw)

    exec(compile(text, "<rendered>", "exec"), {"op": Op()})
    assert [type(o) for o in recorded] == [type(o) for o in operations]
    for got, want in zip(recorded, operations, strict=True):
        assert vars(got) == vars(want)


def test_render_create_writes_only_non_default_arguments() -> None:
    text = _render(CreateDispatchTriggerOp("t", "tbl", _definition()))
    assert text.strip() == "op.create_dispatch_trigger('t', 'tbl', 'app.fn')"


def test_rendered_trigger_ops_are_valid_python_that_rebuilds_the_same_ops() -> None:
    old = _definition(when="NEW.status = 'new'", delay="10 seconds")
    new = _definition(on=("insert", "update"), columns=["status"], when="NEW.status <> 'x'",
                      priority=-2, max_attempts=5, timeout="30 seconds", security="definer")
    operations = [
        CreateDispatchTriggerOp("t", "tbl", new, schema="app"),
        DropDispatchTriggerOp("t", "tbl", old, schema="app"),
        ReplaceDispatchTriggerOp("t", "tbl", new, schema="app", existing=old),
    ]
    text = _render(*operations)
    assert "    existing={\n        'function': 'app.fn',\n" in text  # long dict: one item a line
    assert max(len(line) for line in text.splitlines()) <= 88

    # run the rendered code against a recording `op`
    recorded: list[ops.MigrateOperation] = []

    class Recorder:
        def invoke(self, operation: ops.MigrateOperation) -> None:
            recorded.append(operation)

    class Op:
        def __getattr__(self, name: str) -> object:
            cls = {
                "create_dispatch_trigger": CreateDispatchTriggerOp,
                "drop_dispatch_trigger": DropDispatchTriggerOp,
                "replace_dispatch_trigger": ReplaceDispatchTriggerOp,
            }[name]
            return lambda *a, **kw: getattr(cls, name)(Recorder(), *a, **kw)

    exec(compile(text, "<rendered>", "exec"), {"op": Op()})
    assert [type(o) for o in recorded] == [type(o) for o in operations]
    for got, want in zip(recorded, operations, strict=True):
        assert vars(got) == vars(want)


# ----------------------------------------------------------------------------- offline SQL


def test_offline_install_and_uninstall_write_the_scripts_verbatim() -> None:
    operations, buf = _offline()
    operations.install_pgdispatch(workers=2)  # type: ignore[attr-defined]
    operations.uninstall_pgdispatch()  # type: ignore[attr-defined]
    out = buf.getvalue()
    assert install_sql(workers=2).strip() in out
    assert uninstall_sql(force=False).strip() in out
    assert "SELECT pgdispatch.start(2);" in out


def test_offline_install_with_cron_url_starts_no_workers_and_says_how() -> None:
    operations, buf = _offline()
    operations.install_pgdispatch(  # type: ignore[attr-defined]
        workers=2, cron_url="postgresql://app:s3cret@db.example/postgres"
    )
    out = buf.getvalue()
    assert install_sql(workers=None).strip() in out
    assert "SELECT pgdispatch.start(" not in out
    assert "s3cret" not in out  # the URL is never written out, only its database
    comments = out[out.index("-- pgdispatch: pg_cron runs in another database"):]
    assert all(line.startswith("--") for line in comments.strip().splitlines())
    assert "--        SELECT * FROM pgdispatch.cron_statements('start', 2);" in comments
    assert "in pg_cron's database (postgres)" in comments
    assert "connected as the SAME role" in comments
    assert "cron.schedule_in_database(text, text, text, text, text, boolean)" in comments

    operations, buf = _offline()
    operations.install_pgdispatch(workers=0, cron_url="host=db dbname=cron")  # type: ignore[attr-defined]
    out = buf.getvalue()
    assert "SELECT pgdispatch.start(" not in out
    assert "pgdispatch.cron_statements('start');" in out  # the default number
    assert "in pg_cron's database (cron)" in out


def test_offline_uninstall_with_cron_url_says_how_to_unschedule_before_the_drop() -> None:
    operations, buf = _offline()
    operations.uninstall_pgdispatch(cron_url="postgresql://app@db/postgres")  # type: ignore[attr-defined]
    out = buf.getvalue()
    prepare = out.index("SELECT pgdispatch.prepare_uninstall(force => false);")
    hint = out.index("--        SELECT * FROM pgdispatch.cron_statements('uninstall');")
    drop = out.index("DROP SCHEMA pgdispatch CASCADE;")
    assert prepare < hint < drop
    assert "j.jobname LIKE 'pgdispatch:%'" in out  # the statement once pgdispatch is gone
    operations, buf = _offline()
    operations.uninstall_pgdispatch()  # type: ignore[attr-defined]
    assert buf.getvalue().strip() == uninstall_sql(force=False).strip()


def test_offline_cron_url_from_the_context_option_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    operations, buf = _offline(pgdispatch_cron_url="postgresql://app@db/postgres")
    operations.install_pgdispatch()  # type: ignore[attr-defined]
    assert "cron_statements('start', 1)" in buf.getvalue()
    monkeypatch.setenv("SA_PGDISPATCH_CRON_URL", "postgresql://app@db/postgres")
    operations, buf = _offline()
    operations.install_pgdispatch()  # type: ignore[attr-defined]
    assert "SELECT pgdispatch.start(" not in buf.getvalue()
    assert "cron_statements('start', 1)" in buf.getvalue()


def test_resolve_cron_url_precedence(tmp_path: Path) -> None:
    """The operation's argument, the context option, -x, config.attributes, the
    environment, alembic.ini: the first that is set wins; empty values are unset."""
    cfg = _config(tmp_path, **{"sa_pgdispatch.cron_url": "postgresql://ini/c"})
    cfg.cmd_opts = argparse.Namespace(x=["cron_url=postgresql://x/c", "other=1"])
    cfg.attributes["sa_pgdispatch.cron_url"] = "postgresql://attr/c"
    env_ctx = EnvironmentContext(cfg, None)  # type: ignore[arg-type]
    environ = {"SA_PGDISPATCH_CRON_URL": "postgresql://env/c"}

    def ctx(**opts: object) -> MigrationContext:
        return MigrationContext.configure(
            dialect_name="postgresql", opts=opts, environment_context=env_ctx
        )

    assert resolve_cron_url(ctx(pgdispatch_cron_url="postgresql://opt/c"), "postgresql://op/c",
                            environ) == "postgresql://op/c"
    assert resolve_cron_url(ctx(pgdispatch_cron_url="postgresql://opt/c"), None,
                            environ) == "postgresql://opt/c"
    assert resolve_cron_url(ctx(pgdispatch_cron_url=""), "", environ) == "postgresql://x/c"
    cfg.cmd_opts = argparse.Namespace(x=["cron_url="])
    assert resolve_cron_url(ctx(), None, environ) == "postgresql://attr/c"
    cfg.cmd_opts = None
    del cfg.attributes["sa_pgdispatch.cron_url"]
    assert resolve_cron_url(ctx(), None, environ) == "postgresql://env/c"
    assert resolve_cron_url(ctx(), None, {}) == "postgresql://ini/c"
    assert resolve_cron_url(ctx(), None, {"SA_PGDISPATCH_CRON_URL": ""}) == "postgresql://ini/c"
    # no environment context (MigrationContext.configure in a script): option and env only
    bare = MigrationContext.configure(dialect_name="postgresql")
    assert resolve_cron_url(bare, None, {}) is None
    assert resolve_cron_url(bare, None, environ) == "postgresql://env/c"


def test_offline_forced_uninstall_from_the_context_option() -> None:
    operations, buf = _offline(pgdispatch_force_uninstall=True)
    operations.uninstall_pgdispatch()  # type: ignore[attr-defined]
    assert "prepare_uninstall(force => true)" in buf.getvalue()


def test_offline_upgrade_needs_the_installed_version() -> None:
    operations, _ = _offline()
    with pytest.raises(InstallError, match="from_version"):
        operations.upgrade_pgdispatch("0.1.0")  # type: ignore[attr-defined]
    operations.upgrade_pgdispatch("0.1.0", from_version="0.1.0")  # type: ignore[attr-defined]


def test_offline_trigger_ddl() -> None:
    operations, buf = _offline()
    operations.create_dispatch_trigger(  # type: ignore[attr-defined]
        "welcome", "profiles", "app.send_welcome", schema="app",
        on=("insert", "update"), columns=["email"], when="NEW.active",
        delay="5 seconds", priority=10, security="definer",
    )
    operations.replace_dispatch_trigger(  # type: ignore[attr-defined]
        "welcome", "profiles", "app.send_welcome", schema="app", when="NEW.verified",
    )
    operations.drop_dispatch_trigger("welcome", "profiles", schema="app")  # type: ignore[attr-defined]
    statements = [s.strip() for s in buf.getvalue().split(";") if s.strip()]
    assert statements == [
        "SELECT pgdispatch.definer_trigger_function('app')",
        "CREATE TRIGGER welcome AFTER INSERT OR UPDATE OF email ON app.profiles FOR EACH ROW "
        "WHEN (NEW.active) EXECUTE FUNCTION app.pgdispatch_definer_trigger("
        "'app.send_welcome', 'delay=5 seconds', 'priority=10')",
        # offline the server version is unknown: replace is drop + create
        "DROP TRIGGER welcome ON app.profiles",
        "CREATE TRIGGER welcome AFTER INSERT ON app.profiles FOR EACH ROW WHEN (NEW.verified) "
        "EXECUTE FUNCTION pgdispatch.trigger('app.send_welcome')",
        "DROP TRIGGER welcome ON app.profiles",
    ]


def test_statement_level_trigger_offline() -> None:
    operations, buf = _offline()
    operations.create_dispatch_trigger(  # type: ignore[attr-defined]
        "bulk", "events", "public.on_bulk", on="delete", for_each="statement",
    )
    assert (
        "CREATE TRIGGER bulk AFTER DELETE ON events REFERENCING OLD TABLE AS pgdispatch_old "
        "FOR EACH STATEMENT EXECUTE FUNCTION pgdispatch.trigger('public.on_bulk')"
    ) in buf.getvalue()


# ----------------------------------------------------------------------------- env helpers


def _config(tmp_path: Path, **options: str) -> Config:
    ini = tmp_path / "alembic.ini"
    ini.write_text("[alembic]\nscript_location = migrations\n")
    cfg = Config(str(ini))
    for key, value in options.items():
        cfg.set_main_option(key, value)
    return cfg


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgres://u:p@h:5433/db", "postgresql+psycopg://u:p@h:5433/db"),
        ("postgresql+psycopg://u@/db?host=/tmp", "postgresql+psycopg://u@/db?host=%2Ftmp"),
    ],
)
def test_database_url_normalises_to_psycopg(tmp_path: Path, raw: str, expected: str) -> None:
    url = database_url(_config(tmp_path), environ={"DATABASE_URL": raw})
    assert url.render_as_string(hide_password=False) == expected


def test_database_url_precedence(tmp_path: Path) -> None:
    cfg = _config(tmp_path, **{"sqlalchemy.url": "postgresql://ini/db"})
    assert database_url(cfg, environ={}).host == "ini"
    assert database_url(cfg, environ={"DATABASE_URL": "postgresql://env/db"}).host == "env"
    both = {"DATABASE_URL": "postgresql://env/db", "SA_PGDISPATCH_URL": "postgresql://sa/db"}
    assert database_url(cfg, environ=both).host == "sa"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("sqlite:///x.db", "need PostgreSQL"),
        ("mysql+pymysql://u@h/db", "need PostgreSQL"),
        ("postgresql+psycopg2://u@h/db", "psycopg 3"),
        ("postgresql+asyncpg://u@h/db", "psycopg 3"),
    ],
)
def test_database_url_refuses_other_databases(tmp_path: Path, raw: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        database_url(_config(tmp_path), environ={"SA_PGDISPATCH_URL": raw})


def test_database_url_missing(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="no database URL"):
        database_url(_config(tmp_path), environ={})


def test_load_target_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mymodels.py").write_text(
        "import sqlalchemy as sa\n"
        "class Base:\n    metadata = sa.MetaData()\n"
        "other = sa.MetaData()\nnot_metadata = 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_target_metadata(_config(tmp_path)) is None
    option = "sa_pgdispatch.metadata"
    one = load_target_metadata(_config(tmp_path, **{option: "mymodels:Base.metadata"}))
    assert isinstance(one, MetaData)
    two = load_target_metadata(
        _config(tmp_path, **{"sa_pgdispatch.metadata": "mymodels:Base.metadata, mymodels:other"})
    )
    assert isinstance(two, list)
    assert len(two) == 2
    for spec, message in [
        ("mymodels", "package.module:attribute"),
        ("nosuchmodule_xyz:md", "cannot import"),
        ("mymodels:missing", "no attribute"),
        ("mymodels:not_metadata", "not a sqlalchemy MetaData"),
    ]:
        with pytest.raises(CommandError, match=message):
            load_target_metadata(_config(tmp_path, **{"sa_pgdispatch.metadata": spec}))


def test_include_name_keeps_out_pgdispatch_and_cron(tmp_path: Path) -> None:
    assert include_name("pgdispatch", "schema", {}) is False
    assert include_name("cron", "schema", {}) is False
    assert include_name("app", "schema", {}) is True
    assert include_name("job", "table", {"schema_name": "pgdispatch"}) is False
    assert include_name("profiles", "table", {"schema_name": None}) is True

    seen: list[str | None] = []

    def mine(name: str | None, type_: str, parents: object) -> bool:
        seen.append(name)
        return name != "legacy"

    opts = configure_options(_config(tmp_path), x_arguments={"force_uninstall": "yes"},
                             name_filter=mine)
    assert opts["transaction_per_migration"] is True
    assert opts["pgdispatch_force_uninstall"] is True
    assert opts["include_name"]("legacy", "table", {"schema_name": None}) is False
    assert opts["include_name"]("cron", "schema", {}) is False
    assert seen == ["legacy"]  # the user's filter is not asked about our schemas
    assert configure_options(_config(tmp_path))["pgdispatch_force_uninstall"] is False
    with pytest.raises(CommandError, match="force_uninstall"):
        configure_options(_config(tmp_path), x_arguments={"force_uninstall": "maybe"})


# ----------------------------------------------------------------------------- init_project


def test_init_project_layout_and_first_revision(tmp_path: Path) -> None:
    ini = init_project(tmp_path / "migrations", url="postgresql://me@db.example/app%20x",
                       metadata="myapp.models:Base.metadata")
    assert ini == tmp_path / "alembic.ini"
    names = sorted(p.name for p in (tmp_path / "migrations").iterdir())
    assert names == ["README.md", "env.py", "script.py.mako", "versions"]
    cfg = Config(str(ini))
    assert cfg.get_main_option("script_location") == str(tmp_path / "migrations")
    assert cfg.get_main_option("sqlalchemy.url") == "postgresql://me@db.example/app%20x"
    assert cfg.get_main_option("sa_pgdispatch.metadata") == "myapp.models:Base.metadata"
    (revision,) = (tmp_path / "migrations" / "versions").glob("*.py")
    text = revision.read_text()
    assert '"""Upgrade schema."""\n    op.install_pgdispatch()\n' in text
    assert '"""Downgrade schema."""\n    op.uninstall_pgdispatch()\n' in text
    compile(text, str(revision), "exec")


def test_init_project_without_revision_and_refusals(tmp_path: Path) -> None:
    init_project(tmp_path / "m", install_revision=False)
    assert list((tmp_path / "m" / "versions").iterdir()) == []
    with pytest.raises(CommandError, match="not empty"):
        init_project(tmp_path / "m", config_file=tmp_path / "other.ini")
    with pytest.raises(CommandError, match="already exists"):
        init_project(tmp_path / "n")  # alembic.ini is there
    assert not (tmp_path / "n").exists()
    with pytest.raises(CommandError, match="need PostgreSQL"):
        init_project(tmp_path / "o", url="sqlite://", config_file=tmp_path / "o.ini")
    assert not (tmp_path / "o").exists()


@dataclass(frozen=True)
class _Run:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def alembic_cli(monkeypatch: pytest.MonkeyPatch) -> Callable[..., _Run]:
    """``alembic <args>`` in ``cwd``, run in this process the way Alembic's console script
    runs it (``CommandLine``: parse the arguments, a ``Config`` on ``alembic.ini`` with
    them as ``cmd_opts``, ``run_cmd``), its stdout and stderr captured. Three ``alembic``
    processes cost this module about 2 s of imports; ``test_env_refuses_a_non_postgresql_url``
    still runs the real console script.

    As in a process started with only ``$PATH``: none of the variables the environment
    reads. env.py's ``fileConfig(alembic.ini)`` is recorded instead of run: in a process of
    its own it would set up that process's logging; here it would close the handlers of
    pytest's logging plugin and disable every logger already made."""
    for name in ("DATABASE_URL", "SA_PGDISPATCH_URL", "SA_PGDISPATCH_CRON_URL",
                 "ALEMBIC_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    logging_configs: list[object] = []
    monkeypatch.setattr(logging.config, "fileConfig", logging_configs.append)

    def run(cwd: Path, *args: str) -> _Run:
        monkeypatch.chdir(cwd)
        out, err = io.StringIO(), io.StringIO()
        cli = CommandLine(prog="alembic")
        options = cli.parser.parse_args(args)
        config = Config(file_="alembic.ini", toml_file="pyproject.toml",
                        ini_section=options.name, cmd_opts=options,
                        stdout=out, output_buffer=out)
        returncode = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.run_cmd(config, options)
            except SystemExit as exit_:  # alembic.util.err() on a CommandError
                returncode = exit_.code if isinstance(exit_.code, int) else 1
        if returncode == 0:
            assert logging_configs == ["alembic.ini"]  # env.py configured logging from it
        logging_configs.clear()
        return _Run(returncode, out.getvalue(), err.getvalue())

    return run


def test_first_revision_offline_sql(tmp_path: Path, alembic_cli: Callable[..., _Run]) -> None:
    """`alembic upgrade head --sql` needs no database: it writes the install script."""
    init_project(tmp_path / "migrations", url="postgresql://nobody@localhost/app")
    up = alembic_cli(tmp_path, "upgrade", "head", "--sql")
    assert up.returncode == 0, up.stderr
    assert "CREATE SCHEMA pgdispatch;" in up.stdout
    assert "SELECT pgdispatch.start(1);" in up.stdout
    assert up.stdout.index("BEGIN;") < up.stdout.index("CREATE SCHEMA pgdispatch;")
    (revision,) = (tmp_path / "migrations" / "versions").glob("*.py")
    down = alembic_cli(tmp_path, "downgrade", f"{revision.name.split('_')[0]}:base", "--sql")
    assert down.returncode == 0, down.stderr
    assert "SELECT pgdispatch.prepare_uninstall(force => false);" in down.stdout
    forced = alembic_cli(tmp_path, "-x", "force_uninstall=true", "downgrade",
                         f"{revision.name.split('_')[0]}:base", "--sql")
    assert "SELECT pgdispatch.prepare_uninstall(force => true);" in forced.stdout


def test_first_revision_offline_sql_with_cron_url_from_x_argument(
    tmp_path: Path, alembic_cli: Callable[..., _Run]
) -> None:
    """``-x cron_url=...``: an app database's script starts no workers; the URL (and its
    password) stays out of the script."""
    init_project(tmp_path / "migrations", url="postgresql://nobody@localhost/app")
    up = alembic_cli(tmp_path, "-x", "cron_url=postgresql://app:s3cret@db/postgres",
                     "upgrade", "head", "--sql")
    assert up.returncode == 0, up.stderr
    assert "CREATE SCHEMA pgdispatch;" in up.stdout
    assert "SELECT pgdispatch.start(" not in up.stdout
    assert "SELECT * FROM pgdispatch.cron_statements('start', 1);" in up.stdout
    assert "s3cret" not in up.stdout
    assert up.stdout.index("cron_statements('start', 1)") < up.stdout.rindex("COMMIT;")


def test_env_refuses_a_non_postgresql_url(tmp_path: Path) -> None:
    """The real ``alembic`` console script, in a process of its own (on the sa_pgdispatch
    under test: $PYTHONPATH is its source directory, not an installed copy)."""
    init_project(tmp_path / "migrations", url="postgresql://nobody@localhost/app")
    source = str(Path(sa_pgdispatch.__file__).parents[1])
    result = subprocess.run(
        [ALEMBIC, "upgrade", "head", "--sql"], cwd=tmp_path, capture_output=True, text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": source, "DATABASE_URL": "sqlite:///x.db"},
    )
    assert result.returncode != 0
    assert "need PostgreSQL" in result.stderr


def test_offline_upgrade_writes_the_upgrade_scripts() -> None:
    versions = available_versions()
    if len(versions) < 2:
        pytest.skip("a single pgdispatch version ships: nothing to upgrade")
    operations, buf = _offline()
    operations.upgrade_pgdispatch(versions[-1], from_version=versions[0])  # type: ignore[attr-defined]
    assert upgrade_sql(versions[0], versions[-1]).strip() in buf.getvalue()


# ------------------------------------------------------------------- install paths (via)


def test_install_and_uninstall_reverses_carry_via() -> None:
    uninstall = InstallPgdispatchOp(version="0.1.0", via="pg_tle").reverse()
    assert uninstall.via == "pg_tle"
    back = uninstall.reverse()
    assert (back.version, back.via) == ("0.1.0", "pg_tle")
    assert InstallPgdispatchOp().reverse().via == "sql"
    assert UninstallPgdispatchOp(via="extension").reverse().via == "extension"


def test_render_via_and_rebuild_the_same_ops() -> None:
    text = _render(
        InstallPgdispatchOp(via="pg_tle"),
        UninstallPgdispatchOp(force=True, via="extension"),
        UpgradePgdispatchOp(from_version="0.1.0", via="pg_tle"),
    )
    assert "op.install_pgdispatch(via='pg_tle')" in text
    assert "op.uninstall_pgdispatch(force=True, via='extension')" in text
    assert "op.upgrade_pgdispatch(from_version='0.1.0', via='pg_tle')" in text
    assert "via" not in _render(InstallPgdispatchOp(), UninstallPgdispatchOp(),
                                UpgradePgdispatchOp())


def test_offline_pg_tle_and_extension_scripts() -> None:
    operations, buf = _offline()
    operations.install_pgdispatch(version="0.1.0", workers=1, via="pg_tle")  # type: ignore[attr-defined]
    out = buf.getvalue()
    assert install_sql("0.1.0", workers=1, via="pg_tle").strip() in out
    assert "SELECT pgtle.install_extension('pgdispatch', '0.1.0', " in out
    assert "CREATE EXTENSION pgdispatch VERSION '0.1.0';" in out
    assert out.rstrip().endswith("SELECT pgdispatch.start(1);")

    operations, buf = _offline()
    operations.uninstall_pgdispatch(  # type: ignore[attr-defined]
        via="pg_tle", cron_url="postgresql://app@db/postgres"
    )
    out = buf.getvalue()
    hint = out.index("--        SELECT * FROM pgdispatch.cron_statements('uninstall');")
    drop = out.index("DROP EXTENSION pgdispatch CASCADE;")
    assert out.index("SELECT pgdispatch.prepare_uninstall(force => false);") < hint < drop
    assert drop < out.index("DROP SCHEMA IF EXISTS pgdispatch CASCADE;")
    assert out.rstrip().endswith("SELECT pgtle.uninstall_extension_if_exists('pgdispatch');")

    versions = available_versions()
    if len(versions) > 1:
        operations, buf = _offline()
        operations.upgrade_pgdispatch(from_version=versions[0], via="extension")  # type: ignore[attr-defined]
        out = buf.getvalue()
        assert f"ALTER EXTENSION pgdispatch UPDATE TO '{versions[-1]}';" in out
        assert "CREATE OR REPLACE FUNCTION" not in out  # not the upgrade scripts themselves


# ----------------------------------------------------------------------------- intervals


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delay": "-5 seconds"}, "negative"),
        ({"delay": "5 seconds ago"}, "negative"),
        ({"delay": "@ -1 hour"}, "negative"),
        ({"timeout": "0 seconds"}, "zero"),
        ({"timeout": "PT0S"}, "zero"),
        ({"delay": "5 parsecs"}, "not an interval"),
    ],
)
def test_create_dispatch_trigger_validates_interval_text_when_called(
    options: dict[str, str], message: str
) -> None:
    """These made the migration succeed and every INSERT on the table fail afterwards."""
    operations, buf = _offline()
    with pytest.raises(IntervalOptionError, match=message) as info:
        operations.create_dispatch_trigger(  # type: ignore[attr-defined]
            "welcome", "profiles", "app.send_welcome", **options
        )
    assert isinstance(info.value, PgDispatchError)
    assert isinstance(info.value, ValueError)
    assert buf.getvalue() == ""
    with pytest.raises(IntervalOptionError, match=message):
        operations.replace_dispatch_trigger(  # type: ignore[attr-defined]
            "welcome", "profiles", "app.send_welcome", **options
        )


def test_offline_create_refuses_interval_text_it_cannot_check() -> None:
    operations, buf = _offline()
    with pytest.raises(IntervalOptionError, match="cannot be checked") as info:
        operations.create_dispatch_trigger(  # type: ignore[attr-defined]
            "welcome", "profiles", "app.send_welcome", delay="5. seconds"
        )
    assert "delay '5. seconds'" in str(info.value)
    assert "CREATE TRIGGER" not in buf.getvalue()


def test_dropping_a_trigger_whose_definition_has_a_bad_interval() -> None:
    """An existing trigger made before intervals were checked: autogenerate writes its
    definition into the drop (and into the existing= of a replace); the migration runs,
    only re-creating that trigger (the reverse) is refused."""
    operations, buf = _offline()
    operations.drop_dispatch_trigger(  # type: ignore[attr-defined]
        "welcome", "profiles", function="app.send_welcome", delay="-00:00:05"
    )
    operations.replace_dispatch_trigger(  # type: ignore[attr-defined]
        "welcome", "profiles", "app.send_welcome", delay="00:00:05",
        existing={"function": "app.send_welcome", "timeout": "00:00:00"},
    )
    assert buf.getvalue().count("DROP TRIGGER welcome ON profiles") == 2
    assert "'delay=00:00:05'" in buf.getvalue()
    drop = DropDispatchTriggerOp.from_definition(
        "welcome", "profiles", function="app.send_welcome", delay="-00:00:05"
    )
    with pytest.raises(DispatchTriggerOpError, match="cannot be re-created: delay '-00:00:05'"):
        drop.reverse()
