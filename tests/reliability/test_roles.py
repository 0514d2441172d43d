"""Role lifecycle: renames, drops, revocations and unusual role names.

pg_cron keeps a job's role as a name (``cron.job.username``, text) and its launcher looks
every job's role up by that name whenever it reloads its jobs: one job of a role that was
renamed or dropped makes it exit with ``role "x" does not exist``, restart a second
later and exit again, and then no job of any role starts. pgdispatch's watchdogs find
such jobs and fix them (a renamed role's jobs follow its new name, a dropped role's are
unscheduled) when pgdispatch's owner may manage other roles' pg_cron jobs (a superuser
here). Jobs belong to the role's oid, not to its name: a renamed role keeps its jobs, and
a new role that takes a dropped role's name gets none of them.

Runs on a server of its own: roles are renamed and dropped, and pg_cron's launcher may
be put into its restart loop.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from sa_pgdispatch.install import install
from sa_pgdispatch.testing import EphemeralPostgres

pytestmark = pytest.mark.cron

# a role name of the maximum length (63 bytes) with quotes, spaces, %, _ and non-ASCII
ODD_PREFIX = 'Ωmega "quoted" it\'s 100% odd_role; -- '


def _odd_name() -> str:
    name = ODD_PREFIX + uuid.uuid4().hex
    while len(name.encode()) > 63:
        name = name[:-1]
    assert len(name.encode()) == 63
    return name


@pytest.fixture(scope="module")
def server(rel: Any) -> Iterator[Any]:
    with rel.own_server() as srv:
        with rel.connect(srv) as su:
            su.execute(
                "CREATE SCHEMA app; GRANT USAGE ON SCHEMA app TO PUBLIC;"
                " CREATE TABLE app.sink (v text, by_user name DEFAULT current_user,"
                "  at timestamptz DEFAULT clock_timestamp());"
                " GRANT INSERT, SELECT ON app.sink TO PUBLIC;"
                " CREATE TABLE app.proof (at timestamptz DEFAULT clock_timestamp())"
            )
        yield srv


@pytest.fixture(autouse=True)
def _no_orphans_left(rel: Any, server: Any) -> Iterator[None]:
    """What a failed test leaves behind (pg_cron jobs of missing roles) would stop pg_cron
    for the next tests: remove it, so that each test stands on its own."""
    yield
    with rel.connect(server) as su:
        su.execute("DELETE FROM cron.job j WHERE NOT EXISTS"
                   " (SELECT 1 FROM pg_roles r WHERE r.rolname = j.username)")


def _second_schedules(su: Any) -> bool:
    row = su.execute("SELECT second_schedules FROM pgdispatch.cron_info()").fetchone()
    return bool(row[0])


def _tick(su: Any) -> float:
    """How long a pg_cron job may take to start: a minute tick on pg_cron 1.4."""
    return 15.0 if _second_schedules(su) else 75.0


def _role(rel: Any, server: Any, name: str | None = None, prefix: str = "r") -> str:
    name = name or f"{prefix}_{uuid.uuid4().hex[:6]}"
    with rel.connect(server) as su:
        su.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        su.execute(sql.SQL("GRANT USAGE ON SCHEMA cron TO {}").format(sql.Identifier(name)))
        su.execute("SELECT pgdispatch.grant_usage(%s)", (name,))
    return name


def _oid(su: Any, role: str) -> int:
    return int(su.execute("SELECT oid FROM pg_roles WHERE rolname = %s", (role,)).fetchone()[0])


def _live(su: Any, oid: int) -> int:
    """Worker slot 1 and the watchdog of the role with this oid that hold their locks."""
    return int(
        su.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid::bigint IN (1885824113, 1885824114) AND objid::bigint = %s",
            (oid,),
        ).fetchone()[0]
    )


def _dispatch(rel: Any, server: Any, role: str, tag: str, **opts: Any) -> int:
    args = "".join(f", {k} => %({k})s" for k in opts)
    with rel.connect(server, role) as conn:
        return int(rel.count(
            conn,
            "SELECT pgdispatch.dispatch('INSERT INTO app.sink (v) VALUES (''' || %(tag)s || ''')'"
            + args + ")",
            {"tag": tag, **opts},
        ))


def _sink(su: Any, tag: str) -> list[str]:
    return [r[0] for r in su.execute("SELECT by_user FROM app.sink WHERE v = %s", (tag,))]


def _cron_jobs(su: Any, *usernames: str) -> set[tuple[str, str]]:
    return {
        (r[0], r[1])
        for r in su.execute(
            "SELECT jobname, username FROM cron.job WHERE username = ANY(%s)"
            " AND command LIKE 'CALL pgdispatch.%%'",
            (list(usernames),),
        )
    }


def _launcher(su: Any) -> int | None:
    row = su.execute(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_cron launcher'"
    ).fetchone()
    return int(row[0]) if row else None


def _pg_cron_keeps_running(rel: Any, server: Any, since: Any) -> None:
    """pg_cron's launcher stays up (it restarts every second while a job's role is
    missing), and, where a job can start within seconds (pg_cron >= 1.5), runs a job."""
    with rel.connect(server) as su:
        # any change of cron.job makes pg_cron reload its jobs (and exit on a missing role)
        schedule = "1 seconds" if _second_schedules(su) else "* * * * *"
        su.execute(
            "SELECT cron.schedule('roles-proof', %s, 'INSERT INTO app.proof DEFAULT VALUES')",
            (schedule,),
        )
        try:
            stable: dict[str, Any] = {"pid": None, "since": time.monotonic()}

            def steady() -> bool:
                pid = _launcher(su)
                if pid is None or pid != stable["pid"]:
                    stable.update(pid=pid, since=time.monotonic())
                    return False
                return bool(time.monotonic() - stable["since"] >= 5)

            rel.wait_for(steady, timeout=30, interval=0.1,
                         what="pg_cron's launcher to stay up for 5 s")
            if _second_schedules(su):
                rel.wait_for(
                    lambda: rel.count(
                        su, "SELECT count(*) FROM app.proof WHERE at > %s", (since,)) > 0,
                    timeout=10, interval=0.1, what="pg_cron to run a job",
                )
        finally:
            su.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = 'roles-proof'")


def _now(su: Any) -> Any:
    return su.execute("SELECT clock_timestamp()").fetchone()[0]


def _cleanup(rel: Any, server: Any, *roles: str) -> None:
    with rel.connect(server) as su:
        for role in roles:
            if su.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                su.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE username = %s",
                           (role,))
                su.execute(sql.SQL("DROP OWNED BY {} CASCADE; DROP ROLE {}").format(
                    sql.Identifier(role), sql.Identifier(role)))
        # whatever a failed test left behind would stop pg_cron for the next ones
        su.execute("DELETE FROM cron.job j WHERE NOT EXISTS"
                   " (SELECT 1 FROM pg_roles r WHERE r.rolname = j.username)")


# ---------------------------------------------------------------------------------------
# Jobs belong to the role, not to its name (drained by hand: no pg_cron needed)


def test_a_renamed_roles_queued_jobs_stay_its_own(rel: Any, server: Any) -> None:
    role = _role(rel, server, prefix="ren")
    renamed = role + "_new"
    with rel.connect(server, role) as conn:
        conn.execute("SELECT pgdispatch.stop()")
    tag = uuid.uuid4().hex
    jobs = [_dispatch(rel, server, role, tag) for _ in range(3)]
    keyed = _dispatch(rel, server, role, tag, job_key="k1")
    with rel.connect(server) as su:
        su.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(
            sql.Identifier(role), sql.Identifier(renamed)))
    try:
        with rel.connect(server, renamed) as conn:
            seen = conn.execute(
                "SELECT id, role, state FROM pgdispatch.jobs ORDER BY id").fetchall()
            assert seen == [(j, renamed, "queued") for j in [*jobs, keyed]]
            # the same key is still queued for this role: no second job
            assert _dispatch(rel, server, renamed, tag, job_key="k1") == keyed
            assert conn.execute("SELECT pgdispatch.cancel(%s)", (jobs[0],)).fetchone() == (True,)
            conn.execute("CALL pgdispatch.work(drain => true)")
            states = conn.execute(
                "SELECT id, role, state FROM pgdispatch.jobs ORDER BY id").fetchall()
            assert states == [(jobs[0], renamed, "cancelled")] + [
                (j, renamed, "succeeded") for j in [*jobs[1:], keyed]
            ]
        with rel.connect(server) as su:
            assert _sink(su, tag) == [renamed] * 3
    finally:
        _cleanup(rel, server, renamed)


def test_a_dropped_roles_jobs_never_run_as_a_new_role_of_that_name(
    rel: Any, server: Any
) -> None:
    role = _role(rel, server, prefix="gone")
    with rel.connect(server, role) as conn:
        conn.execute("SELECT pgdispatch.stop()")
    tag = uuid.uuid4().hex
    old = [_dispatch(rel, server, role, tag) for _ in range(2)]
    old.append(_dispatch(rel, server, role, tag, job_key="k1"))
    with rel.connect(server) as su:
        su.execute(sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(
            sql.Identifier(role), sql.Identifier(role)))
    _role(rel, server, name=role)  # a new role, the same name
    try:
        with rel.connect(server, role) as conn:
            conn.execute("SELECT pgdispatch.stop()")
            assert conn.execute("SELECT id FROM pgdispatch.jobs").fetchall() == []
            with pytest.raises(psycopg.errors.NoDataFound):
                conn.execute("SELECT pgdispatch.cancel(%s)", (old[0],))
            mine = _dispatch(rel, server, role, tag, job_key="k1")
            assert mine not in old
            conn.execute("CALL pgdispatch.work(drain => true)")
            assert conn.execute("SELECT id, state FROM pgdispatch.jobs").fetchall() == [
                (mine, "succeeded")
            ]
        with rel.connect(server) as su:
            assert _sink(su, tag) == [role]  # the new role's job only
            # what the watchdogs do about them: failed, never run, and said why
            su.execute("SELECT pgdispatch.repair_roles()")
            rows = su.execute(
                "SELECT id, state, error->>'message', started_at FROM pgdispatch.jobs"
                " WHERE id = ANY(%s) ORDER BY id", (old,)
            ).fetchall()
            assert [(r[0], r[1], r[3]) for r in rows] == [(j, "failed", None) for j in old]
            assert all(r[2].startswith("role dropped") for r in rows), rows
    finally:
        _cleanup(rel, server, role)


# ---------------------------------------------------------------------------------------
# pg_cron stays healthy (end to end through pg_cron)


@pytest.fixture(scope="module")
def live(rel: Any, server: Any) -> Iterator[dict[str, str]]:
    """Roles whose pg_cron workers serve (started together: pg_cron 1.4 starts them at
    the next minute): one for each test below, and ``other``, which must stay served."""
    roles = {
        "rename": _role(rel, server, prefix="rena"),
        "drop": _role(rel, server, prefix="drop"),
        "revoke": _role(rel, server, prefix="revk"),
        "odd": _role(rel, server, name=_odd_name()),
        "other": _role(rel, server, prefix="othr"),
    }
    for role in roles.values():
        with rel.connect(server, role) as conn:
            conn.execute("SELECT pgdispatch.start(1)")
    with rel.connect(server) as su:
        # (the odd one's test waits for its own)
        oids = [_oid(su, r) for k, r in roles.items() if k != "odd"]
        rel.wait_for(
            lambda: all(_live(su, o) == 2 for o in oids), timeout=_tick(su), interval=0.2,
            what="pg_cron to start the roles' workers",
        )
    yield roles
    _cleanup(rel, server, *roles.values(), roles["rename"] + "_new")


def _other_is_served(rel: Any, server: Any, other: str) -> None:
    """The other role's job runs. (Within a tick: on pg_cron 1.4, when pg_cron reloaded its
    jobs before the repair, its launcher restarted once and lost the pending runs that hand
    a worker over at once, so that the next worker may start at the next minute.)"""
    tag = uuid.uuid4().hex
    _dispatch(rel, server, other, tag)
    with rel.connect(server) as su:
        rel.wait_for(lambda: _sink(su, tag) == [other], timeout=_tick(su), interval=0.05,
                     what="the other role's job")


def test_renaming_a_role_leaves_pg_cron_serving_every_role(
    rel: Any, server: Any, live: dict[str, str]
) -> None:
    role, other = live["rename"], live["other"]
    renamed = role + "_new"
    with rel.connect(server) as su:
        su.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(
            sql.Identifier(role), sql.Identifier(renamed)))
        renamed_at = _now(su)
    _pg_cron_keeps_running(rel, server, renamed_at)
    with rel.connect(server) as su:
        assert _cron_jobs(su, role) == set()
        assert _cron_jobs(su, renamed) == {
            ("pgdispatch:1", renamed), ("pgdispatch:watchdog", renamed)}
    # the renamed role's jobs run, as itself; the other role's too
    tag = uuid.uuid4().hex
    _dispatch(rel, server, renamed, tag)
    with rel.connect(server) as su:
        rel.wait_for(lambda: _sink(su, tag) == [renamed], timeout=_tick(su), interval=0.05,
                     what="the renamed role's job")
    _other_is_served(rel, server, other)
    # pg_cron runs the renamed role's workers under the new name (in libpq mode the first
    # runs exit at once while the sessions started before the rename serve on)
    with rel.connect(server) as su:
        rel.wait_for(
            lambda: rel.count(
                su, "SELECT count(*) FROM cron.job_run_details WHERE username = %s"
                " AND command LIKE 'CALL pgdispatch.work%%' AND status <> 'failed'"
                " AND start_time > %s", (renamed, renamed_at)) > 0,
            timeout=_tick(su), interval=0.2, what="a worker run as the new name",
        )


def test_dropping_a_role_leaves_pg_cron_serving_every_role(
    rel: Any, server: Any, live: dict[str, str]
) -> None:
    role, other = live["drop"], live["other"]
    waiting = _dispatch(rel, server, role, uuid.uuid4().hex, delay="1 hour")
    with rel.connect(server) as su:
        su.execute(sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(
            sql.Identifier(role), sql.Identifier(role)))
        dropped_at = _now(su)
    _pg_cron_keeps_running(rel, server, dropped_at)
    with rel.connect(server) as su:
        assert _cron_jobs(su, role) == set()
        # the dropped role's queued job: failed by the watchdogs, never run
        rel.wait_for(
            lambda: su.execute("SELECT state FROM pgdispatch.jobs WHERE id = %s",
                               (waiting,)).fetchone() == ("failed",),
            timeout=10, interval=0.1, what="the dropped role's job to fail",
        )
        error = su.execute("SELECT error->>'message' FROM pgdispatch.jobs WHERE id = %s",
                           (waiting,)).fetchone()[0]
        assert error.startswith("role dropped"), error
        assert rel.count(su, "SELECT count(*) FROM pgdispatch.worker WHERE role = %s",
                         (role,)) == 0
    _other_is_served(rel, server, other)


def test_revoke_usage_stops_the_roles_workers(
    rel: Any, server: Any, live: dict[str, str]
) -> None:
    role, other = live["revoke"], live["other"]
    with rel.connect(server) as su:
        oid = _oid(su, role)
        su.execute("SELECT pgdispatch.revoke_usage(%s)", (role,))
        revoked_at = _now(su)
        assert _cron_jobs(su, role) == set()
        rel.wait_for(lambda: _live(su, oid) == 0, timeout=10, interval=0.1,
                     what="the role's workers to exit")
        time.sleep(3)
        failed = su.execute(
            "SELECT count(*) FROM cron.job_run_details WHERE username = %s"
            " AND status = 'failed' AND start_time > %s", (role, revoked_at)
        ).fetchone()[0]
        assert failed == 0
    _other_is_served(rel, server, other)


# ---------------------------------------------------------------------------------------
# Any role name


def test_a_role_with_a_63_byte_odd_name_gets_its_workers(
    rel: Any, server: Any, live: dict[str, str]
) -> None:
    role = live["odd"]
    with rel.connect(server, role) as conn:
        assert _cron_jobs(conn, role) == {("pgdispatch:1", role), ("pgdispatch:watchdog", role)}
        conn.execute("SELECT pgdispatch.start(2)")
        assert _cron_jobs(conn, role) == {
            ("pgdispatch:1", role), ("pgdispatch:2", role), ("pgdispatch:watchdog", role)}
        conn.execute("SELECT pgdispatch.start(1)")
        assert _cron_jobs(conn, role) == {("pgdispatch:1", role), ("pgdispatch:watchdog", role)}
    tag = uuid.uuid4().hex
    _dispatch(rel, server, role, tag)
    with rel.connect(server) as su:
        rel.wait_for(lambda: _sink(su, tag) == [role], timeout=_tick(su), interval=0.05,
                     what="pg_cron's worker of the role to run its job")
        assert su.execute(
            "SELECT DISTINCT usename FROM pg_stat_activity WHERE query LIKE 'CALL pgdispatch.%%'"
            " AND usename = %s", (role,)).fetchall() == [(role,)]
    with rel.connect(server, role) as conn:
        conn.execute("SELECT pgdispatch.stop()")
        assert _cron_jobs(conn, role) == set()


# ---------------------------------------------------------------------------------------
# An owner that may not manage other roles' pg_cron jobs


def test_an_owner_that_may_not_remove_other_roles_pg_cron_jobs_says_what_to_run(
    rel: Any,
) -> None:
    """pgdispatch installed by a plain role: nothing can remove another role's pg_cron
    jobs, so revoke_usage() and a renamed role's start() say what a superuser must run."""
    with EphemeralPostgres() as srv:
        with rel.connect(srv) as su:
            su.execute("CREATE ROLE owner LOGIN; GRANT CREATE ON DATABASE pgdispatch TO owner;"
                       " GRANT USAGE ON SCHEMA cron TO owner")
        with rel.connect(srv, "owner") as owner:
            install(owner, workers=0)
        for role in ("r1", "r2"):
            with rel.connect(srv) as su:
                su.execute(sql.SQL("CREATE ROLE {} LOGIN; GRANT USAGE ON SCHEMA cron TO {}").format(
                    sql.Identifier(role), sql.Identifier(role)))
            with rel.connect(srv, "owner") as owner:
                owner.execute("SELECT pgdispatch.grant_usage(%s)", (role,))
            with rel.connect(srv, role) as conn:
                conn.execute("SELECT pgdispatch.start(1)")
        with rel.connect(srv, "owner") as owner:
            notices: list[str] = []
            owner.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            assert owner.execute("SELECT * FROM pgdispatch.repair_roles()").fetchall() == []
            owner.execute("SELECT pgdispatch.revoke_usage('r1')")
            assert any("pg_cron jobs of role r1 stay scheduled" in n for n in notices), notices
        with rel.connect(srv) as su:
            assert _cron_jobs(su, "r1") == {("pgdispatch:1", "r1"), ("pgdispatch:watchdog", "r1")}
            su.execute("ALTER ROLE r2 RENAME TO r2_new")
        with rel.connect(srv, "r2_new") as conn:
            notices = []
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            conn.execute("SELECT pgdispatch.dispatch('SELECT 1')")  # (starts the workers again)
            assert any("was called r2 when its workers were scheduled" in n for n in notices), (
                notices)
        with rel.connect(srv) as su:
            assert _cron_jobs(su, "r2_new") == {
                ("pgdispatch:1", "r2_new"), ("pgdispatch:watchdog", "r2_new")}
            # what the warning says to run, as a superuser
            su.execute("DELETE FROM cron.job j WHERE NOT EXISTS"
                       " (SELECT 1 FROM pg_roles r WHERE r.rolname = j.username)")
            assert _cron_jobs(su, "r2") == set()
