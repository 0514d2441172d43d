"""Dispatch SQLAlchemy statements asynchronously.

:func:`fire`, :func:`snooze` and :func:`dispatch` take a SQL string or any
SQLAlchemy executable (``insert()``, ``update()``, ``delete()``, ``select()``,
``text()`` with bound values, ORM statements...) and return the matching
``func.pgdispatch.*`` expression, ready to execute or to embed in a larger
statement::

    conn.scalar(dispatch(insert(audit).values(msg="it's done"), delay=timedelta(seconds=5)))

A job runs later, in another session, so the statement cannot carry bound
parameters: it is rendered to a self-contained SQL string by :func:`render_sql`.

Rendering
---------
:func:`render_sql` compiles for PostgreSQL with ``literal_binds``, but it never
uses SQLAlchemy's own literal processors (which e.g. double backslashes
according to a guess of ``standard_conforming_strings``). Every bound value is
rendered by this module, from its Python value and its SQLAlchemy type, into a
literal that means the same thing whatever the settings of the session that
runs the job, and that behaves like the value bound through psycopg would:

* strings: ``'...'`` with quotes doubled; a string holding a backslash is an
  escape string ``E'...'`` with backslashes doubled (independent of
  ``standard_conforming_strings``). NUL characters and lone surrogates cannot be
  stored by PostgreSQL: :class:`DispatchRenderError`.
* ``bool`` -> ``true``/``false``; ``int`` -> digits (negative ones in parentheses);
  ``float`` -> ``'<repr>'::float8`` (``'NaN'``, ``'Infinity'``, ``'-Infinity'``);
  ``Decimal`` -> ``'<str>'::numeric`` (NaN and infinities too; sNaN is an error).
* ``datetime`` -> ``'<isoformat>'::timestamptz`` when aware, ``::timestamp`` when
  naive; ``date`` -> ``::date``; ``time`` -> ``::time`` / ``::timetz``;
  ``timedelta`` -> ``'<d> days <s.us> seconds'::interval``.
* ``bytes`` -> ``E'\\\\x<hex>'::bytea``; ``UUID`` -> ``'...'::uuid``; ``ipaddress``
  objects -> ``::inet`` / ``::cidr``.
* JSON / JSONB typed values, and ``dict`` or ``list`` values of no particular
  type, are serialised with :func:`json.dumps` (NaN and infinity refused) and
  rendered ``'...'::jsonb`` (``::json`` for ``JSON``).
* ``ARRAY`` typed values -> ``CAST(ARRAY[...] AS <type>[])``, element by element.
* ``Enum`` typed values go through the type's own conversion (member -> name),
  then render as strings. A Python enum member with no ``Enum`` type is
  ambiguous (name or value?): :class:`DispatchRenderError`.
* ``TypeDecorator`` types apply ``process_bind_param`` (else
  ``process_literal_param``) and render the result with their ``impl``; other
  third-party types apply their bind processor, if any, and render the result.
* ``None`` -> ``NULL`` (``'null'::jsonb`` for a JSON type that stores None as JSON null).

Anything else (a bound parameter without value, an unsupported Python type)
raises :class:`DispatchRenderError`: the helper never produces SQL that would
run with other values than the ones given.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import ipaddress
import json
import math
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql.base import PGCompiler, PGDialect
from sqlalchemy.sql import elements, sqltypes
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert, Update

from . import functions
from ._interval import format_timedelta
from .errors import ArgumentTypeError, DispatchRenderError

__all__ = [
    "DispatchRenderError",
    "dispatch",
    "fire",
    "quote_literal",
    "render_literal",
    "render_sql",
    "snooze",
]


# ---------------------------------------------------------------------------
# literals


def quote_literal(value: str) -> str:
    """Render ``value`` as a PostgreSQL string literal that reads back as exactly
    ``value`` whatever ``standard_conforming_strings`` is."""
    if not isinstance(value, str):
        raise DispatchRenderError(f"expected a str, got {type(value).__name__}")
    if "\x00" in value:
        raise DispatchRenderError("PostgreSQL text cannot contain NUL characters (\\x00)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DispatchRenderError(f"string is not valid unicode (lone surrogate?): {err}") from err
    escaped = value.replace("'", "''")
    if "\\" in escaped:
        return "E'" + escaped.replace("\\", "\\\\") + "'"
    return "'" + escaped + "'"


def _json_dumps(value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as err:
        raise DispatchRenderError(f"value cannot be serialised as JSON: {err}") from err


def _typed(text: str, sqltype: str) -> str:
    return f"{quote_literal(text)}::{sqltype}"


# core types whose bind processors (if any) we replace by our own rendering
_CORE_TYPES: tuple[type[sqltypes.TypeEngine[Any]], ...] = (
    sqltypes.NullType,
    sqltypes.String,
    sqltypes.Integer,
    sqltypes.Numeric,
    sqltypes.Boolean,
    sqltypes.Date,
    sqltypes.DateTime,
    sqltypes.Time,
    sqltypes._AbstractInterval,
    sqltypes.LargeBinary,
    sqltypes.Uuid,
)


def _render_python_value(value: Any, type_: sqltypes.TypeEngine[Any]) -> str:
    """Render a plain Python value (after type conversions)."""
    if value is None:
        return "NULL"
    if isinstance(value, enum.Enum):
        raise DispatchRenderError(
            f"cannot render enum member {value!r} without an Enum type "
            "(give the column/bind an sqlalchemy.Enum type, or pass .name or .value)"
        )
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        text = str(int(value))
        return f"({text})" if value < 0 else text
    if isinstance(value, float):
        if math.isnan(value):
            return "'NaN'::float8"
        if math.isinf(value):
            return "'Infinity'::float8" if value > 0 else "'-Infinity'::float8"
        return _typed(repr(value), "float8")
    if isinstance(value, decimal.Decimal):
        if value.is_snan():
            raise DispatchRenderError("signalling NaN Decimal cannot be rendered")
        if value.is_nan():
            return "'NaN'::numeric"
        if value.is_infinite():
            return "'Infinity'::numeric" if value > 0 else "'-Infinity'::numeric"
        return _typed(str(value), "numeric")
    if isinstance(value, str):
        return quote_literal(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            if value.utcoffset() is None:
                raise DispatchRenderError(f"datetime {value!r} has a tzinfo but no UTC offset")
            return _typed(value.isoformat(), "timestamptz")
        return _typed(value.isoformat(), "timestamp")
    if isinstance(value, dt.date):
        return _typed(value.isoformat(), "date")
    if isinstance(value, dt.time):
        if value.tzinfo is not None:
            if value.utcoffset() is None:
                raise DispatchRenderError(f"time {value!r} has a tzinfo but no UTC offset")
            return _typed(value.isoformat(), "timetz")
        return _typed(value.isoformat(), "time")
    if isinstance(value, dt.timedelta):
        return _typed(format_timedelta(value, days=True), "interval")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"E'\\\\x{bytes(value).hex()}'::bytea"
    if isinstance(value, uuid.UUID):
        return _typed(str(value), "uuid")
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return _typed(str(value), "inet")
    if isinstance(value, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        return _typed(str(value), "inet")
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return _typed(str(value), "cidr")
    if isinstance(value, (dict, list)) and isinstance(type_, sqltypes.NullType):
        return _typed(_json_dumps(value), "jsonb")
    raise DispatchRenderError(
        f"cannot render a value of Python type {type(value).__name__} "
        f"(SQL type {type_!r}) as a literal"
    )


def _render_array(
    value: Any, type_: sqltypes.ARRAY[Any], dialect: PGDialect, *, top: bool = True
) -> str:
    if not isinstance(value, (list, tuple)):
        # e.g. '{1,2}' given as a string: an untyped literal resolved by context
        return render_literal(value, sqltypes.NullType(), dialect)
    if not value:
        if not top:
            raise DispatchRenderError("empty nested arrays cannot be rendered")
        type_sql = dialect.type_compiler_instance.process(type_)
        return f"'{{}}'::{type_sql}"
    items = []
    for item in value:
        if isinstance(item, (list, tuple)) and not isinstance(type_.item_type, sqltypes.JSON):
            items.append(_render_array(item, type_, dialect, top=False))
        else:
            items.append(render_literal(item, type_.item_type, dialect))
    body = "ARRAY[" + ", ".join(items) + "]"
    if not top:
        return body
    type_sql = dialect.type_compiler_instance.process(type_)
    return f"CAST({body} AS {type_sql})"


def render_literal(value: Any, type_: sqltypes.TypeEngine[Any], dialect: PGDialect) -> str:
    """Render ``value`` of SQLAlchemy type ``type_`` as a safe PostgreSQL literal."""
    type_ = sqltypes.to_instance(type_).dialect_impl(dialect)
    processor: Callable[[Any], Any] | None
    # unwrap TypeDecorators (and Variants) the way execution would
    for _ in range(20):
        if not isinstance(type_, sqltypes.TypeDecorator):
            break
        if type(type_).bind_processor is not sqltypes.TypeDecorator.bind_processor:
            # the decorator replaces bind processing altogether (e.g. PickleType)
            processor = type_.bind_processor(dialect)
            if processor is not None:
                value = processor(value)
        elif type_._has_bind_processor:
            value = type_.process_bind_param(value, dialect)
        elif type_._has_literal_processor:
            value = type_.process_literal_param(value, dialect)
        type_ = type_.load_dialect_impl(dialect).dialect_impl(dialect)
    else:  # pragma: no cover - defensive
        raise DispatchRenderError(f"type {type_!r} nests too many TypeDecorators")

    if isinstance(type_, sqltypes.JSON):
        if value is None and type_.none_as_null:
            return "NULL"
        cast = "jsonb" if type_.__visit_name__.upper() == "JSONB" else "json"
        if value is None or value is sqltypes.JSON.NULL:
            return f"'null'::{cast}"
        return _typed(_json_dumps(value), cast)
    if value is None:
        return "NULL"
    if isinstance(type_, sqltypes.ARRAY):
        return _render_array(value, type_, dialect)
    if isinstance(type_, sqltypes.Enum) or not isinstance(type_, _CORE_TYPES):
        processor = type_.bind_processor(dialect)
        if processor is not None:
            try:
                value = processor(value)
            except (LookupError, TypeError, ValueError) as err:
                raise DispatchRenderError(
                    f"cannot convert {value!r} for type {type_!r}: {err}"
                ) from err
    return _render_python_value(value, type_)


# ---------------------------------------------------------------------------
# the rendering dialect


class _RenderCompiler(PGCompiler):
    def render_literal_bindparam(
        self, bindparam: elements.BindParameter[Any], *args: Any, **kw: Any
    ) -> str:
        if (
            not args
            and "render_literal_value" not in kw
            and bindparam.required
            and bindparam.value is None
            and bindparam.callable is None
            and not (self._collect_params and bindparam.key in self._collected_params)
        ):
            raise DispatchRenderError(
                f"bound parameter {bindparam.key!r} has no value: give it one "
                "(e.g. text(...).bindparams(name=value)) before dispatching"
            )
        if (
            not args
            and "render_literal_value" not in kw
            and bindparam.value is None
            and bindparam.callable is None
            and bindparam.type.should_evaluate_none
            and not bindparam.expanding
        ):
            # e.g. None for a JSON column: execution binds it as JSON null, not SQL NULL
            return self.render_literal_value(None, bindparam.type)
        return super().render_literal_bindparam(bindparam, *args, **kw)  # type: ignore[no-untyped-call,no-any-return]

    def render_literal_value(self, value: Any, type_: sqltypes.TypeEngine[Any]) -> str:
        return render_literal(value, type_, self.dialect)  # type: ignore[arg-type]


class _RenderDialect(PGDialect):
    """A PostgreSQL dialect that renders every bound value with :func:`render_literal`
    (``named`` paramstyle: no ``%`` doubling)."""

    statement_compiler = _RenderCompiler
    supports_statement_cache = False


#: The dialect :func:`render_sql` compiles with (every value rendered inline, no ``%``
#: doubling); also what dispatch triggers render their ``when`` expressions with.
RENDER_DIALECT = _RenderDialect(paramstyle="named")  # type: ignore[no-untyped-call]


def render_sql(stmt: str | Executable) -> str:
    """Render ``stmt`` as a self-contained PostgreSQL SQL string.

    A ``str`` is returned unchanged (it is SQL already). A SQLAlchemy executable is
    compiled for PostgreSQL with every bound value rendered inline (see the
    module documentation); values that cannot be rendered safely, and bound
    parameters without a value, raise :class:`DispatchRenderError`.
    """
    if isinstance(stmt, str):
        if not stmt.strip():
            raise DispatchRenderError("empty SQL command")
        if "\x00" in stmt:
            raise DispatchRenderError("SQL command contains a NUL character")
        return stmt
    if not isinstance(stmt, Executable):
        raise ArgumentTypeError(f"expected a SQL string or a SQLAlchemy statement, got {stmt!r}")
    if isinstance(stmt, Insert):
        # no implicit "RETURNING <primary key>": the job has nobody to return it to
        stmt = stmt.inline()
    compiled = _compile(stmt)
    prefetch = [*compiled.insert_prefetch, *compiled.update_prefetch]
    if prefetch:
        # Python-side column defaults (``default=`` / ``onupdate=``) are computed by
        # SQLAlchemy just before execution: compute them now and render the values
        if not isinstance(stmt, (Insert, Update)) or _is_multi_row_or_select(stmt):
            raise DispatchRenderError(
                "columns with Python-side defaults ("
                + ", ".join(c.key for c in prefetch)
                + ") need explicit values in a multi-row or INSERT ... SELECT statement"
            )
        update = isinstance(stmt, Update)
        values = {c.key: _python_default(c, update=update) for c in prefetch}
        compiled = _compile(stmt.values(values))
        if compiled.insert_prefetch or compiled.update_prefetch:  # pragma: no cover
            raise DispatchRenderError("Python-side column defaults could not be rendered")
    return str(compiled)


def _compile(stmt: Any) -> SQLCompiler:
    try:
        compiled = stmt.compile(dialect=RENDER_DIALECT, compile_kwargs={"literal_binds": True})
    except DispatchRenderError:
        raise
    except sa_exc.CompileError as err:
        raise DispatchRenderError(f"cannot render statement for dispatch: {err}") from err
    if not isinstance(compiled, SQLCompiler):  # DDL
        return _DDLResult(str(compiled))  # type: ignore[return-value]
    return compiled


class _DDLResult(str):
    insert_prefetch: tuple[()] = ()
    update_prefetch: tuple[()] = ()


def _is_multi_row_or_select(stmt: Insert | Update) -> bool:
    if isinstance(stmt, Insert):
        return bool(stmt._multi_values) or stmt.select is not None
    return False


class _NoContext:
    def __getattr__(self, name: str) -> Any:
        raise DispatchRenderError(
            "a context-sensitive Python column default cannot be computed before dispatch; "
            "give the column an explicit value"
        )


def _python_default(column: Any, *, update: bool) -> Any:
    default = column.onupdate if update else column.default
    if default is None:  # pragma: no cover - SQLAlchemy prefetches only defaulted columns
        raise DispatchRenderError(f"column {column.key!r} has no Python-side default")
    if default.is_scalar:
        return default.arg
    if default.is_callable:
        return default.arg(_NoContext())
    raise DispatchRenderError(  # pragma: no cover - other kinds are not prefetched
        f"cannot compute the default of column {column.key!r}"
    )


# ---------------------------------------------------------------------------
# the helpers


def fire(stmt: str | Executable) -> functions.fire:
    """``pgdispatch.fire(<stmt>)``: run ``stmt`` asynchronously, as soon as possible."""
    return functions.fire(render_sql(stmt))


def snooze(stmt: str | Executable, delay: dt.timedelta | str) -> functions.snooze:
    """``pgdispatch.snooze(<stmt>, delay)``: run ``stmt`` after ``delay``."""
    return functions.snooze(render_sql(stmt), delay)


def dispatch(
    stmt: str | Executable,
    *,
    payload: Any = None,
    delay: dt.timedelta | str | None = None,
    priority: int | None = None,
    max_attempts: int | None = None,
    timeout: dt.timedelta | str | None = None,
    capture: bool | None = None,
    job_key: str | None = None,
) -> functions.dispatch:
    """``pgdispatch.dispatch(<stmt>, ...)``: queue ``stmt`` as a job; returns the job id
    when executed.

    Options left to ``None`` are not passed (the SQL defaults apply). ``payload`` is
    bound as ``jsonb`` and available to the command as ``$1``.
    """
    options = {
        "payload": payload,
        "delay": delay,
        "priority": priority,
        "max_attempts": max_attempts,
        "timeout": timeout,
        "capture": capture,
        "job_key": job_key,
    }
    return functions.dispatch(
        render_sql(stmt), **{key: value for key, value in options.items() if value is not None}
    )
