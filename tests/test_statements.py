"""Rendering SQLAlchemy statements for dispatch: literal rendering, errors, and real
round trips (rendered SQL executed directly, and dispatched jobs run by a worker)."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import ipaddress
import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

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
    PickleType,
    String,
    Table,
    Text,
    Time,
    TypeDecorator,
    Uuid,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, INET, JSON, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sa_pgdispatch import functions as pgf
from sa_pgdispatch.install import install, installed_version
from sa_pgdispatch.statements import (
    DispatchRenderError,
    dispatch,
    fire,
    quote_literal,
    render_sql,
    snooze,
)
from sa_pgdispatch.testing import drain

SCHEMA = "sa_pgd_test_statements"


class Mood(enum.Enum):
    happy = "h"
    sad = "s"


class Upper(TypeDecorator[str]):
    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else value.upper()


metadata = MetaData(schema=SCHEMA)
things = Table(
    "things",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("s", Text),
    Column("n", BigInteger),
    Column("f", Double),
    Column("d", Numeric),
    Column("b", Boolean),
    Column("day", Date),
    Column("ts", DateTime),
    Column("tstz", DateTime(timezone=True)),
    Column("t", Time),
    Column("iv", Interval),
    Column("raw", LargeBinary),
    Column("u", Uuid),
    Column("j", JSONB),
    Column("js", JSON),
    Column("tags", ARRAY(Text)),
    Column("nums", ARRAY(BigInteger)),
    Column("grid", ARRAY(Integer, dimensions=2)),
    Column("mood", Enum(Mood, name="sa_pgd_mood", metadata=metadata)),
    Column("up", Upper),
    Column("pick", PickleType),
    Column("ip", INET),
)


def rendered(stmt: Any) -> str:
    return render_sql(stmt)


# ---------------------------------------------------------------------------------------
# literals (no server)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "'plain'"),
        ("it's", "'it''s'"),
        ("back\\slash", "E'back\\\\slash'"),
        ("both '\\'", "E'both ''\\\\'''"),
        ("é ☃ 𝄞", "'é ☃ 𝄞'"),
        ("", "''"),
        ("100% :x $1 $$ -- /*", "'100% :x $1 $$ -- /*'"),
    ],
)
def test_quote_literal(value, expected):
    assert quote_literal(value) == expected


@pytest.mark.parametrize("bad", ["nul\x00", "lone \ud800 surrogate"])
def test_quote_literal_refuses_what_postgresql_cannot_store(bad):
    with pytest.raises(DispatchRenderError):
        quote_literal(bad)


@pytest.mark.parametrize(
    ("value", "type_", "expected"),
    [
        (None, Text(), "NULL"),
        (True, Boolean(), "true"),
        (False, None, "false"),
        (5, Integer(), "5"),
        (-5, Integer(), "(-5)"),
        (2**70, None, str(2**70)),
        (0.1, Double(), "'0.1'::float8"),
        (float("nan"), None, "'NaN'::float8"),
        (float("inf"), None, "'Infinity'::float8"),
        (float("-inf"), None, "'-Infinity'::float8"),
        (decimal.Decimal("1.50"), Numeric(), "'1.50'::numeric"),
        (decimal.Decimal("-1E+3"), Numeric(), "'-1E+3'::numeric"),
        (decimal.Decimal("NaN"), Numeric(), "'NaN'::numeric"),
        (decimal.Decimal("-Infinity"), Numeric(), "'-Infinity'::numeric"),
        (dt.date(2024, 2, 29), Date(), "'2024-02-29'::date"),
        (
            dt.datetime(2024, 1, 2, 3, 4, 5, 6),
            DateTime(),
            "'2024-01-02T03:04:05.000006'::timestamp",
        ),
        (
            dt.datetime(
                2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30))
            ),
            DateTime(timezone=True),
            "'2024-01-02T03:04:05-03:30'::timestamptz",
        ),
        (dt.time(1, 2, 3), Time(), "'01:02:03'::time"),
        (dt.time(1, 2, 3, tzinfo=dt.timezone.utc), Time(), "'01:02:03+00:00'::timetz"),
        (dt.timedelta(seconds=5), Interval(), "'0 days 5 seconds'::interval"),
        (dt.timedelta(seconds=-1.5), Interval(), "'-1 days 86398.5 seconds'::interval"),
        (b"\x00'\\", LargeBinary(), "E'\\\\x00275c'::bytea"),
        (uuid.UUID(int=1), Uuid(), "'00000000-0000-0000-0000-000000000001'::uuid"),
        ({"a": ["b'", None]}, JSONB(), "'{\"a\": [\"b''\", null]}'::jsonb"),
        ({"a": 1}, JSON(), "'{\"a\": 1}'::json"),
        ({"a": 1}, None, "'{\"a\": 1}'::jsonb"),
        ([1, "x"], None, "'[1, \"x\"]'::jsonb"),
        (None, JSONB(), "'null'::jsonb"),
        (None, JSONB(none_as_null=True), "NULL"),
        (["a", None, "b\\"], ARRAY(Text), "CAST(ARRAY['a', NULL, E'b\\\\'] AS TEXT[])"),
        ([], ARRAY(Integer), "'{}'::INTEGER[]"),
        (
            [[1, 2], [3, -4]],
            ARRAY(Integer, dimensions=2),
            "CAST(ARRAY[ARRAY[1, 2], ARRAY[3, (-4)]] AS INTEGER[][])",
        ),
        (Mood.sad, Enum(Mood), "'sad'"),
        ("happy", Enum(Mood), "'happy'"),
        ("abc", Upper(), "'ABC'"),
        (ipaddress.ip_address("::1"), INET(), "'::1'::inet"),
        (ipaddress.ip_network("10.0.0.0/8"), None, "'10.0.0.0/8'::cidr"),
    ],
)
def test_render_values(value, type_, expected):
    stmt = select(literal(value, type_) if type_ is not None else literal(value))
    assert rendered(stmt) == f"SELECT {expected} AS anon_1"


@pytest.mark.parametrize(
    ("stmt", "message"),
    [
        (select(literal("a\x00b")), "NUL"),
        (text("SELECT :x"), "bound parameter 'x' has no value"),
        (select(bindparam("y", type_=Integer)), "bound parameter 'y' has no value"),
        (select(literal(Mood.happy)), "without an Enum type"),
        (select(literal(object())), "cannot render a value of Python type object"),
        (select(literal(decimal.Decimal("sNaN"))), "signalling NaN"),
        (select(literal({"x": float("nan")})), "JSON"),
        (select(literal({"x": dt.date(2020, 1, 1)})), "JSON"),
        (select(literal([[]], ARRAY(Integer, dimensions=2))), "empty nested arrays"),
        (select(literal("nope", Enum(Mood, validate_strings=True))), "cannot convert"),
        (select(literal({1, 2})), "Python type set"),
    ],
)
def test_render_errors(stmt, message):
    with pytest.raises(DispatchRenderError, match=message):
        render_sql(stmt)


def test_render_error_is_a_value_error():
    assert issubclass(DispatchRenderError, ValueError)


def test_render_statements():
    stmt = insert(things).values(id=1, s="it's", tags=["a"], j={"k": "v\\"}, mood=Mood.happy)
    assert rendered(stmt) == (
        f"INSERT INTO {SCHEMA}.things (id, s, j, tags, mood) VALUES (1, 'it''s', "
        "E'{\"k\": \"v\\\\\\\\\"}'::jsonb, CAST(ARRAY['a'] AS TEXT[]), 'happy')"
    )
    assert rendered(update(things).where(things.c.id == 1).values(n=-2)) == (
        f"UPDATE {SCHEMA}.things SET n=(-2) WHERE {SCHEMA}.things.id = 1"
    )
    assert rendered(delete(things).where(things.c.s.in_(["a", "b"]))) == (
        f"DELETE FROM {SCHEMA}.things WHERE {SCHEMA}.things.s IN ('a', 'b')"
    )
    # text(): bound values and percent signs are rendered as-is (no paramstyle doubling)
    assert rendered(text("SELECT :a, '100%', $1").bindparams(a="x:y")) == (
        "SELECT 'x:y', '100%', $1"
    )
    # LIKE escape characters and negated negative numbers
    assert rendered(select(things.c.id).where(things.c.s.like("a\\%", escape="\\"))).endswith(
        "LIKE E'a\\\\%' ESCAPE E'\\\\'"
    )
    assert rendered(select(-literal(-5))) == "SELECT -(-5) AS anon_1"
    # a string command is SQL already
    assert rendered("SELECT 1") == "SELECT 1"
    with pytest.raises(DispatchRenderError):
        render_sql("   ")
    with pytest.raises(TypeError):
        render_sql(42)  # type: ignore[arg-type]


def test_helpers_build_the_function_calls():
    stmt = insert(things).values(id=1)
    f = fire(stmt)
    assert isinstance(f, pgf.fire)
    s = snooze(stmt, dt.timedelta(seconds=1))
    assert isinstance(s, pgf.snooze)
    d = dispatch(stmt, payload={"a": 1}, priority=2, job_key="k")
    assert isinstance(d, pgf.dispatch)
    compiled = select(d).compile()
    values = [b.value for b in compiled.bind_names]
    assert values == [f"INSERT INTO {SCHEMA}.things (id) VALUES (1)", {"a": 1}, 2, "k"]
    assert "payload => " in str(compiled)
    assert "delay" not in str(compiled)  # options left to None are not passed


def test_orm_statements_render():
    class Base(DeclarativeBase):
        pass

    class Note(Base):
        __tablename__ = "note"
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str]

    assert rendered(select(Note).where(Note.body == "x'y")) == (
        "SELECT note.id, note.body \nFROM note \nWHERE note.body = 'x''y'"
    )
    assert rendered(update(Note).where(Note.id == 3).values(body="\\")) == (
        "UPDATE note SET body=E'\\\\' WHERE note.id = 3"
    )


# ---------------------------------------------------------------------------------------
# against the server


@pytest.fixture(scope="module")
def engine(pgdispatch_engine: Engine) -> Iterator[Engine]:
    with pgdispatch_engine.begin() as conn:
        if installed_version(conn) is None:
            install(conn)
        conn.execute(text("SELECT pgdispatch.stop()"))
        conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
        metadata.create_all(conn)
    yield pgdispatch_engine
    with pgdispatch_engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))


def run_raw(conn: Connection, sql: str) -> None:
    """Execute a rendered command the way a worker does: as plain SQL, no parameters."""
    conn.exec_driver_sql(sql, execution_options={"no_parameters": True})


AWKWARD: dict[str, Any] = {
    "s": "it's a 'quote', a \\ backslash, \\\\ two, é ☃ 𝄞 \n\t, 100% :name $1 -- /* */ ;",
    "n": -(2**63),
    "f": -0.1,
    "d": decimal.Decimal("-12345678901234567890.000000000000000001"),
    "b": False,
    "day": dt.date(1, 1, 1),
    "ts": dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
    "tstz": dt.datetime(2024, 3, 31, 2, 30, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=45))),
    "t": dt.time(23, 59, 59, 999999),
    "iv": dt.timedelta(days=-3, seconds=1, microseconds=7),
    "raw": bytes(range(256)),
    "u": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "j": {"quote": "'", "backslash": "\\", "uni": "é𝄞", "null": None, "list": [1, 2.5, True]},
    "js": [{"a": "\\'"}],
    "tags": ["a'b", "c\\d", None, "", "NULL", "{}", '"'],
    "nums": [1, -2, None, 2**62],
    "grid": [[1, 2], [3, None]],
    "mood": Mood.sad,
    "up": "shout\\'",
    "pick": {"any": ["python", "object"], "bytes": b"\x00"},
    "ip": ipaddress.ip_interface("192.168.0.1/24"),
}


def expected_row(values: dict[str, Any]) -> dict[str, Any]:
    expected = dict(values)
    expected["up"] = values["up"].upper()
    expected["ip"] = values["ip"]
    return expected


def read_row(conn: Connection, row_id: int) -> dict[str, Any]:
    row = conn.execute(select(things).where(things.c.id == row_id)).mappings().one()
    return dict(row)


@pytest.mark.parametrize("standard_conforming_strings", ["on", "off"])
def test_rendered_insert_round_trips_awkward_values(engine, standard_conforming_strings):
    row_id = 100 if standard_conforming_strings == "on" else 101
    sql = render_sql(insert(things).values(id=row_id, **AWKWARD))
    with engine.connect() as conn:
        conn.exec_driver_sql(f"SET standard_conforming_strings = {standard_conforming_strings}")
        try:
            run_raw(conn, sql)
            got = read_row(conn, row_id)
        finally:
            conn.rollback()
            conn.exec_driver_sql("RESET standard_conforming_strings")
    got.pop("id")
    got["ip"] = ipaddress.ip_interface(got["ip"])
    assert got == expected_row(AWKWARD)


def test_rendered_null_everywhere(engine):
    with engine.connect() as conn:
        nulls = {c.name: None for c in things.columns if c.name != "id"}
        run_raw(conn, render_sql(insert(things).values(id=102, **nulls)))
        got = read_row(conn, 102)
        conn.rollback()
    got.pop("id")
    assert got == nulls


def test_dispatched_statements_run_with_exactly_those_values(engine):
    with engine.begin() as conn:
        job_ids = [
            conn.scalar(dispatch(insert(things).values(id=1, **AWKWARD))),
            conn.scalar(
                dispatch(insert(things).values(id=2, s="to update", tags=["x"]), priority=5)
            ),
        ]
    drain(engine)
    with engine.begin() as conn:
        conn.execute(
            fire(
                update(things)
                .where(things.c.id == 2, things.c.s == "to update")
                .values(s=AWKWARD["s"], tags=AWKWARD["tags"], j=None)
            )
        )
        conn.execute(
            snooze(insert(things).values(id=3, s="snoozed é"), dt.timedelta(milliseconds=1))
        )
        conn.execute(
            fire(
                text("INSERT INTO sa_pgd_test_statements.things (id, s) VALUES (4, :s)").bindparams(
                    s="text() with 'quotes' and \\"
                )
            )
        )
        conn.execute(fire(delete(things).where(things.c.s.in_(["never", "ever"]))))
    time.sleep(0.05)
    drain(engine)
    with engine.connect() as conn:
        states = conn.execute(
            text("SELECT id, state, error FROM pgdispatch.jobs WHERE id = ANY(:ids)"),
            {"ids": job_ids},
        ).all()
        assert {s.state for s in states} == {"succeeded"}, states
        one = read_row(conn, 1)
        two = read_row(conn, 2)
        three = read_row(conn, 3)
        four = read_row(conn, 4)
        # like a bound None, a rendered None for a JSON column is the JSON null
        assert conn.scalar(text(f"SELECT jsonb_typeof(j) FROM {SCHEMA}.things WHERE id = 2")) == (
            "null"
        )
    one.pop("id")
    one["ip"] = ipaddress.ip_interface(one["ip"])
    assert one == expected_row(AWKWARD)
    assert two["s"] == AWKWARD["s"]
    assert two["tags"] == AWKWARD["tags"]
    assert two["j"] is None
    assert three["s"] == "snoozed é"
    assert four["s"] == "text() with 'quotes' and \\"


def test_injection_through_values_is_data(engine):
    evil = "x'); DROP TABLE sa_pgd_test_statements.things; --"
    evil2 = "x\\'); DROP TABLE sa_pgd_test_statements.things; --"
    with engine.begin() as conn:
        conn.execute(fire(insert(things).values(id=10, s=evil, tags=[evil2], j={"k": evil2})))
    drain(engine)
    with engine.connect() as conn:
        row = read_row(conn, 10)
    assert row["s"] == evil
    assert row["tags"] == [evil2]
    assert row["j"] == {"k": evil2}


def test_orm_session_dispatch(engine):
    class Base(DeclarativeBase):
        pass

    class Thing(Base):
        __table__ = things

    with Session(engine) as session:
        job_id = session.scalar(
            dispatch(update(Thing).where(things.c.id == 10).values(s="orm \\ é"))
        )
        session.commit()
    drain(engine)
    with engine.connect() as conn:
        assert read_row(conn, 10)["s"] == "orm \\ é"
        state = conn.scalar(text("SELECT state FROM pgdispatch.jobs WHERE id = :i"), {"i": job_id})
    assert state == "succeeded"


def test_float_and_decimal_specials_round_trip(engine):
    values = [
        0.0,
        -0.0,
        1e-310,
        5e-324,
        1.7976931348623157e308,
        float("inf"),
        float("-inf"),
        float("nan"),
        0.1 + 0.2,
        -1 / 3,
    ]
    with engine.connect() as conn:
        for i, v in enumerate(values):
            run_raw(conn, render_sql(insert(things).values(id=200 + i, f=v)))
            got = read_row(conn, 200 + i)["f"]
            assert (math.isnan(got) and math.isnan(v)) or (
                got == v and math.copysign(1, got) == math.copysign(1, v)
            ), (v, got)
        for i, d in enumerate(["NaN", "Infinity", "-Infinity", "0E-20", "-0", "1E+30"]):
            value = decimal.Decimal(d)
            run_raw(conn, render_sql(insert(things).values(id=300 + i, d=value)))
            got = read_row(conn, 300 + i)["d"]
            assert (got.is_nan() and value.is_nan()) or got == value
        conn.rollback()


def test_compare_with_function_expression(engine):
    # the rendered command can itself use SQL functions and casts
    with engine.connect() as conn:
        run_raw(
            conn,
            render_sql(insert(things).values(id=400, s=func.upper("é'\\"), n=func.length("ab"))),
        )
        row = read_row(conn, 400)
        conn.rollback()
    assert row["s"] == "É'\\"
    assert row["n"] == 2


def test_string_length_limits_are_not_render_errors(engine):
    # rendering never truncates: an over-long value fails in the database, loudly
    short = Table("short", MetaData(), Column("v", String(3)), schema=SCHEMA)
    with engine.connect() as conn:
        short.create(conn)
        with pytest.raises(Exception, match="too long"):
            run_raw(conn, render_sql(insert(short).values(v="abcd")))
        conn.rollback()


# ---------------------------------------------------------------------------------------
# Python-side column defaults and implicit RETURNING


def default_columns(*, context_sensitive: bool = True) -> list[Column[Any]]:
    columns: list[Column[Any]] = [
        Column("id", Integer, primary_key=True),
        Column("token", Uuid, default=uuid.uuid4),
        Column("status", Text, default="new", onupdate="changed"),
        Column("made", DateTime, server_default=func.now()),
    ]
    if context_sensitive:
        columns.append(
            Column("copy", Integer, default=lambda ctx: ctx.get_current_parameters()["id"])
        )
    return columns


with_defaults = Table("with_defaults", MetaData(), *default_columns())


def test_python_defaults_are_computed_and_rendered():
    sql = render_sql(insert(with_defaults).values(id=1, copy=5))
    assert sql.startswith("INSERT INTO with_defaults (id, token, status, copy) VALUES (1, '")
    assert sql.endswith("'::uuid, 'new', 5)")
    uuid.UUID(sql.split("'")[1])  # a real, freshly computed UUID
    assert render_sql(update(with_defaults).values(id=2)) == (
        "UPDATE with_defaults SET id=2, status='changed'"
    )
    # explicit values win over defaults
    assert render_sql(insert(with_defaults).values(id=1, token=None, status=None, copy=1)) == (
        "INSERT INTO with_defaults (id, token, status, copy) VALUES (1, NULL, NULL, 1)"
    )


def test_no_implicit_returning_but_explicit_returning_kept():
    sql = render_sql(insert(with_defaults).values(status="s", token=None, copy=1))
    assert "RETURNING" not in sql
    sql = render_sql(insert(with_defaults).values(id=1, copy=1).returning(with_defaults.c.id))
    assert sql.endswith(" RETURNING with_defaults.id")


@pytest.mark.parametrize(
    ("stmt", "message"),
    [
        (insert(with_defaults).values(id=1), "context-sensitive"),
        (
            insert(with_defaults).values([{"id": 1, "copy": 1}, {"id": 2, "copy": 2}]),
            "need explicit values in a multi-row",
        ),
        (
            insert(with_defaults).from_select(["id"], select(literal(1))),
            "need explicit values in a multi-row or INSERT ... SELECT",
        ),
    ],
)
def test_python_defaults_that_cannot_be_computed(stmt, message):
    with pytest.raises(DispatchRenderError, match=message):
        render_sql(stmt)


def test_python_defaults_round_trip(engine):
    table = Table(
        "with_defaults", MetaData(schema=SCHEMA), *default_columns(context_sensitive=False)
    )
    with engine.connect() as conn:
        table.create(conn)
        run_raw(conn, render_sql(insert(table).values(id=1)))
        run_raw(conn, render_sql(update(table).where(table.c.id == 1).values(id=2)))
        row = conn.execute(select(table)).one()
        conn.rollback()
    assert row.id == 2
    assert isinstance(row.token, uuid.UUID)
    assert row.status == "changed"
    assert row.made is not None
