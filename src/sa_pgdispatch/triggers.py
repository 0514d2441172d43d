"""Declarative dispatch triggers: a schema item, DDL constructs and introspection.

A :class:`DispatchTrigger` in ``__table_args__`` (or as an argument of
:class:`~sqlalchemy.schema.Table`) declares an ``AFTER`` trigger that dispatches a
side-effect function through ``pgdispatch.trigger()`` (argument format:
``docs/architecture.md``)::

    class Profile(Base):
        __tablename__ = "profiles"
        __table_args__ = (
            DispatchTrigger("profiles_welcome", "app.send_welcome",
                            on=("insert",), delay=timedelta(seconds=5)),
            {"schema": "app"},
        )

``metadata.create_all()`` creates the trigger right after its table (it first checks
that pgdispatch is installed), ``drop_all()`` drops it before the table. The DDL is
also available as :class:`CreateDispatchTrigger` / :class:`DropDispatchTrigger`, and
:func:`reflect_dispatch_triggers` reads existing dispatch triggers back into
:class:`DispatchTriggerInfo` records that compare equal to
:meth:`DispatchTrigger.info_for` of the definition that made them.

Identifiers (trigger, table, schema, column names) are quoted by the dialect's
preparer; the side-effect function name is parsed and re-quoted canonically; option
values are validated and rendered as escaped SQL string literals; ``when`` text is
checked to be one self-contained SQL expression (closed quotes, balanced parentheses,
no ``;``, no comments) so that it cannot leave its ``WHEN ( ... )`` clause.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, TypeAlias

from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import (
    Column,
    ExecutableDDLElement,
    MetaData,
    SchemaItem,
    Table,
)
from sqlalchemy.sql import elements, visitors
from sqlalchemy.sql.compiler import DDLCompiler, SQLCompiler
from sqlalchemy.sql.expression import TableClause
from sqlalchemy.sql.visitors import InternalTraversal

from . import statements
from ._interval import Interval, NotAnInterval, Undecided, read_interval
from .errors import (
    DispatchTriggerError,
    IntervalOptionError,
    PgDispatchError,
    PgDispatchNotInstalledError,
)
from .statements import quote_literal

__all__ = [
    "CreateDefinerTriggerFunction",
    "CreateDispatchTrigger",
    "DispatchTrigger",
    "DispatchTriggerError",
    "DispatchTriggerInfo",
    "DropDispatchTrigger",
    "IntervalOptionError",
    "PgDispatchNotInstalledError",
    "RowReference",
    "check_installed",
    "check_when_text",
    "create_dispatch_trigger_ddl",
    "definitions_equal",
    "dispatch_triggers",
    "metadata_dispatch_triggers",
    "new_row",
    "old_row",
    "parse_function_name",
    "reflect_dispatch_triggers",
]

INFO_KEY = "pgdispatch_triggers"
"""Key of ``Table.info`` holding the table's :class:`DispatchTrigger` objects."""

EVENTS = ("insert", "update", "delete", "truncate")
"""Supported events, in their canonical order (``truncate``: statement level only)."""

TRANSITION_NEW = "pgdispatch_new"
TRANSITION_OLD = "pgdispatch_old"
DEFINER_FUNCTION = "pgdispatch_definer_trigger"
MAX_IDENTIFIER_BYTES = 63

# pg_trigger.tgtype bits (src/include/catalog/pg_trigger.h)
_TG_ROW = 1 << 0
_TG_BEFORE = 1 << 1
_TG_INSERT = 1 << 2
_TG_DELETE = 1 << 3
_TG_UPDATE = 1 << 4
_TG_TRUNCATE = 1 << 5
_TG_INSTEAD = 1 << 6

IntervalArg: TypeAlias = "dt.timedelta | str"
WhenArg: TypeAlias = (
    "str | elements.ColumnElement[Any] | Callable[[Any], elements.ColumnElement[Any]]"
)


# ---------------------------------------------------------------------------------------
# identifiers

_BARE_IDENT = re.compile(r"[a-z_][a-z0-9_$]*\Z")
_IDENT_START = re.compile(r"[A-Za-z_\u0080-\U0010ffff]")
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$\u0080-\U0010ffff]")


def _check_identifier(value: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise DispatchTriggerError(f"{what} must be a non-empty string, got {value!r}")
    if "\x00" in value:
        raise DispatchTriggerError(f"{what} {value!r} contains a NUL character")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as err:
        raise DispatchTriggerError(f"{what} {value!r} is not valid unicode") from err
    if size > MAX_IDENTIFIER_BYTES:
        raise DispatchTriggerError(
            f"{what} {value!r} is longer than {MAX_IDENTIFIER_BYTES} bytes "
            "(PostgreSQL would truncate it)"
        )
    return value


def _format_ident(part: str) -> str:
    """Quote ``part`` like PostgreSQL's ``quote_ident`` would for ``parse_ident``: bare
    when it reads back unchanged, else double-quoted."""
    if _BARE_IDENT.match(part):
        return part
    return '"' + part.replace('"', '""') + '"'


def parse_function_name(name: str) -> tuple[str | None, str]:
    """Parse ``"schema.fn"``, ``"fn"``, ``'"My Schema"."Fn"'`` like PostgreSQL's
    ``parse_ident``: unquoted parts are lower-cased, quoted parts kept verbatim.
    Returns ``(schema or None, function)``."""
    if not isinstance(name, str):
        raise DispatchTriggerError(f"function must be a string, got {name!r}")
    parts: list[str] = []
    i, n = 0, len(name)
    while True:
        while i < n and name[i].isspace():
            i += 1
        if i < n and name[i] == '"':
            j = i + 1
            buf = []
            while True:
                if j >= n:
                    raise DispatchTriggerError(f"unterminated quoted identifier in {name!r}")
                if name[j] == '"':
                    if j + 1 < n and name[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(name[j])
                j += 1
            part = "".join(buf)
            if not part:
                raise DispatchTriggerError(f"empty quoted identifier in {name!r}")
            i = j + 1
        elif i < n and _IDENT_START.match(name[i]):
            j = i + 1
            while j < n and _IDENT_CHAR.match(name[j]):
                j += 1
            part = name[i:j].translate(_ASCII_LOWER)
            i = j
        else:
            raise DispatchTriggerError(
                f"invalid function name {name!r}: expected 'schema.function' "
                "(identifiers, optionally double-quoted)"
            )
        parts.append(_check_identifier(part, "function name part"))
        while i < n and name[i].isspace():
            i += 1
        if i == n:
            break
        if name[i] != ".":
            raise DispatchTriggerError(f"invalid function name {name!r}: unexpected {name[i]!r}")
        i += 1
    if len(parts) > 2:
        raise DispatchTriggerError(
            f"invalid function name {name!r}: at most 'schema.function' (no database part)"
        )
    if len(parts) == 1:
        return None, parts[0]
    return parts[0], parts[1]


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _qualified(schema: str, name: str) -> str:
    return f"{_format_ident(schema)}.{_format_ident(name)}"


# ---------------------------------------------------------------------------------------
# a small PostgreSQL lexer: enough to keep `when` text inside its parentheses and to
# find the WHEN clause in pg_get_triggerdef() output


class _SqlScanError(PgDispatchError, ValueError):
    pass


_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")


def _tokens(sql: str, *, strict: bool) -> Iterator[tuple[str, int, int]]:
    """Yield ``(kind, start, end)`` for the tokens of ``sql``: ``"string"``, ``"ident"``
    (quoted identifier), ``"word"``, ``"space"``, ``"comment"`` or ``"op"`` (one
    character). ``strict`` (user input) refuses comments and backslashes in standard
    strings, whose meaning depends on ``standard_conforming_strings``."""
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            j = i + 1
            while j < n and sql[j].isspace():
                j += 1
            yield "space", i, j
            i = j
        elif c == "'":
            escape = (
                i > 0
                and sql[i - 1] in "eE"
                and (i < 2 or not _IDENT_CHAR.match(sql[i - 2]) or sql[i - 2] == "$")
            )
            j = i + 1
            while True:
                if j >= n:
                    raise _SqlScanError("unterminated string literal")
                ch = sql[j]
                if ch == "\\":
                    if escape:
                        j += 2
                        continue
                    if strict:
                        raise _SqlScanError(
                            "backslash in a standard string literal: its meaning depends on "
                            "standard_conforming_strings; use an E'...' string"
                        )
                if ch == "'":
                    if j + 1 < n and sql[j + 1] == "'":
                        j += 2
                        continue
                    break
                j += 1
            yield "string", i, j + 1
            i = j + 1
        elif c == '"':
            j = i + 1
            while True:
                if j >= n:
                    raise _SqlScanError("unterminated quoted identifier")
                if sql[j] == '"':
                    if j + 1 < n and sql[j + 1] == '"':
                        j += 2
                        continue
                    break
                j += 1
            yield "ident", i, j + 1
            i = j + 1
        elif (
            c == "$"
            and (i == 0 or not _IDENT_CHAR.match(sql[i - 1]))
            and (m := _DOLLAR_TAG.match(sql, i))
        ):
            tag = m.group(0)
            end = sql.find(tag, m.end())
            if end < 0:
                raise _SqlScanError("unterminated dollar-quoted string")
            yield "string", i, end + len(tag)
            i = end + len(tag)
        elif sql.startswith("--", i):
            if strict:
                raise _SqlScanError("comments are not allowed")
            j = sql.find("\n", i)
            j = n if j < 0 else j
            yield "comment", i, j
            i = j
        elif sql.startswith("/*", i):
            if strict:
                raise _SqlScanError("comments are not allowed")
            depth, j = 1, i + 2
            while depth:
                if j >= n:
                    raise _SqlScanError("unterminated comment")
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            yield "comment", i, j
            i = j
        elif _IDENT_CHAR.match(c):
            j = i + 1
            while j < n and _IDENT_CHAR.match(sql[j]):
                j += 1
            yield "word", i, j
            i = j
        else:
            yield "op", i, i + 1
            i += 1


def check_when_text(sql: str) -> str:
    """Validate ``when`` SQL text: one expression that stays inside ``WHEN ( ... )``.

    Refused: NUL, empty text, unterminated quotes, unbalanced parentheses, ``;``,
    comments, backslashes in standard strings. Returns the stripped text."""
    if not isinstance(sql, str):
        raise DispatchTriggerError(f"when must be SQL text or an expression, got {sql!r}")
    if "\x00" in sql:
        raise DispatchTriggerError("when text contains a NUL character")
    stripped = sql.strip()
    if not stripped:
        raise DispatchTriggerError("when text is empty")
    depth = 0
    try:
        for kind, start, _end in _tokens(stripped, strict=True):
            if kind != "op":
                continue
            ch = stripped[start]
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth < 0:
                    raise _SqlScanError("unbalanced parentheses")
            elif ch == ";":
                raise _SqlScanError("';' is not allowed")
    except _SqlScanError as err:
        raise DispatchTriggerError(f"invalid when text {sql!r}: {err}") from None
    if depth:
        raise DispatchTriggerError(f"invalid when text {sql!r}: unbalanced parentheses")
    return stripped


def _standardise_strings(sql: str, *, standard_conforming_strings: bool) -> str:
    """Rewrite the plain string literals of ``pg_get_triggerdef()`` output that hold a
    backslash as ``E''`` strings, so that the text means the same under any
    ``standard_conforming_strings`` (and passes :func:`check_when_text`)."""
    out = []
    last = 0
    for kind, start, end in _tokens(sql, strict=False):
        if kind != "string" or sql[start] != "'" or "\\" not in sql[start:end]:
            continue
        if start > 0 and _IDENT_CHAR.match(sql[start - 1]):
            continue  # a prefixed literal (E'', B'', U&''): PostgreSQL does not print these
        body = sql[start + 1 : end - 1]
        if standard_conforming_strings:
            body = body.replace("\\", "\\\\")
        out.append(sql[last:start] + "E'" + body + "'")
        last = end
    out.append(sql[last:])
    return "".join(out)


def _current_schema(conn: Connection) -> str | None:
    schema = conn.scalar(text("SELECT current_schema()"))
    return None if schema is None else str(schema)


def _scs(conn: Connection) -> bool:
    setting = conn.scalar(text("SELECT current_setting('standard_conforming_strings')"))
    return bool(setting == "on")


def _when_from_triggerdef(definition: str) -> str | None:
    """The WHEN expression of a ``pg_get_triggerdef()`` output, or None."""
    words: list[str] = []
    toks = list(_tokens(definition, strict=False))
    for index, (kind, start, end) in enumerate(toks):
        if kind == "word":
            words.append(definition[start:end].upper())
            if words[-1] == "EXECUTE" and words[-4:-2] == ["FOR", "EACH"]:
                return None
        elif kind == "op" and definition[start] == "(":
            if words[-4:] in (["FOR", "EACH", "ROW", "WHEN"], ["FOR", "EACH", "STATEMENT", "WHEN"]):
                depth = 0
                for kind2, start2, _ in toks[index:]:
                    if kind2 == "op" and definition[start2] == "(":
                        depth += 1
                    elif kind2 == "op" and definition[start2] == ")":
                        depth -= 1
                        if depth == 0:
                            return definition[end:start2]
                raise ValueError(f"unbalanced WHEN clause in {definition!r}")
            words.append("(")
        elif kind not in ("space", "comment"):
            words.append(definition[start:end])
    return None


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
# option values

_INTERVAL_TEXT = re.compile(r"[0-9A-Za-z .:+\-@]+\Z")
_INT32 = (-(2**31), 2**31 - 1)


def _format_timedelta(value: dt.timedelta) -> str:
    seconds = f"{value.seconds}.{value.microseconds:06d}".rstrip("0").rstrip(".")
    if value.days and seconds == "0":
        return f"{value.days} days"
    if value.days:
        return f"{value.days} days {seconds} seconds"
    return f"{seconds} seconds"


def _wanted(positive: bool) -> str:
    return "positive" if positive else "zero or positive"


def _describe(value: Interval) -> str:
    parts = []
    if value.months:
        parts.append(f"{value.months} months")
    if value.days:
        parts.append(f"{value.days} days")
    if value.microseconds or not parts:
        seconds = f"{abs(value.microseconds) // 10**6}.{abs(value.microseconds) % 10**6:06d}"
        seconds = seconds.rstrip("0").rstrip(".")
        parts.append(f"{'-' if value.microseconds < 0 else ''}{seconds} seconds")
    return " ".join(parts)


def _interval_text_decided(text: str, what: str, *, positive: bool) -> bool:
    """Check interval text as PostgreSQL reads it (:mod:`sa_pgdispatch._interval`):
    True when valid, :class:`IntervalOptionError` when not, False when the text is too
    exotic to decide without a server (see :meth:`DispatchTrigger.check_intervals`)."""
    try:
        readings = read_interval(text)
    except NotAnInterval as err:
        raise IntervalOptionError(
            what, text,
            f"{what} {text!r} is not an interval PostgreSQL accepts ({err}): use a timedelta "
            "or text such as '5 seconds', '1 hour 30 minutes', '00:00:05' or 'PT5S'",
        ) from None
    except Undecided:
        return False
    for style, value in readings.items():
        if value.sign < 0 or (positive and value.sign == 0):
            how = "negative" if value.sign < 0 else "zero"
            if style == "sql_standard":
                reason = (
                    f"is {how} in a session whose IntervalStyle is sql_standard (a leading '-' "
                    f"then applies to every field: {_describe(value)}), "
                    f"{_describe(readings['postgres'])} in the others"
                )
            else:
                reason = f"is {how}: PostgreSQL reads it as {_describe(value)}"
            raise IntervalOptionError(
                what, text,
                f"{what} {text!r} {reason}; a dispatch trigger's {what} must be "
                f"{_wanted(positive)} (pgdispatch.trigger() would refuse it on every "
                "INSERT, UPDATE or DELETE that fires the trigger)",
            )
    return True


def _interval_option(
    value: IntervalArg | None, what: str, *, positive: bool
) -> tuple[str | None, bool]:
    """The option's text and whether it is known to be valid (False: check it through
    the server before the DDL runs)."""
    if value is None:
        return None, True
    if isinstance(value, dt.timedelta):
        if value < dt.timedelta(0) or (positive and value == dt.timedelta(0)):
            raise IntervalOptionError(
                what, value, f"{what} must be {_wanted(positive)}, got {value!r}"
            )
        return _format_timedelta(value), True
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped or not _INTERVAL_TEXT.match(stripped):
            raise IntervalOptionError(
                what, value,
                f"{what} {value!r} is not an interval: use a timedelta or text such as "
                "'5 seconds' (letters, digits, spaces and . : + - @ only)",
            )
        return stripped, _interval_text_decided(stripped, what, positive=positive)
    raise DispatchTriggerError(f"{what} must be a timedelta or an interval string, got {value!r}")


def check_interval_on_server(conn: Connection, text_value: str, what: str, *, positive: bool
                             ) -> None:
    """Check interval text through the server: ``CAST(... AS interval)`` under each
    IntervalStyle that reads input differently (``postgres``, ``sql_standard``), in a
    savepoint that is rolled back. Raises :class:`IntervalOptionError`."""
    for style in ("postgres", "sql_standard"):
        savepoint = conn.begin_nested()
        try:
            conn.execute(text("SELECT set_config('IntervalStyle', :style, true)"),
                         {"style": style})
            row = conn.execute(
                text(
                    "SELECT CAST(CAST(:v AS interval) AS text),"
                    " CAST(:v AS interval) < interval '0', CAST(:v AS interval) = interval '0'"
                ),
                {"v": text_value},
            ).one()
        except sa_exc.DBAPIError as err:
            savepoint.rollback()
            raise IntervalOptionError(
                what, text_value,
                f"{what} {text_value!r} is not an interval PostgreSQL accepts "
                f"({_first_line(err)})",
            ) from None
        savepoint.rollback()
        shown, negative, zero = str(row[0]), bool(row[1]), bool(row[2])
        if negative or (positive and zero):
            where = " in a session whose IntervalStyle is sql_standard" if (
                style == "sql_standard") else ""
            raise IntervalOptionError(
                what, text_value,
                f"{what} {text_value!r} is {'negative' if negative else 'zero'}{where} "
                f"(PostgreSQL reads it as {shown!r}); a dispatch trigger's {what} must be "
                f"{_wanted(positive)} (pgdispatch.trigger() would refuse it on every "
                "INSERT, UPDATE or DELETE that fires the trigger)",
            )


def _first_line(err: sa_exc.DBAPIError) -> str:
    return (str(err.orig) if err.orig is not None else str(err)).strip().splitlines()[0]


def _int_option(value: int | None, what: str, *, minimum: int) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise DispatchTriggerError(f"{what} must be an int, got {value!r}")
    if not minimum <= value <= _INT32[1]:
        raise DispatchTriggerError(f"{what} must be between {minimum} and {_INT32[1]}, got {value}")
    return str(value)


# ---------------------------------------------------------------------------------------
# the schema item


@dataclasses.dataclass(frozen=True)
class DispatchTriggerInfo:
    """A dispatch trigger, normalised for comparison.

    ``function`` is canonical (``schema.fn``, quoted only where needed); ``events`` in
    the order insert, update, delete, truncate; ``columns`` sorted; ``delay`` / ``timeout`` as
    PostgreSQL prints the interval back when normalised through a connection (else as
    rendered); ``priority`` / ``max_attempts`` as decimal text; ``when`` as
    ``pg_get_triggerdef()`` prints it when normalised through a connection (else as
    rendered). ``schema`` is the table's actual schema (``None`` only for a definition
    normalised without a connection on a table without schema).
    """

    name: str
    table_name: str
    schema: str | None
    function: str
    events: tuple[str, ...]
    for_each: str = "row"
    columns: tuple[str, ...] = ()
    when: str | None = None
    delay: str | None = None
    priority: str | None = None
    max_attempts: str | None = None
    timeout: str | None = None
    security: str = "invoker"
    timing: str = "after"
    unknown_options: tuple[str, ...] = ()

    def diff(self, other: DispatchTriggerInfo) -> dict[str, tuple[Any, Any]]:
        """Fields that differ: ``{field: (self's, other's)}``."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        }

    def to_trigger(self) -> DispatchTrigger:
        """A :class:`DispatchTrigger` with this definition (``when`` as SQL text)."""
        if self.timing != "after" or self.unknown_options:
            raise DispatchTriggerError(
                f"trigger {self.name!r} cannot be expressed as a DispatchTrigger "
                f"(timing {self.timing}, unknown options {self.unknown_options})"
            )
        return DispatchTrigger(
            self.name,
            self.function,
            on=self.events,
            columns=self.columns or None,
            when=self.when,
            for_each=self.for_each,  # type: ignore[arg-type]
            delay=self.delay,
            priority=None if self.priority is None else int(self.priority),
            max_attempts=None if self.max_attempts is None else int(self.max_attempts),
            timeout=self.timeout,
            security=self.security,  # type: ignore[arg-type]
        )


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
    """

    __visit_name__ = "pgdispatch_trigger"

    def __init__(
        self,
        name: str,
        function: str,
        *,
        on: str | Sequence[str] = ("insert",),
        columns: Sequence[str | Column[Any]] | None = None,
        when: WhenArg | None = None,
        for_each: Literal["row", "statement"] = "row",
        delay: IntervalArg | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        timeout: IntervalArg | None = None,
        security: Literal["invoker", "definer"] = "invoker",
    ) -> None:
        self.name = _check_identifier(name, "trigger name")
        self.function_schema, self.function_name = parse_function_name(function)

        events = [on] if isinstance(on, str) else list(on)
        if not events:
            raise DispatchTriggerError(f"trigger {name!r}: `on` needs at least one event")
        lowered = []
        for ev in events:
            if not isinstance(ev, str) or ev.lower() not in EVENTS:
                raise DispatchTriggerError(
                    f"trigger {name!r}: unknown event {ev!r} "
                    "(expected insert, update, delete or truncate)"
                )
            if ev.lower() in lowered:
                raise DispatchTriggerError(f"trigger {name!r}: event {ev!r} given twice")
            lowered.append(ev.lower())
        self.events: tuple[str, ...] = tuple(e for e in EVENTS if e in lowered)

        if for_each not in ("row", "statement"):
            raise DispatchTriggerError(
                f"trigger {name!r}: for_each must be 'row' or 'statement', got {for_each!r}"
            )
        self.for_each = for_each
        if "truncate" in self.events and for_each != "statement":
            raise DispatchTriggerError(
                f"trigger {name!r}: truncate needs for_each='statement' (PostgreSQL fires "
                "TRUNCATE triggers once per statement)"
            )

        self.columns: tuple[str, ...] = ()
        if columns is not None:
            if isinstance(columns, str):
                columns = [columns]
            if "update" not in self.events:
                raise DispatchTriggerError(
                    f"trigger {name!r}: columns (UPDATE OF) need the 'update' event"
                )
            names = []
            for col in columns:
                col_name = col if isinstance(col, str) else getattr(col, "name", None)
                if not isinstance(col_name, str):
                    raise DispatchTriggerError(
                        f"trigger {name!r}: columns must be names or Column objects, got {col!r}"
                    )
                _check_identifier(col_name, "column name")
                if col_name in names:
                    raise DispatchTriggerError(f"trigger {name!r}: column {col_name!r} given twice")
                names.append(col_name)
            if not names:
                raise DispatchTriggerError(f"trigger {name!r}: columns is empty")
            self.columns = tuple(sorted(names))

        if for_each == "statement":
            if len(self.events) != 1:
                raise DispatchTriggerError(
                    f"trigger {name!r}: a statement-level trigger takes exactly one event "
                    "(PostgreSQL allows transition tables on single-event triggers only)"
                )
            if self.columns:
                raise DispatchTriggerError(
                    f"trigger {name!r}: a statement-level trigger cannot have columns "
                    "(PostgreSQL allows no column list with transition tables)"
                )
            if when is not None:
                raise DispatchTriggerError(
                    f"trigger {name!r}: a statement-level trigger cannot have a when condition"
                )

        self.when: WhenArg | None
        if isinstance(when, str):
            self.when = check_when_text(when)
        elif when is None or callable(when) or isinstance(when, elements.ColumnElement):
            self.when = when
        else:
            raise DispatchTriggerError(
                f"trigger {name!r}: when must be SQL text, a SQL expression or a callable, "
                f"got {when!r}"
            )

        self.delay, delay_known = _interval_option(delay, "delay", positive=False)
        self.timeout, timeout_known = _interval_option(timeout, "timeout", positive=True)
        #: interval texts too exotic to decide offline: ``(option, text)``, checked
        #: through the server before the trigger's DDL runs (:meth:`check_intervals`)
        self.unchecked_intervals: tuple[tuple[str, str], ...] = tuple(
            (option, value)
            for option, value, known in (
                ("delay", self.delay, delay_known), ("timeout", self.timeout, timeout_known)
            )
            if value is not None and not known
        )
        self.priority = _int_option(priority, "priority", minimum=_INT32[0])
        self.max_attempts = _int_option(max_attempts, "max_attempts", minimum=1)

        if security not in ("invoker", "definer"):
            raise DispatchTriggerError(
                f"trigger {name!r}: security must be 'invoker' or 'definer', got {security!r}"
            )
        self.security = security
        self.table: Table | None = None
        if isinstance(self.when, elements.ColumnElement):
            # expressions are checked now as far as possible (without the table)
            self._when_expression(None)

    def __repr__(self) -> str:
        return (
            f"DispatchTrigger({self.name!r}, {self.function!r}, on={self.events!r}, "
            f"for_each={self.for_each!r})"
        )

    @property
    def function(self) -> str:
        """The function as given, canonically quoted (may be unqualified)."""
        if self.function_schema is None:
            return _format_ident(self.function_name)
        return _qualified(self.function_schema, self.function_name)

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
        self._check_table(parent)
        self.table = parent
        parent.info.setdefault(INFO_KEY, []).append(self)
        event.listen(parent, "after_create", self._after_create)
        event.listen(parent, "before_drop", self._before_drop)

    def _check_table(self, table: Table | TableClause) -> None:
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
        for option, value in self.unchecked_intervals:
            check_interval_on_server(conn, value, option, positive=option == "timeout")

    def _after_create(self, target: Table, connection: Connection, **kw: Any) -> None:
        if connection.dialect.name != "postgresql":
            return
        check_installed(connection)
        default_schema = None if target.schema else _current_schema(connection)
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
                dialect=statements._DIALECT, compile_kwargs={"literal_binds": True}
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
        schema = (
            self.function_schema
            or (table.schema if table is not None else None)
            or default_schema
            or "public"
        )
        return _qualified(schema, self.function_name)

    def trigger_arguments(
        self, table: Table | TableClause | None = None, *, default_schema: str | None = None
    ) -> list[str]:
        """The ``TG_ARGV`` strings: the function, then the options."""
        args = [self.qualified_function(table, default_schema=default_schema)]
        for key in ("delay", "priority", "max_attempts", "timeout"):
            value = getattr(self, key)
            if value is not None:
                args.append(f"{key}={value}")
        return args

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
        self._check_table(table)
        default_schema = None
        if conn is not None and not table.schema:
            default_schema = _current_schema(conn)
        schema = table.schema or default_schema
        delay, timeout, when = self.delay, self.timeout, self.when_sql(table)
        if conn is not None:
            delay = _normalise_interval(conn, delay)
            timeout = _normalise_interval(conn, timeout)
            if when is not None:
                when = _normalise_when(conn, self, table, when)
        return DispatchTriggerInfo(
            name=self.name,
            table_name=table.name,
            schema=schema,
            function=self.qualified_function(table, default_schema=default_schema),
            events=self.events,
            for_each=self.for_each,
            columns=self.columns,
            when=when,
            delay=delay,
            priority=self.priority,
            max_attempts=self.max_attempts,
            timeout=timeout,
            security=self.security,
        )


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


# ---------------------------------------------------------------------------------------
# DDL


def _table_of(trigger: DispatchTrigger, table: Table | TableClause | None) -> Table | TableClause:
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
        trigger._check_table(self.table)
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
        if isinstance(trigger, DispatchTrigger):
            self.name = trigger.name
            self.table = _table_of(trigger, table)
        else:
            self.name = _check_identifier(trigger, "trigger name")
            if table is None:
                raise DispatchTriggerError("DropDispatchTrigger by name needs the table")
            self.table = table
        self.if_exists = if_exists


class CreateDefinerTriggerFunction(ExecutableDDLElement):
    """``SELECT pgdispatch.definer_trigger_function('<schema>')``: makes
    ``<schema>.pgdispatch_definer_trigger()`` (``schema=None``: the current schema)."""

    __visit_name__ = "pgdispatch_create_definer_function"

    def __init__(self, schema: str | None) -> None:
        self.schema = None if schema is None else _check_identifier(schema, "schema name")


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


# ---------------------------------------------------------------------------------------
# normalisation through the server


def _normalise_interval(conn: Connection, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        with conn.begin_nested():
            result = conn.scalar(text("SELECT CAST(CAST(:v AS interval) AS text)"), {"v": value})
    except sa_exc.DBAPIError:
        return value  # not an interval: it cannot equal a valid one
    return str(result)


def _normalise_when(
    conn: Connection, trigger: DispatchTrigger, table: Table | TableClause, when: str
) -> str:
    """``when`` as pg_get_triggerdef() prints it, from a trigger on a temporary copy
    (``LIKE``) of the table, inside a savepoint that is rolled back.

    The statements run as plain SQL without parameters (no placeholder parsing, so no
    ``%`` doubling whatever the driver's paramstyle)."""
    prep = statements._DIALECT.identifier_preparer
    source = prep.format_table(table)
    temp = f"pgdispatch_when_{uuid.uuid4().hex[:12]}"
    events = " OR ".join(e.upper() for e in trigger.events)
    if "update" in trigger.events and trigger.columns:
        events = events.replace(
            "UPDATE", "UPDATE OF " + ", ".join(prep.quote(c) for c in trigger.columns)
        )
    plain = {"no_parameters": True}
    savepoint = conn.begin_nested()
    try:
        conn.exec_driver_sql(
            f"CREATE TEMPORARY TABLE {temp} (LIKE {source})", execution_options=plain
        )
        conn.exec_driver_sql(
            f"CREATE TRIGGER {temp} AFTER {events} ON pg_temp.{temp} FOR EACH ROW "
            f"WHEN ({when}) EXECUTE FUNCTION pgdispatch.trigger()",
            execution_options=plain,
        )
        definition = conn.scalar(
            text(
                "SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t "
                "WHERE t.tgrelid = to_regclass(:rel) AND t.tgname = :name"
            ),
            {"rel": f"pg_temp.{temp}", "name": temp},
        )
    finally:
        savepoint.rollback()
    normalised = _when_from_triggerdef(str(definition))
    if normalised is None:  # pragma: no cover - the trigger has a WHEN clause
        raise RuntimeError(f"no WHEN clause in {definition!r}")
    return _standardise_strings(normalised, standard_conforming_strings=_scs(conn))


# ---------------------------------------------------------------------------------------
# reflection

_REFLECT_SQL = """
SELECT t.tgname AS name, n.nspname AS schema, c.relname AS table_name, t.tgtype AS tgtype,
       t.tgargs AS tgargs, t.tgnargs AS nargs, pn.nspname AS function_schema,
       p.proname AS function_name, p.prosecdef AS secdef,
       ARRAY(SELECT a.attname::text
               FROM unnest(t.tgattr::int2[]) AS k(attnum)
               JOIN pg_attribute a ON a.attrelid = t.tgrelid AND a.attnum = k.attnum
              ORDER BY a.attname) AS columns,
       t.tgqual IS NOT NULL AS has_when,
       pg_get_triggerdef(t.oid) AS definition
  FROM pg_trigger t
  JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_proc p ON p.oid = t.tgfoid
  JOIN pg_namespace pn ON pn.oid = p.pronamespace
 WHERE NOT t.tgisinternal
   {parent}
   AND ((pn.nspname = 'pgdispatch' AND p.proname = 'trigger')
        OR (p.proname = 'pgdispatch_definer_trigger' AND p.prosecdef))
   AND (CAST(:schema AS name) IS NULL OR n.nspname = CAST(:schema AS name))
   AND (CAST(:table_name AS name) IS NULL OR c.relname = CAST(:table_name AS name))
 ORDER BY n.nspname, c.relname, t.tgname
"""


def _canonical_function(arg: str) -> str:
    try:
        schema, name = parse_function_name(arg)
    except DispatchTriggerError:
        return arg
    return _format_ident(name) if schema is None else _qualified(schema, name)


def reflect_dispatch_triggers(
    conn: Connection, schema: str | None = None, table_name: str | None = None
) -> list[DispatchTriggerInfo]:
    """The dispatch triggers in the database: triggers whose function is
    ``pgdispatch.trigger`` or a SECURITY DEFINER ``pgdispatch_definer_trigger``.

    ``schema`` / ``table_name`` filter (``None``: any). Inherited clones of triggers on
    partitions are left out. Values are normalised like :meth:`DispatchTrigger.info_for`
    with a connection. The trigger arguments are decoded as UTF-8 (a UTF8 database).
    """
    version = conn.dialect.server_version_info
    parent = "AND t.tgparentid = 0" if version is None or version >= (13,) else ""
    rows = (
        conn.execute(
            text(_REFLECT_SQL.format(parent=parent)), {"schema": schema, "table_name": table_name}
        )
        .mappings()
        .all()
    )
    result = []
    scs = _scs(conn)
    for row in rows:
        raw = bytes(row["tgargs"])
        args = [a.decode("utf-8") for a in raw.split(b"\x00")[: row["nargs"]]]
        tgtype = int(row["tgtype"])
        events = tuple(
            ev
            for ev, bit in (("insert", _TG_INSERT), ("update", _TG_UPDATE), ("delete", _TG_DELETE))
            if tgtype & bit
        )
        if tgtype & _TG_TRUNCATE:
            events += ("truncate",)
        timing = (
            "before" if tgtype & _TG_BEFORE else "instead of" if tgtype & _TG_INSTEAD else "after"
        )
        options: dict[str, str] = {}
        unknown: list[str] = []
        for opt in args[1:]:
            key, sep, value = opt.partition("=")
            key, value = key.strip(), value.strip()
            if (
                sep
                and key in ("delay", "priority", "max_attempts", "timeout")
                and (key not in options)
            ):
                options[key] = value
            else:
                unknown.append(opt)
        for key in ("priority", "max_attempts"):
            if key in options:
                with contextlib.suppress(ValueError):
                    options[key] = str(int(options[key]))
        when = _when_from_triggerdef(row["definition"]) if row["has_when"] else None
        if when is not None:
            when = _standardise_strings(when, standard_conforming_strings=scs)
        result.append(
            DispatchTriggerInfo(
                name=row["name"],
                table_name=row["table_name"],
                schema=row["schema"],
                function=_canonical_function(args[0]) if args else "",
                events=events,
                for_each="row" if tgtype & _TG_ROW else "statement",
                columns=tuple(row["columns"]),
                when=when,
                delay=_normalise_interval(conn, options.get("delay")),
                priority=options.get("priority"),
                max_attempts=options.get("max_attempts"),
                timeout=_normalise_interval(conn, options.get("timeout")),
                security="definer" if row["function_name"] == DEFINER_FUNCTION else "invoker",
                timing=timing,
                unknown_options=tuple(unknown),
            )
        )
    return result
