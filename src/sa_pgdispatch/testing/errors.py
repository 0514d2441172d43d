"""Errors raised by the sa_pgdispatch test harness."""

from __future__ import annotations

__all__ = ["BackendUnavailable", "HarnessError", "PgCronNotFound", "PostgresNotFound"]


class HarnessError(RuntimeError):
    """The test PostgreSQL server could not be found, set up, started or used."""


class PostgresNotFound(HarnessError):
    """No PostgreSQL server binaries (postgres, initdb, pg_ctl) were found."""


class PgCronNotFound(HarnessError):
    """The PostgreSQL installation found has no pg_cron extension."""


class BackendUnavailable(HarnessError):
    """The selected backend cannot run here (for example: no Docker engine answers).

    The pytest plugin turns this into a skip, with the message as the reason.
    """
