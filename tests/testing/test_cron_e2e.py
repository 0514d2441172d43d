"""End to end: a job scheduled with cron.schedule() in the harness server really runs.

The job is scheduled by the session fixture ``cron_proof`` (tests/conftest.py) as
soon as the session starts, so the wait for pg_cron's next minute is shared with
the rest of the suite.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, text

from sa_pgdispatch.testing import EphemeralPostgres, PgServer

pytestmark = pytest.mark.cron

LIMIT_SECONDS = 90


def _diagnostics(engine: Engine, server: PgServer, jobid: int) -> str:
    """What pg_cron was doing, to tell a slow scheduler from a lost job."""
    queries = {
        "the proof job": "SELECT jobid, schedule, username, active FROM cron.job"
        f" WHERE jobid = {jobid}",
        "its runs": "SELECT runid, status, start_time, end_time, return_message"
        f" FROM cron.job_run_details WHERE jobid = {jobid} ORDER BY runid",
        "jobs per state": "SELECT status, count(*) FROM cron.job_run_details GROUP BY status",
        "active cron jobs": "SELECT count(*) FROM cron.job WHERE active",
        "sessions": "SELECT backend_type, usename, state, count(*) FROM pg_stat_activity"
        " GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 15",
        "limits": "SELECT current_setting('max_connections'),"
        " current_setting('cron.max_running_jobs')",
    }
    parts = []
    with engine.connect() as conn:
        for title, query in queries.items():
            try:
                rows = conn.execute(text(query)).all()
            except Exception as exc:
                rows = [f"error: {exc}"]
                conn.rollback()
            parts.append(f"{title}: {rows}")
    if isinstance(server, EphemeralPostgres):
        log = server.log_path.read_text()
        cron_lines = [line for line in log.splitlines() if "cron" in line.lower()]
        parts.append("pg_cron lines of the server log:\n" + "\n".join(cron_lines[-40:]))
    return "\n".join(parts)


@pytest.mark.e2e
def test_scheduled_job_really_runs(
    cron_proof, pgdispatch_engine: Engine, pgdispatch_server: PgServer
) -> None:
    assert cron_proof is not None, "the session fixture did not schedule the proof job"
    test_started = time.monotonic()
    deadline = cron_proof.scheduled_at + LIMIT_SECONDS
    while True:  # check at least once: the suite may have outlasted the limit already
        with pgdispatch_engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT status, return_message, username, database, start_time"
                    " FROM cron.job_run_details WHERE jobid = :jobid"
                    " AND status IN ('succeeded', 'failed') ORDER BY runid LIMIT 1"
                ),
                {"jobid": cron_proof.jobid},
            ).first()
        if row is not None or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if row is None:
        pytest.fail(
            f"pg_cron did not run the job within {LIMIT_SECONDS}s\n"
            + _diagnostics(pgdispatch_engine, pgdispatch_server, cron_proof.jobid)
        )
    started_after = (row.start_time - cron_proof.scheduled_db).total_seconds()
    assert started_after <= LIMIT_SECONDS, (
        f"the first run started {started_after:.1f}s after scheduling\n"
        + _diagnostics(pgdispatch_engine, pgdispatch_server, cron_proof.jobid)
    )
    assert row.status == "succeeded", row.return_message
    assert (row.username, row.database) == ("postgres", pgdispatch_server.dbname)
    with pgdispatch_engine.connect() as conn:
        tokens = conn.execute(text(f"SELECT token FROM {cron_proof.table}")).scalars().all()
    assert cron_proof.token in tokens
    print(
        f"pg_cron started the proof job {started_after:.1f}s after it was scheduled; "
        f"this test waited {time.monotonic() - test_started:.1f}s for it"
    )
