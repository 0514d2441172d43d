"""Normalisation through the server: values as PostgreSQL prints them back.

A declared trigger and a reflected one compare equal when PostgreSQL would store the
same thing: intervals are cast and printed back, and a ``when`` condition is deparsed
by ``pg_get_triggerdef()`` from a trigger on a temporary copy of the table. Used by
:meth:`DispatchTrigger.info_for <sa_pgdispatch.triggers.DispatchTrigger.info_for>` and
by reflection.
"""

from __future__ import annotations

import uuid

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.schema import Table
from sqlalchemy.sql.expression import TableClause

from ..errors import UnexpectedStateError
from ..statements import RENDER_DIALECT
from ._sql import standardise_strings, when_from_triggerdef
from .spec import DispatchSpec

__all__ = [
    "current_schema",
    "normalise_interval",
    "normalise_when",
    "standard_conforming_strings",
]


def current_schema(conn: Connection) -> str | None:
    schema = conn.scalar(text("SELECT current_schema()"))
    return None if schema is None else str(schema)


def standard_conforming_strings(conn: Connection) -> bool:
    setting = conn.scalar(text("SELECT current_setting('standard_conforming_strings')"))
    return bool(setting == "on")


def normalise_interval(conn: Connection, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        with conn.begin_nested():
            result = conn.scalar(text("SELECT CAST(CAST(:v AS interval) AS text)"), {"v": value})
    except sa_exc.DBAPIError:
        return value  # not an interval: it cannot equal a valid one
    return str(result)


def normalise_when(
    conn: Connection, spec: DispatchSpec, table: Table | TableClause, when: str
) -> str:
    """``when`` as pg_get_triggerdef() prints it, from a trigger on a temporary copy
    (``LIKE``) of the table, inside a savepoint that is rolled back.

    The statements run as plain SQL without parameters (no placeholder parsing, so no
    ``%`` doubling whatever the driver's paramstyle)."""
    prep = RENDER_DIALECT.identifier_preparer
    source = prep.format_table(table)
    temp = f"pgdispatch_when_{uuid.uuid4().hex[:12]}"
    events = " OR ".join(e.upper() for e in spec.events)
    if "update" in spec.events and spec.columns:
        events = events.replace(
            "UPDATE", "UPDATE OF " + ", ".join(prep.quote(c) for c in spec.columns)
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
    normalised = when_from_triggerdef(str(definition))
    if normalised is None:  # pragma: no cover - the trigger has a WHEN clause
        raise UnexpectedStateError(f"no WHEN clause in {definition!r}")
    return standardise_strings(
        normalised, standard_conforming_strings=standard_conforming_strings(conn)
    )
