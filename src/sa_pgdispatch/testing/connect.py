"""How a test server is reached: the :class:`PgServer` protocol every backend follows,
and the connection-string helpers they share (:class:`ConninfoMixin`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable
from urllib.parse import quote, urlencode

import psycopg
from psycopg import conninfo

__all__ = ["ConninfoMixin", "PgServer", "build_uri", "redacted"]


@runtime_checkable
class PgServer(Protocol):
    """What every backend provides: where the server is and how to reach it."""

    @property
    def dsn(self) -> str:
        """libpq connection string (URI) for the superuser and the pg_cron database."""

    @property
    def url(self) -> str:
        """SQLAlchemy URL (``postgresql+psycopg://...``) equivalent to :attr:`dsn`."""

    @property
    def host(self) -> str:
        """Host name or Unix socket directory."""

    @property
    def port(self) -> int:
        """Port number."""

    @property
    def dbname(self) -> str:
        """The database pg_cron runs in (``cron.database_name``)."""

    @property
    def superuser(self) -> str:
        """The role of :attr:`dsn`."""

    def connect_dsn(
        self, user: str | None = None, dbname: str | None = None, password: str | None = None
    ) -> str:
        """libpq URI for another role and/or database on this server."""

    def connect_url(
        self, user: str | None = None, dbname: str | None = None, password: str | None = None
    ) -> str:
        """SQLAlchemy URL for another role and/or database on this server."""


def build_uri(scheme: str, params: Mapping[str, str]) -> str:
    """A libpq/SQLAlchemy URI with host and port as query parameters.

    Putting ``host`` in the query lets it be a Unix socket directory; both libpq and
    SQLAlchemy's psycopg dialect accept that form.
    """
    user = params.get("user", "")
    password = params.get("password")
    userinfo = quote(user, safe="")
    if password is not None:
        userinfo += ":" + quote(password, safe="")
    dbname = quote(params.get("dbname", ""), safe="")
    query = {k: v for k, v in params.items() if k not in ("user", "password", "dbname")}
    qs = urlencode(query, safe="/", quote_via=quote)
    authority = f"{userinfo}@" if userinfo else ""
    return f"{scheme}://{authority}/{dbname}" + (f"?{qs}" if qs else "")


class ConninfoMixin:
    """Connection helpers shared by the backends (:class:`~.ephemeral.EphemeralPostgres`,
    :class:`~.existing.ExistingServer`,
    :class:`~sa_pgdispatch.testing.containers.DockerPostgres`); subclasses provide
    ``_params()``."""

    def _params(self) -> dict[str, str]:
        raise NotImplementedError

    def connect_dsn(
        self, user: str | None = None, dbname: str | None = None, password: str | None = None
    ) -> str:
        params = self._params()
        if user is not None and user != params.get("user"):
            params["user"] = user
            params.pop("password", None)
        if dbname is not None:
            params["dbname"] = dbname
        if password is not None:
            params["password"] = password
        return build_uri("postgresql", params)

    def connect_url(
        self, user: str | None = None, dbname: str | None = None, password: str | None = None
    ) -> str:
        dsn = self.connect_dsn(user=user, dbname=dbname, password=password)
        return "postgresql+psycopg" + dsn[len("postgresql") :]

    @property
    def dsn(self) -> str:
        return self.connect_dsn()

    @property
    def url(self) -> str:
        return self.connect_url()


def redacted(dsn: str) -> str:
    """*dsn* with its password (if any) replaced, for messages."""
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<invalid DSN>"
    if params.get("password") is None:
        return dsn
    params["password"] = "***"
    return build_uri("postgresql", {k: str(v) for k, v in params.items() if v is not None})
