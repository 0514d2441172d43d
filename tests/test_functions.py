"""func.pgdispatch.* generic functions: compilation, and real calls against the server."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Integer,
    MetaData,
    Table,
    Text,
    func,
    insert,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import INTERVAL, JSONB
from sqlalchemy.orm import Session
from sqlalchemy.sql import sqltypes

import sa_pgdispatch.functions as pgf
from sa_pgdispatch.install import install, installed_version
from sa_pgdispatch.testing import drain

PG = postgresql.dialect()
SCHEMA = "sa_pgd_test_functions"


def sql(expr: object) -> str:
    return str(expr.compile(dialect=PG))  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------
# compilation


@pytest.mark.parametrize(
    ("name", "cls", "args", "rtype"),
    [
        ("fire", pgf.fire, ("SELECT 1",), pgf.VOID),
        ("snooze", pgf.snooze, ("SELECT 1", dt.timedelta(seconds=1)), pgf.VOID),
        ("dispatch", pgf.dispatch, ("SELECT 1",), sqltypes.BigInteger),
        ("exec", pgf.exec_, ("SELECT 1",), sqltypes.BigInteger),
        ("fetch_results", pgf.fetch_results, (1,), JSONB),
        ("cancel", pgf.cancel, (1,), sqltypes.Boolean),
    ],
)
def test_registered_schema_qualified_and_typed(name, cls, args, rtype):
    expr = getattr(func.pgdispatch, name)(*args)
    assert type(expr) is cls
    assert isinstance(expr.type, rtype)
    assert sql(select(expr)).startswith(f"SELECT pgdispatch.{name}(")


def test_named_arguments_render_as_postgresql_named_notation():
    expr = func.pgdispatch.dispatch(
        "SELECT 1",
        job_key="k",
        payload={"a": 1},
        delay=dt.timedelta(seconds=5),
        priority=3,
        max_attempts=2,
        timeout=dt.timedelta(minutes=1),
        capture=True,
    )
    rendered = sql(select(expr))
    assert rendered.startswith("SELECT pgdispatch.dispatch(%(param_1)s::VARCHAR, job_key => ")
    for name in ("payload", "delay", "priority", "max_attempts", "timeout", "capture", "job_key"):
        assert f"{name} => %(" in rendered
    assert "payload => %(param_3)s::JSONB" in rendered
    assert "delay => %(param_4)s::INTERVAL" in rendered


def test_bind_types():
    expr = func.pgdispatch.dispatch(
        "c",
        payload=[1],
        delay="1 second",
        priority=1,
        max_attempts=1,
        timeout="2 s",
        capture=False,
        job_key="k",
    )
    compiled = select(expr).compile(dialect=PG)
    by_value = {repr(b.value): type(b.type) for b in compiled.bind_names}
    assert by_value["'c'"] is sqltypes.Text
    assert issubclass(by_value["[1]"], JSONB)
    assert issubclass(by_value["'1 second'"], INTERVAL)
    assert issubclass(by_value["'2 s'"], INTERVAL)
    assert by_value["'k'"] is sqltypes.Text
    assert by_value["False"] is sqltypes.Boolean
    snooze = select(func.pgdispatch.snooze("c", dt.timedelta(1))).compile(dialect=PG)
    assert [type(b.type) for b in snooze.bind_names] == [sqltypes.Text, INTERVAL]
    exec_ = select(func.pgdispatch.exec("c", 3)).compile(dialect=PG)
    assert [type(b.type) for b in exec_.bind_names] == [sqltypes.Text, sqltypes.BigInteger]
    for fn in (func.pgdispatch.cancel, func.pgdispatch.fetch_results):
        compiled = select(fn(7)).compile(dialect=PG)
        assert [type(b.type) for b in compiled.bind_names] == [sqltypes.BigInteger]


def test_positional_and_expression_arguments():
    col = Column("cmd", Text)
    rendered = sql(select(func.pgdispatch.exec(col, 5)))
    assert rendered.startswith("SELECT pgdispatch.exec(cmd, %(param_1)s::BIGINT)")
    rendered = sql(select(func.pgdispatch.dispatch(col, payload=func.to_jsonb(col))))
    assert "payload => to_jsonb(cmd)" in rendered


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: func.pgdispatch.dispatch(), "missing required argument"),
        (lambda: func.pgdispatch.dispatch("x", paylod=1), "unexpected keyword argument 'paylod'"),
        (lambda: func.pgdispatch.snooze("x"), "missing required argument"),
        (lambda: func.pgdispatch.cancel(1, 2), "at most 1 positional"),
        (lambda: func.pgdispatch.exec("x", 1, delay=2), "multiple values for 'delay'"),
        (lambda: func.pgdispatch.fire("x", command="y"), "multiple values"),
    ],
)
def test_argument_errors(call, message):
    with pytest.raises(TypeError, match=message):
        call()


def test_named_argument_name_is_checked():
    with pytest.raises(ValueError, match="invalid argument name"):
        pgf.NamedArgument("x => 1); DROP TABLE t; --", pgf._arg(1, sqltypes.Integer()))


def test_cache_keys_distinguish_named_arguments():
    a = select(func.pgdispatch.dispatch("c", delay=dt.timedelta(1)))
    b = select(func.pgdispatch.dispatch("d", delay=dt.timedelta(2)))
    c = select(func.pgdispatch.dispatch("c", timeout=dt.timedelta(1)))
    assert a._generate_cache_key() == b._generate_cache_key()
    assert a._generate_cache_key() != c._generate_cache_key()


def test_from_select_compiles():
    t = Table("log", MetaData(), Column("job_id", BigInteger))
    stmt = insert(t).from_select(["job_id"], select(func.pgdispatch.dispatch("SELECT 1")))
    assert sql(stmt) == (
        "INSERT INTO log (job_id) SELECT pgdispatch.dispatch(%(param_1)s::VARCHAR) AS dispatch_1"
    )


# ---------------------------------------------------------------------------------------
# against the server


@pytest.fixture(scope="module")
def engine(pgdispatch_engine: Engine) -> Iterator[Engine]:
    """pgdispatch installed, this role's background workers stopped (jobs run only when
    the test drains them), a schema for the test tables."""
    with pgdispatch_engine.begin() as conn:
        if installed_version(conn) is None:
            install(conn)
        conn.execute(text("SELECT pgdispatch.stop()"))
        conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
        conn.execute(text(f"CREATE TABLE {SCHEMA}.effect (id serial PRIMARY KEY, v text)"))
    yield pgdispatch_engine
    with pgdispatch_engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))


def job(engine: Engine, job_id: int | None) -> dict[str, object]:
    with engine.connect() as conn:
        row = (
            conn.execute(text("SELECT * FROM pgdispatch.jobs WHERE id = :id"), {"id": job_id})
            .mappings()
            .one()
        )
        return dict(row)


def effects(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(text(f"SELECT v FROM {SCHEMA}.effect ORDER BY id")))


def test_each_function_returns_the_right_python_type(engine: Engine):
    cmd = f"INSERT INTO {SCHEMA}.effect (v) VALUES ('typed')"
    with engine.begin() as conn:
        assert conn.scalar(select(func.pgdispatch.fire(cmd))) is None
        assert conn.scalar(select(func.pgdispatch.snooze(cmd, dt.timedelta(hours=1)))) is None
        job_id = conn.scalar(select(func.pgdispatch.dispatch(cmd)))
        later = conn.scalar(select(func.pgdispatch.dispatch(cmd, delay=dt.timedelta(hours=1))))
        exec_id = conn.scalar(select(func.pgdispatch.exec("SELECT 41 + 1 AS answer")))
    assert type(job_id) is int
    assert type(exec_id) is int
    with engine.begin() as conn:
        assert conn.scalar(select(func.pgdispatch.fetch_results(exec_id))) is None
        assert conn.scalar(select(func.pgdispatch.cancel(later))) is True
    drain(engine)
    with engine.begin() as conn:
        results = conn.scalar(select(func.pgdispatch.fetch_results(exec_id)))
        assert isinstance(results, dict)
        assert results["status"] == "success"
        assert results["job_id"] == exec_id
        assert "42" in str(results["result"])
        assert conn.scalar(select(func.pgdispatch.cancel(job_id))) is False
    assert job(engine, job_id)["state"] == "succeeded"
    assert job(engine, later)["state"] == "cancelled"
    assert effects(engine).count("typed") == 2  # fire + dispatch; the snooze waits an hour


def test_dispatch_options_reach_the_queue(engine: Engine):
    with engine.begin() as conn:
        job_id = conn.scalar(
            select(
                func.pgdispatch.dispatch(
                    f"INSERT INTO {SCHEMA}.effect (v) SELECT $1->>'v'",
                    payload={"v": "it's \\ é"},
                    delay=dt.timedelta(minutes=5),
                    priority=7,
                    max_attempts=3,
                    timeout=dt.timedelta(seconds=30),
                    capture=True,
                    job_key="functions-options",
                )
            )
        )
    row = job(engine, job_id)
    assert row["payload"] == {"v": "it's \\ é"}
    assert row["priority"] == 7
    assert row["max_attempts"] == 3
    assert row["timeout"] == dt.timedelta(seconds=30)
    assert row["capture"] is True
    assert row["job_key"] == "functions-options"
    assert row["run_at"] - row["created_at"] == dt.timedelta(minutes=5)  # type: ignore[operator]
    with engine.begin() as conn:
        again = conn.scalar(
            select(func.pgdispatch.dispatch("SELECT 1", job_key="functions-options"))
        )
        assert again == job_id
        assert conn.scalar(select(func.pgdispatch.cancel(job_id))) is True


def test_payload_runs_as_dollar_one(engine: Engine):
    with engine.begin() as conn:
        conn.execute(
            func.pgdispatch.dispatch(
                f"INSERT INTO {SCHEMA}.effect (v) SELECT $1->>'v'", payload={"v": "payload-1"}
            )
        )
    drain(engine)
    assert "payload-1" in effects(engine)


def test_insert_from_select_and_orm_session(engine: Engine):
    log = Table("log", MetaData(), Column("job_id", BigInteger), schema=SCHEMA)
    with engine.begin() as conn:
        log.create(conn)
        conn.execute(
            insert(log).from_select(
                ["job_id"],
                select(
                    func.pgdispatch.dispatch(
                        literal_column(
                            f"'INSERT INTO {SCHEMA}.effect (v) VALUES (''from-select-' "
                            "|| g || ''')'"
                        ),
                        priority=literal_column("g", Integer),
                    )
                ).select_from(func.generate_series(1, 3).alias("g")),
            )
        )
    with Session(engine) as session:
        orm_id = session.scalar(
            select(func.pgdispatch.dispatch(f"INSERT INTO {SCHEMA}.effect (v) VALUES ('orm')"))
        )
        session.commit()
    assert type(orm_id) is int
    with engine.connect() as conn:
        ids = list(conn.scalars(select(log.c.job_id)))
    assert len(ids) == 3
    drain(engine)
    got = effects(engine)
    assert {"from-select-1", "from-select-2", "from-select-3", "orm"} <= set(got)
    assert all(job(engine, i)["state"] == "succeeded" for i in [*ids, orm_id])
