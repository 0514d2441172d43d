"""The psycopg connection behind what the package's functions accept as a connection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias

import psycopg
import sqlalchemy as sa

from .errors import ArgumentTypeError, PgDispatchError

__all__ = ["Connectable", "error_message", "raw_connection"]

Connectable: TypeAlias = "sa.Connection | sa.Engine | psycopg.Connection[Any]"


@contextmanager
def raw_connection(
    conn: Connectable, error: type[Exception] = PgDispatchError
) -> Iterator[psycopg.Connection[Any]]:
    """The psycopg connection behind ``conn``, inside a transaction.

    A SQLAlchemy ``Engine`` gets a transaction of its own, committed at the end; a
    SQLAlchemy ``Connection`` is used in its transaction (begun if none); a psycopg
    connection in its current transaction. ``error`` is raised for a connection that is
    not PostgreSQL through psycopg 3.
    """
    if isinstance(conn, sa.Engine):
        with conn.begin() as sa_conn, raw_connection(sa_conn, error) as raw:
            yield raw
        return
    if isinstance(conn, sa.Connection):
        if conn.dialect.name != "postgresql" or conn.dialect.driver != "psycopg":
            raise error(
                "sa_pgdispatch needs PostgreSQL through psycopg 3 "
                f"(postgresql+psycopg://...), not {conn.dialect.name}+{conn.dialect.driver}"
            )
        if not conn.in_transaction():
            conn.begin()
        driver = conn.connection.driver_connection
        if not isinstance(driver, psycopg.Connection):
            raise error("sa_pgdispatch needs a psycopg 3 (sync) connection")
        yield driver
        return
    if isinstance(conn, psycopg.Connection):
        yield conn
        return
    raise ArgumentTypeError(
        f"expected a SQLAlchemy Connection/Engine or a psycopg Connection, got {conn!r}"
    )


def error_message(exc: psycopg.Error) -> str:
    """A server error's primary message, with its hint in parentheses when it has one."""
    diag = exc.diag
    text = diag.message_primary or str(exc)
    return f"{text} ({diag.message_hint})" if diag.message_hint else text
