"""DispatchTrigger against the server: create_all / drop_all, side effects through a
Session, definition -> create -> reflect -> compare round trips, and injection attempts."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    Table,
    Text,
    column,
    create_engine,
    delete,
    event,
    insert,
    table,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.schema import CreateSchema, DropSchema

from sa_pgdispatch.errors import PgDispatchError
from sa_pgdispatch.testing import drain
from sa_pgdispatch.triggers import (
    CreateDispatchTrigger,
    DispatchSpec,
    DispatchTrigger,
    DispatchTriggerError,
    DispatchTriggerInfo,
    DropDispatchTrigger,
    IntervalOptionError,
    PgDispatchNotInstalledError,
    create_dispatch_trigger_ddl,
    definitions_equal,
    dispatch_triggers,
    new_row,
    old_row,
    reflect_dispatch_triggers,
)


@pytest.fixture
def app(pgdispatch_db: Engine) -> Iterator[str]:
    """A fresh schema with a side-effect function ``<schema>.record(jsonb)`` that appends
    its argument to ``<schema>.effects``."""
    name = f"trig_{uuid.uuid4().hex[:10]}"
    with pgdispatch_db.begin() as conn:
        conn.execute(CreateSchema(name))
        conn.execute(text(f"CREATE TABLE {name}.effects (id serial PRIMARY KEY, payload jsonb)"))
        conn.execute(
            text(
                f"CREATE FUNCTION {name}.record(p jsonb) RETURNS void LANGUAGE sql AS "
                f"$$ INSERT INTO {name}.effects (payload) VALUES (p) $$"
            )
        )
    yield name
    with pgdispatch_db.begin() as conn:
        conn.execute(DropSchema(name, cascade=True))


def effects(engine: Engine, schema: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.scalars(text(f"SELECT payload FROM {schema}.effects ORDER BY id")))


def trigger_names(conn: Connection, schema: str) -> list[str]:
    return list(
        conn.scalars(
            text(
                "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :s AND NOT t.tgisinternal ORDER BY 1"
            ),
            {"s": schema},
        )
    )


# ---------------------------------------------------------------------------------------
# ORM model, create_all, Session, drop_all


def test_orm_model_dispatches_its_side_effect(pgdispatch_db: Engine, app: str) -> None:
    class Base(DeclarativeBase):
        pass

    class Profile(Base):
        __tablename__ = "profiles"
        __table_args__ = (
            DispatchTrigger("profiles_welcome", "record", delay=dt.timedelta(0), priority=5),
            DispatchTrigger(
                "profiles_email_changed",
                f"{app}.record",
                on="update",
                columns=["email"],
                when=lambda t: new_row(t.c.email).is_distinct_from(old_row(t.c.email)),
            ),
            DispatchTrigger("profiles_gone", "record", on="delete", for_each="statement"),
            {"schema": app},
        )
        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str]
        name: Mapped[str | None]

    Base.metadata.create_all(pgdispatch_db)
    with pgdispatch_db.connect() as conn:
        assert trigger_names(conn, app) == [
            "profiles_email_changed",
            "profiles_gone",
            "profiles_welcome",
        ]
    with Session(pgdispatch_db) as session:
        session.add(Profile(id=1, email="a@example.com", name="O'Brien \\ é"))
        session.commit()
        assert effects(pgdispatch_db, app) == []  # jobs run asynchronously
        drain(pgdispatch_db)
        assert effects(pgdispatch_db, app) == [
            {"id": 1, "email": "a@example.com", "name": "O'Brien \\ é"}
        ]
        profile = session.get(Profile, 1)
        assert profile is not None
        profile.name = "no email change"
        session.commit()
        profile.email = "b@example.com"
        session.commit()
        session.execute(delete(Profile))
        session.commit()
    drain(pgdispatch_db)
    assert effects(pgdispatch_db, app)[1:] == [
        {"id": 1, "email": "b@example.com", "name": "no email change"},
        [{"id": 1, "email": "b@example.com", "name": "no email change"}],
    ]
    with pgdispatch_db.connect() as conn:
        priorities = conn.execute(
            text(
                "SELECT priority FROM pgdispatch.jobs WHERE command = :c AND payload->>'name' "
                "= 'O''Brien \\ é'"
            ),
            {"c": f"SELECT {app}.record($1)"},
        ).scalars()
        assert list(priorities) == [5]

    Base.metadata.drop_all(pgdispatch_db)
    with pgdispatch_db.connect() as conn:
        assert trigger_names(conn, app) == []
        assert reflect_dispatch_triggers(conn, schema=app) == []


def test_drop_all_drops_the_triggers_before_the_tables(pgdispatch_db: Engine, app: str) -> None:
    metadata = MetaData(schema=app)
    Table("a", metadata, Column("id", Integer), DispatchTrigger("a_t", "record"))
    Table("b", metadata, Column("id", Integer), DispatchTrigger("b_t", "record", on="delete"))
    statements: list[str] = []

    metadata.create_all(pgdispatch_db)
    with pgdispatch_db.connect() as conn:
        assert trigger_names(conn, app) == ["a_t", "b_t"]
        conn.commit()

    @event.listens_for(pgdispatch_db, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    try:
        metadata.drop_all(pgdispatch_db)
    finally:
        event.remove(pgdispatch_db, "before_cursor_execute", record)
    drops = [s.strip() for s in statements if s.strip().startswith("DROP")]
    assert drops.index(f"DROP TRIGGER IF EXISTS a_t ON {app}.a") < drops.index(
        f"DROP TABLE {app}.a"
    )
    with pgdispatch_db.connect() as conn:
        assert trigger_names(conn, app) == []


def test_statement_level_triggers_dispatch_one_job_per_statement(
    pgdispatch_db: Engine, app: str
) -> None:
    metadata = MetaData(schema=app)
    items = Table(
        "items",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("v", Text),
        DispatchTrigger("items_new", "record", for_each="statement"),
        DispatchTrigger("items_changed", "record", on="update", for_each="statement"),
    )
    metadata.create_all(pgdispatch_db)
    with pgdispatch_db.begin() as conn:
        conn.execute(insert(items).values([{"id": i, "v": f"v{i}"} for i in range(3)]))
        conn.execute(update(items).where(items.c.id > 100).values(v="none"))  # no row
        conn.execute(update(items).where(items.c.id == 1).values(v="changed"))
    drain(pgdispatch_db)
    got = effects(pgdispatch_db, app)
    assert len(got) == 2
    assert sorted(got[0], key=lambda r: r["id"]) == [{"id": i, "v": f"v{i}"} for i in range(3)]
    assert got[1] == [{"id": 1, "v": "changed"}]


def test_truncate_trigger_dispatches_one_job_and_round_trips(
    pgdispatch_db: Engine, app: str
) -> None:
    metadata = MetaData(schema=app)
    Table(
        "emptied",
        metadata,
        Column("id", Integer, primary_key=True),
        DispatchTrigger("emptied_t", "record", on="truncate", for_each="statement"),
    )
    metadata.create_all(pgdispatch_db)
    with pgdispatch_db.begin() as conn:
        conn.execute(text(f"INSERT INTO {app}.emptied VALUES (1)"))
        conn.execute(text(f"TRUNCATE {app}.emptied"))
    drain(pgdispatch_db)
    assert effects(pgdispatch_db, app) == [[]]
    with pgdispatch_db.begin() as conn:
        (info,) = reflect_dispatch_triggers(conn, schema=app)
        assert (info.events, info.for_each) == (("truncate",), "statement")
        conn.execute(DropDispatchTrigger(info.name, table("emptied", schema=app)))
        for ddl in create_dispatch_trigger_ddl(info.to_trigger(), table("emptied", schema=app)):
            conn.execute(ddl)
        assert reflect_dispatch_triggers(conn, schema=app) == [info]


def test_definer_trigger_makes_its_function_first(pgdispatch_db: Engine, app: str) -> None:
    metadata = MetaData(schema=app)
    Table(
        "owned",
        metadata,
        Column("id", Integer),
        DispatchTrigger("owned_t", "record", security="definer"),
    )
    metadata.create_all(pgdispatch_db)
    with pgdispatch_db.begin() as conn:
        secdef = conn.scalar(
            text(
                "SELECT p.prosecdef FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = :s AND p.proname = 'pgdispatch_definer_trigger'"
            ),
            {"s": app},
        )
        assert secdef is True
        conn.execute(text(f"INSERT INTO {app}.owned VALUES (7)"))
        (info,) = reflect_dispatch_triggers(conn, schema=app)
        assert info.security == "definer"
    drain(pgdispatch_db)
    assert effects(pgdispatch_db, app) == [{"id": 7}]


def test_create_all_needs_pgdispatch(pgdispatch_engine: Engine) -> None:
    """A database without pgdispatch: a clear error, and the transaction is rolled back."""
    dbname = f"sa_pgd_noinstall_{uuid.uuid4().hex[:8]}"
    with pgdispatch_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'CREATE DATABASE "{dbname}"'))
    other = None
    try:
        other = create_engine(pgdispatch_engine.url.set(database=dbname))
        metadata = MetaData()
        Table("t", metadata, Column("id", Integer), DispatchTrigger("t_t", "public.f"))
        with (
            pytest.raises(PgDispatchNotInstalledError, match="not installed"),
            other.begin() as conn,
        ):
            metadata.create_all(conn)
        with other.connect() as conn:
            assert conn.scalar(text("SELECT to_regclass('public.t')")) is None
    finally:
        if other is not None:
            other.dispose()
        with pgdispatch_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{dbname}"'))


def test_unknown_side_effect_function_fails_the_firing_statement(
    pgdispatch_db: Engine, app: str
) -> None:
    metadata = MetaData(schema=app)
    t = Table("t", metadata, Column("id", Integer), DispatchTrigger("t_t", "no_such_fn"))
    metadata.create_all(pgdispatch_db)
    with pytest.raises(DBAPIError, match="does not exist"), pgdispatch_db.begin() as conn:
        conn.execute(insert(t).values(id=1))


# ---------------------------------------------------------------------------------------
# definition -> create -> reflect -> compare


def _definitions(app: str) -> list[DispatchTrigger]:
    return [
        DispatchTrigger("plain", "record"),
        DispatchTrigger("qualified", f"{app}.record"),
        DispatchTrigger("quoted_fn", f'"{app}"."record"'),
        DispatchTrigger("Mixed Case % name", "record"),
        DispatchTrigger("delay_td", "record", delay=dt.timedelta(seconds=5)),
        DispatchTrigger("delay_str", "record", delay="5 seconds"),
        DispatchTrigger("delay_long", "record", delay=dt.timedelta(days=1, microseconds=1)),
        DispatchTrigger("delay_iso", "record", delay="P1DT2H"),
        DispatchTrigger("delay_months", "record", delay="1 mon 2 days"),
        DispatchTrigger("priority", "record", priority=-7),
        DispatchTrigger("attempts", "record", max_attempts=4),
        DispatchTrigger("timeout", "record", timeout=dt.timedelta(minutes=2)),
        DispatchTrigger(
            "all_options",
            "record",
            on=("delete", "insert", "update"),
            delay="90 seconds",
            priority=3,
            max_attempts=2,
            timeout="1 hour",
        ),
        DispatchTrigger("upd_cols", "record", on="update", columns=["status", "Email"]),
        DispatchTrigger("when_text", "record", when="NEW.status IS DISTINCT FROM 'x''y'"),
        DispatchTrigger(
            "when_text_upd",
            "record",
            on="update",
            when="new.status <> old.status AND NEW.\"Email\" LIKE '%@%'",
        ),
        DispatchTrigger("when_backslash", "record", when="NEW.status = E'a\\\\b\\'c'"),
        DispatchTrigger("when_expr", "record", when=column("status") == "it's \\ é"),
        DispatchTrigger(
            "when_callable",
            "record",
            on="update",
            when=lambda t: (new_row(t.c.id) > 10) & t.c.status.in_(["a", "b"]),
        ),
        DispatchTrigger("when_delete", "record", on="delete", when=column("id") < 0),
        DispatchTrigger("stmt_insert", "record", for_each="statement"),
        DispatchTrigger("stmt_update", "record", on="update", for_each="statement"),
        DispatchTrigger("stmt_delete", "record", on="delete", for_each="statement", delay="1s"),
        DispatchTrigger("definer", "record", security="definer", on=("insert", "update")),
    ]


def _round_trip_table(app: str) -> tuple[MetaData, Table]:
    metadata = MetaData(schema=app)
    tbl = Table(
        "round",
        metadata,
        Column("id", Integer),
        Column("status", Text),
        Column("Email", Text),
        *_definitions(app),
    )
    return metadata, tbl


def test_round_trip_every_option(pgdispatch_db: Engine, app: str) -> None:
    metadata, tbl = _round_trip_table(app)
    metadata.create_all(pgdispatch_db)
    with pgdispatch_db.begin() as conn:
        reflected = {i.name: i for i in reflect_dispatch_triggers(conn, schema=app)}
        triggers = dispatch_triggers(tbl)
        assert set(reflected) == {t.name for t in triggers}
        for trig in triggers:
            info = reflected[trig.name]
            assert trig.info_for(tbl, conn) == info, (
                trig.name,
                trig.info_for(tbl, conn).diff(info),
            )
            assert definitions_equal(conn, trig, info, tbl)
            assert info.table_name == "round"
            assert info.schema == app
            assert info.function == f"{app}.record"
            assert info.timing == "after"
        # a few normalised forms, as PostgreSQL prints them
        assert reflected["delay_td"].delay == reflected["delay_str"].delay == "00:00:05"
        assert reflected["delay_long"].delay == "1 day 00:00:00.000001"
        assert reflected["delay_months"].delay == "1 mon 2 days"
        assert reflected["upd_cols"].columns == ("Email", "status")
        assert reflected["all_options"].events == ("insert", "update", "delete")
        assert reflected["when_text"].when == "(new.status IS DISTINCT FROM 'x''y'::text)"
        assert reflected["when_backslash"].when == "(new.status = E'a\\\\b''c'::text)"
        assert reflected["stmt_delete"].for_each == "statement"
        assert reflected["definer"].security == "definer"
        assert reflected["plain"].when is None


def test_differences_are_detected(pgdispatch_db: Engine, app: str) -> None:
    metadata, tbl = _round_trip_table(app)
    metadata.create_all(pgdispatch_db)
    changed = {
        "delay_td": DispatchTrigger("delay_td", "record", delay=dt.timedelta(seconds=6)),
        "priority": DispatchTrigger("priority", "record", priority=7),
        "upd_cols": DispatchTrigger("upd_cols", "record", on="update", columns=["status"]),
        "when_text": DispatchTrigger("when_text", "record", when="NEW.status = 'x''y'"),
        "when_expr": DispatchTrigger("when_expr", "record", when=column("status") == "it's"),
        "plain": DispatchTrigger("plain", "record", on=("insert", "update")),
        "qualified": DispatchTrigger("qualified", "public.record"),
        "stmt_insert": DispatchTrigger("stmt_insert", "record"),
        "definer": DispatchTrigger("definer", "record", on=("insert", "update")),
        "attempts": DispatchTrigger("attempts", "record"),
    }
    with pgdispatch_db.begin() as conn:
        reflected = {i.name: i for i in reflect_dispatch_triggers(conn, schema=app)}
        for name, trig in changed.items():
            assert not definitions_equal(conn, trig, reflected[name], tbl), name
            assert trig.info_for(tbl, conn).diff(reflected[name]), name


def test_reflected_info_recreates_the_same_trigger(pgdispatch_db: Engine, app: str) -> None:
    metadata, _ = _round_trip_table(app)
    metadata.create_all(pgdispatch_db)
    light = table("round", schema=app)
    with pgdispatch_db.begin() as conn:
        before = reflect_dispatch_triggers(conn, schema=app, table_name="round")
        for info in before:
            trig = info.to_trigger()
            for ddl in create_dispatch_trigger_ddl(trig, light, or_replace=True):
                conn.execute(ddl)
        assert reflect_dispatch_triggers(conn, schema=app, table_name="round") == before
        for info in before:
            conn.execute(DropDispatchTrigger(info.name, light))
        for info in before:
            trig = info.to_trigger()
            for ddl in create_dispatch_trigger_ddl(trig, light):
                conn.execute(ddl)
        assert reflect_dispatch_triggers(conn, schema=app, table_name="round") == before


def test_reflection_reads_triggers_made_by_hand(pgdispatch_db: Engine, app: str) -> None:
    with pgdispatch_db.begin() as conn:
        conn.execute(text(f"CREATE TABLE {app}.hand (id int, v text)"))
        conn.execute(
            text(
                f"CREATE TRIGGER hand_t AFTER UPDATE OF v OR INSERT ON {app}.hand FOR EACH ROW "
                "WHEN (NEW.v IS NOT NULL) EXECUTE FUNCTION pgdispatch.trigger("
                f"'{app}.RECORD', ' priority = +010 ', 'foo=bar', 'timeout=30s')"
            )
        )
        conn.execute(
            text(
                f"CREATE TRIGGER other AFTER INSERT ON {app}.hand FOR EACH ROW "
                "EXECUTE FUNCTION suppress_redundant_updates_trigger()"
            )
        )
        (info,) = reflect_dispatch_triggers(conn, schema=app)
    assert info == DispatchTriggerInfo(
        name="hand_t",
        table_name="hand",
        schema=app,
        spec=DispatchSpec(
            f"{app}.record",
            on=("insert", "update"),
            for_each="row",
            columns=("v",),
            when="(new.v IS NOT NULL)",
            priority=10,
            timeout="00:00:30",
        ),
        unknown_options=("foo=bar",),
    )
    assert info.priority == "10"
    with pytest.raises(DispatchTriggerError, match="cannot be expressed"):
        info.to_trigger()


def test_filters(pgdispatch_db: Engine, app: str) -> None:
    metadata = MetaData(schema=app)
    Table("one", metadata, Column("id", Integer), DispatchTrigger("one_t", "record"))
    Table("two", metadata, Column("id", Integer), DispatchTrigger("two_t", "record"))
    metadata.create_all(pgdispatch_db)
    with pgdispatch_db.connect() as conn:
        assert [i.name for i in reflect_dispatch_triggers(conn, schema=app)] == ["one_t", "two_t"]
        assert [i.name for i in reflect_dispatch_triggers(conn, app, "two")] == ["two_t"]
        names = {(i.schema, i.name) for i in reflect_dispatch_triggers(conn)}
        assert {(app, "one_t"), (app, "two_t")} <= names
        assert reflect_dispatch_triggers(conn, schema=app, table_name="nope") == []


def test_table_without_schema_uses_the_default_schema(pgdispatch_db: Engine, app: str) -> None:
    name = f"noschema_{uuid.uuid4().hex[:8]}"
    metadata = MetaData()
    tbl = Table(name, metadata, Column("id", Integer), DispatchTrigger(f"{name}_t", "record"))
    with pgdispatch_db.begin() as conn:
        conn.execute(text(f"SET LOCAL search_path = {app}, public"))
        metadata.create_all(conn)
        (info,) = reflect_dispatch_triggers(conn, table_name=name)
        assert info.schema == app
        assert info.function == f"{app}.record"
        conn.execute(insert(tbl).values(id=3))
        conn.execute(text(f"DROP TABLE {app}.{name}"))
    drain(pgdispatch_db)
    assert effects(pgdispatch_db, app) == [{"id": 3}]


# ---------------------------------------------------------------------------------------
# injection attempts: rejected, or quoted and inert


EVIL = "x'); DROP TABLE {victim}; --"
EVIL_Q = 'x"; DROP TABLE {victim}; --'


@pytest.fixture
def victim(pgdispatch_db: Engine, app: str) -> Callable[[], bool]:
    with pgdispatch_db.begin() as conn:
        conn.execute(text(f"CREATE TABLE {app}.victim (id int)"))

    def alive() -> bool:
        with pgdispatch_db.connect() as conn:
            return conn.scalar(text("SELECT to_regclass(:t)"), {"t": f"{app}.victim"}) is not None

    return alive


@pytest.mark.parametrize("template", [EVIL, EVIL_Q])
def test_injection_through_trigger_table_and_column_names(
    pgdispatch_db: Engine, app: str, victim: Callable[[], bool], template: str
) -> None:
    evil = template.format(victim=f"{app}.victim")[:60]
    metadata = MetaData(schema=app)
    tbl = Table(
        evil,
        metadata,
        Column(evil, Text),
        DispatchTrigger(evil, "record", on=("insert", "update"), columns=[evil]),
    )
    metadata.create_all(pgdispatch_db)
    assert victim()
    with pgdispatch_db.begin() as conn:
        (info,) = reflect_dispatch_triggers(conn, schema=app, table_name=evil)
        assert info.name == evil
        assert info.columns == (evil,)
        assert definitions_equal(conn, dispatch_triggers(tbl)[0], info)
        conn.execute(insert(tbl).values({evil: "v"}))
    drain(pgdispatch_db)
    assert effects(pgdispatch_db, app) == [{evil: "v"}]
    metadata.drop_all(pgdispatch_db)
    assert victim()


@pytest.mark.parametrize("template", [EVIL, EVIL_Q])
def test_injection_through_schema_names(
    pgdispatch_db: Engine, app: str, victim: Callable[[], bool], template: str
) -> None:
    evil = template.format(victim=f"{app}.victim")[:60]
    metadata = MetaData(schema=evil)
    tbl = Table(
        "t",
        metadata,
        Column("id", Integer),
        DispatchTrigger("t_t", f"{app}.record"),
        DispatchTrigger("t_d", f"{app}.record", security="definer", on="delete"),
    )
    with pgdispatch_db.begin() as conn:
        conn.execute(CreateSchema(evil))
    try:
        metadata.create_all(pgdispatch_db)
        assert victim()
        with pgdispatch_db.begin() as conn:
            infos = reflect_dispatch_triggers(conn, schema=evil)
            assert [i.name for i in infos] == ["t_d", "t_t"]
            for trig, info in zip(
                sorted(dispatch_triggers(tbl), key=lambda t: t.name), infos, strict=True
            ):
                assert definitions_equal(conn, trig, info)
            conn.execute(insert(tbl).values(id=1))
            conn.execute(delete(tbl))
        drain(pgdispatch_db)
        assert effects(pgdispatch_db, app) == [{"id": 1}, {"id": 1}]
        metadata.drop_all(pgdispatch_db)
        assert victim()
    finally:
        with pgdispatch_db.begin() as conn:
            conn.execute(DropSchema(evil, cascade=True))


def test_injection_through_function_names(
    pgdispatch_db: Engine, app: str, victim: Callable[[], bool]
) -> None:
    with pytest.raises(DispatchTriggerError):
        DispatchTrigger("t", f"{app}.record'); DROP TABLE {app}.victim; --")
    with pytest.raises(DispatchTriggerError):
        DispatchTrigger("t", f"{app}.record; DROP TABLE {app}.victim")
    # a legal but hostile quoted identifier: quoted inside an escaped literal, inert
    hostile = f'"x\'); DROP TABLE {app}.victim; --\\".fn'
    metadata = MetaData(schema=app)
    tbl = Table("t", metadata, Column("id", Integer), DispatchTrigger("t_t", hostile))
    metadata.create_all(pgdispatch_db)
    assert victim()
    with pgdispatch_db.begin() as conn:
        (info,) = reflect_dispatch_triggers(conn, schema=app, table_name="t")
        assert info.function == f'"x\'); DROP TABLE {app}.victim; --\\".fn'
        assert definitions_equal(conn, dispatch_triggers(tbl)[0], info)
    with pytest.raises(DBAPIError, match="does not exist"), pgdispatch_db.begin() as conn:
        conn.execute(insert(tbl).values(id=1))
    assert victim()


def test_injection_through_when_text(
    pgdispatch_db: Engine, app: str, victim: Callable[[], bool]
) -> None:
    for evil in [
        f"true) EXECUTE FUNCTION pgdispatch.trigger('{app}.record'); DROP TABLE {app}.victim; --",
        f"true); DROP TABLE {app}.victim; SELECT (true",
        f"NEW.id = 1 -- ) EXECUTE FUNCTION x(); DROP TABLE {app}.victim",
        f"NEW.v = 'a\\'); DROP TABLE {app}.victim; --'",
        f"NEW.v = $$ $$); DROP TABLE {app}.victim; --",
    ]:
        with pytest.raises(DispatchTriggerError):
            DispatchTrigger("t", "record", when=evil)
    # hostile text inside a well-formed literal stays data
    data = f"'); DROP TABLE {app}.victim; --"
    quoted = data.replace("'", "''")
    metadata = MetaData(schema=app)
    tbl = Table(
        "t",
        metadata,
        Column("id", Integer),
        Column("v", Text),
        DispatchTrigger("by_text", "record", when=f"NEW.v = '{quoted}'"),
        DispatchTrigger("by_expr", "record", when=column("v") == data + "\\"),
    )
    metadata.create_all(pgdispatch_db)
    assert victim()
    with pgdispatch_db.begin() as conn:
        rows: list[dict[str, Any]] = [
            {"id": 1, "v": data},
            {"id": 2, "v": data + "\\"},
            {"id": 3, "v": None},
        ]
        conn.execute(insert(tbl), rows)
        for info in reflect_dispatch_triggers(conn, schema=app, table_name="t"):
            trig = next(t for t in dispatch_triggers(tbl) if t.name == info.name)
            assert definitions_equal(conn, trig, info)
    drain(pgdispatch_db)
    assert sorted(e["id"] for e in effects(pgdispatch_db, app)) == [1, 2]
    assert victim()


def test_injection_through_option_values() -> None:
    for evil in ["5 seconds', 'priority=1", "1 day'); DROP TABLE x; --", "1\\' day"]:
        with pytest.raises(DispatchTriggerError, match="not an interval"):
            DispatchTrigger("t", "record", delay=evil)
        with pytest.raises(DispatchTriggerError, match="not an interval"):
            DispatchTrigger("t", "record", timeout=evil)


def test_or_replace_changes_a_trigger_in_place(pgdispatch_db: Engine, app: str) -> None:
    metadata = MetaData(schema=app)
    tbl = Table("t", metadata, Column("id", Integer), DispatchTrigger("t_t", "record"))
    metadata.create_all(pgdispatch_db)
    replacement = DispatchTrigger("t_t", "record", priority=9, on=("insert", "delete"))
    with pgdispatch_db.begin() as conn:
        conn.execute(CreateDispatchTrigger(replacement, tbl, or_replace=True))
        (info,) = reflect_dispatch_triggers(conn, schema=app)
        assert definitions_equal(conn, replacement, info, tbl)
        assert info.priority == "9"


def test_percent_signs_everywhere_round_trip(pgdispatch_db: Engine, app: str) -> None:
    odd = f"{app} 100% odd"
    metadata = MetaData(schema=odd)
    tbl = Table(
        "t%s",
        metadata,
        Column("v%", Text),
        DispatchTrigger("p%t", f"{app}.record", on="update", columns=["v%"], delay="1"),
        DispatchTrigger("p%w", f"{app}.record", when="NEW.\"v%\" LIKE '%(x)s%%'"),
        DispatchTrigger("p%e", f"{app}.record", on="delete", when=column("v%") == "%s"),
    )
    with pgdispatch_db.begin() as conn:
        conn.execute(CreateSchema(odd))
    try:
        metadata.create_all(pgdispatch_db)
        with pgdispatch_db.begin() as conn:
            infos = reflect_dispatch_triggers(conn, schema=odd)
            assert [i.name for i in infos] == ["p%e", "p%t", "p%w"]
            assert infos[2].when == "(new.\"v%\" ~~ '%(x)s%%'::text)"
            for info in infos:
                trig = next(t for t in dispatch_triggers(tbl) if t.name == info.name)
                assert definitions_equal(conn, trig, info), trig.info_for(tbl, conn).diff(info)
            conn.execute(insert(tbl).values({"v%": "a%(x)s%%b"}))
            conn.execute(delete(tbl))
        drain(pgdispatch_db)
        assert effects(pgdispatch_db, app) == [{"v%": "a%(x)s%%b"}]
    finally:
        with pgdispatch_db.begin() as conn:
            conn.execute(DropSchema(odd, cascade=True))


# ---------------------------------------------------------------------------------------
# interval text too exotic to decide offline: checked through the server before the DDL


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"delay": "-5. seconds"}, "negative"),  # '5.' reads differently across versions
        ({"timeout": "0. seconds"}, "zero"),
        ({"delay": "infinity"}, "not an interval PostgreSQL accepts"),
    ],
)
def test_create_all_checks_undecided_intervals_before_the_ddl(
    pgdispatch_db: Engine, app: str, options: dict[str, str], message: str
) -> None:
    metadata = MetaData()
    trigger = DispatchTrigger("t_bad", f"{app}.record", **options)  # type: ignore[arg-type]
    assert trigger.unchecked_intervals  # not decided offline
    Table("t", metadata, Column("id", Integer), trigger, schema=app)
    with pytest.raises(IntervalOptionError, match=message) as info, pgdispatch_db.begin() as conn:
        metadata.create_all(conn)
    assert isinstance(info.value, PgDispatchError)
    with pgdispatch_db.connect() as conn:
        assert conn.scalar(text("SELECT to_regclass(:t)"), {"t": f"{app}.t"}) is None


def test_create_all_accepts_undecided_intervals_the_server_reads_as_valid(
    pgdispatch_db: Engine, app: str
) -> None:
    metadata = MetaData()
    trigger = DispatchTrigger(
        "t_ok", f"{app}.record", delay="0. seconds", timeout="5. seconds"
    )
    assert trigger.unchecked_intervals == (("delay", "0. seconds"), ("timeout", "5. seconds"))
    table = Table("t", metadata, Column("id", Integer), trigger, schema=app)
    with pgdispatch_db.begin() as conn:
        metadata.create_all(conn)
        # the check leaves the session as it was
        assert conn.scalar(text("SHOW IntervalStyle")) == "postgres"
        conn.execute(table.insert().values(id=1))  # fires the trigger: the options work
    drain(pgdispatch_db)
    assert effects(pgdispatch_db, app) == [{"id": 1}]


def test_ddl_constructs_check_undecided_intervals_when_executed(
    pgdispatch_db: Engine, app: str
) -> None:
    metadata = MetaData()
    trigger = DispatchTrigger("t_exec", f"{app}.record", delay="-1. hour")
    table = Table("t", metadata, Column("id", Integer), schema=app)
    with pgdispatch_db.begin() as conn:
        table.create(conn)
        with pytest.raises(IntervalOptionError, match="negative"):
            conn.execute(CreateDispatchTrigger(trigger, table))
        assert trigger_names(conn, app) == []
