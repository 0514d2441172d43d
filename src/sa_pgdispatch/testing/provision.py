"""Choose and provision a test server: ephemeral (default), existing DSN, or Docker."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from sa_pgdispatch.testing.connect import PgServer
from sa_pgdispatch.testing.ephemeral import EphemeralPostgres
from sa_pgdispatch.testing.errors import HarnessError
from sa_pgdispatch.testing.existing import ENV_TEST_DSN, server_from_env

__all__ = ["BACKENDS", "ENV_TEST_BACKEND", "provision_server", "resolve_backend"]

#: Environment variable selecting the backend: ``ephemeral``, ``dsn`` or ``docker``.
ENV_TEST_BACKEND = "SA_PGDISPATCH_TEST_BACKEND"
BACKENDS = ("ephemeral", "dsn", "docker")


def resolve_backend(backend: str | None = None) -> str:
    """The backend to use: *backend*, else ``$SA_PGDISPATCH_TEST_BACKEND``, else ``dsn``
    when ``$SA_PGDISPATCH_TEST_DSN`` is set, else ``ephemeral``."""
    chosen = backend or os.environ.get(ENV_TEST_BACKEND) or None
    if chosen is None:
        chosen = "dsn" if os.environ.get(ENV_TEST_DSN) else "ephemeral"
    chosen = chosen.strip().lower()
    if chosen not in BACKENDS:
        raise HarnessError(f"unknown test backend {chosen!r}; expected one of {BACKENDS}")
    return chosen


@contextlib.contextmanager
def provision_server(
    backend: str | None = None, *, dbname: str = "pgdispatch"
) -> Iterator[PgServer]:
    """Provide a PostgreSQL server with pg_cron for the duration of the ``with`` block.

    *dbname* applies to the ephemeral and docker backends; with ``dsn`` the database
    is the DSN's. Raises :class:`~.errors.BackendUnavailable` when the chosen backend
    cannot run here, :class:`~.errors.HarnessError` (or a subclass) for other problems.
    """
    chosen = resolve_backend(backend)
    if chosen == "dsn":
        server = server_from_env()
        if server is None:
            raise HarnessError(f"the dsn backend needs ${ENV_TEST_DSN} (a libpq DSN)")
        yield server
    elif chosen == "docker":
        from sa_pgdispatch.testing.containers import DockerPostgres

        with DockerPostgres(dbname=dbname) as container:
            yield container
    else:
        with EphemeralPostgres(dbname=dbname) as ephemeral:
            yield ephemeral
