"""The exceptions of sa_pgdispatch's Python API.

Every exception raised on purpose by the job API, the CLI and the test helpers is a
:class:`PgDispatchError`::

    PgDispatchError
    ├── NotInstalled          pgdispatch is not installed in this database
    ├── PermissionDenied      the connected role may not use pgdispatch (grant_usage)
    ├── JobNotFound           no such job, or it belongs to another role
    ├── JobNotFinished        the job is still queued or running (result() without wait)
    ├── JobTimeout            wait() gave up; carries the job as last seen
    ├── JobFailed             the job ended in state failed; carries its error
    ├── JobCancelled          the job ended in state cancelled
    ├── DrainError            drain() cannot run on this connection
    ├── triggers.IntervalOptionError  a trigger's delay/timeout pgdispatch.trigger() refuses
    └── urls.UrlError         a database URL that is not PostgreSQL through psycopg 3

Database errors that are not about pgdispatch (a lost connection, a syntax error in
your own SQL) are left as SQLAlchemy raises them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .jobs import Job

__all__ = [
    "DrainError",
    "JobCancelled",
    "JobFailed",
    "JobNotFinished",
    "JobNotFound",
    "JobTimeout",
    "NotInstalled",
    "PermissionDenied",
    "PgDispatchError",
    "WorkerError",
]


class PgDispatchError(Exception):
    """Base class of every sa_pgdispatch error."""


class NotInstalled(PgDispatchError):
    """pgdispatch (the ``pgdispatch`` schema) is not installed in the connected database."""


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


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
