"""Privilege isolation: a normal role's jobs run as that role, and no more.

Every job here is drained by a session whose login role is the job's role, exactly
what the role's pg_cron worker runs. Commands that try to change identity record
``current_user``/``session_user`` into an audit table, so the assertions are on what
really ran, not on error messages alone.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

pytestmark = pytest.mark.cron

AUDIT = "INSERT INTO {s}.audit SELECT '{tag}', current_user, session_user"


@pytest.fixture(scope="module")
def env(rel: Any, pgdispatch_server: Any, pgdispatch_role: Any, shared_schema: str):
    """alice and bob (login roles, workers stopped) and an audit table anyone may fill."""
    alice, bob = pgdispatch_role("alice"), pgdispatch_role("bob")
    with rel.connect(pgdispatch_server) as su:
        su.execute(
            sql.SQL(
                "CREATE TABLE {s}.audit (tag text, cu name, su name);"
                "GRANT USAGE ON SCHEMA {s} TO PUBLIC; GRANT INSERT ON {s}.audit TO PUBLIC"
            ).format(s=sql.Identifier(shared_schema))
        )
    for role in (alice, bob):
        with rel.connect(pgdispatch_server, role) as conn:
            conn.execute("SELECT pgdispatch.stop()")
    return pgdispatch_server, alice, bob, shared_schema


def _state(conn: Any, job_id: int) -> tuple[str, dict[str, Any] | None]:
    row = conn.execute(
        "SELECT state, error FROM pgdispatch.jobs WHERE id = %s", (job_id,)
    ).fetchone()
    assert row is not None, f"job {job_id} is not visible to its own role"
    return row[0], row[1]


def _audit(rel: Any, server: Any, schema: str, tag: str) -> list[tuple[str, str]]:
    with rel.connect(server) as su:
        return [
            (r[0], r[1])
            for r in su.execute(
                sql.SQL("SELECT cu, su FROM {}.audit WHERE tag = %s").format(
                    sql.Identifier(schema)
                ),
                (tag,),
            )
        ]


def test_a_normal_roles_first_dispatch_starts_its_own_workers(
    rel: Any, pgdispatch_server: Any, pgdispatch_role: Any
) -> None:
    role = pgdispatch_role("first")
    with rel.connect(pgdispatch_server, role) as conn:
        job = rel.count(conn, "SELECT pgdispatch.dispatch('SELECT 1')")
        names = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT jobname, username FROM cron.job WHERE jobname LIKE 'pgdispatch:%'"
            )
        }
        assert names == {"pgdispatch:1": role, "pgdispatch:watchdog": role}
        conn.execute("SELECT pgdispatch.stop()")
        conn.execute("CALL pgdispatch.work(drain => true)")
        assert _state(conn, job)[0] == "succeeded"


ESCAPES = {
    # tag: (command, expected state)
    "reset_role": ("RESET ROLE; " + AUDIT, "succeeded"),
    "set_role_none": ("SET ROLE NONE; " + AUDIT, "succeeded"),
    "session_auth_default": ("SET SESSION AUTHORIZATION DEFAULT; " + AUDIT, "succeeded"),
    "set_config_role": ("SELECT set_config('role', 'none', false); " + AUDIT, "succeeded"),
    "set_local_role_none": ("SET LOCAL ROLE NONE; " + AUDIT, "succeeded"),
    "set_role_owner": ("SET ROLE postgres; " + AUDIT, "failed"),
    "session_auth_owner": ("SET SESSION AUTHORIZATION postgres; " + AUDIT, "failed"),
    "set_config_session_auth": (
        "SELECT set_config('session_authorization', 'postgres', false); " + AUDIT,
        "failed",
    ),
    "set_config_role_owner": ("SELECT set_config('role', 'postgres', true); " + AUDIT, "failed"),
}


def test_identity_escapes_run_as_the_dispatching_role_only(rel: Any, env: Any) -> None:
    server, alice, _, schema = env
    with rel.connect(server, alice) as conn:
        jobs = {
            tag: rel.count(
                conn, "SELECT pgdispatch.dispatch(%s)", (cmd.format(s=schema, tag=tag),)
            )
            for tag, (cmd, _) in ESCAPES.items()
        }
        conn.execute("CALL pgdispatch.work(drain => true)")
        states = {tag: _state(conn, job) for tag, job in jobs.items()}
    for tag, (_, expected) in ESCAPES.items():
        state, error = states[tag]
        assert state == expected, (tag, error)
        ran_as = _audit(rel, server, schema, tag)
        if expected == "succeeded":
            assert ran_as == [(alice, alice)], tag
        else:
            assert error is not None
            assert error["sqlstate"] == "42501", (tag, error)
            assert ran_as == [], tag


def test_other_roles_jobs_are_invisible_and_untouchable(rel: Any, env: Any) -> None:
    server, alice, bob, _ = env
    secret = "bob-s3cret-payload"
    with rel.connect(server, bob) as conn:
        done = rel.count(
            conn, "SELECT pgdispatch.dispatch('SELECT ''bob-result'' AS r', capture => true)"
        )
        conn.execute("CALL pgdispatch.work(drain => true)")
        queued = rel.count(
            conn,
            "SELECT pgdispatch.dispatch('SELECT $1', jsonb_build_object('s', %s::text))",
            (secret,),
        )
    with rel.connect(server, alice) as a:
        # reading: the view, the base tables, results
        for query in (
            "SELECT count(*) FROM pgdispatch.jobs WHERE role <> current_user",
            "SELECT count(*) FROM pgdispatch.job WHERE role <> current_user",
            "SELECT count(*) FROM pgdispatch.job_history WHERE role <> current_user",
            "SELECT count(*) FROM pgdispatch.cancel_request WHERE role <> current_user",
            "SELECT count(*) FROM pgdispatch.worker WHERE role <> current_user",
            f"SELECT count(*) FROM pgdispatch.jobs WHERE payload::text LIKE '%{secret}%'",
        ):
            assert rel.count(a, query) == 0, query
        assert a.execute("SELECT pgdispatch.fetch_results(%s)", (done,)).fetchone() == (None,)
        # the same reads from inside one of alice's jobs
        peek = rel.count(
            a,
            "SELECT pgdispatch.dispatch('SELECT (SELECT count(*) FROM pgdispatch.job_history"
            " WHERE role <> current_user) + (SELECT count(*) FROM pgdispatch.job"
            " WHERE role <> current_user) AS n', capture => true)",
        )
        a.execute("CALL pgdispatch.work(drain => true)")
        result = a.execute("SELECT pgdispatch.fetch_results(%s)", (peek,)).fetchone()
        assert result is not None
        assert result[0]["result"] == [{"n": 0}]
        # cancelling
        with pytest.raises(psycopg.errors.NoDataFound):
            a.execute("SELECT pgdispatch.cancel(%s)", (queued,))
        # writing the tables directly
        refused = {
            # (a row belongs to the role of its role_id, the role's oid; role is its name)
            "insert job as bob": (
                "INSERT INTO pgdispatch.job (role, command) VALUES (%s, 'SELECT 1')", (bob,)
            ),
            "insert job as bob's oid": (
                "INSERT INTO pgdispatch.job (role_id, command) VALUES (%s::regrole, 'SELECT 1')",
                (bob,),
            ),
            "update job command": ("UPDATE pgdispatch.job SET command = 'SELECT 2'", None),
            "update job role": ("UPDATE pgdispatch.job SET role_id = %s::regrole", (bob,)),
            "insert history as bob": (
                "INSERT INTO pgdispatch.job_history (id, role, role_id, command, state, priority,"
                " attempts, max_attempts, capture, created_at, run_at, finished_at)"
                " VALUES (-1, %s, %s::regrole, 'x', 'succeeded', 0, 1, 1, false, now(), now(),"
                " now())",
                (bob, bob),
            ),
            "insert worker as bob": (
                "INSERT INTO pgdispatch.worker (role, role_id, workers, enabled)"
                " VALUES (%s, %s::regrole, 1, false)",
                (bob, bob),
            ),
            "request the cancellation of bob's job": (
                "INSERT INTO pgdispatch.cancel_request (job_id, role_id) VALUES (%s, %s::regrole)",
                (queued, bob),
            ),
            "update settings": ("UPDATE pgdispatch.settings SET retry_backoff = '0'", None),
            "update meta": ("UPDATE pgdispatch.meta SET value = '9.9.9'", None),
            "schedule as bob via cron.job": (
                "UPDATE cron.job SET username = %s", (bob,)
            ),
        }
        for statement, params in refused.values():
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                a.execute(statement, params)
        silently_empty = {
            "UPDATE pgdispatch.job SET run_at = now() + interval '1 year' WHERE id = %s": queued,
            "DELETE FROM pgdispatch.job WHERE id = %s": queued,
            "DELETE FROM pgdispatch.job_history WHERE id = %s": done,
            "UPDATE pgdispatch.worker SET enabled = true WHERE role = %s": bob,
        }
        for statement, param in silently_empty.items():
            assert a.execute(statement, (param,)).rowcount == 0, statement
        # a worker session of alice never claims bob's jobs
        a.execute("CALL pgdispatch.work(drain => true)")
    with rel.connect(server, bob) as conn:
        row = conn.execute(
            "SELECT state, payload, attempts FROM pgdispatch.jobs WHERE id = %s", (queued,)
        ).fetchone()
        assert row == ("queued", {"s": secret}, 0)
        conn.execute("CALL pgdispatch.work(drain => true)")
        assert _state(conn, queued)[0] == "succeeded"
        assert conn.execute("SELECT pgdispatch.fetch_results(%s)", (done,)).fetchone() == (
            {"query": "SELECT 'bob-result' AS r", "job_id": done, "status": "success",
             "result": [{"r": "bob-result"}]},
        )


def test_worker_procedures_refuse_set_role_sessions(rel: Any, env: Any) -> None:
    server, alice, _, _ = env
    with rel.connect(server, alice) as a:
        job = rel.count(a, "SELECT pgdispatch.dispatch('SELECT 1')")
    with rel.connect(server) as su:
        su.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(alice)))
        for call in (
            "CALL pgdispatch.work(drain => true)",
            "CALL pgdispatch.work(slot => 1, drain => true)",
            "CALL pgdispatch.watchdog(max_runtime => '1 second')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="login role"):
                su.execute(call)
    with rel.connect(server, alice) as a:
        assert _state(a, job)[0] == "queued"
        a.execute("CALL pgdispatch.work(drain => true)")
        assert _state(a, job)[0] == "succeeded"


def test_security_definer_dispatch_runs_as_its_owner_no_more(
    rel: Any, env: Any, pgdispatch_role: Any
) -> None:
    server, alice, _, schema = env
    carol = pgdispatch_role("carol")
    s = sql.Identifier(schema)
    with rel.connect(server, carol) as c:
        c.execute("SELECT pgdispatch.stop()")
    with rel.connect(server) as su:
        su.execute(
            sql.SQL(
                "CREATE FUNCTION {s}.notify_carol() RETURNS bigint LANGUAGE sql SECURITY DEFINER"
                " SET search_path = pg_catalog AS $f$ SELECT pgdispatch.dispatch({cmd}) $f$;"
                "ALTER FUNCTION {s}.notify_carol() OWNER TO {carol};"
                "REVOKE ALL ON FUNCTION {s}.notify_carol() FROM PUBLIC;"
                "GRANT EXECUTE ON FUNCTION {s}.notify_carol() TO {alice}"
            ).format(
                s=s,
                cmd=sql.Literal(
                    "RESET ROLE; SET SESSION AUTHORIZATION DEFAULT; "
                    + AUDIT.format(s=schema, tag="definer")
                ),
                carol=sql.Identifier(carol),
                alice=sql.Identifier(alice),
            )
        )
    with rel.connect(server, alice) as a:
        job = rel.count(a, sql.SQL("SELECT {}.notify_carol()").format(s).as_string(a))
        assert rel.count(a, "SELECT count(*) FROM pgdispatch.jobs WHERE id = %s", (job,)) == 0
        a.execute("CALL pgdispatch.work(drain => true)")  # not alice's job: not run
    assert _audit(rel, server, schema, "definer") == []
    with rel.connect(server, carol) as c:
        assert c.execute("SELECT role FROM pgdispatch.jobs WHERE id = %s", (job,)).fetchone() == (
            carol,
        )
        c.execute("CALL pgdispatch.work(drain => true)")
        assert _state(c, job)[0] == "succeeded"
    assert _audit(rel, server, schema, "definer") == [(carol, carol)]


def test_session_state_does_not_reach_the_next_job(
    rel: Any, env: Any, pgdispatch_role: Any
) -> None:
    server, alice, _, schema = env
    helper = pgdispatch_role("helper", login=False)
    with rel.connect(server) as su:
        su.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(helper), sql.Identifier(alice)))
        su.execute(
            sql.SQL(
                "CREATE TABLE {s}.state (tag text, work_mem text, stmt_timeout text, custom text,"
                " search_path text, temp_table boolean, prepared bigint, listening bigint,"
                " cu name, su name); GRANT INSERT ON {s}.state TO PUBLIC"
            ).format(s=sql.Identifier(schema))
        )
    record = (
        "INSERT INTO {s}.state SELECT '{tag}', current_setting('work_mem'),"
        " current_setting('statement_timeout'), current_setting('rel_test.leak', true),"
        " current_setting('search_path'), to_regclass('pg_temp.leak_t') IS NOT NULL,"
        " (SELECT count(*) FROM pg_prepared_statements),"
        " (SELECT count(*) FROM pg_listening_channels()), current_user, session_user"
    )
    polluter = (
        "SET work_mem = '77MB'; SET LOCAL statement_timeout = '1234s';"
        " SELECT set_config('rel_test.leak', 'leaked', false); SET search_path = {s}, public;"
        " CREATE TEMP TABLE leak_t (x int); PREPARE leak_p AS SELECT 1; LISTEN leak_c;"
        " SET ROLE {helper}; " + record
    )
    with rel.connect(server, alice) as a:
        for tag, cmd, priority in (
            ("before", record, 30),
            ("polluter", polluter, 20),
            ("after", record, 10),
        ):
            a.execute(
                "SELECT pgdispatch.dispatch(%s, priority => %s)",
                (cmd.format(s=schema, tag=tag, helper=helper), priority),
            )
        a.execute("CALL pgdispatch.work(drain => true)")  # one session runs all three
    with rel.connect(server) as su:
        rows = {
            r[0]: r[1:]
            for r in su.execute(sql.SQL("SELECT * FROM {}.state").format(sql.Identifier(schema)))
        }
    assert set(rows) == {"before", "polluter", "after"}
    # the polluter really changed its session...
    assert rows["polluter"][:6] == ("77MB", "1234s", "leaked", f"{schema}, public", True, 1)
    assert rows["polluter"][7] == helper
    # ...and the next job of the same worker saw none of it (a custom setting once set
    # stays defined as a placeholder, reset to '': its value is gone)
    assert rows["after"][2] in (None, "")
    assert rows["after"][:2] + rows["after"][3:] == rows["before"][:2] + rows["before"][3:]
    assert rows["after"][7:] == (alice, alice)


def test_nologin_role_cannot_dispatch_and_is_told_why(
    rel: Any, pgdispatch_server: Any, pgdispatch_role: Any
) -> None:
    nologin = pgdispatch_role("nologin", login=False)
    with rel.connect(pgdispatch_server) as su:
        su.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(nologin)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            su.execute("SELECT pgdispatch.dispatch('SELECT 1')")
        su.execute("RESET ROLE")
        assert rel.count(su, "SELECT count(*) FROM pgdispatch.job WHERE role = %s", (nologin,)) == 0
    diag = info.value.diag
    assert "cannot log in" in (diag.message_primary or "")
    assert "SECURITY DEFINER" in (diag.message_hint or "")
