"""The pytest plugin used from a user's project: pgdispatch_db, pgdispatch_engine, drain."""

from __future__ import annotations

import pytest

from sa_pgdispatch.testing import ENV_TEST_BACKEND, ENV_TEST_DSN, PgServer

USER_TESTS = """
import uuid

import pytest
from sqlalchemy import text

from sa_pgdispatch import jobs
from sa_pgdispatch.errors import JobFailed
from sa_pgdispatch.jobs import JobState
from sa_pgdispatch.testing.drain import drain


@pytest.fixture
def table(pgdispatch_db):
    name = f"public.user_sink_{uuid.uuid4().hex[:8]}"
    with pgdispatch_db.begin() as conn:
        conn.execute(text(f"CREATE TABLE {name} (v int)"))
    yield name
    with pgdispatch_db.begin() as conn:
        conn.execute(text(f"DROP TABLE {name}"))


def test_dispatch_then_drain_with_the_fixture(pgdispatch_db, pgdispatch_drain, table):
    with pgdispatch_db.begin() as conn:
        job_id = conn.execute(
            text("SELECT pgdispatch.dispatch(:c)"), {"c": f"INSERT INTO {table} VALUES (1)"}
        ).scalar_one()
    assert pgdispatch_drain() >= 1
    assert jobs.get(pgdispatch_db, job_id).state is JobState.SUCCEEDED
    with pgdispatch_db.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 1


def test_drain_function_with_the_engine(pgdispatch_engine, pgdispatch_db, table):
    with pgdispatch_engine.begin() as conn:
        job_id = conn.execute(
            text("SELECT pgdispatch.dispatch(:c, capture => true)"),
            {"c": f"INSERT INTO {table} VALUES (2) RETURNING v"},
        ).scalar_one()
    drain(pgdispatch_engine)
    assert jobs.result(pgdispatch_engine, job_id) == [{"v": 2}]


def test_a_failing_side_effect_is_visible(pgdispatch_db, pgdispatch_drain):
    with pgdispatch_db.begin() as conn:
        job_id = conn.execute(text("SELECT pgdispatch.dispatch('SELECT 1/0')")).scalar_one()
    pgdispatch_drain()
    with pytest.raises(JobFailed, match="division by zero"):
        jobs.result(pgdispatch_db, job_id)


def test_nothing_runs_without_drain(pgdispatch_db, table):
    with pgdispatch_db.begin() as conn:
        job_id = conn.execute(
            text("SELECT pgdispatch.dispatch(:c)"), {"c": f"INSERT INTO {table} VALUES (3)"}
        ).scalar_one()
    # the superuser's pg_cron workers are stopped by pgdispatch_db: still queued
    assert jobs.get(pgdispatch_db, job_id).state is JobState.QUEUED
    assert jobs.cancel(pgdispatch_db, job_id) is True
"""


def test_a_user_project_uses_the_plugin_and_drain(
    pytester: pytest.Pytester, pgdispatch_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reuse the session's server through the dsn backend: no second cluster.
    monkeypatch.setenv(ENV_TEST_DSN, pgdispatch_server.dsn)
    monkeypatch.delenv(ENV_TEST_BACKEND, raising=False)
    pytester.makepyfile(test_user_app=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=4)
