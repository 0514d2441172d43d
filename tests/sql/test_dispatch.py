"""The dispatch API: fire, snooze, dispatch, exec/fetch_results, validation, states."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import Engine, exc, text

from .conftest import drain, job, rows, run


def test_fire_runs_the_command_after_commit_in_its_own_transaction(db: Engine, schema: str) -> None:
    with db.begin() as conn:
        conn.execute(
            text(f"SELECT pgdispatch.fire('INSERT INTO \"{schema}\".t(v) VALUES (''fired'')')")
        )
        # not run inside the dispatching transaction
        assert conn.execute(text(f'SELECT count(*) FROM "{schema}".t')).scalar() == 0
    drain(db)
    assert run(db, f'SELECT v FROM "{schema}".t') == "fired"


def test_dispatch_in_a_rolled_back_transaction_never_runs(db: Engine, schema: str) -> None:
    with db.connect() as conn:
        job_id = conn.execute(
            text(f"SELECT pgdispatch.dispatch('INSERT INTO \"{schema}\".t(v) VALUES (''ghost'')')")
        ).scalar_one()
        conn.rollback()
    drain(db)
    assert run(db, f'SELECT count(*) FROM "{schema}".t') == 0
    assert rows(db, "SELECT * FROM pgdispatch.jobs WHERE id = :id", id=job_id) == []


def test_uncommitted_dispatch_is_invisible_to_workers(db: Engine, schema: str) -> None:
    with db.connect() as conn:
        conn.execute(
            text(f"SELECT pgdispatch.fire('INSERT INTO \"{schema}\".t(v) VALUES (''late'')')")
        )
        drain(db)  # another session: the job is not committed yet
        assert run(db, f'SELECT count(*) FROM "{schema}".t') == 0
        conn.commit()
    drain(db)
    assert run(db, f'SELECT count(*) FROM "{schema}".t') == 1


def test_payload_is_bound_as_dollar_one_never_spliced(db: Engine, schema: str) -> None:
    evil = "x'); DROP TABLE t; --"
    job_id = run(
        db,
        "SELECT pgdispatch.dispatch(:cmd, payload => jsonb_build_object('v', CAST(:v AS text)))",
        cmd=f"INSERT INTO \"{schema}\".t(v) VALUES ($1->>'v')",
        v=evil,
    )
    drain(db)
    assert job(db, job_id)["state"] == "succeeded"
    assert run(db, f'SELECT v FROM "{schema}".t') == evil


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("pgdispatch.dispatch(NULL)", "must not be NULL"),
        ("pgdispatch.fire('')", "must not be empty"),
        ("pgdispatch.fire(E'  \\n\\t ;')", "must not be empty"),
        ("pgdispatch.snooze('SELECT 1', '-1 second')", "must not be negative"),
        ("pgdispatch.snooze('SELECT 1', NULL)", "needs a delay"),
        ("pgdispatch.dispatch('SELECT 1', max_attempts => 0)", "at least 1"),
        ("pgdispatch.dispatch('SELECT 1', timeout => '0 s')", "must be positive"),
        (
            "pgdispatch.dispatch('SELECT $1; DELETE FROM x', payload => '{}')",
            "single statement",
        ),
        (
            "pgdispatch.dispatch('SELECT $1; /* c */ DELETE FROM x -- c', payload => '{}')",
            "single statement",
        ),
        (
            "pgdispatch.dispatch('SELECT 1', job_key => repeat('k', 1001))",
            "job_key must be at most 1000 bytes",
        ),
    ],
)
def test_bad_input_is_refused_at_dispatch(db: Engine, call: str, message: str) -> None:
    with pytest.raises(exc.DBAPIError, match=message):
        run(db, f"SELECT {call}")


@pytest.mark.parametrize(
    "command",
    [
        "SELECT $1->>'a';",
        "SELECT $1->>'a' ;  \n ;",
        "SELECT ';' || ($1->>'a')",
        "SELECT $$;$$ || ($1->>'a')",
        "SELECT $q$ it's ; $q$ || ($1->>'a') -- a ; comment",
        "SELECT E'\\';' || ($1->>'a') /* ; /* nested ; */ */",
        "SELECT 1 AS \";\" WHERE ($1->>'a') IS NOT NULL",
        "SELECT $1->>'a'; -- a note",
        "SELECT $1->>'a'; /* a note */",
        "SELECT $1->>'a' -- a ; note\n; /* ; */ ; -- ;",
    ],
)
def test_single_statements_with_semicolons_inside_are_accepted(db: Engine, command: str) -> None:
    job_id = run(db, 'SELECT pgdispatch.dispatch(:c, payload => \'{"a": "x"}\')', c=command)
    drain(db)
    assert job(db, job_id)["state"] == "succeeded", job(db, job_id)["error"]


def test_a_failing_job_is_recorded_and_does_not_block_the_queue(db: Engine, schema: str) -> None:
    ids = [
        run(db, f"SELECT pgdispatch.dispatch('INSERT INTO \"{schema}\".t(v) VALUES (''a'')')"),
        run(db, "SELECT pgdispatch.dispatch('SELECT 1/0')"),
        run(db, "SELECT pgdispatch.dispatch('SELEC oops')"),
        run(db, f"SELECT pgdispatch.dispatch('INSERT INTO \"{schema}\".t(v) VALUES (''b'')')"),
    ]
    drain(db)
    states = [job(db, i)["state"] for i in ids]
    assert states == ["succeeded", "failed", "failed", "succeeded"]
    error = job(db, ids[1])["error"]
    assert error["sqlstate"] == "22012"
    assert error["message"] == "division by zero"
    assert job(db, ids[2])["error"]["sqlstate"] == "42601"
    assert run(db, f"SELECT string_agg(v, ',' ORDER BY v) FROM \"{schema}\".t") == "a,b"


def test_multi_statement_commands_run_like_pg_dispatch(db: Engine, schema: str) -> None:
    run(db, f"SELECT pgdispatch.fire('SELECT 1; INSERT INTO \"{schema}\".t(v) VALUES (''two'')')")
    drain(db)
    assert run(db, f'SELECT v FROM "{schema}".t') == "two"


def test_capture_keeps_rows_and_counts(db: Engine, schema: str) -> None:
    select_id = run(
        db,
        "SELECT pgdispatch.dispatch('SELECT 1 AS a, ''x'' AS b UNION ALL SELECT 2, NULL', "
        "capture => true)",
    )
    returning_id = run(
        db,
        f"SELECT pgdispatch.dispatch('INSERT INTO \"{schema}\".t(v) VALUES (''r'') RETURNING v', "
        "capture => true)",
    )
    plain_dml_id = run(
        db, f"SELECT pgdispatch.dispatch('UPDATE \"{schema}\".t SET v = v', capture => true)"
    )
    utility_id = run(db, f"SELECT pgdispatch.dispatch('ANALYZE \"{schema}\".t;', capture => true)")
    drain(db)
    assert job(db, select_id)["result"] == [{"a": 1, "b": "x"}, {"a": 2, "b": None}]
    assert job(db, returning_id)["result"] == [{"v": "r"}]
    assert job(db, returning_id)["rows_affected"] == 1
    assert job(db, plain_dml_id)["result"] == []
    assert job(db, plain_dml_id)["rows_affected"] == 1
    assert job(db, utility_id)["state"] == "succeeded"


def test_exec_and_fetch_results_have_pg_later_shape(db: Engine) -> None:
    ok = run(db, "SELECT pgdispatch.exec('SELECT 41 + 1 AS answer')")
    bad = run(db, "SELECT pgdispatch.exec('SELECT 1/0')")
    assert run(db, "SELECT pgdispatch.fetch_results(:id)", id=ok) is None  # not finished
    drain(db)
    assert run(db, "SELECT pgdispatch.fetch_results(:id)", id=ok) == {
        "query": "SELECT 41 + 1 AS answer",
        "job_id": ok,
        "result": [{"answer": 42}],
        "status": "success",
    }
    assert run(db, "SELECT pgdispatch.fetch_results(:id)", id=bad) == {
        "query": "SELECT 1/0",
        "job_id": bad,
        "result": "division by zero",
        "status": "failure",
    }


@pytest.mark.parametrize(
    "query",
    [
        "SELECT 42 AS answer; -- a note",
        "SELECT 42 AS answer -- a note",
        "SELECT 42 AS answer /* a ; note */ ;",
        "SELECT 42 AS answer;\n-- a note\n;  /* another */\n",
        "SELECT 42 AS answer -- a ; note\n;",
    ],
)
def test_exec_keeps_the_rows_of_a_query_ending_in_a_comment(db: Engine, query: str) -> None:
    job_id = run(db, "SELECT pgdispatch.exec(:q)", q=query)
    drain(db)
    found = job(db, job_id)
    assert found["state"] == "succeeded", found["error"]
    assert found["result"] == [{"answer": 42}]


@pytest.mark.parametrize(
    ("failure", "sqlstate"),
    [
        ("RAISE EXCEPTION 'not here' USING ERRCODE = 'feature_not_supported'", "0A000"),
        ("EXECUTE 'SELEC 1'", "42601"),  # a syntax error at run time
    ],
)
def test_capture_runs_a_failing_command_once(
    db: Engine, schema: str, failure: str, sqlstate: str
) -> None:
    s = f'"{schema}"'
    run(
        db,
        f"""CREATE SEQUENCE {s}.effects;
            CREATE FUNCTION {s}.f() RETURNS int LANGUAGE plpgsql AS $$
            BEGIN PERFORM nextval('{s}.effects'); {failure}; RETURN 1; END $$""",
    )
    captured = run(db, "SELECT pgdispatch.dispatch(:c, capture => true)", c=f"SELECT {s}.f()")
    executed = run(db, "SELECT pgdispatch.exec(:c)", c=f"SELECT {s}.f() AS x;")
    drain(db)
    for job_id in (captured, executed):
        found = job(db, job_id)
        assert found["state"] == "failed"
        assert found["error"]["sqlstate"] == sqlstate
    # nextval() is not rolled back: one call per job, not two
    assert run(db, f"SELECT last_value FROM {s}.effects") == 2


def test_exec_of_a_query_with_an_unterminated_comment_fails(db: Engine) -> None:
    job_id = run(db, "SELECT pgdispatch.exec('SELECT 42 AS answer; /* no end')")
    drain(db)
    assert job(db, job_id)["state"] == "failed"


def test_job_key_length_is_limited_with_a_clear_error(db: Engine) -> None:
    assert run(db, "SELECT pgdispatch.dispatch('SELECT 1', job_key => repeat('k', 1000))")
    for key in ("repeat('é', 501)", "repeat('k', 3000)"):  # 1002 and 3000 bytes
        with pytest.raises(exc.DBAPIError) as info:
            run(db, f"SELECT pgdispatch.dispatch('SELECT 1', job_key => {key})")
        assert info.value.orig.sqlstate == "22001"  # type: ignore[union-attr]
        assert "job_key must be at most 1000 bytes" in str(info.value)
    drain(db)


def test_exec_delay_is_in_seconds(db: Engine) -> None:
    job_id = run(db, "SELECT pgdispatch.exec('SELECT 1', 3600)")
    drain(db)
    found = job(db, job_id)
    assert found["state"] == "queued"
    assert 3590 < (found["run_at"] - found["created_at"]).total_seconds() <= 3600
    assert run(db, "SELECT pgdispatch.cancel(:id)", id=job_id) is True


def test_snooze_has_sub_second_precision(db: Engine, schema: str) -> None:
    job_id = run(
        db,
        f"SELECT pgdispatch.dispatch('INSERT INTO \"{schema}\".t(v) VALUES (''s'')', "
        "delay => '300 ms')",
    )
    drain(db)
    assert job(db, job_id)["state"] == "queued"
    time.sleep(0.35)
    drain(db)
    found = job(db, job_id)
    assert found["state"] == "succeeded"
    assert (found["run_at"] - found["created_at"]).total_seconds() == pytest.approx(0.3, abs=1e-6)
    assert found["started_at"] >= found["run_at"]


def test_priority_orders_due_jobs(db: Engine, schema: str) -> None:
    for prio in (0, 5, -3, 10):
        run(
            db,
            "SELECT pgdispatch.dispatch(:c, priority => :p)",
            c=f"INSERT INTO \"{schema}\".t(v) VALUES ('{prio}')",
            p=prio,
        )
    drain(db)
    order = [r["v"] for r in rows(db, f'SELECT v FROM "{schema}".t ORDER BY at')]
    assert order == ["10", "5", "0", "-3"]


def test_job_key_deduplicates_while_queued(db: Engine) -> None:
    first = run(db, "SELECT pgdispatch.dispatch('SELECT 1', job_key => 'refresh')")
    again = run(db, "SELECT pgdispatch.dispatch('SELECT 2', job_key => 'refresh')")
    other = run(db, "SELECT pgdispatch.dispatch('SELECT 3', job_key => 'other')")
    assert first == again != other
    drain(db)
    after = run(db, "SELECT pgdispatch.dispatch('SELECT 4', job_key => 'refresh')")
    assert after not in (first, other)
    drain(db)
    assert job(db, first)["command"] == "SELECT 1"


def test_cancel_queued_finished_and_unknown(db: Engine) -> None:
    queued = run(db, "SELECT pgdispatch.dispatch('SELECT 1', delay => '1 hour')")
    done = run(db, "SELECT pgdispatch.dispatch('SELECT 1')")
    drain(db)
    assert run(db, "SELECT pgdispatch.cancel(:id)", id=queued) is True
    assert job(db, queued)["state"] == "cancelled"
    assert run(db, "SELECT pgdispatch.cancel(:id)", id=done) is False
    assert run(db, "SELECT pgdispatch.cancel(:id)", id=queued) is False
    with pytest.raises(exc.DBAPIError, match="does not exist"):
        run(db, "SELECT pgdispatch.cancel(-1)")


def test_retries_with_exponential_backoff(db: Engine, schema: str, settings) -> None:  # type: ignore[no-untyped-def]
    settings(retry_backoff="200 milliseconds")
    run(db, f'CREATE SEQUENCE "{schema}".s')
    # fails on the first two attempts (sequences are not rolled back), then succeeds
    command = f"SELECT 1 / CASE WHEN nextval('\"{schema}\".s') < 3 THEN 0 ELSE 1 END"
    job_id = run(db, "SELECT pgdispatch.dispatch(:c, max_attempts => 3)", c=command)
    drain(db)
    first = job(db, job_id)
    assert (first["state"], first["attempts"]) == ("queued", 1)
    assert first["error"]["message"] == "division by zero"
    assert (first["run_at"] - first["created_at"]).total_seconds() >= 0.2
    time.sleep(0.25)
    drain(db)
    second = job(db, job_id)
    assert (second["state"], second["attempts"]) == ("queued", 2)
    delay = (second["run_at"] - first["run_at"]).total_seconds()
    assert delay >= 0.4  # 200 ms, then 400 ms
    time.sleep(0.45)
    drain(db)
    final = job(db, job_id)
    assert (final["state"], final["attempts"], final["error"]) == ("succeeded", 3, None)


def test_running_state_is_visible_while_a_job_runs(db: Engine) -> None:
    job_id = run(db, "SELECT pgdispatch.dispatch('SELECT pg_sleep(1.5)')")
    worker = threading.Thread(target=drain, args=(db,))
    worker.start()
    try:
        deadline = time.monotonic() + 5
        state = None
        while time.monotonic() < deadline:
            found = job(db, job_id)
            state = found["state"]
            if state == "running":
                assert found["worker_pid"] is not None
                break
            time.sleep(0.05)
        assert state == "running"
    finally:
        worker.join()
    assert job(db, job_id)["state"] == "succeeded"
