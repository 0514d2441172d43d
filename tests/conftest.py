"""Project-only fixtures (the pgdispatch_* fixtures come from sa_pgdispatch's plugin)."""

from __future__ import annotations

import itertools
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text

pytest_plugins = ["pytester"]

# Markers that mean "needs a PostgreSQL server" by themselves.
_SERVER_MARKERS = ("cron", "e2e")


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``db`` every test that uses a PostgreSQL server: its fixtures reach
    ``pgdispatch_server``, or it is marked ``cron`` or ``e2e``. Tests that start servers
    of their own are marked ``db`` in their modules. ``pytest -m "not db"`` is then the
    fast loop (docs/testing.md)."""
    for item in items:
        if "pgdispatch_server" in getattr(item, "fixturenames", ()) or any(
            item.get_closest_marker(name) for name in _SERVER_MARKERS
        ):
            item.add_marker(pytest.mark.db)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Hypothesis's pytest plugin imports Hypothesis in its terminal summary even when no
    test of the session used it: ~0.8 s of the fast loop, which runs none (pytest
    assertion-rewrites every module of a distribution with a pytest11 entry point, and with
    PYTHONDONTWRITEBYTECODE does so at every run). Hypothesis never imported means no
    Hypothesis test ran, so that summary has nothing to report (statistics and failing
    examples come from Hypothesis tests' reports): unregister the plugin before it runs
    (this hook runs inside the terminal reporter's, before pytest_terminal_summary)."""
    if "hypothesis" not in sys.modules:
        plugin = session.config.pluginmanager.get_plugin("hypothesispytest")
        if plugin is not None:
            session.config.pluginmanager.unregister(plugin)


@pytest.fixture
def schema(pgdispatch_engine: Engine) -> Iterator[str]:
    """A fresh schema ``test_<uuid>`` for one test, dropped (CASCADE) afterwards."""
    name = f"test_{uuid.uuid4().hex}"
    with pgdispatch_engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        yield name
    finally:
        with pgdispatch_engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))


@dataclass(frozen=True)
class CronProof:
    """A pg_cron job scheduled at session start whose run the e2e test waits for."""

    jobid: int
    jobname: str
    table: str
    token: str
    scheduled_at: float  # time.monotonic() when it was scheduled
    scheduled_db: datetime  # the server's clock_timestamp() then


def _session_has_e2e(session: pytest.Session) -> bool:
    return any(item.get_closest_marker("e2e") is not None for item in session.items)


@pytest.fixture(scope="session", autouse=True)
def cron_proof(request: pytest.FixtureRequest) -> Iterator[CronProof | None]:
    """Schedule the pg_cron proof job as early as possible in the session.

    pg_cron 1.4 only has minute schedules, so a job scheduled now runs at the next
    minute boundary: up to 60 s away. Scheduling it when the session starts lets
    that minute pass while the other tests run; the e2e test then only waits for
    what is left. Nothing is done when no collected test is marked ``e2e``.
    """
    if not _session_has_e2e(request.session):
        yield None
        return
    try:
        engine: Engine = request.getfixturevalue("pgdispatch_engine")
    except pytest.skip.Exception:  # backend unavailable: the e2e tests skip by themselves
        yield None
        return
    token = uuid.uuid4().hex
    table = f"public.sa_pgdispatch_cron_proof_{token[:12]}"
    jobname = f"sa_pgdispatch_cron_proof_{token[:12]}"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {table} (token text NOT NULL, ran_at timestamptz)"))
        jobid = conn.execute(
            text("SELECT cron.schedule(:name, '* * * * *', :command)"),
            {
                "name": jobname,
                "command": f"INSERT INTO {table} VALUES ('{token}', clock_timestamp())",
            },
        ).scalar_one()
        scheduled_db = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    try:
        yield CronProof(int(jobid), jobname, table, token, time.monotonic(), scheduled_db)
    finally:
        with engine.begin() as conn:
            conn.execute(
                text("SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = :name"),
                {"name": jobname},
            )
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))


# ------------------------------------------------------------------- upgrade under load

Connect = Callable[[], "psycopg.Connection[tuple[Any, ...]]"]

# A job that records each execution twice: in a table (rolled back with its batch) and in
# a sequence (not: like dblink, pg_net or an e-mail, an execution that rolled back stays
# done). No unique key: a job that ran twice shows.
_RECORD = (
    "INSERT INTO upl.ran (id, pid) SELECT ($1->>'i')::int, pg_backend_pid()"
    " FROM (SELECT nextval('upl.executions')) x, pg_sleep(($1->>'sleep')::float8)"
)


def _count(conn: psycopg.Connection[tuple[Any, ...]], query: str, *params: Any) -> int:
    row = conn.execute(query, params or None).fetchone()
    assert row is not None, query
    return int(row[0])


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


class _Session(threading.Thread):
    """One statement in a session of its own, in a thread: its pid and error."""

    def __init__(self, connect: Connect, statement: str) -> None:
        super().__init__(daemon=True)
        self.connect, self.statement = connect, statement
        self.pid: int | None = None
        self.error: str | None = None

    def run(self) -> None:
        try:
            with self.connect() as conn:
                self.pid = _count(conn, "SELECT pg_backend_pid()")
                conn.execute(self.statement)
        except psycopg.Error as exc:
            self.error = f"{type(exc).__name__}: {str(exc).strip()[:300]}"


def _upgrade_under_load(role: Connect, admin: Connect) -> None:
    """Upgrade pgdispatch from the previous version (installed, as ``admin``) to the latest
    while jobs flow: a worker of the previous version (a session of ``role`` running
    ``CALL pgdispatch.work(slot => 1, drain => true)``, as pg_cron's would) is running a
    batch when the upgrade starts, and ``role`` dispatches on during and after it; then a
    worker of the new version takes over. Asserts that every job ran exactly once (its
    executions counted where a rollback cannot undo them), that none is left queued or
    running, and that the old worker ran nothing once the upgrade was in: what was
    dispatched after it ran on the new worker. ``role``'s pg_cron workers are stopped:
    this drives them."""
    from sa_pgdispatch.install import installed_version, latest_version, upgrade
    from sa_pgdispatch.testing import drain

    with admin() as conn:
        conn.execute(
            "CREATE SCHEMA upl; GRANT USAGE ON SCHEMA upl TO PUBLIC;"
            " CREATE TABLE upl.ran (id integer, pid integer); CREATE SEQUENCE upl.executions;"
            " GRANT INSERT, SELECT ON upl.ran TO PUBLIC;"
            " GRANT USAGE, SELECT ON SEQUENCE upl.executions TO PUBLIC"
        )
        assert installed_version(conn) != latest_version()
    dispatch = "SELECT pgdispatch.dispatch(%s, jsonb_build_object('i', %s::int, 'sleep', %s))"
    backlog = list(range(1, 41))  # slow jobs: the old worker is mid-batch at the upgrade
    with role() as conn:
        conn.execute("SELECT pgdispatch.stop()")
        for i in backlog:
            conn.execute(dispatch, (_RECORD, i, 0.02))

    upgraded, stop = threading.Event(), threading.Event()
    streamed: list[int] = []
    after_upgrade: list[int] = []
    stream_errors: list[str] = []

    def stream() -> None:
        try:
            with role() as conn:
                for i in itertools.count(1001):
                    if stop.is_set():
                        return
                    late = upgraded.is_set()
                    conn.execute(dispatch, (_RECORD, i, 0.002))
                    streamed.append(i)
                    if late:
                        after_upgrade.append(i)
                    time.sleep(0.001)
        except psycopg.Error as exc:
            stream_errors.append(str(exc))

    old = _Session(role, "CALL pgdispatch.work(slot => 1, drain => true)")
    dispatcher = threading.Thread(target=stream, daemon=True)
    old.start()
    dispatcher.start()
    try:
        with admin() as conn:
            _wait(lambda: _count(conn, "SELECT last_value FROM upl.executions") >= 3,
                  "the old worker's first jobs")
            assert _count(conn, "SELECT count(*) FROM pgdispatch.job") > 10  # mid-backlog
            old_pid = old.pid
            assert upgrade(conn) == latest_version()
            upgraded.set()
        old.join(timeout=60)
        assert not old.is_alive()
        new = _Session(role, "CALL pgdispatch.work(slot => 1, drain => true)")
        new.start()  # while jobs still flow
        _wait(lambda: len(after_upgrade) >= 50, "dispatches after the upgrade")
    finally:
        stop.set()
        dispatcher.join(timeout=30)
    assert stream_errors == []
    new.join(timeout=60)
    assert not new.is_alive()
    assert new.error is None
    with role() as conn:
        drain(conn)  # (what came after the new worker's last claim)

    jobs = backlog + streamed
    with admin() as conn:
        executions = _count(conn, "SELECT last_value FROM upl.executions")
        ran = dict(conn.execute("SELECT id, count(*) FROM upl.ran GROUP BY id").fetchall())
        late_pids = {pid for (pid,) in conn.execute(
            "SELECT DISTINCT pid FROM upl.ran WHERE id = ANY (%s)", (after_upgrade,)
        ).fetchall()}
        conn.execute("DROP SCHEMA upl CASCADE")
    with role() as conn:
        states = conn.execute(
            "SELECT state, count(*) FROM pgdispatch.jobs GROUP BY state"
        ).fetchall()
    assert ran == dict.fromkeys(jobs, 1)
    assert executions == len(jobs), (
        f"{executions} executions of {len(jobs)} jobs (the old worker: {old.error})")
    assert states == [("succeeded", len(jobs))]  # none queued or running
    assert old_pid not in late_pids


@pytest.fixture(scope="session")
def upgrade_under_load() -> Callable[[Connect, Connect], None]:
    """:func:`_upgrade_under_load`, for the lifecycle and install-path tests."""
    return _upgrade_under_load
