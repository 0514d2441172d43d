"""The schema items: :class:`DispatchTrigger` (declared) and :class:`DispatchTriggerInfo`
(reflected), plus :class:`RowReference` for ``NEW`` / ``OLD`` in ``when`` expressions.

A :class:`DispatchTrigger` is a name plus a :class:`~sa_pgdispatch.triggers.spec.DispatchSpec`
(what it does); attached to a :class:`~sqlalchemy.schema.Table` it is created right after
the table by ``metadata.create_all()`` and dropped before it by ``drop_all()``. A
:class:`DispatchTriggerInfo` records a trigger as the database holds it (normalised for
comparison); :meth:`DispatchTrigger.info_for` makes the same record from a declaration.
Both live here because each converts into the other (``info_for`` / ``to_trigger``): in
two modules they would import each other, which the package forbids. That, and the
``when`` expression rewriting (``NEW`` / ``OLD``) the trigger renders, is why this module
is over 500 lines.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import MetaData, SchemaItem, Table
from sqlalchemy.sql import elements, visitors
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import TableClause
from sqlalchemy.sql.visitors import InternalTraversal

from ..errors import DispatchTriggerError
from ..statements import RENDER_DIALECT
from ._sql import check_identifier, check_when_text
from .ddl import DropDispatchTrigger, check_installed, create_dispatch_trigger_ddl
from .normalise import current_schema, normalise_interval, normalise_when
from .spec import (
    INTERVAL_OPTIONS,
    DispatchOptions,
    DispatchSpec,
    InvalidSpec,
    WhenArg,
    record_values,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack: Python 3.11

__all__ = [
    "INFO_KEY",
    "DispatchTrigger",
    "DispatchTriggerInfo",
    "RowReference",
    "definitions_equal",
    "dispatch_triggers",
    "metadata_dispatch_triggers",
    "new_row",
    "old_row",
]

INFO_KEY = "pgdispatch_triggers"
"""Key of ``Table.info`` holding the table's :class:`DispatchTrigger` objects."""


# ---------------------------------------------------------------------------------------
# NEW / OLD references in `when` expressions


class RowReference(elements.ColumnClause[Any]):
    """``NEW.<column>`` or ``OLD.<column>`` in a trigger's WHEN condition."""

    __visit_name__ = "pgdispatch_row_reference"
    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012 - SQLAlchemy's convention
        *elements.ColumnClause._traverse_internals,
        ("row", InternalTraversal.dp_string),
    ]

    def __init__(self, row: Literal["NEW", "OLD"], name: str, type_: Any = None) -> None:
        if row not in ("NEW", "OLD"):
            raise DispatchTriggerError(f"row must be NEW or OLD, got {row!r}")
        super().__init__(name, type_=type_)
        self.row = row


@compiles(RowReference)
def _compile_row_reference(element: RowReference, compiler: SQLCompiler, **kw: Any) -> str:
    return f"{element.row}.{compiler.preparer.quote(element.name)}"


def _row_reference(
    row: Literal["NEW", "OLD"], column: str | elements.ColumnElement[Any]
) -> RowReference:
    if isinstance(column, str):
        return RowReference(row, column)
    if hasattr(column, "__clause_element__"):
        column = column.__clause_element__()
    if isinstance(column, elements.ColumnClause) and not column.is_literal:
        return RowReference(row, column.name, column.type)
    raise DispatchTriggerError(
        f"new_row()/old_row() take a column or a column name, got {column!r}"
    )


def new_row(column: str | elements.ColumnElement[Any]) -> RowReference:
    """``NEW.column`` in a ``when`` expression (the row after INSERT / UPDATE)."""
    return _row_reference("NEW", column)


def old_row(column: str | elements.ColumnElement[Any]) -> RowReference:
    """``OLD.column`` in a ``when`` expression (the row before UPDATE / DELETE)."""
    return _row_reference("OLD", column)


# ---------------------------------------------------------------------------------------
# the reflected record


#: the definition's fields as a reflected record shows them (``events``, ``delay``, ...)
_DEFINITION_FIELDS = frozenset(record_values(DispatchSpec("f").arguments()))


@dataclasses.dataclass(frozen=True)
class DispatchTriggerInfo:
    """A dispatch trigger as the database holds it, normalised for comparison: its name
    and table, a :class:`DispatchSpec`, and what reflection adds.

    ``schema`` is the table's actual schema (``None`` only for a definition normalised
    without a connection on a table without schema). ``spec`` holds the definition:
    ``function`` canonical (``schema.fn``, quoted only where needed), ``when`` and the
    intervals as PostgreSQL prints them back when normalised through a connection (else
    as rendered). When the spec refuses what the catalog holds (a trigger made by hand,
    or by an older sa_pgdispatch: a negative delay, a priority that is not an int, ...)
    ``spec`` is None and ``invalid`` (:class:`InvalidSpec`) keeps the arguments and why.
    ``timing`` (``after``) and ``unknown_options`` (``key=value`` arguments
    pgdispatch.trigger() does not know) are what a spec cannot express at all.
    :meth:`to_spec` is the one way from this record to a usable spec.

    The definition's fields also read as attributes, as :meth:`values` shows them, valid
    or not: ``info.function``, ``info.events``, ``info.columns`` (``()`` when none),
    ``info.when``, ``info.delay``, ``info.priority`` (decimal text, as
    ``pgdispatch.trigger()`` receives it), ...
    """

    name: str
    table_name: str
    schema: str | None
    spec: DispatchSpec | None
    timing: str = "after"
    unknown_options: tuple[str, ...] = ()
    invalid: InvalidSpec | None = None

    def __post_init__(self) -> None:
        if (self.spec is None) == (self.invalid is None):
            raise DispatchTriggerError(
                f"trigger {self.name!r}: a DispatchTriggerInfo holds exactly one of spec "
                "and invalid"
            )

    @classmethod
    def read(
        cls,
        name: str,
        table_name: str,
        schema: str | None,
        arguments: Mapping[str, Any],
        *,
        timing: str = "after",
        unknown_options: tuple[str, ...] = (),
    ) -> DispatchTriggerInfo:
        """The record of keyword arguments read from the catalog (``function``
        included): a spec when they make one, else an :class:`InvalidSpec`."""
        read = DispatchSpec.read(arguments, trigger_name=name)
        return cls(
            name,
            table_name,
            schema,
            read if isinstance(read, DispatchSpec) else None,
            timing=timing,
            unknown_options=unknown_options,
            invalid=read if isinstance(read, InvalidSpec) else None,
        )

    @property
    def definition(self) -> DispatchSpec | InvalidSpec:
        """The spec, or the arguments it refused (what a migration carries)."""
        definition = self.spec if self.spec is not None else self.invalid
        assert definition is not None  # __post_init__
        return definition

    def values(self) -> dict[str, Any]:
        """The fields to compare, by name: ``name``, ``table_name``, ``schema``, the
        definition's (``function``, ``events``, ``columns``, ... ints as decimal text:
        :func:`~sa_pgdispatch.triggers.spec.record_values`), ``timing``,
        ``unknown_options``."""
        return {
            "name": self.name,
            "table_name": self.table_name,
            "schema": self.schema,
            **record_values(self.definition.arguments()),
            "timing": self.timing,
            "unknown_options": self.unknown_options,
        }

    def __getattr__(self, name: str) -> Any:
        # only for names that are not attributes: the definition's fields
        if name not in _DEFINITION_FIELDS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return record_values(self.definition.arguments()).get(name)

    def diff(self, other: DispatchTriggerInfo) -> dict[str, tuple[Any, Any]]:
        """Fields that differ: ``{field: (self's, other's)}`` (see :meth:`values`)."""
        mine, theirs = self.values(), other.values()
        return {
            key: (mine.get(key), theirs.get(key))
            for key in {**mine, **theirs}
            if mine.get(key) != theirs.get(key)
        }

    def to_spec(self) -> DispatchSpec:
        """The :class:`DispatchSpec` of this trigger (``when`` as SQL text); raises
        :class:`DispatchTriggerError` when none can express it (another timing, unknown
        options), or the refusal of an invalid definition."""
        if self.timing != "after" or self.unknown_options:
            raise DispatchTriggerError(
                f"trigger {self.name!r} cannot be expressed as a DispatchTrigger "
                f"(timing {self.timing}, unknown options {self.unknown_options})"
            )
        if self.invalid is not None:
            return self.invalid.to_spec(self.name)  # raises the refusal
        return self.definition.to_spec()

    def to_trigger(self) -> DispatchTrigger:
        """A (detached) :class:`DispatchTrigger` with this definition."""
        return DispatchTrigger.from_spec(self.name, self.to_spec())


# ---------------------------------------------------------------------------------------
# the schema item


class DispatchTrigger(SchemaItem):
    """An ``AFTER`` trigger that dispatches ``function`` (a ``schema.fn(jsonb)``) as a job.

    :param name: the trigger name (at most 63 bytes; quoted as needed).
    :param function: ``"schema.fn"`` or ``"fn"`` (then qualified with the table's schema,
        else the connection's default schema), parts optionally double-quoted.
    :param on: events among ``"insert"``, ``"update"``, ``"delete"`` (a string or a
        sequence), or ``"truncate"`` with ``for_each="statement"`` (one job per
        ``TRUNCATE``, payload ``[]``: it has no rows to pass).
    :param columns: ``UPDATE OF`` columns (names or Column objects; needs ``"update"``).
    :param when: a WHEN condition: SQL text (``"NEW.status <> OLD.status"``), a SQLAlchemy
        expression over the table's columns, or a callable taking the table and returning
        one. Columns render as ``NEW.col`` (``OLD.col`` for a delete-only trigger); use
        :func:`new_row` / :func:`old_row` to choose explicitly.
    :param for_each: ``"row"`` (one job per row, payload ``to_jsonb(NEW/OLD)``) or
        ``"statement"`` (one job per statement, payload the jsonb array of the rows, read
        from the transition table ``pgdispatch_new`` / ``pgdispatch_old``; one event only,
        no ``columns``, no ``when``).
    :param delay, timeout: a ``timedelta`` or interval text.
    :param priority, max_attempts: ints.
    :param security: ``"invoker"`` (the job runs as the role firing the trigger) or
        ``"definer"`` (as the owner of ``<schema>.pgdispatch_definer_trigger()``, made by
        ``pgdispatch.definer_trigger_function('<schema>')`` before the trigger).

    The arguments but ``name`` make its :attr:`spec` (:class:`DispatchSpec`, validated
    there; the keywords are typed by :class:`~sa_pgdispatch.triggers.spec.DispatchOptions`);
    ``events``, ``columns``, ``when``, ... read from it.
    """

    __visit_name__ = "pgdispatch_trigger"

    def __init__(self, name: str, function: str, **options: Unpack[DispatchOptions]) -> None:
        check_identifier(name, "trigger name")
        self._init(name, DispatchSpec(function, trigger_name=name, **options))

    def _init(self, name: str, spec: DispatchSpec) -> None:
        self.name = name
        self.spec = spec
        self.table: Table | None = None
        if isinstance(spec.when, elements.ColumnElement):
            # expressions are checked now as far as possible (without the table)
            self._when_expression(None)

    @classmethod
    def from_spec(cls, name: str, spec: DispatchSpec) -> DispatchTrigger:
        """A (detached) trigger named ``name`` that does what ``spec`` says."""
        trigger = cls.__new__(cls)
        trigger._init(check_identifier(name, "trigger name"), spec)
        return trigger

    def __repr__(self) -> str:
        return (
            f"DispatchTrigger({self.name!r}, {self.function!r}, on={self.events!r}, "
            f"for_each={self.for_each!r})"
        )

    # -- the spec's values -------------------------------------------------------------

    @property
    def function(self) -> str:
        """The function as given, canonically quoted (may be unqualified)."""
        return self.spec.function

    @property
    def function_schema(self) -> str | None:
        return self.spec.function_schema

    @property
    def function_name(self) -> str:
        return self.spec.function_name

    @property
    def events(self) -> tuple[str, ...]:
        return self.spec.events

    @property
    def columns(self) -> tuple[str, ...]:
        return self.spec.columns

    @property
    def when(self) -> WhenArg | None:
        return self.spec.when

    @property
    def for_each(self) -> Literal["row", "statement"]:
        return self.spec.for_each

    @property
    def delay(self) -> str | None:
        return self.spec.delay

    @property
    def priority(self) -> int | None:
        return self.spec.priority

    @property
    def max_attempts(self) -> int | None:
        return self.spec.max_attempts

    @property
    def timeout(self) -> str | None:
        return self.spec.timeout

    @property
    def security(self) -> Literal["invoker", "definer"]:
        return self.spec.security

    @property
    def unchecked_intervals(self) -> tuple[tuple[str, str], ...]:
        """Interval texts too exotic to decide offline: ``(option, text)``, checked
        through the server before the trigger's DDL runs (:meth:`check_intervals`)."""
        return self.spec.unchecked_intervals

    # -- attachment --------------------------------------------------------------------

    def _set_parent(self, parent: Any, **kw: Any) -> None:
        if not isinstance(parent, Table):
            raise DispatchTriggerError(f"a DispatchTrigger attaches to a Table, not {parent!r}")
        if self.table is not None:
            if self.table is parent:
                return
            raise DispatchTriggerError(
                f"trigger {self.name!r} is already attached to table {self.table.fullname!r}"
            )
        for other in dispatch_triggers(parent):
            if other.name == self.name:
                raise DispatchTriggerError(
                    f"table {parent.fullname!r} already has a dispatch trigger {self.name!r}"
                )
        self.check_table(parent)
        self.table = parent
        parent.info.setdefault(INFO_KEY, []).append(self)
        event.listen(parent, "after_create", self._after_create)
        event.listen(parent, "before_drop", self._before_drop)

    def check_table(self, table: Table | TableClause) -> None:
        """Check the trigger against ``table``: its ``UPDATE OF`` columns exist (when the
        table lists columns), its ``when`` expression is over that table."""
        known = {c.name for c in table.columns}
        if known:
            missing = [c for c in self.columns if c not in known]
            if missing:
                raise DispatchTriggerError(
                    f"trigger {self.name!r}: table {table.name!r} has no column(s) "
                    f"{', '.join(missing)}"
                )
        if self.when is not None and not isinstance(self.when, str):
            self._when_expression(table)

    def check_intervals(self, conn: Connection) -> None:
        """Check through the server the interval texts that could not be decided when
        the trigger was declared (:attr:`unchecked_intervals`); raises
        :class:`IntervalOptionError`. The DDL constructs call it before they run."""
        self.spec.check_intervals(conn)

    def _after_create(self, target: Table, connection: Connection, **kw: Any) -> None:
        if connection.dialect.name != "postgresql":
            return
        check_installed(connection)
        default_schema = None if target.schema else current_schema(connection)
        for ddl in create_dispatch_trigger_ddl(self, target, default_schema=default_schema):
            connection.execute(ddl)

    def _before_drop(self, target: Table, connection: Connection, **kw: Any) -> None:
        if connection.dialect.name != "postgresql":
            return
        connection.execute(DropDispatchTrigger(self, target, if_exists=True))

    # -- rendering ---------------------------------------------------------------------


    def _when_expression(self, table: Table | TableClause | None) -> elements.ColumnElement[Any]:
        assert self.when is not None
        assert not isinstance(self.when, str)
        if isinstance(self.when, elements.ColumnElement):
            expr = self.when
        else:
            if table is None:
                raise DispatchTriggerError(
                    f"trigger {self.name!r}: a callable when needs the table"
                )
            expr = self.when(table)
            if hasattr(expr, "__clause_element__"):
                expr = expr.__clause_element__()
            if not isinstance(expr, elements.ColumnElement):
                raise DispatchTriggerError(
                    f"trigger {self.name!r}: the when callable returned {expr!r}, "
                    "not a SQL expression"
                )
        default_row: Literal["NEW", "OLD"] | None
        if self.events == ("delete",):
            default_row = "OLD"
        elif "delete" in self.events:
            default_row = None  # ambiguous: NEW does not exist for DELETE
        else:
            default_row = "NEW"
        rows_used: set[str] = set()

        def replace(element: Any, **kw: Any) -> Any:
            if isinstance(element, RowReference):
                rows_used.add(element.row)
                return None
            if isinstance(element, elements.ColumnClause) and not element.is_literal:
                owner = element.table
                if (
                    owner is not None
                    and table is not None
                    and owner is not table
                    and (
                        getattr(owner, "name", None) != table.name
                        or getattr(owner, "schema", None) != getattr(table, "schema", None)
                    )
                ):
                    raise DispatchTriggerError(
                        f"trigger {self.name!r}: when refers to column {element.name!r} of "
                        f"another table ({getattr(owner, 'name', owner)!r})"
                    )
                if default_row is None:
                    raise DispatchTriggerError(
                        f"trigger {self.name!r}: when refers to column {element.name!r} in a "
                        "trigger on delete and other events: use new_row()/old_row()"
                    )
                rows_used.add(default_row)
                return RowReference(default_row, element.name, element.type)
            return None

        no_options: dict[str, Any] = {}
        replaced = visitors.replacement_traverse(expr, no_options, replace)
        if "OLD" in rows_used and "insert" in self.events:
            raise DispatchTriggerError(
                f"trigger {self.name!r}: when uses OLD, which INSERT triggers do not have"
            )
        if "NEW" in rows_used and "delete" in self.events:
            raise DispatchTriggerError(
                f"trigger {self.name!r}: when uses NEW, which DELETE triggers do not have"
            )
        return replaced

    def when_sql(self, table: Table | TableClause | None = None) -> str | None:
        """The WHEN condition as SQL text (values rendered inline), or None."""
        if self.when is None:
            return None
        if isinstance(self.when, str):
            return self.when
        expr = self._when_expression(table if table is not None else self.table)
        try:
            compiled = expr.compile(
                dialect=RENDER_DIALECT, compile_kwargs={"literal_binds": True}
            )
        except sa_exc.CompileError as err:
            raise DispatchTriggerError(f"trigger {self.name!r}: cannot render when: {err}") from err
        return check_when_text(str(compiled))

    def qualified_function(
        self, table: Table | TableClause | None = None, *, default_schema: str | None = None
    ) -> str:
        """The side-effect function, schema-qualified: its own schema, else the table's,
        else ``default_schema``, else ``public``."""
        table = table if table is not None else self.table
        return self.spec.qualified_function(
            (table.schema if table is not None else None) or default_schema
        )

    def trigger_arguments(
        self, table: Table | TableClause | None = None, *, default_schema: str | None = None
    ) -> list[str]:
        """The ``TG_ARGV`` strings: the function, then the options."""
        return [self.qualified_function(table, default_schema=default_schema),
                *self.spec.options()]

    # -- comparison --------------------------------------------------------------------

    def info_for(
        self, table: Table | TableClause | None = None, conn: Connection | None = None
    ) -> DispatchTriggerInfo:
        """This definition as a :class:`DispatchTriggerInfo`.

        With ``conn``, the values PostgreSQL normalises are normalised through the server
        exactly as :func:`reflect_dispatch_triggers` reads them (intervals, the WHEN
        condition - which needs the table to exist; it is deparsed on a temporary copy
        made with ``LIKE`` inside a savepoint), and a table without schema gets the
        connection's ``current_schema()`` (where ``create_all()`` puts it).
        """
        table = table if table is not None else self.table
        if table is None:
            raise DispatchTriggerError(f"trigger {self.name!r} is not attached to a table")
        self.check_table(table)
        default_schema = None
        if conn is not None and not table.schema:
            default_schema = current_schema(conn)
        arguments = {
            **self.spec_for(table).arguments(),
            "function": self.qualified_function(table, default_schema=default_schema),
        }
        if conn is not None:
            for option in INTERVAL_OPTIONS:
                arguments[option] = normalise_interval(conn, arguments[option])
            if arguments["when"] is not None:
                arguments["when"] = normalise_when(conn, self.spec, table, arguments["when"])
        return DispatchTriggerInfo.read(
            self.name, table.name, table.schema or default_schema, arguments
        )

    def spec_for(self, table: Table | TableClause | None = None) -> DispatchSpec:
        """The spec with ``when`` as SQL text (rendered on ``table``, default the
        trigger's own): what a migration writes."""
        if self.when is None or isinstance(self.when, str):
            return self.spec
        return self.spec.replace(when=self.when_sql(table), trigger_name=self.name)


def dispatch_triggers(table: Table) -> tuple[DispatchTrigger, ...]:
    """The dispatch triggers declared on ``table``."""
    return tuple(t for t in table.info.get(INFO_KEY, ()) if t.table is table)


def metadata_dispatch_triggers(metadata: MetaData) -> list[tuple[Table, DispatchTrigger]]:
    """All ``(table, trigger)`` pairs of ``metadata``, tables in dependency order."""
    return [(t, trig) for t in metadata.sorted_tables for trig in dispatch_triggers(t)]


def definitions_equal(
    conn: Connection,
    trigger: DispatchTrigger,
    reflected: DispatchTriggerInfo,
    table: Table | TableClause | None = None,
) -> bool:
    """Whether ``trigger`` (on ``table``, default its own) is what ``reflected`` is,
    both normalised through ``conn``."""
    return trigger.info_for(table, conn) == reflected
