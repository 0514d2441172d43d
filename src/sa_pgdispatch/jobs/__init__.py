"""The job API: look at, wait for, fetch the results of, and cancel dispatched jobs.

Every function takes a SQLAlchemy ``Connection``, ORM ``Session`` or ``Engine``
(:mod:`sa_pgdispatch.jobs.aio` has the same functions for ``AsyncConnection``,
``AsyncSession`` and ``AsyncEngine``)::

    from sa_pgdispatch import jobs

    job_id = conn.execute(select(func.pgdispatch.dispatch("SELECT 1", capture=True))).scalar_one()
    conn.commit()                       # workers only see committed jobs
    job = jobs.wait(conn, job_id, timeout=10)
    rows = jobs.result(conn, job_id)    # [{'?column?': 1}]

Reads run in the connection's current transaction (a ``Connection``/``Session``
begins one as SQLAlchemy always does); :func:`cancel` writes in it too, so commit
afterwards (an ``Engine`` commits by itself). See docs/python-api.md.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeAlias

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from ..errors import ArgumentTypeError, JobNotFinished, JobNotFound, JobTimeout
from . import _model as m
from ._model import Job, JobState, JobStats

__all__ = [
    "Job",
    "JobState",
    "JobStats",
    "SyncConnectable",
    "cancel",
    "get",
    "list",
    "list_jobs",
    "result",
    "stats",
    "wait",
]

SyncConnectable: TypeAlias = "sa.Connection | Session | sa.Engine"

DEFAULT_TIMEOUT = 30.0
DEFAULT_POLL_MAX = 0.5


@contextmanager
def _using(conn: SyncConnectable, *, write: bool = False) -> Iterator[sa.Connection | Session]:
    if isinstance(conn, sa.Engine):
        with (conn.begin() if write else conn.connect()) as c:
            yield c
    elif isinstance(conn, (sa.Connection, Session)):
        yield conn
    else:
        raise ArgumentTypeError(
            f"expected a SQLAlchemy Connection, Session or Engine, got {conn!r}"
        )


def _rows(
    conn: SyncConnectable,
    stmt: sa.TextClause,
    params: dict[str, Any],
    *,
    job_id: int | None = None,
    write: bool = False,
) -> builtins.list[dict[str, Any]]:
    try:
        with _using(conn, write=write) as c:
            return m.as_dicts(c.execute(stmt, params).mappings().all())
    except sa_exc.DBAPIError as exc:
        m.raise_translated(exc, job_id)


def get(conn: SyncConnectable, job_id: int) -> Job:
    """The job ``job_id`` as the connected role sees it; raises :class:`JobNotFound`."""
    rows = _rows(conn, m.GET, {"id": job_id})
    if not rows:
        raise JobNotFound(job_id)
    return Job.from_row(rows[0])


def list_jobs(
    conn: SyncConnectable,
    *,
    state: JobState | str | Iterable[JobState | str] | None = None,
    limit: int = 50,
) -> builtins.list[Job]:
    """The most recent jobs (highest id first), optionally only those in ``state``
    (one state or several)."""
    stmt, params = m.list_statement(state, limit)
    return [Job.from_row(r) for r in _rows(conn, stmt, params)]


def cancel(conn: SyncConnectable, job_id: int) -> bool:
    """Cancel a job: ``True`` when it was queued (now cancelled) or running (its
    cancellation is requested: the role's watchdog interrupts it within about 0.2 s
    once this transaction commits); ``False`` when it had already finished.
    Raises :class:`JobNotFound` for unknown jobs and other roles' jobs.

    On a ``Connection``/``Session`` the cancellation is part of the current
    transaction: commit it. An ``Engine`` commits at once.
    """
    rows = _rows(conn, m.CANCEL, {"id": job_id}, job_id=job_id, write=True)
    return bool(rows[0]["cancel"]) if rows else False


def stats(conn: SyncConnectable, *, window: timedelta = timedelta(minutes=5)) -> JobStats:
    """Counts per state, the oldest due job's age, throughput over the last minute and
    p50/p95 run time and start latency over ``window`` (see :class:`JobStats`)."""
    rows = _rows(conn, m.STATS, {"window": window})
    return m.stats_from_row(rows[0] if rows else None, window)


def _check_can_poll(conn: sa.Connection | Session, job: Job) -> None:
    isolation = str(conn.execute(m.ISOLATION).scalar_one())
    if isolation in ("repeatable read", "serializable"):
        raise m.not_polling_error(isolation)
    if job.state is JobState.QUEUED and conn.execute(m.UNCOMMITTED, {"id": job.id}).scalar():
        raise m.uncommitted_error(job.id)


@contextmanager
def _poller(conn: SyncConnectable) -> Iterator[SyncConnectable]:
    """Where each poll of :func:`wait` runs, so that each one sees a fresh snapshot.

    * Engine: a pooled connection per poll.
    * Session outside a transaction: its bind (an Engine), a connection per poll.
    * Connection outside a transaction: the transaction each poll begins is rolled
      back after it, leaving the connection as it was.
    * Connection/Session inside a transaction: polls run in it; READ COMMITTED takes a
      new snapshot per statement, REPEATABLE READ/SERIALIZABLE raise (see wait()).
    """
    if isinstance(conn, Session) and not conn.in_transaction():
        yield conn.get_bind()
    else:
        yield conn


def _poll(conn: SyncConnectable, job_id: int, own_txn: bool) -> Job:
    job = get(conn, job_id)
    if own_txn and isinstance(conn, sa.Connection) and conn.in_transaction():
        conn.rollback()
    return job


def wait(
    conn: SyncConnectable,
    job_id: int,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    poll_max: float = DEFAULT_POLL_MAX,
    raise_on_failure: bool = False,
) -> Job:
    """Wait until the job finished and return it (in any final state).

    Polls with backoff (10 ms, then x1.5 up to ``poll_max`` seconds), each poll in a
    fresh snapshot. Raises :class:`JobTimeout` (naming the job and its last state)
    after ``timeout`` seconds (``None``: wait forever), :class:`JobNotFound`, and
    :class:`PgDispatchError` right away when waiting cannot work: a REPEATABLE READ
    or SERIALIZABLE transaction (its snapshot never changes), or a job dispatched by
    this very transaction that has not committed. With ``raise_on_failure`` a failed
    job raises :class:`JobFailed` and a cancelled one :class:`JobCancelled`.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    backoff = m.Backoff(poll_max)
    own_txn = isinstance(conn, sa.Connection) and not conn.in_transaction()
    with _poller(conn) as target:
        job = get(target, job_id)
        if not job.finished and not own_txn and isinstance(target, (sa.Connection, Session)):
            _check_can_poll(target, job)
        if own_txn and isinstance(target, sa.Connection) and target.in_transaction():
            target.rollback()
        while not job.finished:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise JobTimeout(job, timeout or 0.0)
            time.sleep(backoff.step(remaining))
            job = _poll(target, job_id, own_txn)
    if raise_on_failure:
        m.raise_outcome(job)
    return job


def result(
    conn: SyncConnectable, job_id: int, *, timeout: float | None = 0
) -> builtins.list[dict[str, Any]]:
    """The rows a succeeded job captured (``capture => true``, e.g. ``pgdispatch.exec``),
    as a list of dicts; ``[]`` for a job that captured nothing.

    ``timeout`` (seconds, ``None`` = forever) waits for the job first; with the default
    0 an unfinished job raises :class:`JobNotFinished`. A failed job raises
    :class:`JobFailed` (with ``sqlstate``, ``message``, ``detail``, ``hint``), a
    cancelled one :class:`JobCancelled`.
    """
    if timeout == 0:
        job = get(conn, job_id)
        if not job.finished:
            raise JobNotFinished(job)
    else:
        job = wait(conn, job_id, timeout=timeout)
    return m.rows_of(job)


list = list_jobs
"""Alias of :func:`list_jobs` (``jobs.list(conn, state="failed")``)."""
