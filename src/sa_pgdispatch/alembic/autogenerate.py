"""Autogenerate support: compare declared dispatch triggers with the database.

Importing this module registers

* a schema-level comparator (in Alembic's global ``comparators`` registry, which every
  autogenerate run copies) that compares the :class:`~sa_pgdispatch.triggers.DispatchTrigger`
  objects declared on the target metadata's tables with the dispatch triggers reflected
  from the database, and emits ``op.create_dispatch_trigger`` /
  ``op.drop_dispatch_trigger`` / ``op.replace_dispatch_trigger``, plus
  ``op.install_pgdispatch()`` first when triggers are declared and pgdispatch is not
  installed;
* renderers that write those operations as readable Python in the revision file.

Rules:

* Only the schemas autogenerate compares (``include_schemas``) are looked at; the
  default schema renders as ``schema=None``, like Alembic's tables.
* ``include_name(name, "dispatch_trigger", {"table_name", "schema_name"})`` and
  ``include_object(trigger, name, "dispatch_trigger", reflected, compare_to)`` filter
  triggers (``trigger`` is a :class:`DispatchTrigger`; for a reflected one, a detached
  copy). Triggers of tables excluded by the ``"table"`` filters are left alone.
* A reflected trigger on a table that is not in the metadata is dropped only when
  autogenerate drops that table (the drop comes first, so the downgrade re-creates the
  table, then the trigger); otherwise the table is not managed here and neither are its
  triggers.
* Operations come after Alembic's own (tables are created before their triggers).
* A reflected trigger whose definition the spec refuses (its record holds an
  :class:`~sa_pgdispatch.triggers.InvalidSpec`): when the fault is a delay or timeout,
  it is replaced or dropped like any other (a warning is logged), ``include_object``
  sees it without that option, and the operations carry its definition as it is (their
  reverse, the downgrade, writes it back; running that refuses it). Any other refusal,
  another timing or unknown options: left alone (warning logged), and a declared
  namesake raises :class:`DispatchTriggerOpError` (drop it by hand).
* Declared triggers and reflected ones compare as records (name, table, spec, and what
  reflection adds), normalised through the server (:func:`definitions_equal`); the
  renderers write an operation's spec back as the keywords whose value is not the
  default.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import comparators, renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import ops
from sqlalchemy import exc as sa_exc

from ..errors import DispatchTriggerOpError
from ..install import installed_version
from ..triggers import (
    INFO_KEY,
    DispatchSpec,
    DispatchTrigger,
    DispatchTriggerError,
    DispatchTriggerInfo,
    InvalidSpec,
    definitions_equal,
    dispatch_triggers,
    reflect_dispatch_triggers,
)
from .install_ops import InstallPgdispatchOp, UninstallPgdispatchOp, UpgradePgdispatchOp
from .trigger_ops import CreateDispatchTriggerOp, DropDispatchTriggerOp, ReplaceDispatchTriggerOp

__all__ = ["OBJECT_TYPE", "compare_dispatch_triggers"]

log = logging.getLogger(__name__)

#: The ``type_`` that ``include_name`` / ``include_object`` receive for dispatch triggers.
OBJECT_TYPE: Any = "dispatch_trigger"  # Any: Alembic types the filters' type_ as a Literal

_Key = tuple[str | None, str, str]  # (schema as rendered, table name, trigger name)


def _continue() -> Any:
    # Alembic >= 1.18 dispatchers read a PriorityDispatchResult; older ones ignore it.
    try:
        from alembic.util import PriorityDispatchResult
    except ImportError:  # pragma: no cover - Alembic < 1.18
        return None
    return PriorityDispatchResult.CONTINUE


def _render_schema(schema: str | None, default_schema: str | None) -> str | None:
    return None if schema is None or schema == default_schema else schema


def _declared(
    autogen_context: AutogenContext, schemas: set[str | None], default_schema: str | None
) -> tuple[dict[_Key, tuple[sa.Table, DispatchTrigger]], set[_Key]]:
    """The declared triggers to compare, and the keys of those the filters exclude (their
    namesakes in the database are left alone too)."""
    found: dict[_Key, tuple[sa.Table, DispatchTrigger]] = {}
    excluded: set[_Key] = set()
    for table in autogen_context.sorted_tables:
        triggers = dispatch_triggers(table)
        if not triggers:
            continue
        schema = _render_schema(table.schema, default_schema)
        if schema not in schemas:
            continue
        table_included = autogen_context.run_object_filters(
            table, table.name, "table", False, None
        )
        for trigger in triggers:
            key = (schema, table.name, trigger.name)
            if table_included and autogen_context.run_object_filters(
                trigger, trigger.name, OBJECT_TYPE, False, None
            ):
                found[key] = (table, trigger)
            else:
                excluded.add(key)
    return found, excluded


def _reflected(
    autogen_context: AutogenContext,
    conn: sa.Connection,
    schemas: set[str | None],
    default_schema: str | None,
) -> dict[_Key, DispatchTriggerInfo]:
    found: dict[_Key, DispatchTriggerInfo] = {}
    for schema in schemas:
        actual = schema if schema is not None else default_schema
        for info in reflect_dispatch_triggers(conn, schema=actual):
            if not autogen_context.run_name_filters(
                info.table_name, "table", {"schema_name": schema}
            ):
                continue
            if not autogen_context.run_name_filters(
                info.name, OBJECT_TYPE, {"table_name": info.table_name, "schema_name": schema}
            ):
                continue
            found[(schema, info.table_name, info.name)] = info
    return found


def _detached(info: DispatchTriggerInfo) -> DispatchTrigger | None:
    """A DispatchTrigger for a reflected trigger (for include_object), or None when the
    trigger is not one a DispatchTrigger can express: it is left alone.

    A reflected :class:`~sa_pgdispatch.triggers.InvalidSpec` whose fault is a delay or
    timeout (made before intervals were checked: every statement firing it fails) is
    still the trigger a declared one replaces, or a drop removes: include_object sees it
    without that option, and the operations carry its definition as it is. Any other
    invalid definition, another timing or unknown options: None."""
    definition: DispatchSpec | InvalidSpec = info.definition
    try:
        if info.timing != "after" or info.unknown_options:
            info.to_spec()  # raises: cannot be expressed
        while isinstance(definition, InvalidSpec) and definition.option is not None:
            log.warning("sa_pgdispatch: trigger %s on %s: %s",
                        info.name, info.table_name, definition.error)
            definition = definition.without(definition.option)
        return DispatchTrigger.from_spec(info.name, definition.to_spec(info.name))
    except DispatchTriggerError as exc:
        log.warning("sa_pgdispatch: leaving trigger %s on %s alone: %s",
                    info.name, info.table_name, exc)
        return None


def _drop_table_index(upgrade_ops: ops.UpgradeOps, schema: str | None, table: str) -> int | None:
    for index, op in enumerate(upgrade_ops.ops):
        if isinstance(op, ops.DropTableOp) and op.table_name == table and op.schema == schema:
            return index
    return None


def _same(conn: sa.Connection, table: sa.Table, trigger: DispatchTrigger,
          info: DispatchTriggerInfo) -> bool:
    try:
        return definitions_equal(conn, trigger, info, table)
    except sa_exc.DBAPIError as exc:
        # e.g. the WHEN condition names a column that this same migration adds: it
        # cannot be normalised on the current table, so it differs.
        log.info("sa_pgdispatch: cannot normalise trigger %s through the database (%s); "
                 "treating it as changed", trigger.name, exc.orig)
        return False


def _strip_table_info(upgrade_ops: ops.UpgradeOps) -> None:
    """Keep the DispatchTrigger objects (kept in ``Table.info``) out of the rendered
    ``op.create_table(..., info={...})``: the triggers get operations of their own."""
    for op in upgrade_ops.ops:
        targets: list[Any] = [op]
        if isinstance(op, ops.DropTableOp) and op._reverse is not None:
            targets.append(op._reverse)
        for target in targets:
            if isinstance(target, ops.CreateTableOp | ops.DropTableOp) and target.info:
                target.info.pop(INFO_KEY, None)


def compare_dispatch_triggers(
    autogen_context: AutogenContext, upgrade_ops: ops.UpgradeOps, schemas: Iterable[str | None]
) -> Any:
    """The schema-level comparator (see the module docstring)."""
    conn = autogen_context.connection
    if conn is None or autogen_context.metadata is None:
        return _continue()
    if conn.dialect.name != "postgresql":
        return _continue()
    default_schema = conn.dialect.default_schema_name
    wanted = set(schemas)
    declared, excluded = _declared(autogen_context, wanted, default_schema)
    reflected = _reflected(autogen_context, conn, wanted, default_schema)
    metadata_tables = {
        (_render_schema(t.schema, default_schema), t.name) for t in autogen_context.sorted_tables
    }

    new_ops: list[ops.MigrateOperation] = []
    for key, (table, trigger) in declared.items():
        schema = key[0]
        info = reflected.get(key)
        if info is None:
            new_ops.append(CreateDispatchTriggerOp.from_trigger(trigger, table, schema=schema))
            continue
        detached = _detached(info)
        if detached is not None and not autogen_context.run_object_filters(
            detached, info.name, OBJECT_TYPE, True, trigger
        ):
            continue
        if _same(conn, table, trigger, info):
            continue
        if detached is None:
            raise DispatchTriggerOpError(
                f"trigger {info.name!r} on {info.table_name!r} is declared as a DispatchTrigger "
                "but the database's trigger cannot be read back as one; drop it by hand"
            )
        new_ops.append(
            ReplaceDispatchTriggerOp(
                trigger.name,
                table.name,
                trigger.spec_for(table),
                schema=schema,
                existing=info.definition,
                invalid_reverse="carry",  # the downgrade writes an invalid one as it is
            )
        )

    for key, info in reflected.items():
        if key in declared or key in excluded:
            continue
        schema, table_name, _ = key
        drop_index = None
        if (schema, table_name) not in metadata_tables:
            drop_index = _drop_table_index(upgrade_ops, schema, table_name)
            if drop_index is None:
                continue  # a table autogenerate does not manage: leave its triggers alone
        detached = _detached(info)
        if detached is None or not autogen_context.run_object_filters(
            detached, info.name, OBJECT_TYPE, True, None
        ):
            continue
        drop = DropDispatchTriggerOp.from_info(info, schema=schema)
        if drop_index is not None:
            upgrade_ops.ops.insert(drop_index, drop)
        else:
            new_ops.append(drop)

    _strip_table_info(upgrade_ops)
    upgrade_ops.ops.extend(new_ops)
    if declared and installed_version(conn) is None:
        upgrade_ops.ops.insert(0, InstallPgdispatchOp())
    return _continue()


def _register_comparator() -> None:
    try:
        from alembic.util import DispatchPriority
    except ImportError:  # pragma: no cover - Alembic < 1.18: registration order only
        comparators.dispatch_for("schema")(compare_dispatch_triggers)
        return
    # LAST: after Alembic's table comparison, so that CREATE TABLE comes before the
    # table's triggers and DROP TABLE ops can be found.
    comparators.dispatch_for("schema", priority=DispatchPriority.LAST)(compare_dispatch_triggers)


_register_comparator()


# ---------------------------------------------------------------------------------------
# rendering


def _prefix(autogen_context: AutogenContext) -> str:
    return str(autogen_context.opts.get("alembic_module_prefix") or "op.")


_LINE = 88


def _argument(key: str | None, value: Any) -> str:
    """One argument on its own line (4 spaces in); a dict too long for one line gets
    one line per item."""
    prefix = f"{key}=" if key is not None else ""
    text = f"    {prefix}{value!r},"
    if len(text) <= _LINE or not isinstance(value, dict) or not value:
        return text
    items = "".join(f"        {k!r}: {v!r},\n" for k, v in value.items())
    return f"    {prefix}{{\n{items}    }},"


def _call(autogen_context: AutogenContext, name: str, args: list[Any],
          kwargs: dict[str, Any]) -> str:
    head = f"{_prefix(autogen_context)}{name}("
    inline = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    one_line = head + ", ".join(inline) + ")"
    if len(one_line) <= _LINE:
        return one_line
    lines = [_argument(None, a) for a in args] + [_argument(k, v) for k, v in kwargs.items()]
    return head + "\n" + "\n".join(lines) + "\n)"


def _schema_kw(schema: str | None) -> dict[str, Any]:
    return {"schema": schema} if schema is not None else {}


@renderers.dispatch_for(InstallPgdispatchOp)
def _render_install(autogen_context: AutogenContext, op: InstallPgdispatchOp) -> str:
    kwargs: dict[str, Any] = {}
    if op.version is not None:
        kwargs["version"] = op.version
    if op.workers != 1:
        kwargs["workers"] = op.workers
    if op.cron_url is not None:
        kwargs["cron_url"] = op.cron_url
    if op.via != "sql":
        kwargs["via"] = op.via
    return _call(autogen_context, "install_pgdispatch", [], kwargs)


@renderers.dispatch_for(UninstallPgdispatchOp)
def _render_uninstall(autogen_context: AutogenContext, op: UninstallPgdispatchOp) -> str:
    kwargs: dict[str, Any] = {"force": True} if op.force else {}
    if op.cron_url is not None:
        kwargs["cron_url"] = op.cron_url
    if op.via != "sql":
        kwargs["via"] = op.via
    return _call(autogen_context, "uninstall_pgdispatch", [], kwargs)


@renderers.dispatch_for(UpgradePgdispatchOp)
def _render_upgrade(autogen_context: AutogenContext, op: UpgradePgdispatchOp) -> str:
    kwargs: dict[str, Any] = {}
    if op.from_version is not None:
        kwargs["from_version"] = op.from_version
    if op.via != "sql":
        kwargs["via"] = op.via
    args = [op.to_version] if op.to_version is not None else []
    return _call(autogen_context, "upgrade_pgdispatch", args, kwargs)


# The trigger operations render from the spec they carry: ``function`` and the keywords
# whose value is not the default (``DispatchSpec.non_default_arguments``; an InvalidSpec
# renders its arguments the same way).


@renderers.dispatch_for(CreateDispatchTriggerOp)
def _render_create(autogen_context: AutogenContext, op: CreateDispatchTriggerOp) -> str:
    spec = op.definition
    return _call(
        autogen_context,
        "create_dispatch_trigger",
        [op.trigger_name, op.table_name, spec.function],
        {**_schema_kw(op.schema), **spec.non_default_arguments()},
    )


@renderers.dispatch_for(DropDispatchTriggerOp)
def _render_drop(autogen_context: AutogenContext, op: DropDispatchTriggerOp) -> str:
    kwargs = _schema_kw(op.schema)
    if op.definition is not None:
        kwargs.update(op.definition.mapping())
    return _call(autogen_context, "drop_dispatch_trigger", [op.trigger_name, op.table_name], kwargs)


@renderers.dispatch_for(ReplaceDispatchTriggerOp)
def _render_replace(autogen_context: AutogenContext, op: ReplaceDispatchTriggerOp) -> str:
    spec = op.definition
    kwargs: dict[str, Any] = {**_schema_kw(op.schema), **spec.non_default_arguments()}
    if op.existing is not None:
        kwargs["existing"] = op.existing.mapping()
    return _call(
        autogen_context,
        "replace_dispatch_trigger",
        [op.trigger_name, op.table_name, spec.function],
        kwargs,
    )
