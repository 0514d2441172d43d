"""Crash safety: nothing lost, nothing run twice, whatever kills the workers.

10,000 jobs each insert their own id into ``app.sink`` (no unique constraint, so a job
that ran twice would show as a duplicate row). While worker sessions drain them:

(a) ``pg_terminate_backend`` hits a worker again and again;
(b) a worker backend is killed with SIGKILL, so the postmaster resets every backend
    and replays the WAL (the server is durable: fsync on);
(c) the server is stopped in immediate mode and started again, and the rest of the
    queue is drained by the role's real pg_cron workers.

After every phase the sink holds exactly the ids of the succeeded jobs (a job's effects
and its outcome commit together); at the end every id is there exactly once.

Each job sleeps 0.5 ms so that the drain lasts long enough (~10 s with two workers) for
the faults to land mid-drain; the pg_cron phase waits for the next minute tick (<= 62 s).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psycopg
import pytest

JOBS = 10_000
COMMAND = "INSERT INTO app.sink SELECT ($1->>'i')::int FROM pg_sleep(0.0005)"

pytestmark = [pytest.mark.slow, pytest.mark.cron]


@pytest.fixture(scope="module")
def crash_env(rel: Any):
    with rel.own_server(durable=True) as server:
        role = rel.make_role(server, "crashw")
        with rel.connect(server) as su:
            su.execute("CREATE SCHEMA app")
            su.execute("CREATE TABLE app.sink (id integer NOT NULL)")
            su.execute(f"GRANT USAGE ON SCHEMA app TO {role}; GRANT INSERT ON app.sink TO {role}")
        yield server, role


def _done(rel: Any, server: Any) -> int:
    with rel.connect(server) as su:
        return int(rel.count(su, "SELECT count(*) FROM app.sink"))


def _check_consistent(rel: Any, server: Any, role: str) -> int:
    """The sink holds exactly the ids of the succeeded jobs, each once."""
    with rel.connect(server) as su:
        rows, distinct = su.execute(
            "SELECT count(*), count(DISTINCT id) FROM app.sink"
        ).fetchone() or (None, None)
        assert rows == distinct, f"{rows - distinct} id(s) inserted twice"
        mismatch = rel.count(
            su,
            "SELECT count(*) FROM (SELECT (payload->>'i')::int AS id FROM pgdispatch.job_history"
            " WHERE role = %s AND state = 'succeeded') h FULL JOIN app.sink s USING (id)"
            " WHERE h.id IS NULL OR s.id IS NULL",
            (role,),
        )
        assert mismatch == 0, "sink rows and succeeded jobs differ"
        not_succeeded = rel.count(
            su,
            "SELECT count(*) FROM pgdispatch.job_history WHERE role = %s"
            " AND (state <> 'succeeded' OR attempts <> 1)",
            (role,),
        )
        assert not_succeeded == 0, "a job failed or was retried: a crash counted as an attempt"
        return int(rows)


def _wait_accepting(server: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(server.dsn, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _wait_progress(rel: Any, server: Any, at_least: int, timeout: float = 60) -> None:
    rel.wait_for(
        lambda: _done(rel, server) >= at_least, timeout=timeout, interval=0.05,
        what=f"{at_least} jobs done",
    )


def test_no_job_lost_or_duplicated_through_terminate_kill9_and_immediate_restart(
    rel: Any, crash_env: Any
) -> None:
    server, role = crash_env
    with rel.connect(server, role) as conn:
        conn.execute("SELECT pgdispatch.stop()")  # no pg_cron worker until phase (c)
        queued = rel.count(
            conn,
            "SELECT count(pgdispatch.dispatch(%s, jsonb_build_object('i', g)))"
            " FROM generate_series(1, %s) g",
            (COMMAND, JOBS),
        )
    assert queued == JOBS
    call = "CALL pgdispatch.work(drain => true)"
    workers = [rel.WorkerThread(server, role, call, reconnect=True) for _ in range(2)]
    for w in workers:
        w.start()

    # (a) pg_terminate_backend, repeatedly, mid-drain
    terminated: list[int] = []  # progress at each termination
    while len(terminated) < 6:
        time.sleep(0.3)
        pid = workers[len(terminated) % 2].pid
        if pid is None:
            continue
        with rel.connect(server) as su:
            progress = rel.count(su, "SELECT count(*) FROM app.sink")
            if su.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,):
                terminated.append(progress)
    assert all(0 < p < JOBS for p in terminated), terminated
    after_a = _check_consistent(rel, server, role)
    assert after_a < JOBS, "the queue drained before the faults: make the jobs slower"

    # (b) SIGKILL a worker backend: the postmaster resets every backend (crash recovery)
    kills: list[int] = []
    for target in (after_a + 1000, after_a + 2000):
        _wait_progress(rel, server, target)
        pid = next(w.pid for w in workers if w.pid is not None)
        kills.append(_done(rel, server))
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        _wait_accepting(server)
        _check_consistent(rel, server, role)
    assert all(0 < k < JOBS for k in kills), kills
    log = server.log_path.read_text(errors="replace")
    assert "was terminated by signal 9" in log
    assert "all server processes terminated; reinitializing" in log

    # (c) immediate shutdown mid-drain, restart, and let real pg_cron workers finish
    _wait_progress(rel, server, kills[-1] + 1000)
    for w in workers:
        w.halt()
    server.stop("immediate")
    for w in workers:
        w.join(timeout=30)
        assert not w.is_alive()
    server.start()
    remaining_at_restart = JOBS - _check_consistent(rel, server, role)
    assert remaining_at_restart > 0
    with rel.connect(server) as su:
        # after a crash no job is left marked running
        assert rel.count(su, "SELECT count(*) FROM pgdispatch.jobs WHERE state = 'running'") == 0
    with rel.connect(server, role) as conn:
        conn.execute("SELECT pgdispatch.start(2)")
    with rel.connect(server) as su:
        waited = rel.wait_for(
            lambda: rel.count(su, "SELECT count(*) FROM pgdispatch.job") == 0,
            timeout=75, interval=0.5, what="pg_cron workers to drain the queue",
        )
        ran = rel.count(
            su,
            "SELECT count(*) FROM cron.job_run_details d JOIN cron.job j USING (jobid)"
            " WHERE j.jobname LIKE 'pgdispatch:%%' AND d.username = %s",
            (role,),
        )
    with rel.connect(server, role) as conn:
        conn.execute("SELECT pgdispatch.stop()")
    assert ran >= 1, "the queue drained without a pg_cron worker run"

    # after recovery and the full drain: every id exactly once, every job succeeded once
    assert _check_consistent(rel, server, role) == JOBS
    with rel.connect(server) as su:
        ids = su.execute(
            "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM app.sink"
        ).fetchone()
        assert ids == (JOBS, JOBS, 1, JOBS)
        assert rel.count(su, "SELECT count(*) FROM pgdispatch.job_history") == JOBS
        assert rel.count(
            su, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            " AND classid = 1885824112"
        ) == 0
    errors = [e for w in workers for e in w.errors]
    print(
        f"terminated at {terminated}; SIGKILL at {kills}; immediate restart with "
        f"{remaining_at_restart} jobs left, drained by pg_cron {waited:.1f}s after start(); "
        f"{sum(w.sessions for w in workers)} worker sessions, {len(errors)} session errors"
    )
