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

LIMIT_SECONDS = 90


@pytest.mark.e2e
def test_scheduled_job_really_runs(
    cron_proof, pgdispatch_engine: Engine, pgdispatch_server: PgServer
) -> None:
    assert cron_proof is not None, "the session fixture did not schedule the proof job"
    deadline = cron_proof.scheduled_at + LIMIT_SECONDS
    row = None
    while time.monotonic() < deadline:
        with pgdispatch_engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT status, return_message, username, database"
                    " FROM cron.job_run_details WHERE jobid = :jobid"
                    " AND status IN ('succeeded', 'failed') ORDER BY runid LIMIT 1"
                ),
                {"jobid": cron_proof.jobid},
            ).first()
        if row is not None:
            break
        time.sleep(0.5)
    waited = time.monotonic() - cron_proof.scheduled_at
    if row is None:
        log = ""
        if isinstance(pgdispatch_server, EphemeralPostgres):
            log = pgdispatch_server.log_path.read_text()[-4000:]
        pytest.fail(f"pg_cron did not run the job within {LIMIT_SECONDS}s\n{log}")
    assert row.status == "succeeded", row.return_message
    assert (row.username, row.database) == ("postgres", pgdispatch_server.dbname)
    with pgdispatch_engine.connect() as conn:
        tokens = conn.execute(text(f"SELECT token FROM {cron_proof.table}")).scalars().all()
    assert cron_proof.token in tokens
    print(f"pg_cron ran the proof job {waited:.1f}s after it was scheduled")
