"""What a dispatch trigger does, apart from its name and table: :class:`DispatchSpec`.

One frozen, validated value type, shared by the schema item
(:class:`~sa_pgdispatch.triggers.DispatchTrigger` is a name plus a spec), the reflected
record (:class:`~sa_pgdispatch.triggers.DispatchTriggerInfo`: name, table, a spec, and
what reflection adds) and the Alembic operations (they carry one). Every option is
validated here, once: identifiers, events and their rules (``truncate`` and
statement-level triggers), ``when`` text, the intervals (as PostgreSQL reads them,
``_values.py``; text too exotic to decide offline is checked through the server before
the DDL runs), the ints.

A definition read from a database can be one the spec refuses (a trigger made by hand,
or by an older sa_pgdispatch that let a negative delay through): :meth:`DispatchSpec.read`
then returns an :class:`InvalidSpec` - the same keyword arguments, unvalidated, and why
they were refused - which can be compared, rendered into a migration and dropped, but
never made into a trigger.

Adding an option touches this module (the constructor, :class:`DispatchOptions`,
``arguments()`` and, for a ``key=value`` argument of ``pgdispatch.trigger()``,
:data:`OPTIONS`), its rendering (``ddl.py``, only for an option that is not a
``key=value`` argument) and its reflection (``reflection.py``, likewise); the schema
item, the reflected record, the Alembic operations and autogenerate take the keyword
arguments as they come.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeAlias, TypedDict

from sqlalchemy.engine import Connection
from sqlalchemy.schema import Column
from sqlalchemy.sql import elements

from .._interval import IntervalArg
from ..errors import DispatchTriggerError, IntervalOptionError
from ._sql import check_identifier, check_when_text, format_ident, parse_function_name, qualified
from ._values import INT32, check_interval_on_server, int_option, interval_option

__all__ = [
    "EVENTS",
    "INTERVAL_OPTIONS",
    "INT_OPTIONS",
    "OPTIONS",
    "DispatchOptions",
    "DispatchSpec",
    "IntervalArg",
    "InvalidSpec",
    "WhenArg",
    "check_interval_on_server",
    "record_values",
]

EVENTS = ("insert", "update", "delete", "truncate")
"""Supported events, in their canonical order (``truncate``: statement level only)."""

OPTIONS = ("delay", "priority", "max_attempts", "timeout")
"""The options passed to ``pgdispatch.trigger()`` as ``key=value`` arguments, in order."""

INTERVAL_OPTIONS = ("delay", "timeout")
"""The options that are intervals (normalised through the server for comparison)."""

INT_OPTIONS = ("priority", "max_attempts")
"""The options that are ints (read back from their ``key=value`` text)."""

WhenArg: TypeAlias = (
    "str | elements.ColumnElement[Any] | Callable[[Any], elements.ColumnElement[Any]]"
)

# ---------------------------------------------------------------------------------------
# the spec


class DispatchOptions(TypedDict, total=False):
    """The keyword arguments of :class:`DispatchSpec` but ``function``: what
    :class:`~sa_pgdispatch.triggers.DispatchTrigger` and ``op.create_dispatch_trigger`` /
    ``op.replace_dispatch_trigger`` pass on (``**options: Unpack[DispatchOptions]``)."""

    on: str | Sequence[str]
    columns: str | Sequence[str | Column[Any]] | None
    when: WhenArg | None
    for_each: Literal["row", "statement"]
    delay: IntervalArg | None
    priority: int | None
    max_attempts: int | None
    timeout: IntervalArg | None
    security: Literal["invoker", "definer"]


def _events(on: str | Sequence[str], where: str) -> tuple[str, ...]:
    events = [on] if isinstance(on, str) else list(on)
    if not events:
        raise DispatchTriggerError(f"{where}: `on` needs at least one event")
    lowered: list[str] = []
    for ev in events:
        if not isinstance(ev, str) or ev.lower() not in EVENTS:
            raise DispatchTriggerError(
                f"{where}: unknown event {ev!r} (expected insert, update, delete or truncate)"
            )
        if ev.lower() in lowered:
            raise DispatchTriggerError(f"{where}: event {ev!r} given twice")
        lowered.append(ev.lower())
    return tuple(e for e in EVENTS if e in lowered)


def _columns(
    columns: str | Sequence[str | Column[Any]] | None, events: tuple[str, ...], where: str
) -> tuple[str, ...]:
    if columns is None:
        return ()
    if isinstance(columns, str):
        columns = [columns]
    if "update" not in events:
        raise DispatchTriggerError(f"{where}: columns (UPDATE OF) need the 'update' event")
    names: list[str] = []
    for col in columns:
        col_name = col if isinstance(col, str) else getattr(col, "name", None)
        if not isinstance(col_name, str):
            raise DispatchTriggerError(
                f"{where}: columns must be names or Column objects, got {col!r}"
            )
        check_identifier(col_name, "column name")
        if col_name in names:
            raise DispatchTriggerError(f"{where}: column {col_name!r} given twice")
        names.append(col_name)
    if not names:
        raise DispatchTriggerError(f"{where}: columns is empty")
    return tuple(sorted(names))


@dataclasses.dataclass(frozen=True, init=False, eq=False)
class DispatchSpec:
    """What a dispatch trigger does: its function, events and options, validated.

    The constructor takes the keyword arguments of
    :class:`~sa_pgdispatch.triggers.DispatchTrigger` and ``op.create_dispatch_trigger``
    (``on``, ``columns``, ``when``, ...; see there) and stores them normalised:
    ``function`` canonically quoted (qualified only if given so), ``events`` in the order
    insert, update, delete, truncate, ``columns`` sorted, ``delay`` / ``timeout`` as
    interval text, ``priority`` / ``max_attempts`` as ints. ``when`` text is checked; a
    SQLAlchemy expression (or a callable) is kept as given and checked against the table
    by the trigger that renders it. ``trigger_name`` only names the trigger in error
    messages. Two specs are equal when their normalised values are.
    """

    function: str
    events: tuple[str, ...]
    columns: tuple[str, ...]
    when: WhenArg | None
    for_each: Literal["row", "statement"]
    delay: str | None
    priority: int | None
    max_attempts: int | None
    timeout: str | None
    security: Literal["invoker", "definer"]
    #: the function's schema as given (None: unqualified) and its name
    function_schema: str | None = dataclasses.field(repr=False)
    function_name: str = dataclasses.field(repr=False)
    #: interval texts too exotic to decide offline: ``(option, text)``, checked through
    #: the server before the trigger's DDL runs (:meth:`check_intervals`)
    unchecked_intervals: tuple[tuple[str, str], ...] = dataclasses.field(repr=False)

    def __init__(
        self,
        function: str,
        *,
        on: str | Sequence[str] = ("insert",),
        columns: str | Sequence[str | Column[Any]] | None = None,
        when: WhenArg | None = None,
        for_each: Literal["row", "statement"] = "row",
        delay: IntervalArg | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        timeout: IntervalArg | None = None,
        security: Literal["invoker", "definer"] = "invoker",
        trigger_name: str | None = None,
    ) -> None:
        where = "dispatch trigger" if trigger_name is None else f"trigger {trigger_name!r}"
        function_schema, function_name = parse_function_name(function)
        events = _events(on, where)
        if for_each not in ("row", "statement"):
            raise DispatchTriggerError(
                f"{where}: for_each must be 'row' or 'statement', got {for_each!r}"
            )
        if "truncate" in events and for_each != "statement":
            raise DispatchTriggerError(
                f"{where}: truncate needs for_each='statement' (PostgreSQL fires "
                "TRUNCATE triggers once per statement)"
            )
        column_names = _columns(columns, events, where)
        if for_each == "statement":
            if len(events) != 1:
                raise DispatchTriggerError(
                    f"{where}: a statement-level trigger takes exactly one event "
                    "(PostgreSQL allows transition tables on single-event triggers only)"
                )
            if column_names:
                raise DispatchTriggerError(
                    f"{where}: a statement-level trigger cannot have columns "
                    "(PostgreSQL allows no column list with transition tables)"
                )
            if when is not None:
                raise DispatchTriggerError(
                    f"{where}: a statement-level trigger cannot have a when condition"
                )
        if isinstance(when, str):
            when = check_when_text(when)
        elif not (when is None or callable(when) or isinstance(when, elements.ColumnElement)):
            raise DispatchTriggerError(
                f"{where}: when must be SQL text, a SQL expression or a callable, got {when!r}"
            )
        delay_text, delay_known = interval_option(delay, "delay", positive=False)
        timeout_text, timeout_known = interval_option(timeout, "timeout", positive=True)
        if security not in ("invoker", "definer"):
            raise DispatchTriggerError(
                f"{where}: security must be 'invoker' or 'definer', got {security!r}"
            )
        values: dict[str, Any] = {
            "function": (
                format_ident(function_name)
                if function_schema is None
                else qualified(function_schema, function_name)
            ),
            "events": events,
            "columns": column_names,
            "when": when,
            "for_each": for_each,
            "delay": delay_text,
            "priority": int_option(priority, "priority", minimum=INT32[0]),
            "max_attempts": int_option(max_attempts, "max_attempts", minimum=1),
            "timeout": timeout_text,
            "security": security,
            "function_schema": function_schema,
            "function_name": function_name,
            "unchecked_intervals": tuple(
                (option, value)
                for option, value, known in (
                    ("delay", delay_text, delay_known),
                    ("timeout", timeout_text, timeout_known),
                )
                if value is not None and not known
            ),
        }
        for key, value in values.items():
            object.__setattr__(self, key, value)

    # -- value semantics ---------------------------------------------------------------

    def _key(self) -> tuple[Any, ...]:
        return tuple(self.arguments().values())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DispatchSpec):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def on(self) -> tuple[str, ...]:
        """The events (the constructor's keyword)."""
        return self.events

    def arguments(self) -> dict[str, Any]:
        """The constructor's keyword arguments that make this spec (``function`` first;
        ``columns`` None when there are none)."""
        return {
            "function": self.function,
            "on": self.events,
            "columns": self.columns or None,
            "when": self.when,
            "for_each": self.for_each,
            "delay": self.delay,
            "priority": self.priority,
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
            "security": self.security,
        }

    def non_default_arguments(self) -> dict[str, Any]:
        """The keywords (not ``function``) whose value is not the default, in order."""
        return _non_default(self.arguments())

    def mapping(self) -> dict[str, Any]:
        """``function`` and the non-default keywords: the definition as a migration
        writes it (``drop_dispatch_trigger(**...)``, ``existing={...}``)."""
        return {"function": self.function, **self.non_default_arguments()}

    def replace(self, *, trigger_name: str | None = None, **changes: Any) -> DispatchSpec:
        """A spec with some arguments changed (validated again)."""
        return type(self)(**{**self.arguments(), **changes}, trigger_name=trigger_name)

    def to_spec(self, trigger_name: str | None = None) -> DispatchSpec:
        """This spec (already valid; :meth:`InvalidSpec.to_spec` validates again)."""
        return self

    @classmethod
    def read(
        cls, arguments: Mapping[str, Any], *, trigger_name: str | None = None
    ) -> DispatchSpec | InvalidSpec:
        """The spec of keyword arguments read from a database (``function`` included),
        or, when the spec refuses them, an :class:`InvalidSpec` that keeps them and why."""
        try:
            return cls(**arguments, trigger_name=trigger_name)
        except DispatchTriggerError as exc:
            return InvalidSpec.of(arguments, exc)

    # -- rendering ---------------------------------------------------------------------

    def qualified_function(self, schema: str | None) -> str:
        """The function, schema-qualified: its own schema, else ``schema``, else
        ``public``."""
        return qualified(self.function_schema or schema or "public", self.function_name)

    def options(self) -> list[str]:
        """The ``key=value`` arguments of ``pgdispatch.trigger()`` after the function."""
        return [
            f"{key}={value}"
            for key in OPTIONS
            if (value := getattr(self, key)) is not None
        ]

    def check_intervals(self, conn: Connection) -> None:
        """Check through the server the interval texts that could not be decided offline
        (:attr:`unchecked_intervals`); raises :class:`IntervalOptionError`."""
        for option, value in self.unchecked_intervals:
            check_interval_on_server(conn, value, option, positive=option == "timeout")


# ---------------------------------------------------------------------------------------
# what a spec refuses


@dataclasses.dataclass(frozen=True)
class InvalidSpec:
    """The keyword arguments of a :class:`DispatchSpec` that it refuses, and why.

    Made by :meth:`DispatchSpec.read` for a definition read from a database (a trigger
    made by hand, or by an older sa_pgdispatch: a negative delay, an option that is not
    an int, a statement-level trigger with a WHEN condition, ...), and by the Alembic
    operations for the definition a drop or a replace carries only so that it can be
    reversed. It compares (two are equal when their arguments are) and renders into a
    migration like a spec (:meth:`arguments`, :meth:`mapping`); :meth:`to_spec`
    validates again, so it raises the refusal, never makes a trigger.
    """

    #: the keyword arguments, ``function`` first (sequences as tuples)
    items: tuple[tuple[str, Any], ...]
    #: why the spec refused them
    error: str = dataclasses.field(compare=False)
    #: the ``delay`` / ``timeout`` at fault when that is the reason (an
    #: :class:`IntervalOptionError`: the trigger fails each time it fires), else None
    option: str | None = dataclasses.field(default=None, compare=False)

    @classmethod
    def of(cls, arguments: Mapping[str, Any], error: DispatchTriggerError) -> InvalidSpec:
        return cls(
            tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in arguments.items()),
            str(error),
            error.option if isinstance(error, IntervalOptionError) else None,
        )

    @property
    def function(self) -> Any:
        return self.arguments().get("function")

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments, as :meth:`DispatchSpec.arguments` gives a spec's."""
        return dict(self.items)

    def non_default_arguments(self) -> dict[str, Any]:
        """The keywords (not ``function``) whose value is not the default, in order."""
        return _non_default(self.arguments())

    def mapping(self) -> dict[str, Any]:
        """``function`` and the non-default keywords (see :meth:`DispatchSpec.mapping`)."""
        return {"function": self.function, **self.non_default_arguments()}

    def without(self, option: str) -> DispatchSpec | InvalidSpec:
        """These arguments with ``option`` left out (None), read again."""
        return DispatchSpec.read({**self.arguments(), option: None})

    def to_spec(self, trigger_name: str | None = None) -> DispatchSpec:
        """Validate the arguments again: raises the refusal (a
        :class:`DispatchTriggerError`) unless they have become valid."""
        return DispatchSpec(**self.arguments(), trigger_name=trigger_name)


#: the keyword arguments' defaults (and ``function``, never compared)
_DEFAULTS: dict[str, Any] = DispatchSpec("f").arguments()


def _non_default(arguments: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in arguments.items()
        if k != "function" and (k not in _DEFAULTS or _DEFAULTS[k] != v)
    }


def record_values(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments as the fields of a reflected record show them (what
    :meth:`DispatchTriggerInfo.diff <sa_pgdispatch.triggers.DispatchTriggerInfo.diff>`
    compares): ``events`` for ``on``, ``columns`` ``()`` when none, ints as decimal text
    (as ``pgdispatch.trigger()`` receives them)."""
    values: dict[str, Any] = {}
    for key, value in arguments.items():
        if key == "on":
            key, value = "events", (value,) if isinstance(value, str) else tuple(value)
        elif key == "columns":
            value = () if value is None else tuple(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        values[key] = value
    return values
