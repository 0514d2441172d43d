"""Database URLs: the one rule the ``sa-pgdispatch`` command and the Alembic template follow.

* ``postgresql://`` and ``postgres://`` (the Heroku / Supabase spelling) are read as
  ``postgresql+psycopg://``: psycopg 3, the driver sa_pgdispatch uses;
* ``postgresql+psycopg://`` (and ``postgres+psycopg://``, ``postgresql+psycopg_async://``,
  psycopg 3 as well) are kept, as ``postgresql+psycopg://``;
* any other driver (``psycopg2``, ``asyncpg``, ``pg8000``, ...) and any other database
  are refused with :class:`UrlError`, whose message says what is needed and how to write
  the URL (the password hidden).

See docs/cli.md and docs/alembic.md.
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from .errors import UrlError

__all__ = ["CRON_URL_ENV_VAR", "DRIVERNAME", "UrlError", "normalize_url"]

DRIVERNAME = "postgresql+psycopg"
"""What every accepted URL becomes."""

CRON_URL_ENV_VAR = "SA_PGDISPATCH_CRON_URL"
"""The environment variable the CLI and the Alembic template read pg_cron's database URL from."""

_BACKENDS = ("postgresql", "postgres")
_PSYCOPG3 = ("", "psycopg", "psycopg_async")
_EXAMPLE = "postgresql://user:password@host/dbname"


def normalize_url(raw: str | URL) -> URL:
    """``raw`` as a ``postgresql+psycopg://`` URL, or :class:`UrlError`."""
    try:
        url = raw if isinstance(raw, URL) else make_url(raw)
    except (sa_exc.ArgumentError, ValueError) as exc:
        raise UrlError(f"invalid database URL: {exc} (expected e.g. {_EXAMPLE})") from None
    backend, _, driver = url.drivername.partition("+")
    if backend not in _BACKENDS:
        raise UrlError(
            f"the database URL is for {backend!r}: sa_pgdispatch and pgdispatch need "
            f"PostgreSQL; write it as {_EXAMPLE}"
        )
    fixed = url.set(drivername=DRIVERNAME)
    if driver not in _PSYCOPG3:
        raise UrlError(
            f"the database URL names the {driver!r} driver: sa_pgdispatch needs psycopg 3; "
            f"write it as {fixed.render_as_string(hide_password=True)} (or with "
            "postgresql:// or postgres://, which are read as psycopg 3)"
        )
    return fixed
