"""A server that already runs, given by ``$SA_PGDISPATCH_TEST_DSN``
(:class:`ExistingServer`, :func:`server_from_env`)."""

from __future__ import annotations

import os
import pwd

import psycopg
from psycopg import conninfo

from sa_pgdispatch.testing.connect import ConninfoMixin
from sa_pgdispatch.testing.errors import HarnessError
from sa_pgdispatch.testing.pg_cron import check_pg_cron

__all__ = ["ENV_TEST_DSN", "ExistingServer", "server_from_env"]

#: Environment variable with a libpq DSN of an existing server to test against.
ENV_TEST_DSN = "SA_PGDISPATCH_TEST_DSN"


class ExistingServer(ConninfoMixin):
    """A server that already runs, given by a libpq DSN (URI or ``key=value`` form).

    The DSN's database must be pg_cron's database (``cron.database_name``) and the
    server must preload pg_cron. :meth:`validate` checks that (and creates the
    extension when it is missing and the role may); it is called by
    :func:`server_from_env`. It cannot be stopped or restarted by the harness.
    """

    def __init__(self, dsn: str) -> None:
        try:
            parsed = conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise HarnessError(f"invalid DSN {dsn!r}: {exc}") from exc
        self._given_dsn = dsn
        self._parsed: dict[str, str] = {k: str(v) for k, v in parsed.items() if v is not None}
        self.pg_cron_version: str | None = None

    def _params(self) -> dict[str, str]:
        return dict(self._parsed)

    @property
    def dsn(self) -> str:
        return self._given_dsn

    @property
    def host(self) -> str:
        return self._parsed.get("host") or os.environ.get("PGHOST", "localhost")

    @property
    def port(self) -> int:
        return int(self._parsed.get("port") or os.environ.get("PGPORT", "5432"))

    @property
    def dbname(self) -> str:
        return self._parsed.get("dbname") or self.superuser

    @property
    def superuser(self) -> str:
        return self._parsed.get("user") or os.environ.get("PGUSER") or pwd.getpwuid(os.getuid())[0]

    def validate(self, *, create_extension: bool = True) -> ExistingServer:
        """Check pg_cron (see the class docstring); returns ``self``."""
        self.pg_cron_version = check_pg_cron(self._given_dsn, create=create_extension)
        return self

    def __repr__(self) -> str:
        return f"ExistingServer(host={self.host!r}, port={self.port}, dbname={self.dbname!r})"


def server_from_env() -> ExistingServer | None:
    """The validated server of ``$SA_PGDISPATCH_TEST_DSN``, or ``None`` when it is unset."""
    dsn = os.environ.get(ENV_TEST_DSN)
    if not dsn:
        return None
    return ExistingServer(dsn).validate()
