"""Retries with exponential backoff, final failures, and per-job timeouts.

The default settings are kept (retry_backoff 1 s, doubling): the shared server's
settings belong to every test module. A failing attempt rolls back, so attempts are
counted with sequences (nextval is not transactional) and each failure carries the
server time it happened at in its DETAIL. Drains run in sessions of their own: work()
resets its session between jobs (DEALLOCATE ALL included), which would drop psycopg's
auto-prepared statements of a connection reused for other queries.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from psycopg import sql

pytestmark = [pytest.mark.slow, pytest.mark.cron]


@pytest.fixture(scope="module")
def env(rel: Any, pgdispatch_server: Any, pgdispatch_role: Any, shared_schema: str):
    role = pgdispatch_role("retry")
    s = sql.Identifier(shared_schema)
    with rel.connect(pgdispatch_server) as su:
        su.execute(
            sql.SQL(
                "CREATE SEQUENCE {s}.tries; CREATE SEQUENCE {s}.always;"
                "CREATE TABLE {s}.done (n bigint);"
                "CREATE FUNCTION {s}.flaky(fail_until int) RETURNS void LANGUAGE plpgsql AS $f$"
                " DECLARE n bigint := nextval({tries}); BEGIN"
                "  IF n < fail_until THEN"
                "   RAISE EXCEPTION 'flaky attempt % fails', n USING DETAIL = clock_timestamp();"
                "  END IF; INSERT INTO {s}.done VALUES (n); END $f$;"
                "GRANT USAGE ON SCHEMA {s} TO {r}; GRANT ALL ON ALL SEQUENCES IN SCHEMA {s} TO {r};"
                "GRANT INSERT, SELECT ON {s}.done TO {r}"
            ).format(s=s, r=sql.Identifier(role), tries=sql.Literal(f"{shared_schema}.tries"))
        )
    with rel.connect(pgdispatch_server, role) as conn:
        conn.execute("SELECT pgdispatch.stop()")
        backoff = conn.execute("SELECT retry_backoff FROM pgdispatch.settings").fetchone()
    assert backoff is not None
    return pgdispatch_server, role, shared_schema, backoff[0]


def _job(conn: Any, job: int) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM pgdispatch.jobs WHERE id = %s", (job,))
    names = [d.name for d in cur.description]
    row = cur.fetchone()
    assert row is not None
    return dict(zip(names, row, strict=True))


@contextlib.contextmanager
def _watchdog(rel: Any, server: Any, role: str) -> Iterator[None]:
    """The role's watchdog in a session of its own while the block runs."""
    watchdog = rel.WorkerThread(server, role, "CALL pgdispatch.watchdog(max_runtime => '60 s')")
    watchdog.start()
    try:
        yield
    finally:
        with rel.connect(server) as su:
            rel.wait_for(lambda: watchdog.pid is not None, timeout=30, what="the watchdog")
            su.execute("SELECT pg_cancel_backend(%s)", (watchdog.pid,))
        watchdog.join(timeout=30)


def _wait_due(conn: Any, run_at: datetime) -> None:
    while conn.execute("SELECT clock_timestamp() < %s", (run_at,)).fetchone() == (True,):
        time.sleep(0.05)


def test_job_failing_twice_succeeds_on_its_third_attempt_after_backoff(
    rel: Any, env: Any
) -> None:
    server, role, schema, backoff = env
    with rel.connect(server, role) as conn:
        job = rel.count(
            conn,
            "SELECT pgdispatch.dispatch(%s, max_attempts => 3)",
            (f"SELECT {schema}.flaky(3)",),
        )
        for attempt in (1, 2):
            rel.drain(server, role)
            j = _job(conn, job)
            assert (j["state"], j["attempts"]) == ("queued", attempt)
            assert j["error"]["message"] == f"flaky attempt {attempt} fails"
            assert j["error"]["attempt"] == attempt
            failed_at = datetime.fromisoformat(j["error"]["detail"])
            delay = backoff * 2 ** (attempt - 1)  # 1 s, then 2 s
            assert delay <= j["run_at"] - failed_at < delay + timedelta(seconds=1)
            # not due yet: a drain leaves it alone
            early = conn.execute("SELECT clock_timestamp() < %s", (j["run_at"],)).fetchone()
            rel.drain(server, role)
            if early == (True,):
                assert _job(conn, job)["attempts"] == attempt
            _wait_due(conn, j["run_at"])
        rel.drain(server, role)
        j = _job(conn, job)
        assert (j["state"], j["attempts"], j["error"]) == ("succeeded", 3, None)
        assert j["started_at"] >= j["run_at"]
        assert conn.execute(sql.SQL("SELECT n FROM {}.done").format(sql.Identifier(schema))
                            ).fetchall() == [(3,)]


def test_job_failing_always_ends_failed_with_its_last_error(rel: Any, env: Any) -> None:
    server, role, schema, _ = env
    command = (
        f"DO $$ BEGIN RAISE EXCEPTION 'always fails, try %', nextval('{schema}.always')"
        " USING HINT = 'nothing helps'; END $$"
    )
    with rel.connect(server, role) as conn:
        job = rel.count(conn, "SELECT pgdispatch.dispatch(%s, max_attempts => 2)", (command,))
        rel.drain(server, role)
        first = _job(conn, job)
        assert (first["state"], first["attempts"]) == ("queued", 1)
        _wait_due(conn, first["run_at"])
        rel.drain(server, role)
        j = _job(conn, job)
    assert (j["state"], j["attempts"], j["max_attempts"]) == ("failed", 2, 2)
    assert j["error"]["message"] == "always fails, try 2"
    assert j["error"]["sqlstate"] == "P0001"
    assert j["error"]["hint"] == "nothing helps"
    assert j["error"]["attempt"] == 2
    assert j["result"] is None


def test_timeout_stops_a_long_job_and_the_worker_goes_on(rel: Any, env: Any) -> None:
    server, role, _, _ = env
    with rel.connect(server, role) as conn:
        slow = rel.count(
            conn, "SELECT pgdispatch.dispatch('SELECT pg_sleep(60)', timeout => '1 second',"
            " priority => 1)"
        )
        after = rel.count(conn, "SELECT pgdispatch.dispatch('SELECT 1')")
    with _watchdog(rel, server, role):
        rel.drain(server, role)  # returns once the sleeping job was interrupted
    with rel.connect(server, role) as conn:
        j = _job(conn, slow)
        assert _job(conn, after)["state"] == "succeeded"
    assert (j["state"], j["attempts"]) == ("failed", 1)
    assert j["error"]["sqlstate"] == "57014"
    assert j["error"]["message"] == "job exceeded its timeout of 00:00:01"
    ran = j["finished_at"] - j["started_at"]
    assert timedelta(seconds=1) <= ran < timedelta(seconds=30), ran  # not the full 60 s
    print(f"a 1 s timeout stopped pg_sleep(60) after {ran.total_seconds():.2f}s")


def test_a_retried_attempt_gets_its_full_timeout_again(rel: Any, env: Any) -> None:
    """Each attempt has the whole timeout: the watchdog forgets a job that stops running
    (0.1.0 remembered the first attempt's start and interrupted the retry at once)."""
    server, role, _, backoff = env
    with rel.connect(server, role) as conn:
        slow = rel.count(
            conn, "SELECT pgdispatch.dispatch('SELECT pg_sleep(60)', timeout => '1 second',"
            " max_attempts => 2, priority => 2)"
        )
    with _watchdog(rel, server, role):
        rel.drain(server, role)  # the first attempt, interrupted after its timeout
        with rel.connect(server, role) as conn:
            first = _job(conn, slow)
            assert (first["state"], first["attempts"]) == ("queued", 1), first
            _wait_due(conn, first["run_at"])
        rel.drain(server, role)  # the second attempt
    with rel.connect(server, role) as conn:
        j = _job(conn, slow)
    assert (j["state"], j["attempts"]) == ("failed", 2)
    assert j["error"]["message"] == "job exceeded its timeout of 00:00:01"
    assert j["error"]["attempt"] == 2
    ran = j["finished_at"] - j["started_at"]
    assert timedelta(seconds=1) <= ran < timedelta(seconds=3), ran
    assert j["started_at"] - j["created_at"] >= backoff  # waited for its retry
    print(f"the retried attempt ran {ran.total_seconds():.2f}s under a 1 s timeout")
