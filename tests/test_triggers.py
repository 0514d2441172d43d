"""DispatchTrigger: validation, attachment and DDL compilation (no server needed)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, Text, column, create_engine, exc, table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sa_pgdispatch.errors import PgDispatchError
from sa_pgdispatch.triggers import (
    CreateDefinerTriggerFunction,
    CreateDispatchTrigger,
    DispatchSpec,
    DispatchTrigger,
    DispatchTriggerError,
    DispatchTriggerInfo,
    DropDispatchTrigger,
    IntervalOptionError,
    check_when_text,
    create_dispatch_trigger_ddl,
    dispatch_triggers,
    metadata_dispatch_triggers,
    new_row,
    old_row,
    parse_function_name,
)
from sa_pgdispatch.triggers import (
    _standardise_strings as standardise_strings,
)
from sa_pgdispatch.triggers import (
    _when_from_triggerdef as when_from_triggerdef,
)

PG = postgresql.dialect()  # psycopg: pyformat, percent signs doubled
PG_NAMED = postgresql.dialect(paramstyle="named")


def make_table(*items: Any, name: str = "profiles", schema: str | None = "app") -> Table:
    return Table(
        name,
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("status", Text),
        Column("Email", Text),
        *items,
        schema=schema,
    )


def ddl(trigger: DispatchTrigger, dialect: object = PG_NAMED, **kw: object) -> str:
    return str(CreateDispatchTrigger(trigger, **kw).compile(dialect=dialect))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# function names


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("app.send_welcome", ("app", "send_welcome")),
        ("App.Send_Welcome", ("app", "send_welcome")),
        ("send", (None, "send")),
        ('"My Schema"."Fn"', ("My Schema", "Fn")),
        ('"a""b" . c', ('a"b', "c")),
        ("  s.f  ", ("s", "f")),
        ("é.ü", ("é", "ü")),
        ("s.f$1", ("s", "f$1")),
    ],
)
def test_parse_function_name(given, expected):
    assert parse_function_name(given) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a.b.c",
        "app.fn()",
        "app.fn'); DROP TABLE victim; --",
        "app.fn; DROP TABLE victim",
        '"unterminated',
        '""',
        "1abc.fn",
        "a..b",
        "a.",
        "x" * 64,
        "a\x00b",
    ],
)
def test_parse_function_name_rejects(bad):
    with pytest.raises(DispatchTriggerError):
        parse_function_name(bad)


# ---------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "non-empty"),
        ({"name": "x" * 64}, "longer than 63 bytes"),
        ({"name": "é" * 32}, "longer than 63 bytes"),
        ({"name": "a\x00"}, "NUL"),
        ({"on": ()}, "at least one event"),
        ({"on": "truncate"}, "truncate.*for_each='statement'"),
        ({"on": ("insert", "truncate")}, "truncate.*for_each='statement'"),
        ({"on": ("insert", "INSERT")}, "given twice"),
        ({"on": "upsert"}, "unknown event"),
        ({"columns": ["status"]}, "need the 'update' event"),
        ({"on": "update", "columns": []}, "columns is empty"),
        ({"on": "update", "columns": ["a", "a"]}, "given twice"),
        ({"on": "update", "columns": [1]}, "names or Column objects"),
        ({"for_each": "rows"}, "for_each must be"),
        ({"for_each": "statement", "on": ("insert", "update")}, "exactly one event"),
        ({"for_each": "statement", "on": "update", "columns": ["a"]}, "cannot have columns"),
        ({"for_each": "statement", "when": "true"}, "cannot have a when"),
        ({"delay": dt.timedelta(seconds=-1)}, "zero or positive"),
        ({"timeout": dt.timedelta(0)}, "positive"),
        ({"delay": "5 seconds', 'priority=1"}, "not an interval"),
        ({"delay": "1 day; DROP TABLE x"}, "not an interval"),
        ({"delay": ""}, "not an interval"),
        ({"delay": 5}, "timedelta or an interval string"),
        ({"priority": 1.5}, "must be an int"),
        ({"priority": True}, "must be an int"),
        ({"priority": 2**31}, "between"),
        ({"max_attempts": 0}, "between 1"),
        ({"security": "owner"}, "security must be"),
        ({"when": 42}, "when must be"),
        ({"when": ""}, "empty"),
        ({"function": "a.b.c"}, "at most"),
    ],
)
def test_eager_validation(kwargs, message):
    args = {"name": "t", "function": "app.fn", **kwargs}
    name, function = args.pop("name"), args.pop("function")
    with pytest.raises(DispatchTriggerError, match=message):
        DispatchTrigger(name, function, **args)


def test_validation_error_is_an_argument_error():
    assert issubclass(DispatchTriggerError, exc.ArgumentError)


@pytest.mark.parametrize(
    ("when", "message"),
    [
        ("true) EXECUTE FUNCTION pgdispatch.trigger('x.y'); DROP TABLE victim; --", "unbalanced"),
        ("true); DROP TABLE victim; SELECT (1", "unbalanced"),
        ("NEW.a = 1; DROP TABLE victim", "';' is not allowed"),
        ("NEW.a = 1 -- comment", "comments"),
        ("NEW.a = 1 /* x */", "comments"),
        ("NEW.a = 'unterminated", "unterminated string"),
        ('NEW."unterminated = 1', "unterminated quoted identifier"),
        ("NEW.a = $$x", "unterminated dollar"),
        ("(NEW.a = 1", "unbalanced"),
        ("NEW.a = 'back\\slash'", "backslash"),
        ("NEW.a = 'x\\' OR true", "backslash"),
        ("a\x00", "NUL"),
        ("   ", "empty"),
    ],
)
def test_when_text_is_confined_to_its_clause(when, message):
    with pytest.raises(DispatchTriggerError, match=message):
        check_when_text(when)
    with pytest.raises(DispatchTriggerError):
        DispatchTrigger("t", "app.fn", when=when)


@pytest.mark.parametrize(
    "when",
    [
        "NEW.status IS DISTINCT FROM OLD.status",
        "NEW.a = ';) --'",
        "NEW.a = E'it\\'s \\\\ (' AND NEW.b = 'x''y'",
        'NEW."we;ird)" = $tag$ ; ) -- $tag$',
        "NEW.a = $$x$$ || $1$",
        "(NEW.a) = (1)",
    ],
)
def test_when_text_accepted(when):
    assert check_when_text(f"  {when} ") == when


def test_columns_must_exist():
    with pytest.raises(DispatchTriggerError, match="no column"):
        make_table(DispatchTrigger("t", "fn", on="update", columns=["nope"]))


def test_attach_once_and_unique_names():
    trig = DispatchTrigger("t", "fn")
    tbl = make_table(trig)
    with pytest.raises(DispatchTriggerError, match="already attached"):
        make_table(trig, name="other")
    with pytest.raises(DispatchTriggerError, match="already has a dispatch trigger"):
        make_table(DispatchTrigger("t", "fn"), DispatchTrigger("t", "fn2"))
    assert dispatch_triggers(tbl) == (trig,)
    assert trig.table is tbl


def test_discovery_on_table_and_metadata():
    class Base(DeclarativeBase):
        pass

    welcome = DispatchTrigger("users_welcome", "app.welcome")
    audit = DispatchTrigger("users_audit", "app.audit", on=("update", "delete"))

    class User(Base):
        __tablename__ = "users"
        __table_args__ = (welcome, audit, {"schema": "app"})
        id: Mapped[int] = mapped_column(primary_key=True)

    class Other(Base):
        __tablename__ = "other"
        id: Mapped[int] = mapped_column(primary_key=True)

    users = User.__table__
    assert isinstance(users, Table)
    assert dispatch_triggers(users) == (welcome, audit)
    assert users.info["pgdispatch_triggers"] == [welcome, audit]
    assert dispatch_triggers(Other.__table__) == ()  # type: ignore[arg-type]
    assert metadata_dispatch_triggers(Base.metadata) == [(users, welcome), (users, audit)]


def test_a_copied_table_does_not_claim_the_original_triggers():
    tbl = make_table(DispatchTrigger("t", "fn"))
    copy = tbl.to_metadata(MetaData())
    assert dispatch_triggers(copy) == ()


# ---------------------------------------------------------------------------------------
# DDL


def test_row_trigger_ddl():
    trig = DispatchTrigger(
        "profiles_welcome",
        "app.send_welcome",
        delay=dt.timedelta(seconds=5),
        priority=10,
        max_attempts=3,
        timeout="1 minute",
    )
    make_table(trig)
    assert ddl(trig) == (
        "CREATE TRIGGER profiles_welcome AFTER INSERT ON app.profiles FOR EACH ROW "
        "EXECUTE FUNCTION pgdispatch.trigger('app.send_welcome', 'delay=5 seconds', "
        "'priority=10', 'max_attempts=3', 'timeout=1 minute')"
    )
    assert ddl(trig, or_replace=True).startswith("CREATE OR REPLACE TRIGGER profiles_welcome ")
    assert str(DropDispatchTrigger(trig).compile(dialect=PG)) == (
        "DROP TRIGGER profiles_welcome ON app.profiles"
    )
    assert str(DropDispatchTrigger("x", table("t"), if_exists=True).compile(dialect=PG)) == (
        "DROP TRIGGER IF EXISTS x ON t"
    )


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (dt.timedelta(0), "0 seconds"),
        (dt.timedelta(milliseconds=1500), "1.5 seconds"),
        (dt.timedelta(days=2), "2 days"),
        (dt.timedelta(days=1, microseconds=1), "1 days 0.000001 seconds"),
    ],
)
def test_timedelta_options(delta, text):
    assert DispatchTrigger("t", "fn", delay=delta).delay == text


def test_events_columns_when_and_quoting():
    trig = DispatchTrigger(
        "Upd%",
        '"My Schema"."Fn"',
        on=("update",),
        columns=["status", "Email"],
        when=lambda t: (t.c.status != "x'%\\") & (new_row(t.c.Email) != old_row("Email")),
    )
    make_table(trig, schema="Odd Schema")
    expected = (
        'CREATE TRIGGER "Upd%" AFTER UPDATE OF "Email", status ON "Odd Schema".profiles '
        "FOR EACH ROW WHEN (NEW.status != E'x''%\\\\' AND NEW.\"Email\" != OLD.\"Email\") "
        'EXECUTE FUNCTION pgdispatch.trigger(\'"My Schema"."Fn"\')'
    )
    assert ddl(trig) == expected
    # pyformat drivers: every percent sign doubled, identifiers and literals alike
    assert ddl(trig, PG) == expected.replace("%", "%%")


def test_event_order_and_multiple_events():
    trig = DispatchTrigger("t", "fn", on=["delete", "Insert", "update"], columns=["status"])
    make_table(trig)
    assert trig.events == ("insert", "update", "delete")
    assert " AFTER INSERT OR UPDATE OF status OR DELETE ON app.profiles " in ddl(trig)


def test_when_default_rows():
    ins = DispatchTrigger("i", "fn", when=column("status") == "a")
    dele = DispatchTrigger("d", "fn", on="delete", when=column("status") == "a")
    make_table(ins, dele)
    assert "WHEN (NEW.status = 'a')" in ddl(ins)
    assert "WHEN (OLD.status = 'a')" in ddl(dele)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"on": ("insert", "delete"), "when": column("status") == "a"}, "use new_row"),
        ({"on": "insert", "when": old_row("status") == "a"}, "INSERT triggers"),
        ({"on": ("delete",), "when": new_row("status") == "a"}, "DELETE triggers"),
    ],
)
def test_when_row_errors(kwargs, message):
    with pytest.raises(DispatchTriggerError, match=message):
        DispatchTrigger("t", "fn", **kwargs)


def test_when_columns_of_another_table_are_refused():
    other = make_table(name="other")
    trig = DispatchTrigger("t", "fn", when=other.c.status == "a")
    with pytest.raises(DispatchTriggerError, match="another table"):
        make_table(trig)


def test_when_callable_must_return_an_expression():
    with pytest.raises(DispatchTriggerError, match="not a SQL expression"):
        make_table(DispatchTrigger("t", "fn", when=lambda t: "NEW.a = 1"))  # type: ignore[arg-type]


def test_statement_level_ddl():
    ins = DispatchTrigger("si", "fn", for_each="statement")
    upd = DispatchTrigger("su", "fn", on="update", for_each="statement")
    dele = DispatchTrigger("sd", "fn", on="delete", for_each="statement")
    make_table(ins, upd, dele)
    assert ddl(ins) == (
        "CREATE TRIGGER si AFTER INSERT ON app.profiles REFERENCING NEW TABLE AS "
        "pgdispatch_new FOR EACH STATEMENT EXECUTE FUNCTION pgdispatch.trigger('app.fn')"
    )
    assert "AFTER UPDATE ON app.profiles REFERENCING NEW TABLE AS pgdispatch_new " in ddl(upd)
    assert "AFTER DELETE ON app.profiles REFERENCING OLD TABLE AS pgdispatch_old " in ddl(dele)


def test_truncate_trigger_ddl_has_no_transition_table():
    trunc = DispatchTrigger("st", "fn", on="TRUNCATE", for_each="statement")
    make_table(trunc)
    assert trunc.events == ("truncate",)
    assert ddl(trunc) == (
        "CREATE TRIGGER st AFTER TRUNCATE ON app.profiles FOR EACH STATEMENT "
        "EXECUTE FUNCTION pgdispatch.trigger('app.fn')"
    )


def test_unqualified_function_gets_the_table_schema_else_the_default():
    in_schema = DispatchTrigger("a", "Fn")
    make_table(in_schema)
    assert in_schema.qualified_function() == "app.fn"
    no_schema = DispatchTrigger("b", '"Fn"')
    make_table(no_schema, schema=None)
    assert no_schema.qualified_function() == 'public."Fn"'
    assert no_schema.qualified_function(default_schema="tenant") == 'tenant."Fn"'
    assert "pgdispatch.trigger('public.\"Fn\"')" in ddl(no_schema)


def test_definer_ddl():
    trig = DispatchTrigger("t", "fn", security="definer", delay="1 hour")
    make_table(trig, schema="it's")
    statements = create_dispatch_trigger_ddl(trig)
    assert [type(s) for s in statements] == [CreateDefinerTriggerFunction, CreateDispatchTrigger]
    assert str(statements[0].compile(dialect=PG)) == (
        "SELECT pgdispatch.definer_trigger_function('it''s')"
    )
    assert ddl(trig).endswith(
        "EXECUTE FUNCTION \"it's\".pgdispatch_definer_trigger('\"it''s\".fn', 'delay=1 hour')"
    )
    no_schema = DispatchTrigger("t", "fn", security="definer")
    make_table(no_schema, schema=None)
    first = create_dispatch_trigger_ddl(no_schema)[0]
    assert str(first.compile(dialect=PG)) == (
        "SELECT pgdispatch.definer_trigger_function(current_schema())"
    )
    assert "EXECUTE FUNCTION pgdispatch_definer_trigger('public.fn')" in ddl(no_schema)


def test_injection_through_identifiers_is_quoted():
    evil = 'x"; DROP TABLE victim; --'
    escaped = evil.replace('"', '""')
    trig = DispatchTrigger(evil, f'"{escaped}"."{escaped}"')
    tbl = Table(evil, MetaData(), Column(evil, Text), trig, schema=evil)
    quoted = '"x""; DROP TABLE victim; --"'
    expected = (
        f"CREATE TRIGGER {quoted} AFTER INSERT ON {quoted}.{quoted} FOR EACH ROW "
        "EXECUTE FUNCTION pgdispatch.trigger("
        '\'"x""; DROP TABLE victim; --"."x""; DROP TABLE victim; --"\')'
    )
    assert ddl(trig) == expected
    assert tbl.name == evil


def test_literal_function_names_are_escaped():
    trig = DispatchTrigger("t", '"it\'s \\".fn')
    make_table(trig)
    assert "pgdispatch.trigger(E'\"it''s \\\\\".fn')" in ddl(trig)


def test_or_replace_needs_postgresql_14():
    trig = DispatchTrigger("t", "fn")
    make_table(trig)
    old = postgresql.dialect()
    old.server_version_info = (13, 9)
    with pytest.raises(exc.CompileError, match="PostgreSQL 14"):
        ddl(trig, old, or_replace=True)
    assert ddl(trig, old).startswith("CREATE TRIGGER")


@pytest.mark.parametrize(
    "element",
    [
        lambda t: CreateDispatchTrigger(t),
        lambda t: DropDispatchTrigger(t),
        lambda t: CreateDefinerTriggerFunction("app"),
    ],
)
def test_other_dialects_get_a_compile_error(element):
    trig = DispatchTrigger("t", "fn")
    make_table(trig)
    with pytest.raises(exc.CompileError, match="PostgreSQL-only"):
        element(trig).compile(dialect=sqlite.dialect())


def test_create_all_on_another_dialect_skips_the_triggers():
    trig = DispatchTrigger("t", "fn")
    tbl = make_table(trig, schema=None)
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        tbl.metadata.create_all(conn)
        assert conn.exec_driver_sql("SELECT count(*) FROM profiles").scalar() == 0
        tbl.metadata.drop_all(conn)


def test_info_without_connection():
    trig = DispatchTrigger(
        "t", "fn", on=("update", "insert"), columns=["status"], when="NEW.id > 0", priority=-1
    )
    make_table(trig)
    info = trig.info_for()
    assert info == DispatchTriggerInfo(
        name="t",
        table_name="profiles",
        schema="app",
        spec=DispatchSpec(
            "app.fn", on=("insert", "update"), for_each="row", columns=("status",),
            when="NEW.id > 0", priority=-1,
        ),
    )
    assert info.values()["priority"] == "-1"
    assert info.spec is not None
    other = dataclasses.replace(info, spec=info.spec.replace(priority=2))
    assert info.diff(other) == {"priority": ("-1", "2")}
    back = info.to_trigger()
    assert back.info_for(table("profiles", schema="app")) == info


def test_to_trigger_refuses_what_it_cannot_express():
    info = DispatchTriggerInfo(
        "t", "tbl", "s", DispatchSpec("s.fn", on=("insert",)), timing="before"
    )
    with pytest.raises(DispatchTriggerError, match="cannot be expressed"):
        info.to_trigger()


# ---------------------------------------------------------------------------------------
# reading pg_get_triggerdef output


@pytest.mark.parametrize(
    ("definition", "when"),
    [
        (
            "CREATE TRIGGER t AFTER INSERT ON s.t FOR EACH ROW WHEN ((new.a > 0)) "
            "EXECUTE FUNCTION pgdispatch.trigger('s.f')",
            "(new.a > 0)",
        ),
        (
            'CREATE TRIGGER "x WHEN (y" AFTER UPDATE ON "FOR EACH ROW WHEN (".t FOR EACH ROW '
            "WHEN ((new.a = ') EXECUTE FUNCTION '::text)) "
            "EXECUTE FUNCTION pgdispatch.trigger('s.f')",
            "(new.a = ') EXECUTE FUNCTION '::text)",
        ),
        (
            "CREATE TRIGGER t AFTER INSERT ON s.t FOR EACH ROW "
            "EXECUTE FUNCTION pgdispatch.trigger('WHEN (x)')",
            None,
        ),
        (
            "CREATE TRIGGER t AFTER DELETE ON s.t REFERENCING OLD TABLE AS pgdispatch_old "
            "FOR EACH STATEMENT EXECUTE FUNCTION pgdispatch.trigger('s.f')",
            None,
        ),
    ],
)
def test_when_from_triggerdef(definition, when):
    assert when_from_triggerdef(definition) == when


@pytest.mark.parametrize(
    ("text", "scs", "expected"),
    [
        ("(new.a = 'x\\y'::text)", True, "(new.a = E'x\\\\y'::text)"),
        ("(new.a = 'x\\\\y'::text)", False, "(new.a = E'x\\\\y'::text)"),
        ("(new.a = 'it''s'::text)", True, "(new.a = 'it''s'::text)"),
    ],
)
def test_standardise_strings(text, scs, expected):
    assert standardise_strings(text, standard_conforming_strings=scs) == expected


def test_row_references_have_distinct_cache_keys():
    assert new_row("a")._generate_cache_key() != old_row("a")._generate_cache_key()
    assert new_row("a")._generate_cache_key() == new_row("a")._generate_cache_key()


# ---------------------------------------------------------------------------------------
# interval text: validated when declared, by what PostgreSQL makes of it


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("delay", "-5 seconds", "negative"),
        ("delay", "5 seconds ago", "negative"),
        ("delay", "@ -1 hour", "negative"),
        ("delay", "@ 1 hour ago", "negative"),
        ("delay", "-00:00:01", "negative"),
        ("delay", "-1 12:00:00", "negative"),  # -1 day +12 hours
        ("delay", "1 day -25 hours", "negative"),
        ("delay", "1 mon -31 days", "negative"),  # a month compares as 30 days
        ("delay", "P-1D", "negative"),
        ("delay", "PT-0.5S", "negative"),
        ("delay", "-1-2", "negative"),  # SQL years-months
        ("delay", "-0.000001", "negative"),  # a bare number is seconds
        # postgres style reads +1 hour, sql_standard -1 day -25 hours
        ("delay", "-1 25:00:00", "sql_standard"),
        ("timeout", "0 seconds", "positive"),
        ("timeout", "0", "positive"),
        ("timeout", "PT0S", "positive"),
        ("timeout", "1 day -24 hours", "positive"),
        ("timeout", "0.0000001 seconds", "positive"),  # rounds to 0 microseconds
        ("timeout", "-1 ms", "positive"),
        ("delay", "5 parsecs", "not an interval"),
        ("delay", "1:70", "not an interval"),
        ("delay", "1 day 2 days", "not an interval"),
        ("delay", "5 ago", "not an interval"),
        ("delay", "P1X", "not an interval"),
        ("delay", "1.5 s 10 ms", "not an interval"),  # a fraction of seconds takes ms, us
        ("delay", "seconds", "not an interval"),
    ],
)
def test_interval_text_is_validated_when_declared(option, value, message):
    """Such a value made create_all / the migration succeed and then every INSERT on the
    table fail (pgdispatch.trigger() casts it when it fires)."""
    with pytest.raises(DispatchTriggerError, match=message) as info:
        DispatchTrigger("t", "app.fn", **{option: value})
    err = info.value
    assert isinstance(err, PgDispatchError)
    assert isinstance(err, ValueError)
    assert isinstance(err, IntervalOptionError)
    assert f"{option} {value!r}" in str(err)
    assert (err.option, err.value) == (option, value)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("delay", "0 seconds"),
        ("delay", "0"),
        ("delay", "PT0S"),
        ("delay", "5 seconds"),
        ("delay", "-5 seconds ago"),
        ("delay", "@ 1 hour"),
        ("delay", "1 day -1 hour"),
        ("delay", "1 mon -29 days"),
        ("delay", "00:00:05"),
        ("delay", "1:30.5"),  # mm:ss.f
        ("delay", "+1 -00:00:01"),
        ("delay", "1-2"),
        ("delay", "P1Y2M3DT4H5M6.5S"),
        ("delay", "P0001-02-03T04:05:06"),
        ("delay", "2 weeks 1.5 days 3 hours 20 min 1 s 10 ms 7 us"),
        ("delay", "1 century 1 decade 1 millennium"),
        ("timeout", "1 microsecond"),
        ("timeout", "0.5"),
        ("timeout", "30 seconds"),
        ("timeout", "PT0.000001S"),
        ("timeout", "-1 12:00:00 ago"),
    ],
)
def test_valid_interval_text_is_accepted_when_declared(option, value):
    trigger = DispatchTrigger("t", "app.fn", **{option: value})
    assert getattr(trigger, option) == value
    assert trigger.unchecked_intervals == ()  # decided without a server
