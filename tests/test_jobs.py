"""The sync job API (sa_pgdispatch.jobs) against a real server, jobs run by drain()."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from sa_pgdispatch import jobs
from sa_pgdispatch.errors import (
    JobCancelled,
    JobFailed,
    JobNotFinished,
    JobNotFound,
    JobTimeout,
    NotInstalled,
    PermissionDenied,
    PgDispatchError,
)
from sa_pgdispatch.jobs import Job, JobState
from sa_pgdispatch.testing.drain import drain
from sa_pgdispatch.testing.server import PgServer

FAILING = (
    "DO $$ BEGIN RAISE EXCEPTION 'boom' USING ERRCODE = '22012', "
    "DETAIL = 'the detail', HINT = 'the hint'; END $$"
)


@pytest.fixture(scope="module")
def role_engine(
    pgdispatch_server: PgServer, pgdispatch_role: Callable[..., str]
) -> Iterator[Engine]:
    """An engine of a login role of its own, with its pg_cron workers stopped: its jobs
    run only when a test drains them, and counts are not disturbed by other tests."""
    role = pgdispatch_role("jobs")
    engine = create_engine(pgdispatch_server.connect_url(user=role))
    with engine.begin() as conn:
        conn.execute(text("SELECT pgdispatch.stop()"))
    yield engine
    engine.dispose()


def dispatch(engine: Engine, command: str, **options: object) -> int:
    args = "".join(f", {k} => :{k}" for k in options)
    with engine.begin() as conn:
        job_id = conn.execute(
            text(f"SELECT pgdispatch.dispatch(:command{args})"), {"command": command, **options}
        ).scalar_one()
    return int(job_id)


def drain_later(engine: Engine, delay: float = 0.2) -> threading.Thread:
    """Drain in another thread after ``delay`` seconds (a stand-in for a worker)."""

    def run() -> None:
        time.sleep(delay)
        drain(engine)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_get_a_queued_then_succeeded_job(role_engine: Engine) -> None:
    job_id = dispatch(role_engine, "SELECT $1::jsonb AS p", payload='{"a": 1}', capture=True)
    with role_engine.connect() as conn:
        job = jobs.get(conn, job_id)
    assert isinstance(job, Job)
    assert job.id == job_id
    assert job.state is JobState.QUEUED
    assert not job.finished
    assert job.payload == {"a": 1}
    assert job.capture is True
    assert job.started_at is None
    assert job.run_time is None
    assert job.start_latency is None

    assert drain(role_engine) >= 1
    job = jobs.get(role_engine, job_id)
    assert job.state is JobState.SUCCEEDED
    assert job.finished
    assert job.result == [{"p": {"a": 1}}]
    assert job.rows_affected == 1
    assert job.attempts == 1
    assert job.run_time is not None
    assert job.run_time >= timedelta(0)
    assert job.start_latency is not None
    assert job.start_latency >= timedelta(0)
    with pytest.raises(AttributeError):
        job.state = JobState.FAILED  # type: ignore[misc]


def test_get_unknown_job(role_engine: Engine) -> None:
    with pytest.raises(JobNotFound, match="2000000000") as info:
        jobs.get(role_engine, 2_000_000_000)
    assert info.value.job_id == 2_000_000_000


@pytest.fixture(scope="module")
def other_engine(
    pgdispatch_server: PgServer, pgdispatch_role: Callable[..., str]
) -> Iterator[Engine]:
    engine = create_engine(pgdispatch_server.connect_url(user=pgdispatch_role("other")))
    yield engine
    engine.dispose()


def test_other_roles_jobs_are_not_found(role_engine: Engine, other_engine: Engine) -> None:
    job_id = dispatch(role_engine, "SELECT 1")
    with pytest.raises(JobNotFound):
        jobs.get(other_engine, job_id)  # a non-admin role sees its own jobs only
    with pytest.raises(JobNotFound):
        jobs.cancel(other_engine, job_id)
    drain(role_engine)


def test_wait_returns_the_finished_job(role_engine: Engine) -> None:
    job_id = dispatch(role_engine, "SELECT 42 AS answer", capture=True)
    worker = drain_later(role_engine)
    with role_engine.connect() as conn:
        job = jobs.wait(conn, job_id, timeout=30)
        # wait() left the connection as it found it: no transaction open
        assert not conn.in_transaction()
    worker.join()
    assert job.state is JobState.SUCCEEDED
    assert job.result == [{"answer": 42}]


def test_wait_in_a_read_committed_transaction_sees_the_change(role_engine: Engine) -> None:
    job_id = dispatch(role_engine, "SELECT 1")
    worker = drain_later(role_engine)
    with role_engine.connect() as conn:
        conn.execute(text("SELECT 1"))  # a transaction is open
        assert conn.in_transaction()
        job = jobs.wait(conn, job_id, timeout=30)
        assert conn.in_transaction()  # still the caller's
    worker.join()
    assert job.state is JobState.SUCCEEDED


def test_wait_with_a_session_and_an_engine(role_engine: Engine) -> None:
    first = dispatch(role_engine, "SELECT 1")
    second = dispatch(role_engine, "SELECT 2")
    worker = drain_later(role_engine)
    with Session(role_engine) as session:
        assert jobs.wait(session, first, timeout=30).state is JobState.SUCCEEDED
    assert jobs.wait(role_engine, second, timeout=30).state is JobState.SUCCEEDED
    worker.join()


def test_wait_times_out_naming_the_job_and_its_state(role_engine: Engine) -> None:
    job_id = dispatch(role_engine, "SELECT 1")
    started = time.monotonic()
    with pytest.raises(JobTimeout, match=rf"job {job_id} is still queued after 0.3 s") as info:
        jobs.wait(role_engine, job_id, timeout=0.3)
    assert time.monotonic() - started >= 0.3
    assert info.value.job.state is JobState.QUEUED
    assert info.value.job_id == job_id
    assert isinstance(info.value, TimeoutError)
    drain(role_engine)


def test_wait_refuses_a_repeatable_read_transaction(role_engine: Engine) -> None:
    job_id = dispatch(role_engine, "SELECT 1")
    with role_engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        conn.execute(text("SELECT 1"))
        with pytest.raises(PgDispatchError, match="REPEATABLE READ transaction would never"):
            jobs.wait(conn, job_id, timeout=5)
    drain(role_engine)


def test_wait_outside_a_transaction_works_even_in_repeatable_read(role_engine: Engine) -> None:
    # wait() ends the transactions it begins itself, so each poll gets a new snapshot
    job_id = dispatch(role_engine, "SELECT 1")
    worker = drain_later(role_engine)
    with role_engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        assert jobs.wait(conn, job_id, timeout=30).state is JobState.SUCCEEDED
    worker.join()


def test_wait_refuses_a_job_of_its_own_uncommitted_transaction(role_engine: Engine) -> None:
    with role_engine.connect() as conn:
        job_id = conn.execute(text("SELECT pgdispatch.dispatch('SELECT 1')")).scalar_one()
        with pytest.raises(PgDispatchError, match="has not committed"):
            jobs.wait(conn, job_id, timeout=5)
        conn.rollback()


def test_wait_raise_on_failure(role_engine: Engine) -> None:
    job_id = dispatch(role_engine, FAILING)
    drain(role_engine)
    assert jobs.wait(role_engine, job_id).state is JobState.FAILED
    with pytest.raises(JobFailed):
        jobs.wait(role_engine, job_id, raise_on_failure=True)


def test_result_of_a_captured_job(role_engine: Engine) -> None:
    job_id = dispatch(role_engine, "SELECT g AS n FROM generate_series(1, 3) g", capture=True)
    with pytest.raises(JobNotFinished, match="is queued"):
        jobs.result(role_engine, job_id)
    worker = drain_later(role_engine)
    assert jobs.result(role_engine, job_id, timeout=30) == [{"n": 1}, {"n": 2}, {"n": 3}]
    worker.join()


def test_result_of_an_uncaptured_job_is_empty(role_engine: Engine) -> None:
    job_id = dispatch(role_engine, "SELECT 1")
    drain(role_engine)
    assert jobs.result(role_engine, job_id) == []


def test_result_of_a_failed_job_raises_with_the_error(role_engine: Engine) -> None:
    job_id = dispatch(role_engine, FAILING, max_attempts=1)
    drain(role_engine)
    with pytest.raises(JobFailed) as info:
        jobs.result(role_engine, job_id)
    err = info.value
    assert err.job_id == job_id
    assert err.sqlstate == "22012"
    assert err.message == "boom"
    assert err.detail == "the detail"
    assert err.hint == "the hint"
    assert err.attempt == 1
    assert "[22012]: boom" in str(err)
    assert err.job.error is not None
    assert err.job.error["message"] == "boom"


def test_cancel_a_queued_job(role_engine: Engine) -> None:
    job_id = dispatch(role_engine, "SELECT 1", delay=timedelta(hours=1))
    with role_engine.connect() as conn:
        assert jobs.cancel(conn, job_id) is True
        conn.commit()
    job = jobs.get(role_engine, job_id)
    assert job.state is JobState.CANCELLED
    with pytest.raises(JobCancelled, match=f"job {job_id} was cancelled"):
        jobs.result(role_engine, job_id)
    # finished: nothing to cancel any more
    assert jobs.cancel(role_engine, job_id) is False


def test_cancel_unknown_job(role_engine: Engine) -> None:
    with pytest.raises(JobNotFound):
        jobs.cancel(role_engine, 2_000_000_001)


def test_cancel_a_running_job(role_engine: Engine) -> None:
    """A running job is interrupted by the role's watchdog (here run in a thread)."""
    job_id = dispatch(role_engine, "SELECT pg_sleep(60)")
    worker = threading.Thread(target=drain, args=(role_engine,), daemon=True)
    worker.start()
    deadline = time.monotonic() + 30
    while jobs.get(role_engine, job_id).state is not JobState.RUNNING:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    running = jobs.get(role_engine, job_id)
    assert running.worker_pid is not None
    watchdog = threading.Thread(target=_run_watchdog, args=(role_engine,), daemon=True)
    watchdog.start()
    assert jobs.cancel(role_engine, job_id) is True
    job = jobs.wait(role_engine, job_id, timeout=30)
    worker.join(30)
    watchdog.join(30)
    assert job.state is JobState.CANCELLED
    assert job.error is not None
    assert job.error["message"] == "job cancelled while running"


def _run_watchdog(engine: Engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("CALL pgdispatch.watchdog(max_runtime => '3 seconds')"))


def test_list_jobs(role_engine: Engine) -> None:
    marker = uuid.uuid4().hex
    ok = dispatch(role_engine, f"SELECT '{marker}'")
    bad = dispatch(role_engine, FAILING)
    queued = dispatch(role_engine, f"SELECT '{marker}'", delay=timedelta(hours=1))
    drain(role_engine)
    recent = jobs.list_jobs(role_engine, limit=3)
    assert [j.id for j in recent] == [queued, bad, ok]
    assert jobs.list is jobs.list_jobs
    failed = jobs.list(role_engine, state="failed", limit=100)
    assert bad in {j.id for j in failed}
    assert all(j.state is JobState.FAILED for j in failed)
    several = jobs.list(role_engine, state=[JobState.QUEUED, "succeeded"], limit=100)
    ids = {j.id for j in several}
    assert {ok, queued} <= ids
    assert bad not in ids
    with pytest.raises(ValueError, match="not a valid JobState"):
        jobs.list(role_engine, state="done")
    with pytest.raises(ValueError, match="limit"):
        jobs.list(role_engine, limit=0)
    jobs.cancel(role_engine, queued)


def test_stats(pgdispatch_server: PgServer, pgdispatch_role: Callable[..., str]) -> None:
    engine = create_engine(pgdispatch_server.connect_url(user=pgdispatch_role("stats")))
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pgdispatch.stop()"))
        empty = jobs.stats(engine)
        assert empty.total == 0
        assert empty.p50_run_time is None
        assert empty.throughput == 0
        for _ in range(3):
            dispatch(engine, "SELECT pg_sleep(0.01)")
        dispatch(engine, FAILING)
        delayed = dispatch(engine, "SELECT 1", delay=timedelta(hours=1))
        due = dispatch(engine, "SELECT 1")
        with engine.begin() as conn:  # make it look due for a while (it is ours to edit)
            conn.execute(
                text(
                    "UPDATE pgdispatch.job SET run_at = run_at - interval '5 minutes'"
                    " WHERE id = :i"
                ),
                {"i": due},
            )
        s = jobs.stats(engine)
        assert s.counts[JobState.QUEUED] == 6
        assert s.due == 5
        assert s.oldest_due_age is not None
        assert s.oldest_due_age >= timedelta(minutes=5)
        jobs.cancel(engine, due)
        assert drain(engine) == 4
        s = jobs.stats(engine)
        assert dict(s.counts) == {
            JobState.QUEUED: 1,
            JobState.RUNNING: 0,
            JobState.SUCCEEDED: 3,
            JobState.FAILED: 1,
            JobState.CANCELLED: 1,
        }
        assert s.due == 0
        assert s.oldest_due_age is None
        assert s.finished_last_minute == 5
        assert s.throughput == pytest.approx(5 / 60)
        assert s.p50_run_time is not None
        assert s.p95_run_time is not None
        assert timedelta(0) <= s.p50_run_time <= s.p95_run_time
        assert s.p50_start_latency is not None
        assert s.p95_start_latency is not None
        assert s.total == 6
        jobs.cancel(engine, delayed)
    finally:
        engine.dispose()


def test_not_installed(pgdispatch_db: Engine, pgdispatch_server: PgServer) -> None:
    dbname = f"nopgd_{uuid.uuid4().hex[:8]}"
    with pgdispatch_db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'CREATE DATABASE "{dbname}"'))
    engine = create_engine(pgdispatch_server.connect_url(dbname=dbname))
    try:
        with pytest.raises(NotInstalled, match="sa-pgdispatch install"):
            jobs.get(engine, 1)
        with pytest.raises(NotInstalled):
            jobs.cancel(engine, 1)
        with pytest.raises(NotInstalled):
            jobs.stats(engine)
    finally:
        engine.dispose()
        with pgdispatch_db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'DROP DATABASE "{dbname}"'))


def test_permission_denied(pgdispatch_db: Engine, pgdispatch_server: PgServer) -> None:
    role = f"nousage_{uuid.uuid4().hex[:8]}"
    with pgdispatch_db.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
    engine = create_engine(pgdispatch_server.connect_url(user=role))
    try:
        with pytest.raises(PermissionDenied, match="grant_usage"):
            jobs.list_jobs(engine)
    finally:
        engine.dispose()
        with pgdispatch_db.begin() as conn:
            conn.execute(text(f'DROP ROLE "{role}"'))


def test_result_keeps_numbers_exact(role_engine: Engine) -> None:
    job_id = dispatch(
        role_engine,
        "SELECT 12345678901234567890.123456789::numeric AS big, 0.1::numeric AS tenth,"
        " 5.00::numeric AS scaled, 123456789012345678901234567890 AS whole,"
        " 'NaN'::numeric AS nan, 'Infinity'::float8 AS inf, '\\x00ff'::bytea AS raw,"
        " '2024-01-02 03:04:05.123456+00'::timestamptz AS at",
        capture=True,
    )
    drain(role_engine)
    [row] = jobs.result(role_engine, job_id)
    assert row["big"] == Decimal("12345678901234567890.123456789")
    assert isinstance(row["big"], Decimal)
    assert str(row["big"]) == "12345678901234567890.123456789"
    assert row["tenth"] == Decimal("0.1")
    assert str(row["scaled"]) == "5.00"
    assert row["whole"] == 123456789012345678901234567890
    assert isinstance(row["whole"], int)
    # what JSON cannot hold comes back as the text PostgreSQL's to_jsonb() writes
    assert row["nan"] == "NaN"
    assert row["inf"] == "Infinity"
    assert row["raw"] == "\\x00ff"
    at = datetime.fromisoformat(row["at"])  # ISO 8601 in the worker session's TimeZone
    assert at == datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)
    assert jobs.get(role_engine, job_id).result == [row]
