"""The exceptions of sa_pgdispatch: every one it raises on purpose, in one tree.

Every exception raised on purpose by the job API, the SQLAlchemy and Alembic
integrations, the CLI and the test helpers is a :class:`PgDispatchError`; some are also
a built-in or SQLAlchemy/Alembic exception (in parentheses), so that code catching those
keeps working. Each class is defined here (but ``PgdispatchMigrationError`` and
``TemplateError``, in :mod:`sa_pgdispatch.alembic`, which imports Alembic) and importable
from the module that raises it too::

    PgDispatchError
    ├── NotInstalled            pgdispatch is not installed in this database
    │   └── PgDispatchNotInstalledError  triggers: pgdispatch.trigger() is missing
    │                           (sqlalchemy.exc.InvalidRequestError)
    ├── PermissionDenied        the connected role may not use pgdispatch (grant_usage)
    ├── JobNotFound             no such job, or it belongs to another role (LookupError)
    ├── JobNotFinished          the job is still queued or running (result() without wait)
    ├── JobTimeout              wait() gave up; carries the job as last seen (TimeoutError)
    ├── JobFailed               the job ended in state failed; carries its error
    ├── JobCancelled            the job ended in state cancelled
    ├── WorkerError             a role's pg_cron workers cannot be started or stopped
    ├── DrainError              testing.drain() cannot run on this connection
    ├── InstallError            install: cannot install, upgrade or uninstall (RuntimeError)
    │   └── alembic.PgdispatchMigrationError  the same, in a migration
    │                           (alembic.util.CommandError)
    ├── ResourceNotFound        the package's SQL scripts or template are missing
    │                           (FileNotFoundError)
    ├── DispatchRenderError     statements: not renderable as safe SQL (ValueError)
    ├── DispatchTriggerError    triggers: an invalid DispatchTrigger
    │   │                       (sqlalchemy.exc.ArgumentError)
    │   └── IntervalOptionError a delay/timeout pgdispatch.trigger() refuses (ValueError)
    ├── DispatchTriggerOpError  alembic: a trigger operation that cannot be built,
    │                           reversed or run (ValueError)
    ├── UrlError                urls: not PostgreSQL through psycopg 3 (ValueError)
    ├── UsageError              cli: a command line that cannot work (exit 2)
    ├── alembic.TemplateError   the project template cannot be used as asked
    │                           (alembic.util.CommandError)
    ├── ArgumentError           an argument value a function cannot take (ValueError)
    ├── ArgumentTypeError       an argument type a function cannot take (TypeError)
    ├── UnexpectedStateError    something the package relies on did not hold
    │                           (RuntimeError)
    └── HarnessError            testing: the test server cannot be found, set up or
        │                       used (RuntimeError)
        ├── PostgresNotFound    no PostgreSQL server binaries
        ├── PgCronNotFound      a PostgreSQL without pg_cron
        └── BackendUnavailable  the test backend cannot run here (the plugin skips)

Database errors that are not about pgdispatch (a lost connection, a syntax error in
your own SQL) are left as SQLAlchemy or psycopg raise them.

This module imports nothing from the rest of the package (``Job`` is only named for
type checkers), so that every other module can import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import exc as sa_exc

if TYPE_CHECKING:
    from .jobs import Job

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "BackendUnavailable",
    "DispatchRenderError",
    "DispatchTriggerError",
    "DispatchTriggerOpError",
    "DrainError",
    "HarnessError",
    "InstallError",
    "IntervalOptionError",
    "JobCancelled",
    "JobFailed",
    "JobNotFinished",
    "JobNotFound",
    "JobTimeout",
    "NotInstalled",
    "PermissionDenied",
    "PgCronNotFound",
    "PgDispatchError",
    "PgDispatchNotInstalledError",
    "PostgresNotFound",
    "ResourceNotFound",
    "UnexpectedStateError",
    "UrlError",
    "UsageError",
    "WorkerError",
]


class PgDispatchError(Exception):
    """Base class of every sa_pgdispatch error."""


class NotInstalled(PgDispatchError):
    """pgdispatch (the ``pgdispatch`` schema) is not installed in the connected database."""


class PgDispatchNotInstalledError(NotInstalled, sa_exc.InvalidRequestError):
    """pgdispatch is not installed in the database (``pgdispatch.trigger()`` is missing):
    raised before dispatch triggers are created. A :class:`NotInstalled`, and a
    SQLAlchemy ``InvalidRequestError`` as it has always been."""


class PermissionDenied(PgDispatchError):
    """The connected role has no usage of pgdispatch (see ``pgdispatch.grant_usage``)."""


class JobNotFound(PgDispatchError, LookupError):
    """No job with this id is visible to the connected role.

    Jobs are private to the role that dispatched them (administrators see all), and
    finished jobs are pruned after ``pgdispatch.settings.retention``.
    """

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        super().__init__(f"pgdispatch job {job_id} does not exist or belongs to another role")


class _JobError(PgDispatchError):
    """An error about one job, carrying the job as last read."""

    def __init__(self, job: Job, message: str) -> None:
        self.job = job
        super().__init__(message)

    @property
    def job_id(self) -> int:
        return self.job.id


class JobNotFinished(_JobError):
    """The job is still queued or running."""

    def __init__(self, job: Job) -> None:
        super().__init__(job, f"pgdispatch job {job.id} is {job.state.value}, not finished")


class JobTimeout(_JobError, TimeoutError):
    """:func:`~sa_pgdispatch.jobs.wait` gave up before the job finished."""

    def __init__(self, job: Job, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(
            job, f"pgdispatch job {job.id} is still {job.state.value} after {timeout:g} s"
        )


class JobFailed(_JobError):
    """The job ended in state ``failed``: its last attempt raised an error.

    ``sqlstate``, ``message``, ``detail``, ``hint`` and ``context`` are those of the
    PostgreSQL error the command raised (``job.error``); ``attempt`` is the attempt
    that raised it.
    """

    def __init__(self, job: Job) -> None:
        err = job.error or {}
        self.sqlstate: str | None = _str(err.get("sqlstate"))
        self.message: str = _str(err.get("message")) or "unknown error"
        self.detail: str | None = _str(err.get("detail"))
        self.hint: str | None = _str(err.get("hint"))
        self.context: str | None = _str(err.get("context"))
        attempt = err.get("attempt")
        self.attempt: int | None = attempt if isinstance(attempt, int) else None
        text = f"pgdispatch job {job.id} failed"
        if self.sqlstate:
            text += f" [{self.sqlstate}]"
        text += f": {self.message}"
        if self.detail:
            text += f" (detail: {self.detail})"
        if self.hint:
            text += f" (hint: {self.hint})"
        super().__init__(job, text)


class JobCancelled(_JobError):
    """The job ended in state ``cancelled`` (``pgdispatch.cancel``) before it succeeded."""

    def __init__(self, job: Job) -> None:
        super().__init__(job, f"pgdispatch job {job.id} was cancelled")


class WorkerError(PgDispatchError):
    """A role's pg_cron workers cannot be started or stopped as asked (pg_cron's database
    unreachable, a missing grant on pg_cron's functions, no room for background workers)."""


class DrainError(PgDispatchError):
    """:func:`sa_pgdispatch.testing.drain` cannot run jobs on the given connection."""


class InstallError(PgDispatchError, RuntimeError):
    """pgdispatch cannot be installed, upgraded or uninstalled as asked."""


class ResourceNotFound(PgDispatchError, FileNotFoundError):
    """A resource folder is neither in the installed package nor in the source tree."""


class DispatchRenderError(PgDispatchError, ValueError):
    """A statement or value cannot be rendered as self-contained SQL safely."""


class DispatchTriggerError(PgDispatchError, sa_exc.ArgumentError):
    """A dispatch trigger definition is invalid."""


class IntervalOptionError(DispatchTriggerError, ValueError):
    """A ``delay`` / ``timeout`` that ``pgdispatch.trigger()`` would refuse each time the
    trigger fires: not an interval, a negative delay, a timeout that is not positive.
    ``option`` and ``value`` are the option's name and value as given."""

    def __init__(self, option: str, value: object, message: str) -> None:
        self.option = option
        self.value = value
        super().__init__(message)


class DispatchTriggerOpError(PgDispatchError, ValueError):
    """A pgdispatch migration operation cannot be built, reversed or run as asked."""


class UrlError(PgDispatchError, ValueError):
    """A database URL sa_pgdispatch cannot use: not a URL, not PostgreSQL, or another
    driver than psycopg 3."""


class UsageError(PgDispatchError):
    """A command line that cannot work (exit 2)."""


class ArgumentError(PgDispatchError, ValueError):
    """An argument has a value the function cannot take (a limit below 1, a bad name)."""


class ArgumentTypeError(PgDispatchError, TypeError):
    """An argument is of a type the function cannot take."""


class UnexpectedStateError(PgDispatchError, RuntimeError):
    """Something the package relies on did not hold (an unexpected server answer or file)."""


class HarnessError(PgDispatchError, RuntimeError):
    """The test PostgreSQL server could not be found, set up, started or used."""


class PostgresNotFound(HarnessError):
    """No PostgreSQL server binaries (postgres, initdb, pg_ctl) were found."""


class PgCronNotFound(HarnessError):
    """The PostgreSQL installation found has no pg_cron extension."""


class BackendUnavailable(HarnessError):
    """The selected backend cannot run here (for example: no Docker engine answers).

    The pytest plugin turns this into a skip, with the message as the reason.
    """


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
