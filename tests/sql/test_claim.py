"""Where work() claims its next batch: after the last job it ran, so that a long drain does
not step over the index entries of the jobs it finished; from the head of the queue when
that priority runs out, at least every 100 ms, and always before a drain ends."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from .conftest import drain, rows, run, wait_until


@pytest.fixture(autouse=True)
def _forget_history(db: Engine) -> Iterator[None]:
    """These tests finish thousands of jobs: their history goes with them, so that the
    other tests' history (prune() deletes the oldest first) stays theirs."""
    first = run(db, "SELECT nextval('pgdispatch.job_id_seq')")
    yield
    run(db, "DELETE FROM pgdispatch.job_history WHERE id > :first", first=first)


def _claim_index_reads(engine: Engine) -> int:
    """Buffers read from the claim index since its counters were reset."""
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        return int(
            conn.execute(
                text(
                    "SELECT coalesce(idx_blks_hit, 0) + coalesce(idx_blks_read, 0)"
                    " FROM pg_statio_all_indexes"
                    " WHERE indexrelid = 'pgdispatch.job_claim'::regclass"
                )
            ).scalar_one()
        )


def test_a_drain_does_not_step_over_the_jobs_it_finished(db: Engine, settings: Any) -> None:
    """A claim from the head of the queue reads the index entries of every job the drain
    finished before it (they stay until a vacuum, and autovacuum hears of the deletions
    only when the CALL ends): over a drain of n jobs, reads grow as n squared. Measured in
    buffers, not time: 20,000 jobs drained in one CALL read 1,833 buffers of the claim
    index (0.09 per job); claiming from the head for every batch read 40,300 (2 per job)."""
    settings(batch_size=50)
    jobs = 20_000
    with db.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(
            text("SELECT pgdispatch.dispatch('SELECT 1') FROM generate_series(1, :n)"),
            {"n": jobs},
        )
        # statistics are flushed when a session goes idle, at most once a second unless
        # forced: the dispatch's own reads of the index reach the counters now, before
        # the reset
        conn.execute(text("SELECT pg_stat_force_next_flush()"))
        conn.execute(
            text("SELECT pg_stat_reset_single_table_counters('pgdispatch.job_claim'::regclass)")
        )
        conn.execute(text("CALL pgdispatch.work(drain => true)"))
        conn.execute(text("SELECT pg_stat_force_next_flush()"))
    reads = _claim_index_reads(db)
    assert run(db, "SELECT count(*) FROM pgdispatch.job WHERE role_id = current_user::regrole") == 0
    assert reads < jobs * 0.5, f"{reads} claim index buffers for {jobs} jobs"


def test_a_drain_runs_jobs_committed_behind_its_last_claim(db: Engine, schema: str) -> None:
    """A job whose transaction commits while a drain is past its run_at, and a job of a
    higher priority dispatched in the middle of the drain, both run before the drain
    returns: it ends only after a claim from the head of the queue finds nothing."""
    s = f'"{schema}"'
    run(db, f"CREATE TABLE {s}.ran (tag text, at timestamptz DEFAULT clock_timestamp())")
    with db.connect() as late:
        late_tx = late.begin()
        # holds the gate job 500 waits for, and dispatches a job before the backlog
        late.execute(text("SELECT pg_advisory_xact_lock(424242)"))
        late.execute(
            text("SELECT pgdispatch.dispatch(:c)"),
            {"c": f"INSERT INTO {s}.ran(tag) VALUES ('late')"},
        )
        gate = (
            "SELECT pg_advisory_lock_shared(424242), pg_advisory_unlock_shared(424242);"
            " SELECT pgdispatch.dispatch(%URGENT%, priority => 10)"
        )
        run(
            db,
            "SELECT pgdispatch.dispatch(CASE g WHEN 500 THEN"
            " replace(:gate, '%URGENT%', quote_literal(:urgent)) ELSE :plain END)"
            " FROM generate_series(1, 3000) g",
            gate=gate,
            urgent=f"INSERT INTO {s}.ran(tag) VALUES ('urgent')",
            plain=f"INSERT INTO {s}.ran(tag) VALUES ('backlog')",
        )
        drainer = threading.Thread(target=drain, args=(db,))
        drainer.start()
        # the drain runs past the late job's run_at, then waits in job 500
        assert _wait_for_waiter(db), "job 500 never waited for the gate"
        late_tx.commit()
    drainer.join(60)
    assert not drainer.is_alive()
    counts = {
        r["tag"]: r["n"] for r in rows(db, f"SELECT tag, count(*) AS n FROM {s}.ran GROUP BY tag")
    }
    assert counts == {"late": 1, "urgent": 1, "backlog": 2999}


def _wait_for_waiter(engine: Engine) -> bool:
    return wait_until(
        lambda: run(
            engine,
            "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND objid = 424242",
        ),
        30,
    )
