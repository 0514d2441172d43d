"""Errors raised by the sa_pgdispatch test harness (defined in :mod:`sa_pgdispatch.errors`:
a :class:`HarnessError` is a :class:`~sa_pgdispatch.errors.PgDispatchError`)."""

from __future__ import annotations

from ..errors import BackendUnavailable, HarnessError, PgCronNotFound, PostgresNotFound

__all__ = ["BackendUnavailable", "HarnessError", "PgCronNotFound", "PostgresNotFound"]
