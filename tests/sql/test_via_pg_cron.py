"""End to end through real pg_cron workers (pg_cron 1.4: minute ticks; the workers of
the ``cron_role`` were started when the first SQL test ran)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from .conftest import job, role_engine, rows, run

pytestmark = [pytest.mark.e2e, pytest.mark.cron]


def worker_alive(db: Engine, role: str) -> bool:
    return bool(
        run(
            db,
            """SELECT count(*) > 0 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                WHERE l.locktype = 'advisory' AND l.classid = 1885824114::oid
                  AND l.granted AND a.usename = :r""",
            r=role,
        )
    )


@pytest.fixture(scope="module")
def cron_db(pgdispatch_db: Engine, pgdispatch_server, cron_role: str) -> Iterator[Engine]:  # type: ignore[no-untyped-def]
    """The cron role's engine, once its pg_cron worker is serving (<= one minute tick)."""
    engine = role_engine(pgdispatch_server, cron_role)
    run(engine, f'CREATE SCHEMA IF NOT EXISTS "{cron_role}"')  # first in its search_path
    run(
        engine,
        "CREATE TABLE IF NOT EXISTS cron_t (v text, by_session name, by_user name, "
        "at timestamptz DEFAULT clock_timestamp())",
    )
    deadline = time.monotonic() + 75
    while not worker_alive(pgdispatch_db, cron_role):
        assert time.monotonic() < deadline, "pg_cron did not start the worker within a tick"
        time.sleep(0.2)
    yield engine
    engine.dispose()


def wait_for(engine: Engine, sql: str, timeout: float) -> float:
    started = time.monotonic()
    while not run(engine, sql):
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true within {timeout} s: {sql}")
        time.sleep(0.05)
    return time.monotonic() - started


def test_pg_dispatch_behaviour_is_reproduced(cron_db: Engine) -> None:
    fired_at = time.monotonic()
    run(
        cron_db,
        "SELECT pgdispatch.fire('SELECT pg_sleep(5); INSERT INTO cron_t(v) VALUES (''123'')')",
    )
    time.sleep(3 - (time.monotonic() - fired_at))
    assert run(cron_db, "SELECT count(*) FROM cron_t WHERE v = '123'") == 0
    wait_for(cron_db, "SELECT count(*) = 1 FROM cron_t WHERE v = '123'", timeout=10)
    assert 5 <= time.monotonic() - fired_at < 8


def test_the_job_runs_as_the_dispatching_role_in_its_own_session(
    cron_db: Engine, cron_role: str
) -> None:
    run(
        cron_db,
        "SELECT pgdispatch.fire('INSERT INTO cron_t VALUES (''who'', session_user, current_user)')",
    )
    wait_for(cron_db, "SELECT count(*) = 1 FROM cron_t WHERE v = 'who'", timeout=5)
    (row,) = rows(cron_db, "SELECT by_session, by_user FROM cron_t WHERE v = 'who'")
    assert (row["by_session"], row["by_user"]) == (cron_role, cron_role)


def test_invalid_commands_are_recorded_and_the_worker_goes_on(cron_db: Engine) -> None:
    bad = run(cron_db, "SELECT pgdispatch.dispatch('INSERT INTO no_such_table VALUES (1)')")
    good = run(
        cron_db, "SELECT pgdispatch.dispatch('INSERT INTO cron_t(v) VALUES (''after bad'')')"
    )
    wait_for(
        cron_db, f"SELECT state = 'succeeded' FROM pgdispatch.jobs WHERE id = {good}", timeout=5
    )
    failed = job(cron_db, bad)
    assert failed["state"] == "failed"
    assert failed["error"]["sqlstate"] == "42P01"


def test_workers_serve_between_cron_ticks(cron_db: Engine) -> None:
    ids = []
    for _ in range(25):
        ids.append(run(cron_db, "SELECT pgdispatch.dispatch('SELECT 1')"))
        time.sleep(0.02)
    wait_for(
        cron_db,
        "SELECT bool_and(state = 'succeeded') FROM pgdispatch.jobs "
        f"WHERE id IN ({','.join(map(str, ids))})",
        timeout=5,
    )
    waits = [
        (r["started_at"] - r["created_at"]).total_seconds()
        for r in rows(
            cron_db, f"SELECT * FROM pgdispatch.jobs WHERE id IN ({','.join(map(str, ids))})"
        )
    ]
    # fire-to-start does not depend on cron's minute granularity (benchmarks measure it)
    assert max(waits) < 1.0, waits
    print(
        f"fire-to-start p50 {statistics.median(waits) * 1000:.1f} ms, "
        f"max {max(waits) * 1000:.1f} ms"
    )


def test_stop_ends_the_workers_and_jobs_wait(
    cron_db: Engine, pgdispatch_db: Engine, cron_role: str
) -> None:
    run(cron_db, "SELECT pgdispatch.stop()")
    wait_for(
        pgdispatch_db,
        "SELECT NOT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.classid = 1885824114::oid"
        f" AND a.usename = '{cron_role}')",
        timeout=5,
    )
    waiting = run(cron_db, "SELECT pgdispatch.dispatch('SELECT 1')")
    time.sleep(0.5)
    assert job(cron_db, waiting)["state"] == "queued"
    assert run(pgdispatch_db, "SELECT count(*) FROM cron.job WHERE username = :r", r=cron_role) == 0
    run(cron_db, "SELECT pgdispatch.cancel(:id)", id=waiting)
