"""DDL for dispatch triggers: the constructs and their PostgreSQL compilers.

:class:`CreateDispatchTrigger` renders a :class:`~sa_pgdispatch.triggers.DispatchTrigger`
(its spec's events, ``when`` and options) as ``CREATE TRIGGER ... EXECUTE FUNCTION
pgdispatch.trigger(...)``; option values are escaped SQL string literals, identifiers
are quoted by the dialect's preparer. Other dialects refuse to compile them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import ExecutableDDLElement, Table
from sqlalchemy.sql.compiler import DDLCompiler, SQLCompiler
from sqlalchemy.sql.expression import TableClause

from ..errors import DispatchTriggerError, PgDispatchNotInstalledError
from ..statements import quote_literal
from ._sql import check_identifier

if TYPE_CHECKING:
    from .schema import DispatchTrigger

__all__ = [
    "DEFINER_FUNCTION",
    "TRANSITION_NEW",
    "TRANSITION_OLD",
    "CreateDefinerTriggerFunction",
    "CreateDispatchTrigger",
    "DropDispatchTrigger",
    "check_installed",
    "create_dispatch_trigger_ddl",
]

TRANSITION_NEW = "pgdispatch_new"
TRANSITION_OLD = "pgdispatch_old"
DEFINER_FUNCTION = "pgdispatch_definer_trigger"

def _table_of(
    trigger: DispatchTrigger, table: Table | TableClause | None
) -> Table | TableClause:
    table = table if table is not None else trigger.table
    if table is None:
        raise DispatchTriggerError(f"trigger {trigger.name!r} is not attached to a table")
    return table


class CreateDispatchTrigger(ExecutableDDLElement):
    """``CREATE [OR REPLACE] TRIGGER ...`` for a :class:`DispatchTrigger` (PostgreSQL).

    ``table`` defaults to the table the trigger is attached to; a lightweight
    ``sqlalchemy.table(name, schema=...)`` works too. ``or_replace`` needs PostgreSQL 14.
    ``default_schema`` qualifies an unqualified function on a table without schema
    (default: the dialect's default schema, else ``public``; ``create_all()`` passes
    the connection's ``current_schema()``).
    For ``security="definer"`` run :class:`CreateDefinerTriggerFunction` first (see
    :func:`create_dispatch_trigger_ddl`).
    """

    __visit_name__ = "pgdispatch_create_trigger"

    def __init__(
        self,
        trigger: DispatchTrigger,
        table: Table | TableClause | None = None,
        *,
        or_replace: bool = False,
        default_schema: str | None = None,
    ) -> None:
        self.trigger = trigger
        self.table = _table_of(trigger, table)
        trigger.check_table(self.table)
        self.or_replace = or_replace
        self.default_schema = default_schema

    def _execute_on_connection(self, connection: Connection, *args: Any, **kw: Any) -> Any:
        # interval texts not decided when declared are checked on the server first: a
        # bad one would make every statement that fires the trigger fail
        if connection.dialect.name == "postgresql":
            self.trigger.check_intervals(connection)
        return super()._execute_on_connection(connection, *args, **kw)  # type: ignore[no-untyped-call]


class DropDispatchTrigger(ExecutableDDLElement):
    """``DROP TRIGGER [IF EXISTS] name ON table`` (PostgreSQL)."""

    __visit_name__ = "pgdispatch_drop_trigger"

    def __init__(
        self,
        trigger: DispatchTrigger | str,
        table: Table | TableClause | None = None,
        *,
        if_exists: bool = False,
    ) -> None:
        if isinstance(trigger, str):
            self.name = check_identifier(trigger, "trigger name")
            if table is None:
                raise DispatchTriggerError("DropDispatchTrigger by name needs the table")
            self.table = table
        else:
            self.name = trigger.name
            self.table = _table_of(trigger, table)
        self.if_exists = if_exists


class CreateDefinerTriggerFunction(ExecutableDDLElement):
    """``SELECT pgdispatch.definer_trigger_function('<schema>')``: makes
    ``<schema>.pgdispatch_definer_trigger()`` (``schema=None``: the current schema)."""

    __visit_name__ = "pgdispatch_create_definer_function"

    def __init__(self, schema: str | None) -> None:
        self.schema = None if schema is None else check_identifier(schema, "schema name")


def create_dispatch_trigger_ddl(
    trigger: DispatchTrigger,
    table: Table | TableClause | None = None,
    *,
    or_replace: bool = False,
    default_schema: str | None = None,
) -> list[ExecutableDDLElement]:
    """The statements that create ``trigger``, in order (one statement each: drivers
    using server-side parameters cannot run several at once): the definer function for
    ``security="definer"``, then ``CREATE TRIGGER``."""
    table = _table_of(trigger, table)
    ddl: list[ExecutableDDLElement] = []
    if trigger.security == "definer":
        ddl.append(CreateDefinerTriggerFunction(table.schema))
    ddl.append(
        CreateDispatchTrigger(trigger, table, or_replace=or_replace, default_schema=default_schema)
    )
    return ddl


def _percent_for(double: bool) -> Callable[[str], str]:
    if double:
        return lambda s: s.replace("%", "%%")
    return lambda s: s


def _percent(compiler: DDLCompiler | SQLCompiler) -> Callable[[str], str]:
    return _percent_for(compiler.preparer._double_percents)


def _not_postgresql(element: Any, compiler: Any, **kw: Any) -> str:
    raise sa_exc.CompileError(
        f"{type(element).__name__} is PostgreSQL-only; dialect {compiler.dialect.name!r} "
        "has no dispatch triggers"
    )


for _cls in (CreateDispatchTrigger, DropDispatchTrigger, CreateDefinerTriggerFunction):
    compiles(_cls)(_not_postgresql)


@compiles(CreateDispatchTrigger, "postgresql")
def _compile_create(element: CreateDispatchTrigger, compiler: DDLCompiler, **kw: Any) -> str:
    trigger, table = element.trigger, element.table
    prep = compiler.preparer
    pct = _percent(compiler)
    if element.or_replace:
        version = compiler.dialect.server_version_info
        if version is not None and version < (14,):
            raise sa_exc.CompileError("CREATE OR REPLACE TRIGGER needs PostgreSQL 14 or later")
    events = []
    for ev in trigger.events:
        clause = ev.upper()
        if ev == "update" and trigger.columns:
            clause += " OF " + ", ".join(prep.quote(c) for c in trigger.columns)
        events.append(clause)
    parts = [
        "CREATE OR REPLACE TRIGGER" if element.or_replace else "CREATE TRIGGER",
        prep.quote(trigger.name),
        "AFTER",
        " OR ".join(events),
        "ON",
        prep.format_table(table),
    ]
    if trigger.for_each == "statement":
        if trigger.events == ("delete",):
            parts.append(f"REFERENCING OLD TABLE AS {TRANSITION_OLD}")
        elif trigger.events != ("truncate",):  # (no rows, no transition table)
            parts.append(f"REFERENCING NEW TABLE AS {TRANSITION_NEW}")
        parts.append("FOR EACH STATEMENT")
    else:
        parts.append("FOR EACH ROW")
    when = trigger.when_sql(table)
    if when is not None:
        parts.append(f"WHEN ({pct(when)})")
    if trigger.security == "definer":
        function = DEFINER_FUNCTION
        if table.schema is not None:
            function = f"{prep.quote_schema(table.schema)}.{function}"
    else:
        function = "pgdispatch.trigger"
    default_schema = element.default_schema or compiler.dialect.default_schema_name
    args = trigger.trigger_arguments(table, default_schema=default_schema)
    parts.append(f"EXECUTE FUNCTION {function}({', '.join(pct(quote_literal(a)) for a in args)})")
    return " ".join(parts)


@compiles(DropDispatchTrigger, "postgresql")
def _compile_drop(element: DropDispatchTrigger, compiler: DDLCompiler, **kw: Any) -> str:
    prep = compiler.preparer
    exists = " IF EXISTS" if element.if_exists else ""
    table = prep.format_table(element.table)
    return f"DROP TRIGGER{exists} {prep.quote(element.name)} ON {table}"


@compiles(CreateDefinerTriggerFunction, "postgresql")
def _compile_definer(
    element: CreateDefinerTriggerFunction, compiler: DDLCompiler, **kw: Any
) -> str:
    schema = "current_schema()" if element.schema is None else quote_literal(element.schema)
    return f"SELECT pgdispatch.definer_trigger_function({_percent(compiler)(schema)})"


def check_installed(conn: Connection) -> None:
    """Raise :class:`PgDispatchNotInstalledError` unless ``pgdispatch.trigger()`` exists."""
    if conn.scalar(text("SELECT to_regproc('pgdispatch.trigger') IS NOT NULL")) is not True:
        raise PgDispatchNotInstalledError(
            "pgdispatch is not installed in this database (pgdispatch.trigger() is missing): "
            "install it (sa_pgdispatch.install.install) before creating dispatch triggers"
        )

