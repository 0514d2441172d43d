"""The pytest plugin, in a pytest run of a user project (pytester).

The run that uses the server is a separate pytest process, like a user project's. The two
that need no server run in this process (``runpytest_inprocess``): a fresh pytest
``Config`` and plugin manager loading the plugin through its ``pytest11`` entry point, as a
new process would, without the ~1 s of starting one. The plugin keeps no state outside its
fixtures, so the outer session's cannot leak in."""

from __future__ import annotations

import pytest

from sa_pgdispatch.testing import ENV_TEST_BACKEND, ENV_TEST_DSN, PgServer
from sa_pgdispatch.testing.containers import docker_engine_status

USER_TESTS = """
import psycopg
from sqlalchemy import Connection, Engine, text


def test_fixtures(pgdispatch_server, pgdispatch_engine, pgdispatch_connection, pgdispatch_psycopg):
    assert pgdispatch_server.dsn.startswith("postgresql://")
    assert pgdispatch_server.url.startswith("postgresql+psycopg://")
    assert isinstance(pgdispatch_engine, Engine)
    assert pgdispatch_engine.dialect.driver == "psycopg"
    assert isinstance(pgdispatch_connection, Connection)
    assert pgdispatch_connection.in_transaction()
    assert isinstance(pgdispatch_psycopg, psycopg.Connection)
    row = pgdispatch_psycopg.execute(
        "SELECT extname FROM pg_extension WHERE extname = 'pg_cron'"
    ).fetchone()
    assert row == ("pg_cron",)


def test_a_creates_a_table(pgdispatch_connection):
    pgdispatch_connection.execute(text("CREATE TABLE plugin_rollback_probe (v int)"))
    pgdispatch_connection.execute(text("INSERT INTO plugin_rollback_probe VALUES (1)"))


def test_b_the_table_was_rolled_back(pgdispatch_connection):
    found = pgdispatch_connection.execute(
        text("SELECT to_regclass('plugin_rollback_probe')")
    ).scalar_one()
    assert found is None


def test_c_psycopg_connection_is_closed_after(pgdispatch_psycopg, request):
    request.config._probe_conn = pgdispatch_psycopg


def test_d_check_closed(request):
    assert request.config._probe_conn.closed
"""


def test_plugin_fixtures_in_a_user_project(
    pytester: pytest.Pytester, pgdispatch_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reuse the session's server through the dsn backend: no second cluster.
    monkeypatch.setenv(ENV_TEST_DSN, pgdispatch_server.dsn)
    monkeypatch.delenv(ENV_TEST_BACKEND, raising=False)
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*sa_pgdispatch: test server backend dsn*"])


#: A user project's setting, which pytest-asyncio otherwise warns about: in-process, its
#: warning would land in this session's summary.
ASYNCIO_INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"


def test_plugin_option_is_registered(pytester: pytest.Pytester) -> None:
    pytester.makeini(ASYNCIO_INI)
    result = pytester.runpytest_inprocess("--help")
    result.stdout.fnmatch_lines(["*--pgdispatch-backend=*"])


def test_docker_backend_without_engine_skips(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    if docker_engine_status() is None:
        pytest.skip("a Docker engine answers here; the skip path cannot be observed")
    monkeypatch.delenv(ENV_TEST_BACKEND, raising=False)
    pytester.makeini(ASYNCIO_INI)
    pytester.makepyfile(test_user="def test_x(pgdispatch_server):\n    pass\n")
    # without Hypothesis's plugin, which imports Hypothesis (~0.8 s) in every session's
    # terminal summary: this run has no Hypothesis test (tests/conftest.py does the same)
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-rs",
        "--pgdispatch-backend=docker",
    )
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*needs a Docker engine*"])
