"""pytest plugin of sa_pgdispatch (registered through the ``pytest11`` entry point).

Fixtures (all prefixed ``pgdispatch_``):

* ``pgdispatch_server`` (session): a PostgreSQL server with pg_cron, see
  :func:`~sa_pgdispatch.testing.provision.provision_server`; has ``.dsn`` and ``.url``.
* ``pgdispatch_engine`` (session): a SQLAlchemy ``Engine`` on it (psycopg driver).
* ``pgdispatch_connection`` (function): a SQLAlchemy ``Connection`` inside a
  transaction that is rolled back after the test.
* ``pgdispatch_psycopg`` (function): a ``psycopg.Connection``, closed after the test.

Option ``--pgdispatch-backend={ephemeral,dsn,docker}`` (default: the
``SA_PGDISPATCH_TEST_BACKEND`` variable, else ``dsn`` when ``SA_PGDISPATCH_TEST_DSN``
is set, else ``ephemeral``). A backend that cannot run here (no Docker engine) skips
the tests that need the server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Connection, Engine, create_engine

from sa_pgdispatch.testing.binaries import find_postgres_bin, pg_cron_default_version, pg_major
from sa_pgdispatch.testing.connect import PgServer
from sa_pgdispatch.testing.errors import BackendUnavailable, HarnessError
from sa_pgdispatch.testing.fixtures import (  # re-exported: the plugin provides them
    pgdispatch_db,
    pgdispatch_drain,
    pgdispatch_role,
)
from sa_pgdispatch.testing.pg_cron import resolve_cron_mode
from sa_pgdispatch.testing.provision import BACKENDS, provision_server, resolve_backend


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sa_pgdispatch", "sa_pgdispatch test server")
    group.addoption(
        "--pgdispatch-backend",
        action="store",
        dest="pgdispatch_backend",
        choices=BACKENDS,
        default=None,
        help=(
            "where the pgdispatch_server fixture gets PostgreSQL+pg_cron: a private "
            "'ephemeral' cluster (default), the 'dsn' of $SA_PGDISPATCH_TEST_DSN, or "
            "'docker' (testcontainers)"
        ),
    )


def pytest_report_header(config: pytest.Config) -> str:
    option = config.getoption("pgdispatch_backend", default=None)
    try:
        backend = resolve_backend(option)
    except HarnessError as exc:
        return f"sa_pgdispatch: {exc}"
    header = f"sa_pgdispatch: test server backend {backend}"
    if backend == "ephemeral":
        header += _ephemeral_header()
    return header


def _ephemeral_header() -> str:
    """The bin dir, PostgreSQL major, pg_cron version and cron mode ephemeral servers use."""
    try:
        bin_dir = find_postgres_bin()
        major = pg_major(bin_dir)
        cron_version = pg_cron_default_version(bin_dir) or "missing"
        mode = resolve_cron_mode()
    except HarnessError as exc:
        return f" ({exc})"
    return f", PostgreSQL {major} at {bin_dir}, pg_cron {cron_version}, cron mode {mode}"


@pytest.fixture(scope="session")
def pgdispatch_server(request: pytest.FixtureRequest) -> Iterator[PgServer]:
    """A PostgreSQL server with pg_cron for the whole test session."""
    backend = request.config.getoption("pgdispatch_backend", default=None)
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(provision_server(backend))
        except BackendUnavailable as exc:
            pytest.skip(str(exc))
        yield server


@pytest.fixture(scope="session")
def pgdispatch_engine(pgdispatch_server: PgServer) -> Iterator[Engine]:
    """A SQLAlchemy Engine (psycopg driver) on :func:`pgdispatch_server`."""
    engine = create_engine(pgdispatch_server.url, pool_pre_ping=True)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def pgdispatch_connection(pgdispatch_engine: Engine) -> Iterator[Connection]:
    """A SQLAlchemy Connection in a transaction that is rolled back after the test."""
    with pgdispatch_engine.connect() as connection:
        transaction = connection.begin()
        try:
            yield connection
        finally:
            if transaction.is_active:
                transaction.rollback()


@pytest.fixture
def pgdispatch_psycopg(
    pgdispatch_server: PgServer,
) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A psycopg connection (not autocommit) to :func:`pgdispatch_server`, closed after."""
    connection = psycopg.connect(pgdispatch_server.dsn)
    try:
        yield connection
    finally:
        connection.close()

__all__ = [
    "pgdispatch_connection",
    "pgdispatch_db",
    "pgdispatch_drain",
    "pgdispatch_engine",
    "pgdispatch_psycopg",
    "pgdispatch_role",
    "pgdispatch_server",
]
