"""Typed SQLAlchemy functions for the ``pgdispatch`` SQL API.

Importing this module registers one :class:`~sqlalchemy.sql.functions.GenericFunction`
per SQL function of the dispatcher in the function package ``"pgdispatch"``, so that::

    from sqlalchemy import func, select

    select(func.pgdispatch.dispatch("SELECT app.f($1)", payload={"id": 1}))

renders the schema-qualified call ``pgdispatch.dispatch(...)`` with the right
return type (``BigInteger`` here) and typed bind parameters. Optional arguments
render as PostgreSQL named arguments (``payload => %(param)s``), so any subset may be
given in any order.

=====================  =================  ====================================
function               SQLAlchemy type    Python value
=====================  =================  ====================================
``fire``               ``VOID``           ``None`` (SQL ``void``; a ``NullType``)
``snooze``             ``VOID``           ``None`` (SQL ``void``; a ``NullType``)
``dispatch``           ``BigInteger``     ``int`` (job id)
``exec``               ``BigInteger``     ``int`` (job id)
``fetch_results``      ``JSONB``          decoded JSON or ``None``
``cancel``             ``Boolean``        ``bool``
=====================  =================  ====================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from sqlalchemy import types as sqltypes
from sqlalchemy.dialects.postgresql import INTERVAL, JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import elements
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import literal
from sqlalchemy.sql.functions import GenericFunction
from sqlalchemy.sql.visitors import InternalTraversal

from .errors import ArgumentError, ArgumentTypeError

__all__ = [
    "PACKAGE",
    "VOID",
    "NamedArgument",
    "cancel",
    "dispatch",
    "exec_",
    "fetch_results",
    "fire",
    "snooze",
]

PACKAGE = "pgdispatch"
"""The SQL schema and the SQLAlchemy function package of the dispatcher."""


class VOID(sqltypes.NullType):
    """The SQL ``void`` return type: a :class:`~sqlalchemy.types.NullType` whose result
    value is always ``None`` (drivers return ``''`` for ``void``)."""

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], None]:
        def process(value: Any) -> None:
            return None

        return process


class NamedArgument(elements.ColumnElement[Any]):
    """A PostgreSQL named function argument: ``name => value``.

    ``name`` is one of the fixed parameter names of the SQL API (never user data);
    it is still validated as a plain lower-case identifier.
    """

    __visit_name__ = "pgdispatch_named_argument"
    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012
        ("name", InternalTraversal.dp_string),
        ("value", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, name: str, value: elements.ColumnElement[Any]) -> None:
        if not name.isidentifier() or not name.isascii() or name.lower() != name:
            raise ArgumentError(f"invalid argument name {name!r}")
        self.name = name
        self.value = value
        self.type = value.type


@compiles(NamedArgument)
def _compile_named_argument(element: NamedArgument, compiler: SQLCompiler, **kw: Any) -> str:
    return f"{element.name} => {compiler.process(element.value, **kw)}"


def _arg(value: Any, type_: sqltypes.TypeEngine[Any]) -> elements.ColumnElement[Any]:
    """Coerce ``value`` to an expression: SQL expressions pass through unchanged,
    plain Python values become bind parameters of ``type_``."""
    if hasattr(value, "__clause_element__"):
        value = value.__clause_element__()
    if isinstance(value, elements.ColumnElement):
        return value
    if isinstance(value, elements.ClauseElement):
        raise ArgumentTypeError(f"expected a column expression or a Python value, got {value!r}")
    return literal(value, type_)


class _PgDispatchFunction(GenericFunction[Any]):
    """Base: a function of the ``pgdispatch`` package, rendered schema-qualified.

    ``_signature`` lists the SQL parameters in order as ``(name, bind type)``; the
    first ``_required`` are required. Positional arguments fill the parameters in
    order; keyword arguments (only for the optional parameters) render as named
    arguments.
    """

    _register = False
    inherit_cache = True
    package = PACKAGE
    _signature: ClassVar[tuple[tuple[str, sqltypes.TypeEngine[Any]], ...]] = ()
    _required: ClassVar[int] = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        type_ = kwargs.pop("type_", None)
        names = [name for name, _ in self._signature]
        if len(args) > len(self._signature):
            raise ArgumentTypeError(
                f"{PACKAGE}.{self.name}() takes at most {len(self._signature)} positional "
                f"arguments ({len(args)} given)"
            )
        parsed: list[elements.ColumnElement[Any]] = [
            _arg(value, self._signature[i][1]) for i, value in enumerate(args)
        ]
        given = set(names[: len(args)])
        for key, value in kwargs.items():
            if key not in names:
                raise ArgumentTypeError(
                    f"{PACKAGE}.{self.name}() got an unexpected keyword argument {key!r}; "
                    f"expected one of {', '.join(names)}"
                )
            if key in given:
                raise ArgumentTypeError(f"{PACKAGE}.{self.name}() got multiple values for {key!r}")
            index = names.index(key)
            if index < self._required:
                # a required parameter given by keyword: keep it positional
                if index != len(parsed):
                    raise ArgumentTypeError(
                        f"{PACKAGE}.{self.name}(): required argument {key!r} must be "
                        "given positionally"
                    )
                parsed.append(_arg(value, self._signature[index][1]))
            given.add(key)
        missing = [name for name in names[: self._required] if name not in given]
        if missing:
            raise ArgumentTypeError(
                f"{PACKAGE}.{self.name}() missing required argument(s): {', '.join(missing)}"
            )
        for key, value in kwargs.items():
            index = names.index(key)
            if index >= self._required:
                parsed.append(NamedArgument(key, _arg(value, self._signature[index][1])))
        if type_ is not None:
            super().__init__(_parsed_args=parsed, type_=type_)
        else:
            super().__init__(_parsed_args=parsed)
        self.packagenames = (PACKAGE,)


class fire(_PgDispatchFunction):
    """``pgdispatch.fire(command text) -> void``: run ``command`` asynchronously."""

    name = "fire"
    type = VOID()
    inherit_cache = True
    package = PACKAGE
    _signature = (("command", sqltypes.Text()),)
    _required = 1


class snooze(_PgDispatchFunction):
    """``pgdispatch.snooze(command text, delay interval) -> void``."""

    name = "snooze"
    type = VOID()
    inherit_cache = True
    package = PACKAGE
    _signature = (("command", sqltypes.Text()), ("delay", INTERVAL()))
    _required = 2


class dispatch(_PgDispatchFunction):
    """``pgdispatch.dispatch(command, payload, delay, priority, max_attempts, timeout,
    capture, job_key) -> bigint`` (the job id).

    Optional arguments are best given by keyword: they render as named arguments.
    """

    name = "dispatch"
    type = sqltypes.BigInteger()
    inherit_cache = True
    package = PACKAGE
    _signature = (
        ("command", sqltypes.Text()),
        ("payload", JSONB(none_as_null=True)),
        ("delay", INTERVAL()),
        ("priority", sqltypes.Integer()),
        ("max_attempts", sqltypes.Integer()),
        ("timeout", INTERVAL()),
        ("capture", sqltypes.Boolean()),
        ("job_key", sqltypes.Text()),
    )
    _required = 1


class exec_(_PgDispatchFunction):
    """``pgdispatch.exec(query text, delay bigint DEFAULT 0) -> bigint`` (pg_later
    compatible; ``delay`` in seconds). Available as ``func.pgdispatch.exec``."""

    name = "exec"
    identifier = "exec"
    type = sqltypes.BigInteger()
    inherit_cache = True
    package = PACKAGE
    _signature = (("query", sqltypes.Text()), ("delay", sqltypes.BigInteger()))
    _required = 1


class fetch_results(_PgDispatchFunction):
    """``pgdispatch.fetch_results(job_id bigint) -> jsonb`` (NULL while unfinished)."""

    name = "fetch_results"
    type = JSONB(none_as_null=True)
    inherit_cache = True
    package = PACKAGE
    _signature = (("job_id", sqltypes.BigInteger()),)
    _required = 1


class cancel(_PgDispatchFunction):
    """``pgdispatch.cancel(job_id bigint) -> boolean``."""

    name = "cancel"
    type = sqltypes.Boolean()
    inherit_cache = True
    package = PACKAGE
    _signature = (("job_id", sqltypes.BigInteger()),)
    _required = 1
