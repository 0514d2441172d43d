"""The job API for asyncio: the functions of :mod:`sa_pgdispatch.jobs`, awaitable, over
``AsyncConnection``, ``AsyncSession`` or ``AsyncEngine`` (``postgresql+psycopg://``
works for both sync and async engines; ``postgresql+asyncpg://`` works too)::

    from sa_pgdispatch.jobs import aio as jobs

    job = await jobs.wait(conn, job_id, timeout=10)
    rows = await jobs.result(conn, job_id)

Same semantics, errors and polling rules as the sync API (see docs/python-api.md).
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, TypeAlias

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from ..errors import ArgumentTypeError, JobNotFinished, JobNotFound, JobTimeout
from . import _model as m
from ._model import Job, JobState, JobStats

__all__ = [
    "AsyncConnectable",
    "Job",
    "JobState",
    "JobStats",
    "cancel",
    "get",
    "list",
    "list_jobs",
    "result",
    "stats",
    "wait",
]

AsyncConnectable: TypeAlias = "AsyncConnection | AsyncSession | AsyncEngine"

DEFAULT_TIMEOUT = 30.0
DEFAULT_POLL_MAX = 0.5


@asynccontextmanager
async def _using(
    conn: AsyncConnectable, *, write: bool = False
) -> AsyncIterator[AsyncConnection | AsyncSession]:
    if isinstance(conn, AsyncEngine):
        async with conn.begin() if write else conn.connect() as c:
            yield c
    elif isinstance(conn, (AsyncConnection, AsyncSession)):
        yield conn
    else:
        raise ArgumentTypeError(
            f"expected a SQLAlchemy AsyncConnection, AsyncSession or AsyncEngine, got {conn!r}"
        )


async def _rows(
    conn: AsyncConnectable,
    stmt: sa.TextClause,
    params: dict[str, Any],
    *,
    job_id: int | None = None,
    write: bool = False,
) -> builtins.list[dict[str, Any]]:
    try:
        async with _using(conn, write=write) as c:
            return m.as_dicts((await c.execute(stmt, params)).mappings().all())
    except sa_exc.DBAPIError as exc:
        m.raise_translated(exc, job_id)


async def get(conn: AsyncConnectable, job_id: int) -> Job:
    """The job ``job_id``; raises :class:`JobNotFound`. See :func:`sa_pgdispatch.jobs.get`."""
    rows = await _rows(conn, m.GET, {"id": job_id})
    if not rows:
        raise JobNotFound(job_id)
    return Job.from_row(rows[0])


async def list_jobs(
    conn: AsyncConnectable,
    *,
    state: JobState | str | Iterable[JobState | str] | None = None,
    limit: int = 50,
) -> builtins.list[Job]:
    """The most recent jobs, see :func:`sa_pgdispatch.jobs.list_jobs`."""
    stmt, params = m.list_statement(state, limit)
    return [Job.from_row(r) for r in await _rows(conn, stmt, params)]


async def cancel(conn: AsyncConnectable, job_id: int) -> bool:
    """Cancel a job, see :func:`sa_pgdispatch.jobs.cancel` (commit afterwards unless
    ``conn`` is an ``AsyncEngine``)."""
    rows = await _rows(conn, m.CANCEL, {"id": job_id}, job_id=job_id, write=True)
    return bool(rows[0]["cancel"]) if rows else False


async def stats(conn: AsyncConnectable, *, window: timedelta = timedelta(minutes=5)) -> JobStats:
    """Job statistics, see :func:`sa_pgdispatch.jobs.stats`."""
    rows = await _rows(conn, m.STATS, {"window": window})
    return m.stats_from_row(rows[0] if rows else None, window)


async def _check_can_poll(conn: AsyncConnection | AsyncSession, job: Job) -> None:
    isolation = str((await conn.execute(m.ISOLATION)).scalar_one())
    if isolation in ("repeatable read", "serializable"):
        raise m.not_polling_error(isolation)
    if job.state is not JobState.QUEUED:
        return
    if (await conn.execute(m.UNCOMMITTED, {"id": job.id})).scalar():
        raise m.uncommitted_error(job.id)


def _poll_target(conn: AsyncConnectable) -> AsyncConnectable:
    # A session outside a transaction polls through its engine (a connection per poll),
    # never by rolling back the session (that would expire its objects).
    if isinstance(conn, AsyncSession) and not conn.in_transaction():
        bind = conn.bind
        if isinstance(bind, (AsyncEngine, AsyncConnection)):
            return bind
        sync_bind = conn.sync_session.get_bind()
        if isinstance(sync_bind, sa.Engine):
            return AsyncEngine(sync_bind)
    return conn


async def wait(
    conn: AsyncConnectable,
    job_id: int,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    poll_max: float = DEFAULT_POLL_MAX,
    raise_on_failure: bool = False,
) -> Job:
    """Wait until the job finished, see :func:`sa_pgdispatch.jobs.wait`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    backoff = m.Backoff(poll_max)
    target = _poll_target(conn)
    own_txn = isinstance(target, AsyncConnection) and not target.in_transaction()

    async def poll() -> Job:
        job = await get(target, job_id)
        if own_txn and isinstance(target, AsyncConnection) and target.in_transaction():
            await target.rollback()
        return job

    job = await get(target, job_id)
    if not job.finished and not own_txn and isinstance(target, (AsyncConnection, AsyncSession)):
        await _check_can_poll(target, job)
    if own_txn and isinstance(target, AsyncConnection) and target.in_transaction():
        await target.rollback()
    while not job.finished:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise JobTimeout(job, timeout or 0.0)
        await asyncio.sleep(backoff.step(remaining))
        job = await poll()
    if raise_on_failure:
        m.raise_outcome(job)
    return job


async def result(
    conn: AsyncConnectable, job_id: int, *, timeout: float | None = 0
) -> builtins.list[dict[str, Any]]:
    """The captured rows of a succeeded job, see :func:`sa_pgdispatch.jobs.result`."""
    if timeout == 0:
        job = await get(conn, job_id)
        if not job.finished:
            raise JobNotFinished(job)
    else:
        job = await wait(conn, job_id, timeout=timeout)
    return m.rows_of(job)


list = list_jobs
"""Alias of :func:`list_jobs`."""
