"""Property: random values survive render -> execute exactly.

A row of random values is inserted twice into a temporary table: once through the SQL
rendered by ``render_sql`` (executed as plain SQL, the way a worker runs a job, under a
random ``standard_conforming_strings``), once through ordinary bound parameters. Both
rows must read back identical, and identical to the Python values where PostgreSQL
stores them exactly. Values PostgreSQL cannot hold (NUL in text) must be refused by the
renderer, never rendered.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    Double,
    Engine,
    Enum,
    Integer,
    Interval,
    LargeBinary,
    MetaData,
    Numeric,
    Table,
    Text,
    Time,
    Uuid,
    insert,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from sa_pgdispatch.statements import DispatchRenderError, render_sql

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy


class Suit(enum.Enum):
    hearts = 1
    spades = 2
    o_quote = 3


metadata = MetaData()
row_table = Table(
    "sa_pgd_property_rows",
    metadata,
    Column("k", Integer),
    Column("s", Text),
    Column("n", BigInteger),
    Column("f", Double),
    Column("d", Numeric),
    Column("b", Boolean),
    Column("day", Date),
    Column("ts", DateTime),
    Column("tstz", DateTime(timezone=True)),
    Column("t", Time),
    Column("tz", Time(timezone=True)),
    Column("iv", Interval),
    Column("raw", LargeBinary),
    Column("u", Uuid),
    Column("j", JSONB),
    Column("tags", ARRAY(Text)),
    Column("nums", ARRAY(BigInteger)),
    Column("suit", Enum(Suit, native_enum=False, length=20)),
    prefixes=["TEMPORARY"],
)

def _rows() -> SearchStrategy[dict[str, Any]]:
    """The random rows. Hypothesis is imported when the test runs, not when pytest
    collects this module: the fast loop (-m "not db", which collects every module) then
    never imports it (~0.8 s, its modules being assertion-rewritten as a plugin's)."""
    from hypothesis import strategies as st

    text_chars = st.text(st.characters(codec="utf-8"), max_size=40)
    json_values = st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(10**30), 10**30)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=10),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=5),
                children,
                max_size=4,
            )
        ),
        max_leaves=12,
    )
    offsets = st.integers(-15 * 3600 + 1, 15 * 3600 - 1).map(
        lambda s: dt.timezone(dt.timedelta(seconds=s))
    )

    return st.fixed_dictionaries(
        {},
        optional={
            "s": st.none() | text_chars,
            "n": st.integers(-(2**63), 2**63 - 1),
            "f": st.floats(),
            "d": st.decimals(
                allow_nan=False, allow_infinity=False, min_value=-(10**40), max_value=10**40
            )
            | st.decimals(allow_nan=False, allow_infinity=False, places=30)
            | st.sampled_from([decimal.Decimal(x) for x in ("NaN", "Infinity", "-Infinity", "-0")]),
            "b": st.booleans(),
            "day": st.dates(),
            "ts": st.datetimes(),
            "tstz": st.datetimes(
                min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 1, 1)
            ).flatmap(lambda d: offsets.map(lambda tz: d.replace(tzinfo=tz))),
            "t": st.times(),
            "tz": st.times().flatmap(lambda t: offsets.map(lambda tz: t.replace(tzinfo=tz))),
            "iv": st.timedeltas(
                min_value=dt.timedelta(days=-(10**6)), max_value=dt.timedelta(days=10**6)
            ),
            "raw": st.binary(max_size=40),
            "u": st.uuids(),
            "j": json_values,
            "tags": st.lists(st.none() | text_chars, max_size=5),
            "nums": st.lists(st.none() | st.integers(-(2**63), 2**63 - 1), max_size=5),
            "suit": st.sampled_from(Suit),
        },
    )


@pytest.fixture(scope="module")
def conn(pgdispatch_engine: Engine) -> Iterator[Connection]:
    with pgdispatch_engine.connect() as connection:
        metadata.create_all(connection)
        yield connection
        connection.rollback()


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, decimal.Decimal) and isinstance(b, decimal.Decimal):
        return (a.is_nan() and b.is_nan()) or a == b
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


def has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list):
        return any(has_nul(v) for v in value)
    return False


def test_render_execute_round_trip(conn: Connection) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    # the examples share the module's connection, as they did when the test itself was
    # the @given function (its health check on function-scoped fixtures then suppressed)
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(row=_rows(), scs=st.sampled_from(["on", "off"]))
    def round_trip(row: dict[str, Any], scs: str) -> None:
        stmt = insert(row_table).values(k=1, **row)
        if any(has_nul(v) for v in row.values()):
            with pytest.raises(DispatchRenderError, match="NUL"):
                render_sql(stmt)
            return
        sql = render_sql(stmt)
        savepoint = conn.begin_nested()
        try:
            conn.exec_driver_sql(f"SET LOCAL standard_conforming_strings = {scs}")
            conn.exec_driver_sql(sql, execution_options={"no_parameters": True})
            conn.exec_driver_sql("SET LOCAL standard_conforming_strings = on")
            conn.execute(insert(row_table).values(k=2, **row))
            got = {
                r.k: r._asdict()
                for r in conn.execute(select(row_table).where(row_table.c.k.in_([1, 2])))
            }
        finally:
            savepoint.rollback()
        rendered_row, bound_row = got[1], got[2]
        for name in row:
            assert same(rendered_row[name], bound_row[name]), (name, sql)
            if name != "j":  # jsonb keeps numbers as numeric: compare with the bound row only
                assert same(rendered_row[name], row[name]), (name, sql)

    round_trip()
