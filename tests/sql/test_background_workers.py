"""pg_cron's background-worker mode: each long-lived worker and watchdog holds a
background worker, and start() refuses workers that would not fit instead of leaving
jobs unserved. Runs a server of its own with few background workers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, exc, text

from sa_pgdispatch.errors import WorkerError
from sa_pgdispatch.install import install
from sa_pgdispatch.testing.server import EphemeralPostgres
from sa_pgdispatch.workers import start_workers, worker_budget

from .conftest import rows, run, wait_until

pytestmark = pytest.mark.cron


@pytest.fixture(scope="module")
def bgw_server() -> Iterator[EphemeralPostgres]:
    # 6 background workers: pg_cron's launcher and the logical replication launcher
    # take 2, which leaves 4 (two roles with one worker and a watchdog each).
    settings = {"max_worker_processes": "6", "cron.max_running_jobs": "20"}
    with EphemeralPostgres(cron_mode="bgw", settings=settings) as server:
        yield server


@pytest.fixture(scope="module")
def owner(bgw_server: EphemeralPostgres) -> Iterator[Engine]:
    engine = create_engine(bgw_server.url)
    with engine.begin() as conn:
        install(conn, workers=None)
    for name in ("role_a", "role_b", "role_c"):
        run(engine, f"CREATE ROLE {name} LOGIN")
        run(engine, f"GRANT USAGE ON SCHEMA cron TO {name}")
        run(engine, f"GRANT CREATE ON SCHEMA public TO {name}")
        run(engine, "SELECT pgdispatch.grant_usage(:r)", r=name)
    yield engine
    engine.dispose()


def _pg_cron_at_least_1_5(engine: Engine) -> bool:
    version = run(engine, "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'")
    return tuple(int(p) for p in version.split("-")[0].split(".")[:2]) >= (1, 5)


def _running_workers(engine: Engine, role: str) -> int:
    return int(
        run(
            engine,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_cron'"
            " AND usename = :r AND query LIKE 'CALL pgdispatch.%'",
            r=role,
        )
    )


def test_start_refuses_workers_beyond_max_worker_processes(
    bgw_server: EphemeralPostgres, owner: Engine
) -> None:
    engines = {r: create_engine(bgw_server.connect_url(user=r)) for r in ("role_a", "role_b")}
    try:
        if not _pg_cron_at_least_1_5(owner):
            # pg_cron 1.4's launcher blocks on a long job in this mode: refused outright
            with pytest.raises(WorkerError, match="background-worker mode"):
                start_workers(engines["role_a"], 1)
            return
        budget = worker_budget(owner)
        assert budget.max_worker_processes == 6
        assert budget.free == 4, budget

        start_workers(engines["role_a"], 1)  # a worker and a watchdog: 2 of the 4
        assert wait_until(lambda: _running_workers(owner, "role_a") == 2, 15)
        budget = worker_budget(owner)
        assert (budget.free, budget.pgdispatch_workers) == (2, 2), budget

        with pytest.raises(WorkerError, match="max_worker_processes = 6") as refused:
            start_workers(engines["role_b"], 2)  # needs 3
        assert "3 more background worker(s) needed" in str(refused.value)
        assert rows(engines["role_b"], "SELECT jobname FROM cron.job") == []

        # restarting role_a's workers replaces them: no extra room needed
        start_workers(engines["role_a"], 1)
        start_workers(engines["role_b"], 1)  # exactly the 2 left
        assert wait_until(lambda: _running_workers(owner, "role_b") == 2, 15)
        run(engines["role_b"], "CREATE TABLE IF NOT EXISTS public.b_ran (at timestamptz)")
        run(
            engines["role_b"],
            "SELECT pgdispatch.fire('INSERT INTO public.b_ran VALUES (clock_timestamp())')",
        )
        assert wait_until(lambda: run(engines["role_b"], "SELECT count(*) FROM public.b_ran"), 10)
        assert worker_budget(owner).free == 0
    finally:
        for role, engine in engines.items():
            with contextlib.suppress(exc.DBAPIError):
                run(engine, "SELECT pgdispatch.stop()")
            engine.dispose()
            wait_until(lambda r=role: _running_workers(owner, r) == 0, 15)  # type: ignore[misc]


def test_a_role_that_may_not_see_other_sessions_gets_the_owners_count(
    bgw_server: EphemeralPostgres, owner: Engine
) -> None:
    """worker_budget() runs as pgdispatch's owner: a plain role gets real numbers."""
    engine = create_engine(bgw_server.connect_url(user="role_c"))
    try:
        seen = worker_budget(engine)
        assert seen.max_worker_processes == 6
        assert seen.used is not None
        assert seen.free is not None
        assert seen.used + seen.free == 6
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def default_budget_server() -> Iterator[EphemeralPostgres]:
    # PostgreSQL's default max_worker_processes (8), and pg_cron's default for it in this
    # mode: cron.max_running_jobs = min(5, max_worker_processes - 1)
    settings = {"max_worker_processes": "8", "cron.max_running_jobs": "5"}
    with EphemeralPostgres(cron_mode="bgw", settings=settings) as server:
        engine = create_engine(server.url)
        with engine.begin() as conn:
            install(conn, workers=None)
        for name in ("role_1", "role_2", "role_3"):
            run(engine, f"CREATE ROLE {name} LOGIN")
            run(engine, f"GRANT USAGE ON SCHEMA cron TO {name}")
            run(engine, "SELECT pgdispatch.grant_usage(:r)", r=name)
        engine.dispose()
        yield server


def test_start_counts_the_workers_pg_cron_has_scheduled_for_other_roles(
    default_budget_server: EphemeralPostgres,
) -> None:
    """pg_cron runs 5 jobs at once here: two roles' worker and watchdog fit, a third's do
    not. start() counted the pgdispatch jobs running at that moment, which is none before
    pg_cron starts them (and fewer while workers hand over): a third and a fourth role
    were accepted, and one waited 70 s for its first job while others ran without their
    watchdog."""
    owner = create_engine(default_budget_server.url)
    try:
        if not _pg_cron_at_least_1_5(owner):
            pytest.skip("pg_cron 1.4 refuses background-worker mode outright")
        with owner.begin() as conn:
            # one transaction: nothing of it runs yet, whatever pg_cron's launcher does
            for role in ("role_1", "role_2"):
                conn.execute(text(f"SET LOCAL ROLE {role}"))
                conn.execute(text("SELECT pgdispatch.start(1)"))
            conn.execute(text("SET LOCAL ROLE role_3"))
            with (
                pytest.raises(exc.DBAPIError, match=r"cron\.max_running_jobs = 5") as refused,
                conn.begin_nested(),
            ):
                conn.execute(text("SELECT pgdispatch.start(1)"))
            assert "(pg_cron has 4 other pgdispatch worker(s)" in str(refused.value)
            conn.execute(text("RESET ROLE"))
        assert worker_budget(owner).scheduled == 4
        assert rows(owner, "SELECT jobname FROM cron.job WHERE username = 'role_3'") == []
        # room again once another role stops
        role_2 = create_engine(default_budget_server.connect_url(user="role_2"))
        role_3 = create_engine(default_budget_server.connect_url(user="role_3"))
        try:
            run(role_2, "SELECT pgdispatch.stop()")
            start_workers(role_3, 1)
            assert worker_budget(owner).scheduled == 4
        finally:
            role_2.dispose()
            role_3.dispose()
    finally:
        for role in ("role_1", "role_2", "role_3"):
            run(owner, "SELECT cron.unschedule(jobid) FROM cron.job WHERE username = :r", r=role)
        owner.dispose()
