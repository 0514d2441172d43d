"""Lifecycle: install, upgrade with queued jobs, uninstall; and the attacks on the owner.

Runs on a server of its own: it uninstalls pgdispatch, which the shared server must
never see. Every test starts from a fresh install.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import psycopg
import pytest

from sa_pgdispatch.install import (
    InstallError,
    available_versions,
    install,
    installed_version,
    latest_version,
    uninstall,
    upgrade,
)

pytestmark = pytest.mark.cron


@pytest.fixture(scope="module")
def server(rel: Any):
    with rel.own_server() as srv:
        yield srv


@pytest.fixture
def fresh(rel: Any, server: Any):
    """A server without pgdispatch (dropped the hard way, not by the code under test)."""
    with rel.connect(server) as su:
        su.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname LIKE 'pgdispatch:%'")
        su.execute("DROP SCHEMA IF EXISTS pgdispatch CASCADE")
        su.execute("DROP SCHEMA IF EXISTS app CASCADE; CREATE SCHEMA app")
        su.execute("CREATE TABLE app.sink (id integer); GRANT USAGE ON SCHEMA app TO PUBLIC;"
                   " GRANT INSERT, SELECT ON app.sink TO PUBLIC")
    return server


def _snapshot(conn: Any) -> dict[str, Any]:
    return {
        "functions": sorted(
            conn.execute(
                "SELECT p.oid::bigint, p.proname, md5(p.prosrc) FROM pg_proc p"
                " WHERE p.pronamespace = 'pgdispatch'::regnamespace"
            ).fetchall()
        ),
        "tables": sorted(
            conn.execute(
                "SELECT c.oid::bigint, c.relname FROM pg_class c"
                " WHERE c.relnamespace = 'pgdispatch'::regnamespace"
            ).fetchall()
        ),
        "cron": sorted(
            conn.execute(
                "SELECT jobid, jobname, schedule, command, username FROM cron.job"
                " WHERE jobname LIKE 'pgdispatch:%'"
            ).fetchall()
        ),
        "settings": conn.execute("SELECT * FROM pgdispatch.settings").fetchall(),
        "workers": conn.execute("SELECT role, workers, enabled FROM pgdispatch.worker").fetchall(),
    }


def _dispatch_sink(rel: Any, server: Any, role: str, ids: range) -> list[int]:
    with rel.connect(server, role) as conn:
        return [
            rel.count(
                conn,
                "SELECT pgdispatch.dispatch('INSERT INTO app.sink VALUES (($1->>''i'')::int)',"
                " jsonb_build_object('i', %s::int))",
                (i,),
            )
            for i in ids
        ]


def test_install_twice_is_a_noop(rel: Any, fresh: Any) -> None:
    with rel.connect(fresh) as su:
        assert install(su, workers=1) == latest_version()
        before = _snapshot(su)
        assert len(before["cron"]) == 2  # postgres's worker and watchdog
        assert install(su, workers=1) == latest_version()
        assert install(su) == latest_version()
        assert _snapshot(su) == before


def test_upgrade_with_queued_jobs_keeps_and_runs_them(rel: Any, fresh: Any) -> None:
    versions = available_versions()
    if len(versions) < 2:
        pytest.skip(f"only one pgdispatch version ships ({versions}): no upgrade path to test")
    previous = versions[-2]
    with rel.connect(fresh) as su:
        assert install(su, version=previous, workers=0) == previous
    role = rel.make_role(fresh, "upg")
    with rel.connect(fresh, role) as conn:
        conn.execute("SELECT pgdispatch.stop()")
    jobs = _dispatch_sink(rel, fresh, role, range(1, 21))
    with rel.connect(fresh) as su:
        assert upgrade(su) == latest_version()
        assert installed_version(su) == latest_version()
        assert su.execute("SELECT pgdispatch.version()").fetchone() == (latest_version(),)
    with rel.connect(fresh, role) as conn:
        states = conn.execute(
            "SELECT state, count(*) FROM pgdispatch.jobs WHERE id = ANY(%s) GROUP BY state",
            (jobs,),
        ).fetchall()
        assert states == [("queued", 20)]
        conn.execute("CALL pgdispatch.work(drain => true)")
        states = conn.execute(
            "SELECT state, count(*) FROM pgdispatch.jobs WHERE id = ANY(%s) GROUP BY state",
            (jobs,),
        ).fetchall()
        assert states == [("succeeded", 20)]
        assert conn.execute("SELECT array_agg(id ORDER BY id) FROM app.sink").fetchone() == (
            list(range(1, 21)),
        )


def test_upgrade_under_a_stream_of_jobs_runs_each_once(
    rel: Any, fresh: Any, upgrade_under_load: Any
) -> None:
    """Upgrading while jobs flow (tests/conftest.py, _upgrade_under_load): a worker of the
    previous version mid-batch when the upgrade starts, dispatches going on during and
    after it. Every job runs exactly once, none is left running, and the old worker runs
    nothing once the new version is in. (0.1.0's work() ran a batch after the upgrade
    committed, then failed on the pgdispatch._finish() 0.2.0 dropped: the batch rolled
    back and ran again on a new worker: 601 executions of 600 jobs.)"""
    versions = available_versions()
    if len(versions) < 2:
        pytest.skip(f"only one pgdispatch version ships ({versions}): no upgrade path to test")
    with rel.connect(fresh) as su:
        assert install(su, version=versions[-2], workers=0) == versions[-2]
    role = rel.make_role(fresh, "upl")
    upgrade_under_load(lambda: rel.connect(fresh, role), lambda: rel.connect(fresh))


def _pgdispatch_cron_jobs(conn: Any) -> dict[tuple[str, str], tuple[Any, ...]]:
    """(username, jobname) -> (jobid, schedule, command) of pgdispatch's pg_cron jobs."""
    return {
        (user, name): (jobid, schedule, command)
        for jobid, user, name, schedule, command in conn.execute(
            "SELECT jobid, username, jobname, schedule, command FROM cron.job"
            " WHERE jobname LIKE 'pgdispatch:%'"
        ).fetchall()
    }


def _upgraded_cron_jobs(conn: Any, role: str, slots: int) -> dict[tuple[str, str], tuple[str, str]]:
    """What the new version's start() schedules for *role*: name -> (schedule, command)."""
    oid = conn.execute("SELECT %s::regrole::oid", (role,)).fetchone()[0]
    schedule = conn.execute("SELECT pgdispatch._worker_schedule()").fetchone()[0]
    jobs = {
        (role, f"pgdispatch:{slot}"): (
            schedule, f"CALL pgdispatch.work(slot => {slot}) /* role {oid} */")
        for slot in range(1, slots + 1)
    }
    jobs[(role, "pgdispatch:watchdog")] = (schedule, f"CALL pgdispatch.watchdog() /* role {oid} */")
    return jobs


def test_upgrade_moves_every_roles_pg_cron_jobs_to_the_new_names(rel: Any, fresh: Any) -> None:
    """Upgraded by a superuser, the workers the previous version scheduled (pgdispatch:<role>:
    <slot>, every 10 seconds from pg_cron 1.5) are the same pg_cron jobs afterwards, with the
    names, commands and schedule the new version's start() gives them (every second from
    pg_cron 1.5: a worker of the previous version that stops after the upgrade is followed
    within a second)."""
    versions = available_versions()
    if len(versions) < 2:
        pytest.skip(f"only one pgdispatch version ships ({versions}): no upgrade path to test")
    with rel.connect(fresh) as su:
        assert install(su, version=versions[-2], workers=0) == versions[-2]
    roles = {rel.make_role(fresh, "upc"): 1, rel.make_role(fresh, "upc"): 2}
    for role, slots in roles.items():
        with rel.connect(fresh, role) as conn:
            conn.execute("SELECT pgdispatch.start(%s)", (slots,))
    with rel.connect(fresh) as su:
        before = _pgdispatch_cron_jobs(su)
        assert {name for _, name in before} >= {f"pgdispatch:{role}:1" for role in roles}
        assert upgrade(su) == latest_version()
        after = _pgdispatch_cron_jobs(su)
        expected: dict[tuple[str, str], tuple[str, str]] = {}
        for role, slots in roles.items():
            expected |= _upgraded_cron_jobs(su, role, slots)
        assert {k: v[1:] for k, v in after.items()} == expected
        assert sorted(v[0] for v in after.values()) == sorted(v[0] for v in before.values())
    for role in roles:
        with rel.connect(fresh, role) as conn:
            conn.execute("SELECT pgdispatch.start()")  # nothing left to change
        with rel.connect(fresh) as su:
            now = _pgdispatch_cron_jobs(su)
            assert {k: v for k, v in now.items() if k[0] == role} == {
                k: v for k, v in after.items() if k[0] == role}
        with rel.connect(fresh, role) as conn:
            conn.execute("SELECT pgdispatch.stop()")


def test_upgrade_by_a_plain_owner_moves_its_own_pg_cron_jobs(rel: Any, fresh: Any) -> None:
    """Upgraded by an owner that may not change other roles' pg_cron jobs: its own workers
    get the new names, other roles' keep theirs (running the new work()) until their
    start()."""
    versions = available_versions()
    if len(versions) < 2:
        pytest.skip(f"only one pgdispatch version ships ({versions}): no upgrade path to test")
    owner = f"own_{uuid.uuid4().hex[:6]}"
    with rel.connect(fresh) as su:
        su.execute(f"CREATE ROLE {owner} LOGIN; GRANT USAGE ON SCHEMA cron TO {owner};"
                   f' GRANT CREATE ON DATABASE "{fresh.dbname}" TO {owner}')
    with rel.connect(fresh, owner) as conn:
        assert install(conn, version=versions[-2], workers=1) == versions[-2]
    other = rel.make_role(fresh, "upo")
    with rel.connect(fresh, owner) as conn:
        conn.execute("SELECT pgdispatch.grant_usage(%s)", (other,))
    with rel.connect(fresh, other) as conn:
        conn.execute("SELECT pgdispatch.start(1)")
    with rel.connect(fresh) as su:
        before = _pgdispatch_cron_jobs(su)
    with rel.connect(fresh, owner) as conn:
        assert upgrade(conn) == latest_version()
    with rel.connect(fresh) as su:
        after = _pgdispatch_cron_jobs(su)
        assert {k: v[1:] for k, v in after.items() if k[0] == owner} == _upgraded_cron_jobs(
            su, owner, 1)
        assert {k: v for k, v in after.items() if k[0] == other} == {
            k: v for k, v in before.items() if k[0] == other}
    with rel.connect(fresh, other) as conn:
        conn.execute("SELECT pgdispatch.start()")
    with rel.connect(fresh) as su:
        assert {k: v[1:] for k, v in _pgdispatch_cron_jobs(su).items() if k[0] == other} == (
            _upgraded_cron_jobs(su, other, 1))
    for role in (owner, other):
        with rel.connect(fresh, role) as conn:
            conn.execute("SELECT pgdispatch.stop()")


def test_uninstall_refuses_while_jobs_are_queued(rel: Any, fresh: Any) -> None:
    with rel.connect(fresh) as su:
        install(su, workers=0)
        su.execute("SELECT pgdispatch.stop()")
        job = rel.count(su, "SELECT pgdispatch.dispatch('SELECT 1', delay => '1 hour')")
        with pytest.raises(InstallError, match="unfinished"):
            uninstall(su)
        assert installed_version(su) == latest_version()
        assert su.execute("SELECT state FROM pgdispatch.jobs WHERE id = %s", (job,)).fetchone() == (
            "queued",
        )
        assert su.execute("SELECT pgdispatch.cancel(%s)", (job,)).fetchone() == (True,)
        assert uninstall(su) is True
        assert installed_version(su) is None
        assert uninstall(su) is False


def test_uninstall_removes_every_pg_cron_job_of_every_role(rel: Any, fresh: Any) -> None:
    with rel.connect(fresh) as su:
        install(su, workers=1)
    running, stopped = rel.make_role(fresh, "keep"), rel.make_role(fresh, "stopd")
    for role in (running, stopped):
        _dispatch_sink(rel, fresh, role, range(1, 3))  # first dispatch schedules workers
        rel.drain(fresh, role)
    with rel.connect(fresh, stopped) as conn:
        conn.execute("SELECT pgdispatch.stop()")
    with rel.connect(fresh) as su:
        names = {(r[0], r[1]) for r in su.execute("SELECT jobname, username FROM cron.job")}
        assert {("pgdispatch:1", running), ("pgdispatch:watchdog", running)} <= names
        assert uninstall(su) is True
        left = su.execute(
            "SELECT jobname FROM cron.job WHERE jobname LIKE 'pgdispatch:%'"
            " OR command LIKE '%pgdispatch.%'"
        ).fetchall()
        assert left == []
        assert su.execute("SELECT to_regnamespace('pgdispatch')").fetchone() == (None,)


def test_a_role_cannot_make_uninstall_drop_someone_elses_function(rel: Any, fresh: Any) -> None:
    with rel.connect(fresh) as su:
        install(su, workers=0)
        su.execute("CREATE FUNCTION app.precious() RETURNS int LANGUAGE sql AS 'SELECT 42'")
    mallory = rel.make_role(fresh, "mallory")
    # (a fix may refuse the row outright)
    with (
        rel.connect(fresh, mallory) as conn,
        contextlib.suppress(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("INSERT INTO pgdispatch.definer_function (fn) VALUES ('app.precious()')")
    with rel.connect(fresh) as su:
        uninstall(su, force=True)
        assert su.execute(
            "SELECT to_regprocedure('app.precious()') IS NOT NULL"
        ).fetchone() == (True,)


def test_a_role_cannot_cancel_the_owners_running_job(rel: Any, fresh: Any) -> None:
    with rel.connect(fresh) as su:
        install(su, workers=0)
        su.execute("SELECT pgdispatch.stop()")
        job = rel.count(su, "SELECT pgdispatch.dispatch('SELECT pg_sleep(2)')")
    mallory = rel.make_role(fresh, "mallory")
    watchdog = rel.WorkerThread(fresh, None, "CALL pgdispatch.watchdog(max_runtime => '8 s')")
    worker = rel.WorkerThread(fresh, None, "CALL pgdispatch.work(drain => true)")
    watchdog.start()
    worker.start()
    try:
        with rel.connect(fresh) as su:
            rel.wait_for(
                lambda: su.execute(
                    "SELECT state FROM pgdispatch.jobs WHERE id = %s", (job,)
                ).fetchone() == ("running",),
                timeout=30, interval=0.02, what="the owner's job to run",
            )
        with rel.connect(fresh, mallory) as conn, contextlib.suppress(psycopg.Error):
            conn.execute("INSERT INTO pgdispatch.cancel_request (job_id) VALUES (%s)", (job,))
        worker.join(timeout=60)
        with rel.connect(fresh) as su:
            state = su.execute("SELECT state FROM pgdispatch.jobs WHERE id = %s", (job,)).fetchone()
    finally:
        with rel.connect(fresh) as su:
            if watchdog.pid is not None:
                su.execute("SELECT pg_cancel_backend(%s)", (watchdog.pid,))
        watchdog.join(timeout=30)
    assert state == ("succeeded",)


def test_uninstall_stops_live_worker_sessions(rel: Any, fresh: Any) -> None:
    """A worker still serving when pgdispatch is removed exits instead of erroring."""
    with rel.connect(fresh) as su:
        install(su, workers=0)
        su.execute("SELECT pgdispatch.stop()")
    worker = rel.WorkerThread(
        fresh, None, "CALL pgdispatch.work(slot => 1, max_runtime => '10 minutes')"
    )
    worker.start()
    with rel.connect(fresh) as su:
        rel.wait_for(
            lambda: rel.count(
                su, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                " AND classid = 1885824114 AND granted"
            ) == 1,
            timeout=30, interval=0.05, what="the worker to take its slot",
        )
        assert uninstall(su) is True
    worker.join(timeout=30)
    assert not worker.is_alive()
    with rel.connect(fresh) as su:
        assert rel.count(
            su, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CALL pgdispatch.work%'"
        ) == 0


def test_a_session_that_dispatched_before_a_reinstall_starts_workers_again(
    rel: Any, fresh: Any
) -> None:
    """A session remembers that its role has workers; after uninstall and reinstall that
    memory is stale, and its next dispatch must start the new install's workers."""
    with rel.connect(fresh) as su:
        install(su, workers=None)
        su.execute("SELECT pgdispatch.fire('SELECT 1')")  # starts the role's workers
        assert rel.count(su, "SELECT count(*) FROM pgdispatch.worker WHERE enabled") == 1
        assert uninstall(su, force=True) is True
        install(su, workers=None)
        assert rel.count(su, "SELECT count(*) FROM pgdispatch.worker") == 0
        su.execute("SELECT pgdispatch.fire('SELECT 1')")
        assert rel.count(su, "SELECT count(*) FROM pgdispatch.worker WHERE enabled") == 1
        jobs = su.execute(
            "SELECT jobname FROM cron.job WHERE username = current_user"
            " AND jobname LIKE 'pgdispatch:%'"
        ).fetchall()
        assert len(jobs) == 2, jobs  # a worker and the watchdog
