"""Test support for sa_pgdispatch: throwaway PostgreSQL + pg_cron servers.

* :class:`EphemeralPostgres` - a private cluster from the local PostgreSQL binaries.
* :class:`ExistingServer` / :func:`server_from_env` - a server given by
  ``$SA_PGDISPATCH_TEST_DSN``.
* :class:`~sa_pgdispatch.testing.containers.DockerPostgres` - a testcontainers backend
  (import it from ``sa_pgdispatch.testing.containers``).
* :func:`provision_server` - picks one of them.
* The pytest plugin (``sa_pgdispatch.testing.pytest_plugin``) provides the
  ``pgdispatch_*`` fixtures.

See docs/testing.md.
"""

from __future__ import annotations

from sa_pgdispatch.testing.binaries import (
    ENV_PG_BIN,
    find_postgres_bin,
    pg_cron_control_file,
    pg_major,
    require_pg_cron,
)
from sa_pgdispatch.testing.drain import Drainer, drain, drain_async
from sa_pgdispatch.testing.errors import (
    BackendUnavailable,
    HarnessError,
    PgCronNotFound,
    PostgresNotFound,
)
from sa_pgdispatch.testing.provision import (
    BACKENDS,
    ENV_TEST_BACKEND,
    provision_server,
    resolve_backend,
)
from sa_pgdispatch.testing.server import (
    ENV_TEST_DSN,
    HARNESS_USER,
    TEMP_PREFIX,
    EphemeralPostgres,
    ExistingServer,
    PgServer,
    StopMode,
    server_from_env,
)

__all__ = [
    "BACKENDS",
    "ENV_PG_BIN",
    "ENV_TEST_BACKEND",
    "ENV_TEST_DSN",
    "HARNESS_USER",
    "TEMP_PREFIX",
    "BackendUnavailable",
    "Drainer",
    "EphemeralPostgres",
    "ExistingServer",
    "HarnessError",
    "PgCronNotFound",
    "PgServer",
    "PostgresNotFound",
    "StopMode",
    "drain",
    "drain_async",
    "find_postgres_bin",
    "pg_cron_control_file",
    "pg_major",
    "provision_server",
    "require_pg_cron",
    "resolve_backend",
    "server_from_env",
]
