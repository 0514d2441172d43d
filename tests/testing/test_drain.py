"""sa_pgdispatch.testing.drain: run due jobs now, in this process."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from sa_pgdispatch import jobs
from sa_pgdispatch.errors import DrainError, NotInstalled
from sa_pgdispatch.jobs import JobState
from sa_pgdispatch.testing.drain import _HAS_MAX_JOBS, Drainer, drain, drain_async
from sa_pgdispatch.testing.server import PgServer


@pytest.fixture
def role(pgdispatch_role: Callable[..., str], pgdispatch_db: Engine) -> str:
    return pgdispatch_role("drain")


@pytest.fixture
def engine(pgdispatch_server: PgServer, role: str) -> Iterator[Engine]:
    """The role's engine, its pg_cron workers stopped, a table ``sink`` of its own."""
    eng = create_engine(pgdispatch_server.connect_url(user=role))
    with eng.begin() as conn:
        conn.execute(text("SELECT pgdispatch.stop()"))  # no pg_cron worker: drain only
        conn.execute(text(f'CREATE SCHEMA "{role}"'))  # first on its search_path
        conn.execute(text("CREATE TABLE sink (v int)"))
    yield eng
    eng.dispose()


def dispatch(engine: Engine, command: str, **options: object) -> int:
    args = "".join(f", {k} => :{k}" for k in options)
    with engine.begin() as conn:
        return int(
            conn.execute(
                text(f"SELECT pgdispatch.dispatch(:c{args})"), {"c": command, **options}
            ).scalar_one()
        )


def sink(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT v FROM sink ORDER BY v")).scalars())


def test_drain_runs_every_due_job_and_counts_them(engine: Engine) -> None:
    for i in range(5):
        dispatch(engine, "INSERT INTO sink VALUES (($1 ->> 'i')::int)", payload=f'{{"i": {i}}}')
    failing = dispatch(engine, "SELECT 1/0")
    delayed = dispatch(engine, "INSERT INTO sink VALUES (99)", delay=timedelta(hours=1))
    assert drain(engine) == 6
    assert sink(engine) == [0, 1, 2, 3, 4]
    assert jobs.get(engine, failing).state is JobState.FAILED
    assert jobs.get(engine, delayed).state is JobState.QUEUED  # not due
    assert drain(engine) == 0
    jobs.cancel(engine, delayed)


def test_jobs_dispatched_by_jobs_run_in_the_same_drain(engine: Engine) -> None:
    dispatch(
        engine,
        "SELECT pgdispatch.dispatch('INSERT INTO sink VALUES (2)'), "
        "pgdispatch.dispatch('INSERT INTO sink VALUES (3)')",
    )
    assert drain(engine) == 3
    assert sink(engine) == [2, 3]


def test_a_retried_job_is_counted_when_it_finishes(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE SEQUENCE tries"))
    # fails on its first attempt, succeeds on the second (retry_backoff later)
    job_id = dispatch(
        engine,
        "SELECT 1 / (nextval('tries') - 1)",
        max_attempts=2,
    )
    assert drain(engine) == 0
    job = jobs.get(engine, job_id)
    assert job.state is JobState.QUEUED
    assert job.attempts == 1
    assert job.error is not None
    assert job.error["sqlstate"] == "22012"
    with engine.begin() as conn:  # make the retry due now
        conn.execute(
            text("UPDATE pgdispatch.job SET run_at = clock_timestamp() WHERE id = :i"),
            {"i": job_id},
        )
    assert drain(engine) == 1
    assert jobs.get(engine, job_id).state is JobState.SUCCEEDED


def test_drain_leaves_other_roles_jobs_alone(engine: Engine, pgdispatch_db: Engine) -> None:
    mine = dispatch(engine, "INSERT INTO sink VALUES (1)")
    theirs = dispatch(pgdispatch_db, "SELECT 1", delay=timedelta(hours=1))
    assert drain(engine) == 1
    assert jobs.get(engine, mine).state is JobState.SUCCEEDED
    assert jobs.get(pgdispatch_db, theirs).state is JobState.QUEUED
    jobs.cancel(pgdispatch_db, theirs)


def test_drain_on_connections(engine: Engine, pgdispatch_server: PgServer, role: str) -> None:
    dispatch(engine, "INSERT INTO sink VALUES (1)")
    with engine.connect() as conn:
        assert drain(conn) == 1
        assert conn.connection.driver_connection.autocommit is False  # type: ignore[union-attr]
        conn.execute(text("SELECT 1"))
        with pytest.raises(DrainError, match="outside a transaction"):
            drain(conn)
        conn.rollback()
    dispatch(engine, "INSERT INTO sink VALUES (2)")
    with psycopg.connect(pgdispatch_server.connect_dsn(user=role)) as raw:
        assert drain(raw) == 1
        raw.execute("SELECT 1")
        with pytest.raises(DrainError, match="INTRANS"):
            drain(raw)
    assert sink(engine) == [1, 2]


def test_drain_refuses_set_role(pgdispatch_server: PgServer, role: str) -> None:
    # a connection of its own: SET ROLE must not leak into a pool
    with psycopg.connect(pgdispatch_server.dsn, autocommit=True) as raw:
        raw.execute(f'SET ROLE "{role}"')
        with pytest.raises(DrainError, match="login role"):
            drain(raw)


def test_drain_without_pgdispatch(pgdispatch_db: Engine, pgdispatch_server: PgServer) -> None:
    dbname = f"nodrain_{uuid.uuid4().hex[:8]}"
    with pgdispatch_db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'CREATE DATABASE "{dbname}"'))
    other = create_engine(pgdispatch_server.connect_url(dbname=dbname))
    try:
        with pytest.raises(NotInstalled):
            drain(other)
    finally:
        other.dispose()
        with pgdispatch_db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'DROP DATABASE "{dbname}"'))


def test_max_jobs(engine: Engine) -> None:
    with pytest.raises(ValueError, match="max_jobs"):
        drain(engine, max_jobs=0)
    for i in range(3):
        dispatch(engine, f"INSERT INTO sink VALUES ({i})")
    with engine.connect() as conn:
        supported = conn.execute(text(_HAS_MAX_JOBS)).scalar_one()
    if supported:
        assert drain(engine, max_jobs=2) == 2
        assert drain(engine) == 1
    else:
        with pytest.raises(DrainError, match="max_jobs"):
            drain(engine, max_jobs=2)
        assert sink(engine) == []  # nothing ran
        assert drain(engine) == 3


async def test_drain_async(engine: Engine, pgdispatch_server: PgServer, role: str) -> None:
    dispatch(engine, "INSERT INTO sink VALUES (1)")
    aengine = create_async_engine(pgdispatch_server.connect_url(user=role))
    try:
        assert await drain_async(aengine) == 1
        dispatch(engine, "INSERT INTO sink VALUES (2)")
        async with aengine.connect() as conn:
            assert await drain_async(conn) == 1
            await conn.execute(text("SELECT 1"))
            with pytest.raises(DrainError, match="outside a transaction"):
                await drain_async(conn)
    finally:
        await aengine.dispose()
    dispatch(engine, "INSERT INTO sink VALUES (3)")
    async with await psycopg.AsyncConnection.connect(
        pgdispatch_server.connect_dsn(user=role)
    ) as raw:
        assert await drain_async(raw) == 1
    assert sink(engine) == [1, 2, 3]


def test_the_fixture(pgdispatch_drain: Drainer, pgdispatch_db: Engine, engine: Engine) -> None:
    table = f"public.fixture_sink_{uuid.uuid4().hex[:8]}"
    with pgdispatch_db.begin() as conn:
        conn.execute(text(f"CREATE TABLE {table} (v int)"))
    try:
        dispatch(pgdispatch_db, f"INSERT INTO {table} VALUES (1)")
        assert pgdispatch_drain() >= 1  # the superuser's jobs (other tests may add some)
        with pgdispatch_db.connect() as conn:
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 1
        dispatch(engine, "INSERT INTO sink VALUES (5)")
        assert pgdispatch_drain(engine) == 1  # another role's engine
        assert pgdispatch_drain.last == 1
        assert pgdispatch_drain.total >= 2
    finally:
        with pgdispatch_db.begin() as conn:
            conn.execute(text(f"DROP TABLE {table}"))


def _watchdogs(engine: Engine, role: str) -> int:
    """The role's sessions running a watchdog, once the closed ones are gone (a backend
    exits a moment after its client closed the connection)."""
    deadline = time.monotonic() + 5
    while True:
        with engine.connect() as conn:
            count = int(
                conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE usename = :r"
                         " AND application_name = 'pgdispatch watchdog'"),
                    {"r": role},
                ).scalar_one()
            )
        if count == 0 or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def test_drain_enforces_job_timeouts(engine: Engine, role: str) -> None:
    """A job past its timeout is interrupted and fails as on a worker (the role's
    watchdog logic runs beside the drain), and the drain goes on with the next job."""
    slow = dispatch(engine, "SELECT pg_sleep(5)", timeout=timedelta(milliseconds=200))
    after = dispatch(engine, "INSERT INTO sink VALUES (1)")
    started = time.monotonic()
    assert drain(engine) == 2
    # interrupted within about a second, as by a worker's watchdog (which polls every
    # second while none of the role's jobs runs)
    assert time.monotonic() - started < 3.5
    job = jobs.get(engine, slow)
    assert job.state is JobState.FAILED
    assert job.error is not None
    assert job.error["sqlstate"] == "57014"
    assert job.error["message"].startswith("job exceeded its timeout of")
    assert job.run_time is not None
    assert job.run_time >= timedelta(milliseconds=200)  # never early
    assert jobs.get(engine, after).state is JobState.SUCCEEDED
    assert sink(engine) == [1]
    assert _watchdogs(engine, role) == 0  # the drain's watchdog ended with it


def test_drain_retries_a_timed_out_job_with_attempts_left(engine: Engine) -> None:
    job_id = dispatch(
        engine, "SELECT pg_sleep(5)", timeout=timedelta(milliseconds=200), max_attempts=2
    )
    drain(engine)
    job = jobs.get(engine, job_id)
    assert job.state is JobState.QUEUED  # waiting for its retry, as on a worker
    assert job.error is not None
    assert job.error["message"].startswith("job exceeded its timeout of")
    jobs.cancel(engine, job_id)


def test_drain_interrupts_a_job_cancelled_while_running(engine: Engine) -> None:
    job_id = dispatch(engine, "SELECT pg_sleep(5)")

    def cancel_when_running() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if jobs.get(engine, job_id).state is JobState.RUNNING:
                assert jobs.cancel(engine, job_id) is True
                return
            time.sleep(0.02)

    canceller = threading.Thread(target=cancel_when_running, daemon=True)
    canceller.start()
    started = time.monotonic()
    assert drain(engine) == 1
    canceller.join()
    assert time.monotonic() - started < 3.5
    job = jobs.get(engine, job_id)
    assert job.state is JobState.CANCELLED
    assert job.error is not None
    assert job.error["message"] == "job cancelled while running"


async def test_drain_async_enforces_job_timeouts(
    engine: Engine, pgdispatch_server: PgServer, role: str
) -> None:
    slow = dispatch(engine, "SELECT pg_sleep(5)", timeout=timedelta(milliseconds=200))
    aengine = create_async_engine(pgdispatch_server.connect_url(user=role))
    try:
        started = time.monotonic()
        assert await drain_async(aengine) == 1
        assert time.monotonic() - started < 3.5
    finally:
        await aengine.dispose()
    job = jobs.get(engine, slow)
    assert job.state is JobState.FAILED
    assert job.error is not None
    assert job.error["message"].startswith("job exceeded its timeout of")
    assert _watchdogs(engine, role) == 0
