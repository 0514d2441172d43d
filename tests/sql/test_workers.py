"""Workers: session isolation between jobs, the watchdog (timeouts, cancellation),
start/stop and their pg_cron jobs, who may run whose jobs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, exc, text

from .conftest import drain, job, role_engine, rows, run

pytestmark = pytest.mark.cron


def test_no_job_shapes_the_next_one(db: Engine, schema: str) -> None:
    record = f'INSERT INTO "{schema}".t(v) SELECT %s'
    commands = [
        "SET work_mem = '77MB'",
        "SELECT set_config('statement_timeout', '1234', false)",
        "SET LOCAL search_path = pg_catalog",
        "CREATE TEMP TABLE t(v text); INSERT INTO t VALUES ('temp')",
        "PREPARE p AS SELECT 1",
        "LISTEN somewhere",
        record % "current_setting('work_mem') || '|' || current_setting('statement_timeout')",
        record % "(SELECT string_agg(name, ',') FROM pg_prepared_statements WHERE name = 'p')",
        record % "coalesce(current_setting('search_path'), '')",
        record % "(SELECT count(*)::text FROM pg_listening_channels())",
        record % "(SELECT count(*)::text FROM pg_class WHERE relnamespace = pg_my_temp_schema())",
    ]
    for command in commands:
        run(db, "SELECT pgdispatch.fire(:c)", c=command)
    drain(db)
    seen = [r["v"] for r in rows(db, f'SELECT v FROM "{schema}".t ORDER BY at')]
    assert seen[0].split("|") == ["4MB", "0"]
    assert seen[1] is None  # no prepared statement left
    assert seen[2] == '"$user", public'
    assert seen[3] == "0"
    assert seen[4] == "0"  # the temp table is gone
    assert rows(db, f"SELECT * FROM \"{schema}\".t WHERE v = 'temp'") == []


def _observer(schema: str, tag: str) -> str:
    """A job that records what it finds of the session state of the jobs before it."""
    return (
        f"INSERT INTO \"{schema}\".state SELECT '{tag}',"
        " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        "   AND classid = 0 AND objid IN (4242, 4243)),"
        f' "{schema}".currval_or_none(), "{schema}".lastval_or_none(), random(),'
        " (SELECT count(*) FROM pg_cursors WHERE name IN ('leak_hold', 'leak_ref'))"
    )


def test_session_state_of_one_job_never_reaches_the_next(db: Engine, schema: str) -> None:
    s = f'"{schema}"'
    run(
        db,
        f"""CREATE TABLE {s}.state (tag text, locks bigint, currval text, lastval text,
                                    random float8, cursors bigint);
            CREATE SEQUENCE {s}.seq;
            CREATE FUNCTION {s}.currval_or_none() RETURNS text LANGUAGE plpgsql AS $$
            BEGIN RETURN currval('{s}.seq')::text;
            EXCEPTION WHEN object_not_in_prerequisite_state THEN RETURN NULL; END $$;
            CREATE FUNCTION {s}.lastval_or_none() RETURNS text LANGUAGE plpgsql AS $$
            BEGIN RETURN lastval()::text;
            EXCEPTION WHEN object_not_in_prerequisite_state THEN RETURN NULL; END $$;
            CREATE FUNCTION {s}.open_ref() RETURNS refcursor LANGUAGE plpgsql AS $$
            DECLARE c refcursor := 'leak_ref';
            BEGIN OPEN c FOR SELECT 1; RETURN c; END $$""",
    )
    polluter = (
        "SELECT pg_advisory_lock(4242), pg_advisory_lock_shared(4243), pg_advisory_lock(4242);"
        f" SELECT nextval('{s}.seq'); SELECT setseed(0.5);"
        " DECLARE leak_hold CURSOR WITH HOLD FOR SELECT 1;"
        f" SELECT {s}.open_ref()"
    )
    with db.connect().execution_options(isolation_level="AUTOCOMMIT") as worker:
        # the next job in the same batch ...
        run(db, "SELECT pgdispatch.dispatch(:c, priority => 1)", c=polluter)
        run(db, "SELECT pgdispatch.dispatch(:c)", c=_observer(schema, "same batch"))
        worker.execute(text("CALL pgdispatch.work(drain => true)"))
        # ... and in the next batch of the same session
        run(db, "SELECT pgdispatch.dispatch(:c)", c=polluter)
        worker.execute(text("CALL pgdispatch.work(drain => true)"))
        run(db, "SELECT pgdispatch.dispatch(:c)", c=_observer(schema, "next batch"))
        worker.execute(text("CALL pgdispatch.work(drain => true)"))
    seeded = rows(db, "SELECT setseed(0.5), random() AS r")[0]["r"]
    found = {r["tag"]: dict(r) for r in rows(db, f"SELECT * FROM {s}.state")}
    assert set(found) == {"same batch", "next batch"}
    for tag, seen in found.items():
        assert seen["locks"] == 0, f"{tag}: the job's advisory locks are released"
        assert seen["currval"] is None, f"{tag}: currval() is undefined again"
        assert seen["lastval"] is None, f"{tag}: lastval() too"
        assert seen["random"] != seeded, f"{tag}: random() is not seeded by setseed(0.5)"
    # cursors are closed when the batch ends, WITH HOLD ones too (inside a batch, like the
    # batch's other transaction-scoped state, a later job can see them)
    assert found["next batch"]["cursors"] == 0
    # (the second polluter could declare its cursor again)
    states = rows(db, "SELECT state FROM pgdispatch.jobs WHERE command = :c", c=polluter)
    assert [r["state"] for r in states] == ["succeeded", "succeeded"]


def test_deferred_constraints_are_checked_at_the_end_of_their_job(db: Engine, schema: str) -> None:
    s = f'"{schema}"'
    run(
        db,
        f"""CREATE TABLE {s}.par (id int PRIMARY KEY);
            CREATE TABLE {s}.chi (id int REFERENCES {s}.par DEFERRABLE INITIALLY IMMEDIATE);
            CREATE TABLE {s}.chi2 (id int CONSTRAINT chi2_late REFERENCES {s}.par
                                   DEFERRABLE INITIALLY DEFERRED);
            CREATE FUNCTION {s}.probe() RETURNS text LANGUAGE plpgsql AS $$
            BEGIN
              INSERT INTO {s}.chi VALUES (-1); DELETE FROM {s}.chi WHERE id = -1;
              RETURN 'deferred';
            EXCEPTION WHEN foreign_key_violation THEN RETURN 'immediate';
            END $$""",
    )
    commands = [
        f"SET CONSTRAINTS ALL DEFERRED; INSERT INTO {s}.chi VALUES (1)",  # fails at its end
        f"INSERT INTO {s}.chi2 VALUES (2)",  # initially deferred: fails at its end
        "SET CONSTRAINTS ALL DEFERRED",
        f"INSERT INTO {s}.t(v) SELECT {s}.probe()",  # not deferred by the job before
        f"INSERT INTO {s}.chi2 VALUES (5); INSERT INTO {s}.par VALUES (5)",  # still deferred
        f"INSERT INTO {s}.t(v) VALUES ('after')",
    ]
    ids = [
        run(db, "SELECT pgdispatch.dispatch(:c, priority => :p)", c=c, p=100 - i)
        for i, c in enumerate(commands)
    ]
    drain(db)  # one batch: no job's deferred check may fail the batch's commit
    found = [job(db, i) for i in ids]
    assert [f["state"] for f in found] == [
        "failed",
        "failed",
        "succeeded",
        "succeeded",
        "succeeded",
        "succeeded",
    ]
    assert found[0]["error"]["sqlstate"] == "23503"
    assert found[1]["error"]["sqlstate"] == "23503"
    assert [r["v"] for r in rows(db, f"SELECT v FROM {s}.t ORDER BY at")] == ["immediate", "after"]
    assert run(db, f"SELECT count(*) FROM {s}.chi2") == 1


def test_jobs_cannot_take_the_workers_own_advisory_locks_away(db: Engine, schema: str) -> None:
    # a worker slot keeps its lock (another instance of the slot would start otherwise)
    job_id = run(db, "SELECT pgdispatch.dispatch('SELECT pg_advisory_unlock_all()')")
    slot = 9
    holder: list[int] = []

    def worker() -> None:
        with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            holder.append(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            conn.execute(text(f"CALL pgdispatch.work(slot => {slot}, max_runtime => '3 s')"))

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        deadline = time.monotonic() + 2.5
        while job(db, job_id)["state"] != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job(db, job_id)["state"] == "succeeded"
        assert thread.is_alive()
        lock_holders = rows(
            db,
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = CAST(:c AS bigint)::oid AND objsubid = 2",
            c=1885824113 + slot,
        )
        assert [r["pid"] for r in lock_holders] == holder
    finally:
        thread.join(timeout=10)
    # draining in a caller's session keeps the caller's session locks, not the jobs'
    run(db, "SELECT pgdispatch.dispatch('SELECT pg_advisory_lock(778)')")
    with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("SELECT pg_advisory_lock(777)"))
        try:
            conn.execute(text("CALL pgdispatch.work(drain => true)"))
            held = conn.execute(
                text(
                    "SELECT array_agg(objid::int ORDER BY objid) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND classid = 0"
                )
            ).scalar_one()
        finally:
            conn.execute(text("SELECT pg_advisory_unlock_all()"))
    assert held == [777]


def test_a_worker_slot_runs_its_jobs_with_the_sessions_own_settings(
    db: Engine, schema: str
) -> None:
    # A worker session plans its own statements with settings of its own (sequential
    # scans, bitmap scans and sorts off, JIT off, generic plans, its commit mode): none
    # of them reaches a job, the first of a batch or a later one.
    names = [
        "enable_seqscan",
        "enable_bitmapscan",
        "enable_sort",
        "jit",
        "synchronous_commit",
        "plan_cache_mode",
    ]
    seen = " || ',' || ".join(f"current_setting('{n}')" for n in names)
    for _ in range(3):
        run(db, "SELECT pgdispatch.fire(:c)", c=f'INSERT INTO "{schema}".t(v) SELECT {seen}')
    with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        own = conn.execute(text(f"SELECT {seen}")).scalar_one()
        conn.execute(text("CALL pgdispatch.work(slot => 9, drain => true)"))
    found = [r["v"] for r in rows(db, f'SELECT v FROM "{schema}".t ORDER BY at')]
    assert found == [own] * 3


def test_work_refuses_to_run_jobs_under_set_role(db: Engine, pgdispatch_role) -> None:  # type: ignore[no-untyped-def]
    alice = pgdispatch_role("alice")
    with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'SET ROLE "{alice}"'))
        try:
            with pytest.raises(exc.DBAPIError, match="session's login role"):
                conn.execute(text("CALL pgdispatch.work(drain => true)"))
        finally:
            conn.execute(text("RESET ROLE"))  # the connection goes back to the pool


@pytest.fixture
def watchdog(db: Engine) -> Iterator[None]:
    """The superuser's watchdog, in a session of its own for the test."""
    thread = threading.Thread(
        target=lambda: _call(db, "CALL pgdispatch.watchdog(max_runtime => '8 seconds')")
    )
    thread.start()
    time.sleep(0.3)
    yield
    thread.join()


def _call(db: Engine, sql: str) -> None:
    with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(sql))


def test_timeout_interrupts_a_running_job_and_the_worker_goes_on(
    db: Engine, schema: str, watchdog: None
) -> None:
    slow = run(db, "SELECT pgdispatch.dispatch('SELECT pg_sleep(60)', timeout => '1 second')")
    after = run(
        db, f"SELECT pgdispatch.dispatch('INSERT INTO \"{schema}\".t(v) VALUES (''after'')')"
    )
    started = time.monotonic()
    drain(db)
    elapsed = time.monotonic() - started
    assert elapsed < 5
    found = job(db, slow)
    assert found["state"] == "failed"
    assert found["error"]["sqlstate"] == "57014"
    assert "timeout" in found["error"]["message"]
    assert job(db, after)["state"] == "succeeded"


def test_cancelling_a_running_job(db: Engine, watchdog: None) -> None:
    slow = run(db, "SELECT pgdispatch.dispatch('SELECT pg_sleep(60)')")
    worker = threading.Thread(target=drain, args=(db,))
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while job(db, slow)["state"] != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run(db, "SELECT pgdispatch.cancel(:id)", id=slow) is True
    finally:
        worker.join(timeout=10)
    assert not worker.is_alive()
    assert job(db, slow)["state"] == "cancelled"


def cron_jobs(db: Engine, role: str) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in rows(
            db,
            "SELECT jobname, schedule, command FROM cron.job WHERE username = :r ORDER BY jobname",
            r=role,
        )
    ]


def test_first_dispatch_starts_workers_and_stop_keeps_them_stopped(
    db: Engine,
    pgdispatch_server,
    pgdispatch_role,  # type: ignore[no-untyped-def]
) -> None:
    bob = pgdispatch_role("bob")
    bob_db = role_engine(pgdispatch_server, bob)
    try:
        assert cron_jobs(db, bob) == []
        run(bob_db, "SELECT pgdispatch.fire('SELECT 1')")
        schedule = (
            "* * * * *"
            if run(db, "SELECT NOT (pgdispatch.cron_info()).second_schedules")
            else "1 seconds"
        )
        oid = run(db, "SELECT oid FROM pg_roles WHERE rolname = :r", r=bob)
        # (the names hold no role name: cron.job is unique on (jobname, username); the
        # commands carry the role's oid, for repair_roles())
        assert cron_jobs(db, bob) == [
            {
                "jobname": "pgdispatch:1",
                "schedule": schedule,
                "command": f"CALL pgdispatch.work(slot => 1) /* role {oid} */",
            },
            {
                "jobname": "pgdispatch:watchdog",
                "schedule": schedule,
                "command": f"CALL pgdispatch.watchdog() /* role {oid} */",
            },
        ]
        run(bob_db, "SELECT pgdispatch.start(3)")
        assert [j["jobname"] for j in cron_jobs(db, bob)] == [
            f"pgdispatch:{n}" for n in (1, 2, 3)
        ] + ["pgdispatch:watchdog"]
        run(bob_db, "SELECT pgdispatch.start(2)")
        assert len(cron_jobs(db, bob)) == 3
        run(bob_db, "SELECT pgdispatch.stop()")
        assert cron_jobs(db, bob) == []
        # dispatching after stop() queues without restarting anything
        run(bob_db, "SELECT pgdispatch.fire('SELECT 2')")
        assert cron_jobs(db, bob) == []
        assert run(bob_db, "SELECT count(*) FROM pgdispatch.jobs WHERE state = 'queued'") == 2
        drain(bob_db)
    finally:
        bob_db.dispose()


def test_nologin_roles_get_a_clear_error_at_dispatch(db: Engine, pgdispatch_role) -> None:  # type: ignore[no-untyped-def]
    ghost = pgdispatch_role("ghost", login=False)
    with db.connect() as conn:
        conn.execute(text(f'SET ROLE "{ghost}"'))
        with pytest.raises(exc.DBAPIError, match="cannot log in") as raised:
            conn.execute(text("SELECT pgdispatch.fire('SELECT 1')"))
        assert "SECURITY DEFINER" in str(raised.value)


def test_roles_see_and_cancel_only_their_own_jobs(
    db: Engine,
    pgdispatch_server,
    pgdispatch_role,  # type: ignore[no-untyped-def]
) -> None:
    alice, mallory = pgdispatch_role("alice"), pgdispatch_role("mallory")
    alice_db, mallory_db = (role_engine(pgdispatch_server, r) for r in (alice, mallory))
    try:
        run(alice_db, "SELECT pgdispatch.stop()")
        secret = run(
            alice_db,
            "SELECT pgdispatch.dispatch('SELECT $1', payload => '{\"secret\": 1}', "
            "delay => '1 hour')",
        )
        assert (
            run(mallory_db, "SELECT count(*) FROM pgdispatch.jobs WHERE id = :id", id=secret) == 0
        )
        assert run(mallory_db, "SELECT count(*) FROM pgdispatch.job") == 0
        with pytest.raises(exc.DBAPIError, match="does not exist or belongs to another role"):
            run(mallory_db, "SELECT pgdispatch.cancel(:id)", id=secret)
        assert run(mallory_db, "SELECT pgdispatch.fetch_results(:id)", id=secret) is None
        # the superuser (an administrator) sees every role's jobs
        assert run(db, "SELECT role FROM pgdispatch.jobs WHERE id = :id", id=secret) == alice
        assert run(alice_db, "SELECT pgdispatch.cancel(:id)", id=secret) is True
    finally:
        alice_db.dispose()
        mallory_db.dispose()


def test_roles_without_usage_cannot_dispatch(db: Engine, pgdispatch_server) -> None:  # type: ignore[no-untyped-def]
    run(db, 'CREATE ROLE "stranger_pgd" LOGIN')
    stranger = role_engine(pgdispatch_server, "stranger_pgd")
    try:
        with pytest.raises(exc.DBAPIError, match="permission denied"):
            run(stranger, "SELECT pgdispatch.fire('SELECT 1')")
    finally:
        stranger.dispose()
        run(db, 'DROP ROLE "stranger_pgd"')


def test_prune_deletes_finished_jobs_past_retention_only(db: Engine, settings) -> None:  # type: ignore[no-untyped-def]
    old = run(db, "SELECT pgdispatch.dispatch('SELECT 1')")
    queued = run(db, "SELECT pgdispatch.dispatch('SELECT 1', delay => '1 hour')")
    drain(db)
    settings(retention="0 seconds")
    assert run(db, "SELECT pgdispatch.prune()") >= 1
    assert rows(db, "SELECT * FROM pgdispatch.jobs WHERE id = :id", id=old) == []
    assert job(db, queued)["state"] == "queued"  # unfinished jobs are never pruned
    run(db, "SELECT pgdispatch.cancel(:id)", id=queued)


def test_workers_prune_on_their_own(db: Engine, settings) -> None:  # type: ignore[no-untyped-def]
    done = run(db, "SELECT pgdispatch.dispatch('SELECT 1')")
    drain(db)
    settings(retention="0 seconds", prune_interval="200 milliseconds")
    _call(db, "CALL pgdispatch.work(slot => 1, max_runtime => '1.5 seconds')")
    assert rows(db, "SELECT * FROM pgdispatch.jobs WHERE id = :id", id=done) == []


def test_slot_1_prunes_as_fast_as_jobs_finish(db: Engine, settings) -> None:  # type: ignore[no-untyped-def]
    """Issue 14: one prune pass (prune_batch rows) every prune_interval capped retention
    at prune_batch / prune_interval rows a second (100 by default), and the history of a
    faster role grew without bound. A full pass is followed by another at the next batch
    boundary or idle moment. Here the cap is 100 rows a second: within a worker's
    3-second run, 5,000 finished jobs and the 2,000 it runs itself (a backlog: full
    batches, no idle moment until it is done) are all pruned, where the cap allowed
    at most 300."""
    run(db, "SELECT count(pgdispatch.dispatch('SELECT 1')) FROM generate_series(1, 5000)")
    drain(db)
    settings(retention="0 seconds", prune_batch=100, prune_interval="1 second")
    first = run(db, "SELECT min(pgdispatch.dispatch('SELECT 1')) FROM generate_series(1, 2000)")
    history = (
        "SELECT count(*) FROM pgdispatch.job_history"
        " WHERE role_id = to_regrole(quote_ident(current_user))"
    )
    assert run(db, history) >= 5000
    _call(db, "CALL pgdispatch.work(slot => 1, max_runtime => '3 seconds')")
    # (the 2,000 jobs of this test: another test's job, due later or another role's, may
    # still be queued on the shared server)
    assert run(db, "SELECT count(*) FROM pgdispatch.job WHERE id >= :first", first=first) == 0
    assert run(db, history) == 0


def test_queue_is_vacuumed_by_its_dead_rows_alone(db: Engine) -> None:
    """Issue 14: drained jobs' dead entries at the head of job_claim slowed every claim
    until autovacuum came, after 20% of the queue by default (200,000 dead rows over a
    backlog of 1,000,000). The queue is vacuumed after 10,000 dead rows, whatever its
    size; the history keeps PostgreSQL's defaults. (An upgraded install has the same
    reloptions: tests/test_schema_versions.py compares them.)"""
    options = {
        r["relname"]: r["reloptions"]
        for r in rows(
            db,
            "SELECT c.relname, c.reloptions FROM pg_class c"
            " WHERE c.relnamespace = 'pgdispatch'::regnamespace"
            " AND c.relname IN ('job', 'job_history')",
        )
    }
    assert options == {
        "job": ["autovacuum_vacuum_scale_factor=0", "autovacuum_vacuum_threshold=10000"],
        "job_history": None,
    }


# -- stop() lets running jobs finish; timeouts need the watchdog -------------------------


def _pg_cron_version(engine: Engine) -> tuple[int, ...]:
    version = run(engine, "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'")
    return tuple(int(p) for p in version.split("-")[0].split("."))


def _wait_until(engine: Engine, sql: str, timeout: float, **params: Any) -> bool:
    deadline = time.monotonic() + timeout
    while not run(engine, sql, **params):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class _Session(threading.Thread):
    """A statement in a session of its own (a worker or watchdog standing in for pg_cron's,
    where pg_cron 1.4 would start it only at the next minute)."""

    def __init__(self, engine: Engine, sql: str) -> None:
        super().__init__(daemon=True)
        self.engine, self.sql = engine, sql
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(text(self.sql))
        except BaseException as error:  # reported by the test
            self.error = error


def _role_with_a_worker(
    db: Engine, server: Any, make_role: Any, schema: str
) -> tuple[str, Engine, _Session | None]:
    """A role with slot 1 served: by pg_cron (>= 1.5, second schedules), else by a session
    of its own running the scheduled worker's CALL (its pg_cron jobs scheduled too)."""
    role = make_role("graceful")
    run(db, f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
    run(db, f'GRANT SELECT, INSERT ON "{schema}".t TO "{role}"')
    engine = role_engine(server, role)
    run(engine, "SELECT pgdispatch.start(1)")
    worker = None
    if _pg_cron_version(db) < (1, 5):
        worker = _Session(engine, "CALL pgdispatch.work(slot => 1)")
        worker.start()
    assert _wait_until(
        db,
        "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND classid = 1885824114 AND objsubid = 2"
        " AND objid = (SELECT oid FROM pg_roles WHERE rolname = :r)",
        20,
        r=role,
    ), "no worker took slot 1"
    return role, engine, worker


def test_stop_lets_a_running_job_finish(
    db: Engine, schema: str, pgdispatch_server: Any, pgdispatch_role: Any
) -> None:
    """stop() waits for the job a worker runs and its outcome; 0.2.0 before it unscheduled
    at once, and pg_cron (background workers) ended the worker mid-job: the job came back
    queued with attempts 0 and ran again after start()."""
    role, engine, worker = _role_with_a_worker(db, pgdispatch_server, pgdispatch_role, schema)
    try:
        job_id = run(
            engine,
            "SELECT pgdispatch.dispatch(:c)",
            c=f"INSERT INTO \"{schema}\".t(v) SELECT 'ran' FROM pg_sleep(3)",
        )
        assert _wait_until(
            engine, "SELECT state = 'running' FROM pgdispatch.jobs WHERE id = :id", 20, id=job_id
        )
        run(engine, "SELECT pgdispatch.stop()")
        finished = job(engine, job_id)
        assert (finished["state"], finished["attempts"]) == ("succeeded", 1)
        assert cron_jobs(db, role) == []
        if worker is not None:
            worker.join(10)
            assert not worker.is_alive()
            assert worker.error is None, worker.error
        # it ran once, and does not run again once the workers are back
        run(engine, "SELECT pgdispatch.start(1)")
        run(engine, "SELECT pgdispatch.stop()")
        assert run(db, f"SELECT count(*) FROM \"{schema}\".t WHERE v = 'ran'") == 1
    finally:
        run(engine, "SELECT pgdispatch.stop(wait => NULL)")
        engine.dispose()


def test_stop_refuses_when_a_job_outlasts_its_wait(
    db: Engine, schema: str, pgdispatch_server: Any, pgdispatch_role: Any
) -> None:
    role, engine, worker = _role_with_a_worker(db, pgdispatch_server, pgdispatch_role, schema)
    try:
        job_id = run(engine, "SELECT pgdispatch.dispatch('SELECT pg_sleep(4)')")
        assert _wait_until(
            engine, "SELECT state = 'running' FROM pgdispatch.jobs WHERE id = :id", 20, id=job_id
        )
        with pytest.raises(exc.DBAPIError, match=f"still run job\\(s\\) {job_id} after") as raised:
            run(engine, "SELECT pgdispatch.stop(wait => '200 milliseconds')")
        assert getattr(raised.value.orig, "sqlstate", None) == "55P03"  # lock_not_available
        # nothing was stopped: the job goes on, the workers stay scheduled
        names = [j["jobname"] for j in cron_jobs(db, role)]
        assert names == ["pgdispatch:1", "pgdispatch:watchdog"]
        assert job(engine, job_id)["state"] == "running"
        run(engine, "SELECT pgdispatch.stop(wait => NULL)")
        finished = job(engine, job_id)
        assert (finished["state"], finished["attempts"]) == ("succeeded", 1)
        assert cron_jobs(db, role) == []
    finally:
        run(engine, "SELECT pgdispatch.stop(wait => NULL)")
        engine.dispose()
        if worker is not None:
            worker.join(10)


def test_a_job_with_a_timeout_waits_while_its_watchdog_is_missing(
    db: Engine, schema: str, pgdispatch_server: Any, pgdispatch_role: Any
) -> None:
    """Timeouts hold without a watchdog: in background-worker mode a role's watchdog may
    find no pg_cron slot, and a job with a 2 s timeout ran 15 s and succeeded. Jobs with a
    timeout now wait queued until the watchdog runs."""
    _, engine, worker = _role_with_a_worker(db, pgdispatch_server, pgdispatch_role, schema)
    watchdog = None
    try:
        # no watchdog: unscheduled, and the one running ended
        run(
            engine,
            "SELECT cron.unschedule(jobid) FROM cron.job"
            " WHERE username = current_user AND jobname = 'pgdispatch:watchdog'",
        )
        run(
            engine,
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 1885824113"
            " AND l.objsubid = 2"
            " AND l.objid = (SELECT oid FROM pg_roles WHERE rolname = current_user)",
        )
        assert _wait_until(
            engine,
            "SELECT NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory'"
            " AND l.classid = 1885824113 AND l.objsubid = 2"
            " AND l.objid = (SELECT oid FROM pg_roles WHERE rolname = current_user))",
            10,
        )
        timed = run(
            engine,
            "SELECT pgdispatch.dispatch(:c, timeout => '2 seconds')",
            c=f"INSERT INTO \"{schema}\".t(v) SELECT 'timed' FROM pg_sleep(6)",
        )
        untimed = run(engine, "SELECT pgdispatch.dispatch('SELECT 1')")
        # the worker serves: the job without a timeout, dispatched after it, ran ...
        assert _wait_until(
            engine, "SELECT state = 'succeeded' FROM pgdispatch.jobs WHERE id = :id", 20, id=untimed
        )
        # ... and the one with a timeout was not started
        waiting = job(engine, timed)
        assert (waiting["state"], waiting["attempts"]) == ("queued", 0)
        # with a watchdog it runs, and its timeout holds
        watchdog = _Session(engine, "CALL pgdispatch.watchdog(max_runtime => '8 seconds')")
        watchdog.start()
        assert _wait_until(
            engine,
            "SELECT state NOT IN ('queued', 'running') FROM pgdispatch.jobs WHERE id = :id",
            20,
            id=timed,
        )
        done = job(engine, timed)
        assert done["state"] == "failed", done
        assert done["error"]["message"] == "job exceeded its timeout of 00:00:02"
        assert (done["finished_at"] - done["started_at"]).total_seconds() < 4
    finally:
        run(engine, "SELECT pgdispatch.stop(wait => NULL)")
        engine.dispose()
        for session in (worker, watchdog):
            if session is not None:
                session.join(20)
