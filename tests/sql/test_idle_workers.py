"""Idle workers of many roles: one of them polls the job id sequence for all (the poller),
the others wait on the doorbell it rings when a dispatch shows; jobs of every role still
start at once, whoever polls, and whatever another session does with the doorbell."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from .conftest import role_engine, rows, run, wait_until

pytestmark = pytest.mark.cron  # workers of several roles: every pg_cron version and mode

POLLER_LOCK = 1885824132
DOORBELL_LOCK = 1885824131


class _Worker(threading.Thread):
    """Slot 1 of a role, as pg_cron would run it (pg_cron 1.4 would start it only at the
    next minute), for max_runtime."""

    def __init__(self, engine: Engine, seconds: float) -> None:
        super().__init__(daemon=True)
        self.engine, self.seconds = engine, seconds
        self.error: BaseException | None = None
        self.pid: int | None = None

    def run(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                self.pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
                conn.execute(
                    text(
                        "CALL pgdispatch.work(slot => 1, max_runtime => make_interval(secs => :s))"
                    ),
                    {"s": self.seconds},
                )
        except BaseException as error:  # reported by the test
            self.error = error


@pytest.fixture
def idle_roles(
    db: Engine, schema: str, pgdispatch_server: Any, pgdispatch_role: Any
) -> Iterator[list[tuple[str, Engine, _Worker]]]:
    """Three roles, each with slot 1 served by a session of its own, idle."""
    made = []
    for _ in range(3):
        role = pgdispatch_role("idle")
        run(db, f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
        run(db, f'GRANT SELECT, INSERT ON "{schema}".t TO "{role}"')
        engine = role_engine(pgdispatch_server, role)
        run(engine, "SELECT pgdispatch.stop()")  # no pg_cron worker of its own
        worker = _Worker(engine, 30)
        worker.start()
        made.append((role, engine, worker))
    assert wait_until(lambda: all(w.pid for _, _, w in made), 10)
    yield made
    for _, engine, worker in made:
        run(engine, "SELECT pg_cancel_backend(:p)", p=worker.pid)
    for _, engine, worker in made:
        worker.join(10)
        engine.dispose()


def _states(db: Engine, pids: list[int]) -> dict[int, str]:
    """What each worker does while idle: polls (holds the poller lock), waits on the
    doorbell, or sleeps."""
    found = rows(
        db,
        "SELECT a.pid,"
        " CASE WHEN EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.granted"
        "                    AND l.locktype = 'advisory' AND l.classid = :poller)"
        "      THEN 'poller'"
        "      WHEN EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted"
        "                    AND l.locktype = 'advisory' AND l.classid = :doorbell)"
        "      THEN 'waiting' ELSE coalesce(a.wait_event, 'running') END AS state"
        " FROM pg_stat_activity a WHERE a.pid = ANY (:pids)",
        poller=POLLER_LOCK,
        doorbell=DOORBELL_LOCK,
        pids=pids,
    )
    return {r["pid"]: r["state"] for r in found}


def _pollers(db: Engine) -> int:
    return int(
        run(
            db,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = :poller",
            poller=POLLER_LOCK,
        )
    )


def test_one_idle_worker_polls_for_all_and_the_others_wait_on_the_doorbell(
    db: Engine, idle_roles: list[tuple[str, Engine, _Worker]]
) -> None:
    pids = [w.pid for _, _, w in idle_roles if w.pid is not None]

    def settled() -> bool:
        states = set(_states(db, pids).values())
        # at most one poller in the database (other tests' idle workers may be it)
        return states <= {"poller", "waiting"} and "waiting" in states and _pollers(db) == 1

    # idle workers reach the slowest poll fast_poll_window (1 s) after the last dispatch
    assert wait_until(settled, 15), _states(db, pids)


def test_every_idle_roles_job_starts_whoever_polls(
    db: Engine, schema: str, idle_roles: list[tuple[str, Engine, _Worker]]
) -> None:
    pids = [w.pid for _, _, w in idle_roles if w.pid is not None]
    assert wait_until(lambda: "waiting" in _states(db, pids).values(), 15)
    for round_ in range(2):
        # the poller's role last: it hands polling over when it has a job
        for role, engine, _ in idle_roles:
            run(
                engine,
                "SELECT pgdispatch.fire(:c)",
                c=f"INSERT INTO \"{schema}\".t(v) VALUES ('{role}:{round_}')",
            )
        expected = 3 * (round_ + 1)
        assert wait_until(
            lambda n=expected: run(db, f'SELECT count(*) FROM "{schema}".t') == n, 10
        ), rows(db, f'SELECT v FROM "{schema}".t')
        # and they settle again: one poller, the others waiting
        assert wait_until(lambda: _pollers(db) == 1, 15)
    assert all(w.error is None for _, _, w in idle_roles)


def test_a_session_holding_the_doorbell_does_not_stop_idle_workers(
    db: Engine, schema: str, idle_roles: list[tuple[str, Engine, _Worker]]
) -> None:
    """Any session may take the doorbell's lock (advisory locks are not owned): idle
    workers then wait at most 250 ms at a time, and their jobs still run."""
    pids = [w.pid for _, _, w in idle_roles if w.pid is not None]
    assert wait_until(lambda: "waiting" in _states(db, pids).values(), 15)
    for mode in ("pg_advisory_lock", "pg_advisory_lock_shared"):
        with db.connect() as squatter:
            pid = squatter.execute(text("SELECT pg_backend_pid()")).scalar_one()
            squatter.execute(text("SET lock_timeout = '25s'"))
            # the poller holds the doorbell: the squatter queues for it, and gets it when
            # the poller lets go of it at a ring (a dispatch)
            taker = threading.Thread(
                target=squatter.execute,
                args=(text(f"SELECT {mode}(:k, 0)"), {"k": DOORBELL_LOCK}),
                daemon=True,
            )
            taker.start()

            def squatting(pid: int = pid) -> bool:
                return bool(
                    run(
                        db,
                        "SELECT count(*) > 0 FROM pg_locks WHERE pid = :pid AND granted"
                        " AND locktype = 'advisory' AND classid = :k",
                        pid=pid,
                        k=DOORBELL_LOCK,
                    )
                )

            def ring_until_squatting() -> bool:
                run(idle_roles[0][1], "SELECT pgdispatch.fire('SELECT 1')")
                return wait_until(squatting, 0.5)

            try:
                assert wait_until(ring_until_squatting, 20)
                for role, engine, _ in idle_roles:
                    run(
                        engine,
                        "SELECT pgdispatch.fire(:c)",
                        c=f"INSERT INTO \"{schema}\".t(v) VALUES ('{role}:{mode}')",
                    )
                assert wait_until(
                    lambda m=f"%:{mode}": (
                        run(db, f'SELECT count(*) FROM "{schema}".t WHERE v LIKE :m', m=m) == 3
                    ),
                    10,
                ), rows(db, f'SELECT v FROM "{schema}".t')
            finally:
                taker.join(30)
                squatter.execute(text("SELECT pg_advisory_unlock_all()"))
    assert all(w.error is None for _, _, w in idle_roles)
