"""Bad input: a clear error at dispatch, or a recorded failure, and the queue drains on.

Sizes: a 50 MB payload and a 50 MB command (both stored in the queue and the history,
both executed).
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

MB = 1_000_000


@pytest.fixture(scope="module")
def env(rel: Any, pgdispatch_server: Any, pgdispatch_role: Any, shared_schema: str):
    role = pgdispatch_role("bad")
    with rel.connect(pgdispatch_server) as su:
        su.execute(
            sql.SQL(
                "CREATE TABLE {s}.out (tag text, v text);"
                "CREATE TABLE {s}.events (id int);"
                "CREATE TABLE {s}.other (id int);"
                "CREATE FUNCTION {s}.side(p jsonb) RETURNS void LANGUAGE sql AS"
                " $f$ INSERT INTO {s}.out VALUES ('side', p->>'id') $f$;"
                "GRANT USAGE ON SCHEMA {s} TO {r}; GRANT ALL ON ALL TABLES IN SCHEMA {s} TO {r};"
                "ALTER TABLE {s}.events OWNER TO {r}; ALTER TABLE {s}.other OWNER TO {r};"
                "GRANT CREATE ON SCHEMA {s} TO {r}"
            ).format(s=sql.Identifier(shared_schema), r=sql.Identifier(role))
        )
    with rel.connect(pgdispatch_server, role) as conn:
        conn.execute("SELECT pgdispatch.stop()")
    return pgdispatch_server, role, shared_schema


DISPATCH_ERRORS = [
    # (what, SQL, params, sqlstate, message fragment)
    ("NULL command", "SELECT pgdispatch.dispatch(NULL)", None, "22004", "must not be NULL"),
    ("empty command", "SELECT pgdispatch.dispatch('')", None, "22023", "must not be empty"),
    ("blank command", "SELECT pgdispatch.dispatch(E' \\n\\t ;; ')", None, "22023", "empty"),
    ("invalid UTF-8", "SELECT pgdispatch.dispatch(convert_from(%s::bytea, 'UTF8'))",
     (b"\xff",), "22021", "invalid byte sequence"),
    ("NUL in jsonb", "SELECT pgdispatch.dispatch('SELECT $1', '{\"a\": \"\\u0000\"}')", None,
     "22P05", "Unicode"),
    ("jsonb nested 100,000 deep",
     "SELECT pgdispatch.dispatch('SELECT $1', (repeat('[', 100000) || repeat(']', 100000))::jsonb)",
     None, "54001", "stack depth"),
    ("negative delay", "SELECT pgdispatch.dispatch('SELECT 1', delay => '-1 second')", None,
     "22023", "delay must not be negative"),
    ("absurd delay", "SELECT pgdispatch.dispatch('SELECT 1', delay => '200000000 years')",
     None, "22008", "out of range"),
    ("multi-statement with payload",
     "SELECT pgdispatch.dispatch('SELECT $1; SELECT 2', '{}')", None, "22023",
     "single statement"),
    ("zero attempts", "SELECT pgdispatch.dispatch('SELECT 1', max_attempts => 0)", None,
     "22023", "max_attempts"),
    ("zero timeout", "SELECT pgdispatch.dispatch('SELECT 1', timeout => '0')", None,
     "22023", "timeout must be positive"),
    ("snooze without delay", "SELECT pgdispatch.snooze('SELECT 1', NULL)", None, "22004",
     "needs a delay"),
]


@pytest.mark.parametrize(
    ("statement", "params", "sqlstate", "fragment"),
    [case[1:] for case in DISPATCH_ERRORS],
    ids=[case[0] for case in DISPATCH_ERRORS],
)
def test_rejected_at_dispatch_with_a_clear_error(
    rel: Any, env: Any, statement: str, params: Any, sqlstate: str, fragment: str
) -> None:
    server, role, _ = env
    with rel.connect(server, role) as conn:
        before = rel.count(conn, "SELECT count(*) FROM pgdispatch.job")
        with pytest.raises(psycopg.Error) as info:
            conn.execute(statement, params)
        assert info.value.sqlstate == sqlstate, str(info.value)
        assert fragment in str(info.value)
        assert rel.count(conn, "SELECT count(*) FROM pgdispatch.job") == before


@pytest.mark.slow
def test_bad_jobs_fail_on_their_own_and_the_queue_drains_on(rel: Any, env: Any) -> None:
    server, role, schema = env
    out = f"{schema}.out"
    huge_command = f"INSERT INTO {out} SELECT 'huge command', length('{'c' * (50 * MB)}')"
    jobs: dict[str, tuple[str, Any]] = {
        "syntax error": ("SELEC 1", None),
        "invalid UTF-8 inside": ("SELECT convert_from('\\xff'::bytea, 'UTF8')", None),
        "division by zero": ("SELECT 1/0", None),
        "unknown table": ("INSERT INTO nowhere VALUES (1)", None),
        "huge payload": (
            f"INSERT INTO {out} SELECT 'huge payload', length($1->>'blob')",
            psycopg.types.json.Jsonb({"blob": "p" * (50 * MB)}),
        ),
        "huge command": (huge_command, None),
        "bytea payload": (
            f"INSERT INTO {out} SELECT 'bytea', decode(substr($1->>'b', 3), 'hex')::text",
            "bytea",
        ),
        "nested 5000 deep": (f"INSERT INTO {out} SELECT 'nested', jsonb_typeof($1)", "nested"),
        "multi-statement": (
            f"INSERT INTO {out} VALUES ('multi', '1'); INSERT INTO {out} VALUES ('multi', '2')",
            None,
        ),
        "semicolon in a literal with payload": (
            f"INSERT INTO {out} SELECT 'semicolon', $1->>'s' || ';'",
            psycopg.types.json.Jsonb({"s": "a;b"}),
        ),
    }
    expected_failures = {
        "syntax error": "42601",
        "invalid UTF-8 inside": "22021",
        "division by zero": "22012",
        "unknown table": "42P01",
    }
    ids: dict[str, int] = {}
    with rel.connect(server, role) as conn:
        for name, (command, payload) in jobs.items():
            if payload == "bytea":
                query = "SELECT pgdispatch.dispatch(%s, jsonb_build_object('b', '\\xff00'::bytea))"
                ids[name] = rel.count(conn, query, (command,))
            elif payload == "nested":
                ids[name] = rel.count(
                    conn,
                    "SELECT pgdispatch.dispatch(%s,"
                    " (repeat('[', 5000) || repeat(']', 5000))::jsonb)",
                    (command,),
                )
            else:
                query = "SELECT pgdispatch.dispatch(%s, %s)"
                ids[name] = rel.count(conn, query, (command, payload))
            # a good job after every bad one
            rel.count(
                conn, "SELECT pgdispatch.dispatch(%s)",
                (f"INSERT INTO {out} VALUES ('good', {sql.Literal(name).as_string(conn)})",),
            )
        far = rel.count(conn, "SELECT pgdispatch.dispatch('SELECT 1', delay => '1000 years')")
    rel.drain(server, role)
    with rel.connect(server, role) as conn:
        for name, job in ids.items():
            state, error = conn.execute(
                "SELECT state, error FROM pgdispatch.jobs WHERE id = %s", (job,)
            ).fetchone() or (None, None)
            if name in expected_failures:
                assert state == "failed", name
                assert error["sqlstate"] == expected_failures[name], (name, error)
                assert error["message"], name
            else:
                assert (state, error) == ("succeeded", None), (name, error)
        far_state = conn.execute("SELECT state FROM pgdispatch.jobs WHERE id = %s", (far,))
        assert far_state.fetchone() == ("queued",)
        assert conn.execute("SELECT pgdispatch.cancel(%s)", (far,)).fetchone() == (True,)
        assert rel.count(conn, "SELECT count(*) FROM pgdispatch.job") == 0
        rows = dict(
            conn.execute(
                sql.SQL("SELECT tag, string_agg(v, '|' ORDER BY v) FROM {} GROUP BY tag").format(
                    sql.SQL(out)
                )
            ).fetchall()
        )
    assert rows.pop("good").split("|") == sorted(jobs)
    assert rows == {
        "huge payload": str(50 * MB),
        "huge command": str(50 * MB),
        "bytea": "\\xff00",
        "nested": "array",
        "multi": "1|2",
        "semicolon": "a;b;",
    }


def test_bad_dispatch_triggers_fail_the_firing_statement(rel: Any, env: Any) -> None:
    server, role, schema = env
    s = sql.Identifier(schema)
    bad_triggers = {
        "unknown function": ("'{s}.nope'", "42883"),
        "unqualified function": ("'side'", "42883"),
        "unknown option": ("'{s}.side', 'colour=red'", "22023"),
        "duplicate option": ("'{s}.side', 'delay=1 second', 'delay=2 seconds'", "22023"),
        "bad option value": ("'{s}.side', 'priority=high'", "22P02"),
    }
    with rel.connect(server, role) as conn:
        before = rel.count(conn, "SELECT count(*) FROM pgdispatch.job")
        for name, (args, sqlstate) in bad_triggers.items():
            conn.execute(
                sql.SQL(
                    "CREATE TRIGGER bad AFTER INSERT ON {s}.events FOR EACH ROW"
                    " EXECUTE FUNCTION pgdispatch.trigger(" + args.format(s=schema) + ")"
                ).format(s=s)
            )
            with pytest.raises(psycopg.Error) as info:
                conn.execute(sql.SQL("INSERT INTO {s}.events VALUES (1)").format(s=s))
            assert info.value.sqlstate == sqlstate, (name, str(info.value))
            conn.execute(sql.SQL("DROP TRIGGER bad ON {s}.events").format(s=s))
        assert rel.count(conn, "SELECT count(*) FROM pgdispatch.job") == before
        assert rel.count(conn, sql.SQL("SELECT count(*) FROM {s}.events").format(s=s)) == 0

        # duplicate trigger names: refused on one table, independent on two tables
        create = (
            "CREATE TRIGGER dup AFTER INSERT ON {s}.{t} FOR EACH ROW"
            " EXECUTE FUNCTION pgdispatch.trigger({fn})"
        )
        fn = sql.Literal(f"{schema}.side")
        conn.execute(sql.SQL(create).format(s=s, t=sql.Identifier("events"), fn=fn))
        with pytest.raises(psycopg.errors.DuplicateObject):
            conn.execute(sql.SQL(create).format(s=s, t=sql.Identifier("events"), fn=fn))
        conn.execute(sql.SQL(create).format(s=s, t=sql.Identifier("other"), fn=fn))
        conn.execute(sql.SQL("INSERT INTO {s}.events VALUES (11); INSERT INTO {s}.other VALUES (12)"
                             ).format(s=s))
        # a BEFORE trigger is refused when it fires
        conn.execute(
            sql.SQL("CREATE TRIGGER early BEFORE INSERT ON {s}.other FOR EACH ROW"
                    " EXECUTE FUNCTION pgdispatch.trigger({fn})").format(s=s, fn=fn)
        )
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="AFTER"):
            conn.execute(sql.SQL("INSERT INTO {s}.other VALUES (13)").format(s=s))
        conn.execute(sql.SQL("DROP TRIGGER early ON {s}.other").format(s=s))
    rel.drain(server, role)
    with rel.connect(server, role) as conn:
        got = conn.execute(
            sql.SQL("SELECT v FROM {s}.out WHERE tag = 'side' ORDER BY v").format(s=s)
        ).fetchall()
        assert got == [("11",), ("12",)]
        for t in ("events", "other"):
            conn.execute(sql.SQL("DROP TRIGGER dup ON {s}.{t}").format(s=s, t=sql.Identifier(t)))
