"""The autogenerate comparator and the online operations, on the shared server.

Each test works in a schema of its own inside a transaction that is rolled back, with
pgdispatch installed (``pgdispatch_db``); nothing here uninstalls it. Autogenerate is
restricted to the test's schema (``include_schemas`` + ``include_name``).
"""

from __future__ import annotations

import datetime as dt
import textwrap
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import produce_migrations, render_python_code
from alembic.operations import Operations, ops
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from sa_pgdispatch.alembic import (
    CreateDispatchTriggerOp,
    DispatchTriggerOpError,
    DropDispatchTriggerOp,
    InstallPgdispatchOp,
    ReplaceDispatchTriggerOp,
    TriggerDefinition,
)
from sa_pgdispatch.triggers import (
    DispatchTrigger,
    IntervalOptionError,
    InvalidSpec,
    reflect_dispatch_triggers,
)


@pytest.fixture
def conn(pgdispatch_db: Engine) -> Iterator[sa.Connection]:
    with pgdispatch_db.connect() as connection:
        transaction = connection.begin()
        try:
            yield connection
        finally:
            transaction.rollback()


@pytest.fixture
def schema(conn: sa.Connection) -> str:
    name = f"ag_{uuid.uuid4().hex[:12]}"
    conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    conn.exec_driver_sql(
        f'CREATE FUNCTION "{name}".effect(payload jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$'
    )
    return name


def _profiles(metadata: sa.MetaData, schema: str, *triggers: DispatchTrigger,
              extra: tuple[sa.Column[Any], ...] = ()) -> sa.Table:
    return sa.Table(
        "profiles", metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("status", sa.Text),
        *extra,
        *triggers,
        schema=schema,
    )


def _diff(conn: sa.Connection, metadata: sa.MetaData, schema: str,
          **opts: Any) -> list[ops.MigrateOperation]:
    def only_this_schema(name: str | None, type_: str, parents: Any) -> bool:
        return name == schema if type_ == "schema" else True

    user_filter: Callable[..., bool] | None = opts.pop("include_name", None)

    def include_name(name: str | None, type_: str, parents: Any) -> bool:
        if not only_this_schema(name, type_, parents):
            return False
        return user_filter is None or user_filter(name, type_, parents)

    context = MigrationContext.configure(
        connection=conn,
        opts={"include_schemas": True, "include_name": include_name, **opts},
    )
    script = produce_migrations(context, metadata)
    assert script.upgrade_ops is not None
    return list(script.upgrade_ops.ops)


def _run(conn: sa.Connection, *operations: ops.MigrateOperation) -> None:
    op = Operations(MigrationContext.configure(connection=conn))
    for operation in operations:
        op.invoke(operation)


def _trigger(**kw: Any) -> DispatchTrigger:
    kw.setdefault("on", ("insert", "update"))
    return DispatchTrigger("notify", kw.pop("function", "effect"), **kw)


def test_no_change_after_create_all(conn: sa.Connection, schema: str) -> None:
    metadata = sa.MetaData()
    table = _profiles(metadata, schema, _trigger(
        when=lambda t: t.c.status != "archived", delay=dt.timedelta(seconds=90),
        priority=3, max_attempts=4, timeout="1 minute", columns=["status"],
    ))
    metadata.create_all(conn)
    assert [i.name for i in reflect_dispatch_triggers(conn, schema=schema)] == ["notify"]
    assert _diff(conn, metadata, schema) == []
    assert table.name == "profiles"


def test_new_table_then_its_trigger(conn: sa.Connection, schema: str) -> None:
    metadata = sa.MetaData()
    _profiles(metadata, schema, _trigger(when="NEW.status IS NOT NULL"))
    diff = _diff(conn, metadata, schema)
    assert [type(o) for o in diff] == [ops.CreateTableOp, CreateDispatchTriggerOp]
    create = diff[1]
    assert isinstance(create, CreateDispatchTriggerOp)
    assert (create.schema, create.table_name, create.trigger_name) == (schema, "profiles", "notify")
    assert create.definition.when == "NEW.status IS NOT NULL"
    assert "pgdispatch_triggers" not in (diff[0].info or {})
    # applied online, the comparison comes back empty
    _run(conn, *diff)
    assert _diff(conn, metadata, schema) == []


def test_changed_definition_is_replaced_in_place(conn: sa.Connection, schema: str) -> None:
    before = sa.MetaData()
    _profiles(before, schema, _trigger(when="NEW.status = 'new'", priority=1))
    before.create_all(conn)
    oid = conn.scalar(sa.text("SELECT oid FROM pg_trigger WHERE tgname = 'notify'"))

    after = sa.MetaData()
    _profiles(after, schema, _trigger(when="NEW.status <> 'new'", priority=1, delay="5 seconds"))
    (replace,) = _diff(conn, after, schema)
    assert isinstance(replace, ReplaceDispatchTriggerOp)
    assert replace.definition.when == "NEW.status <> 'new'"
    assert replace.definition.delay == "5 seconds"
    assert replace.existing is not None
    assert replace.existing.when == "(new.status = 'new'::text)"
    assert replace.existing.delay is None

    _run(conn, replace)
    assert _diff(conn, after, schema) == []
    assert conn.scalar(sa.text("SELECT oid FROM pg_trigger WHERE tgname = 'notify'")) == oid
    # the reverse restores the original definition
    _run(conn, replace.reverse())
    assert _diff(conn, before, schema) == []


def test_removed_trigger_is_dropped_with_its_definition(conn: sa.Connection, schema: str) -> None:
    declared = sa.MetaData()
    _profiles(declared, schema, _trigger(security="definer", on="delete", for_each="statement"))
    declared.create_all(conn)

    bare = sa.MetaData()
    _profiles(bare, schema)
    (drop,) = _diff(conn, bare, schema)
    assert isinstance(drop, DropDispatchTriggerOp)
    assert drop.definition == TriggerDefinition(
        function=f"{schema}.effect", on=("delete",), for_each="statement", security="definer"
    )
    _run(conn, drop)
    assert reflect_dispatch_triggers(conn, schema=schema) == []
    assert _diff(conn, bare, schema) == []
    _run(conn, drop.reverse())  # re-creates the same trigger, definer function included
    assert _diff(conn, declared, schema) == []


def test_dropped_table_loses_its_trigger_first(conn: sa.Connection, schema: str) -> None:
    declared = sa.MetaData()
    _profiles(declared, schema, _trigger())
    declared.create_all(conn)
    diff = _diff(conn, sa.MetaData(), schema)
    assert [type(o) for o in diff] == [DropDispatchTriggerOp, ops.DropTableOp]
    _run(conn, *diff)
    assert conn.scalar(sa.text(f"SELECT to_regclass('{schema}.profiles')")) is None


def test_triggers_of_unmanaged_tables_are_left_alone(conn: sa.Connection, schema: str) -> None:
    declared = sa.MetaData()
    _profiles(declared, schema, _trigger())
    declared.create_all(conn)

    def not_profiles(name: str | None, type_: str, parents: Any) -> bool:
        return not (type_ == "table" and name == "profiles")

    assert _diff(conn, sa.MetaData(), schema, include_name=not_profiles) == []


def test_include_name_and_include_object_see_dispatch_triggers(
    conn: sa.Connection, schema: str
) -> None:
    declared = sa.MetaData()
    _profiles(declared, schema, _trigger())
    declared.create_all(conn)
    bare = sa.MetaData()
    _profiles(bare, schema)

    names: list[tuple[str | None, str, dict[str, Any]]] = []

    def skip_triggers_by_name(name: str | None, type_: str, parents: Any) -> bool:
        if type_ == "dispatch_trigger":
            names.append((name, type_, dict(parents)))
            return False
        return True

    assert _diff(conn, bare, schema, include_name=skip_triggers_by_name) == []
    assert names == [("notify", "dispatch_trigger",
                      {"table_name": "profiles", "schema_name": schema,
                       "schema_qualified_table_name": f"{schema}.profiles"})]

    objects: list[tuple[str, bool, bool]] = []

    def skip_triggers(obj: Any, name: str, type_: str, reflected: bool, compare_to: Any) -> bool:
        if type_ == "dispatch_trigger":
            assert isinstance(obj, DispatchTrigger)
            objects.append((name, reflected, compare_to is not None))
            return False
        return True

    assert _diff(conn, bare, schema, include_object=skip_triggers) == []
    assert objects == [("notify", True, False)]

    changed = sa.MetaData()
    _profiles(changed, schema, _trigger(priority=7))
    objects.clear()
    assert _diff(conn, changed, schema, include_object=skip_triggers) == []
    assert objects == [("notify", False, False)]


def test_when_on_a_column_added_by_the_same_migration(conn: sa.Connection, schema: str) -> None:
    before = sa.MetaData()
    _profiles(before, schema, _trigger(when="NEW.status IS NOT NULL"))
    before.create_all(conn)
    after = sa.MetaData()
    _profiles(after, schema, _trigger(when="NEW.verified"),
              extra=(sa.Column("verified", sa.Boolean),))
    diff = _diff(conn, after, schema)
    assert [type(o) for o in diff] == [ops.ModifyTableOps, ReplaceDispatchTriggerOp]
    _run(conn, *diff[0].ops, diff[1])  # type: ignore[attr-defined]
    assert _diff(conn, after, schema) == []


def test_install_is_not_emitted_when_installed(conn: sa.Connection, schema: str) -> None:
    metadata = sa.MetaData()
    _profiles(metadata, schema, _trigger())
    assert not any(isinstance(o, InstallPgdispatchOp) for o in _diff(conn, metadata, schema))


def test_percent_signs_and_quotes_survive_online_ddl(conn: sa.Connection, schema: str) -> None:
    metadata = sa.MetaData()
    _profiles(metadata, schema, _trigger(when="NEW.status LIKE '100%% o''clock%'"))
    diff = _diff(conn, metadata, schema)
    _run(conn, *diff)
    (info,) = reflect_dispatch_triggers(conn, schema=schema)
    assert info.when == "(new.status ~~ '100%% o''clock%'::text)"
    assert _diff(conn, metadata, schema) == []


def test_online_create_checks_undecided_intervals_through_the_server(
    conn: sa.Connection, schema: str
) -> None:
    metadata = sa.MetaData()
    _profiles(metadata, schema).create(conn)
    op = Operations(MigrationContext.configure(connection=conn))
    with pytest.raises(IntervalOptionError, match="negative"):
        op.create_dispatch_trigger(  # type: ignore[attr-defined]
            "notify", "profiles", "effect", schema=schema, delay="-5. seconds"
        )
    assert reflect_dispatch_triggers(conn, schema=schema) == []
    op.create_dispatch_trigger(  # type: ignore[attr-defined]
        "notify", "profiles", "effect", schema=schema, delay="5. seconds"
    )
    [info] = reflect_dispatch_triggers(conn, schema=schema)
    assert info.delay == "00:00:05"


def test_a_trigger_with_a_bad_interval_made_by_hand_is_replaced(
    conn: sa.Connection, schema: str
) -> None:
    """A trigger made before intervals were checked (every INSERT fails): declaring a good
    delay autogenerates a replace whose existing= holds the bad one; it runs."""
    _profiles(sa.MetaData(), schema).create(conn)
    conn.exec_driver_sql(
        f'CREATE TRIGGER notify AFTER INSERT OR UPDATE ON "{schema}".profiles FOR EACH ROW '
        f"EXECUTE FUNCTION pgdispatch.trigger('{schema}.effect', 'delay=-5 seconds')"
    )
    declared = sa.MetaData()
    _profiles(declared, schema, _trigger(delay="5 seconds"))
    (replace,) = _diff(conn, declared, schema)
    assert isinstance(replace, ReplaceDispatchTriggerOp)
    assert isinstance(replace.existing, InvalidSpec)
    assert replace.existing.arguments()["delay"] == "-00:00:05"
    lines = render_python_code(ops.UpgradeOps(ops=[replace])).splitlines()
    rendered = textwrap.dedent("\n".join(ln for ln in lines if not ln.strip().startswith("#")))
    recorded: list[Any] = []

    class Op:
        def replace_dispatch_trigger(self, *args: Any, **kw: Any) -> None:
            recorded.append((args, kw))

    exec(compile(rendered, "<rendered>", "exec"), {"op": Op()})
    [(args, kw)] = recorded
    op = Operations(MigrationContext.configure(connection=conn))
    op.replace_dispatch_trigger(*args, **kw)  # type: ignore[attr-defined]
    [info] = reflect_dispatch_triggers(conn, schema=schema)
    assert info.delay == "00:00:05"
    assert _diff(conn, declared, schema) == []


def test_an_undeclared_trigger_with_a_bad_interval_is_dropped_with_its_definition(
    conn: sa.Connection, schema: str
) -> None:
    """Its definition goes into the drop as it is, and into the downgrade's create (which
    refuses it when it runs): autogenerate does not fail on it."""
    _profiles(sa.MetaData(), schema).create(conn)
    conn.exec_driver_sql(
        f'CREATE TRIGGER notify AFTER INSERT ON "{schema}".profiles FOR EACH ROW '
        f"EXECUTE FUNCTION pgdispatch.trigger('{schema}.effect', 'delay=-5 seconds')"
    )
    [info] = reflect_dispatch_triggers(conn, schema=schema)
    assert isinstance(info.invalid, InvalidSpec)
    bare = sa.MetaData()
    _profiles(bare, schema)
    context = MigrationContext.configure(
        connection=conn,
        opts={"include_schemas": True,
              "include_name": lambda name, type_, parents: (
                  name == schema if type_ == "schema" else True)},
    )
    script = produce_migrations(context, bare)
    assert script.upgrade_ops is not None
    assert script.downgrade_ops is not None
    (drop,) = script.upgrade_ops.ops
    assert isinstance(drop, DropDispatchTriggerOp)
    assert drop.definition == info.invalid
    (create,) = script.downgrade_ops.ops
    assert isinstance(create, CreateDispatchTriggerOp)
    assert "delay='-00:00:05'" in render_python_code(script.downgrade_ops)
    _run(conn, drop)
    assert reflect_dispatch_triggers(conn, schema=schema) == []
    with pytest.raises(IntervalOptionError, match="negative"):
        create.definition.to_spec()


def test_a_trigger_no_spec_can_express_is_left_alone_unless_declared(
    conn: sa.Connection, schema: str
) -> None:
    _profiles(sa.MetaData(), schema).create(conn)
    conn.exec_driver_sql(
        f'CREATE TRIGGER notify AFTER INSERT ON "{schema}".profiles FOR EACH ROW '
        f"EXECUTE FUNCTION pgdispatch.trigger('{schema}.effect', 'priority=high')"
    )
    bare = sa.MetaData()
    _profiles(bare, schema)
    assert _diff(conn, bare, schema) == []
    declared = sa.MetaData()
    _profiles(declared, schema, _trigger(on="insert"))
    with pytest.raises(DispatchTriggerOpError, match="drop it by hand"):
        _diff(conn, declared, schema)
