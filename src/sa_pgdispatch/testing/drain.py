"""Run dispatched jobs now, in the calling process: deterministic tests without pg_cron.

:func:`drain` calls ``CALL pgdispatch.work(drain => true)`` on an autocommit
connection: every due job of the *connected* role runs in that session, exactly as a
pg_cron worker of that role would run it (same subtransaction per job, same history,
same retries, same timeouts), then it returns how many jobs finished. Jobs become
visible when the transaction that dispatched them commits, so commit before draining.

Timeouts and cancellations: on a server, the role's pg_cron watchdog
(``pgdispatch.watchdog()``) interrupts a job past its timeout, or one cancelled while it
runs, and ``work()`` records it (``job exceeded its timeout of ...``, ``job cancelled
while running``). While a drain runs, that same watchdog procedure runs on a second
connection of the same role (:class:`_Watchdog`), so that a drained job times out and
is cancelled exactly as on a worker. (When the role's own pg_cron watchdog is running,
it holds the watchdog lock and does the work; the drain's waits for its turn.)

The ``pgdispatch_drain`` pytest fixture is :func:`drain` bound to the
``pgdispatch_db`` engine (see docs/testing-your-app.md).
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    nullcontext,
    suppress,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

import psycopg
import sqlalchemy as sa
from psycopg import pq
from psycopg.conninfo import make_conninfo

from ..errors import ArgumentError, ArgumentTypeError, DrainError, NotInstalled

if TYPE_CHECKING:  # sqlalchemy.ext.asyncio needs greenlet: imported when used
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["Drainer", "drain", "drain_async"]

DrainTarget: TypeAlias = "sa.Engine | sa.Connection | psycopg.Connection[Any]"
AsyncDrainTarget: TypeAlias = "AsyncEngine | AsyncConnection | psycopg.AsyncConnection[Any]"

# when the drain started, and whether pgdispatch has the watchdog procedure
_START = "SELECT clock_timestamp(), to_regprocedure('pgdispatch.watchdog(interval)') IS NOT NULL"
# One watchdog round: the procedure runs for max_runtime, then the drain's watchdog
# thread calls it again until the drain ends (and cancels the round in progress).
_WATCHDOG = "CALL pgdispatch.watchdog(max_runtime => interval '10 seconds')"
# A round that returns at once found the role's watchdog lock taken (its pg_cron
# watchdog, or another drain's): try again after this long, to take over when it ends.
_WATCHDOG_RETRY = 0.2
# The watchdog's connection copies the drained one's parameters: not a statement_timeout
# they may set (a round lasts 10 s).
_WATCHDOG_SESSION = "SET statement_timeout = 0"
_HAS_MAX_JOBS = (
    "SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
    " WHERE n.nspname = 'pgdispatch' AND p.proname = 'work'"
    " AND 'max_jobs' = ANY (p.proargnames))"
)
_WORK = "CALL pgdispatch.work(drain => true)"
_WORK_MAX = "CALL pgdispatch.work(drain => true, max_jobs => %s)"
# Jobs of this role that reached a final state since the drain started.
_FINISHED = (
    "SELECT count(*) FROM pgdispatch.job_history"
    " WHERE role = session_user AND finished_at >= %s"
)


def _check_max_jobs(max_jobs: int | None) -> None:
    if max_jobs is not None and max_jobs < 1:
        raise ArgumentError(f"max_jobs must be at least 1 (got {max_jobs})")


def _translate(exc: psycopg.Error) -> Exception:
    primary = exc.diag.message_primary or str(exc)
    if exc.sqlstate in ("3F000", "42883", "42P01") and "pgdispatch" in primary:
        return NotInstalled(f"pgdispatch is not installed in this database ({primary})")
    hint = f" ({exc.diag.message_hint})" if exc.diag.message_hint else ""
    return DrainError(f"draining pgdispatch jobs failed: {primary}{hint}")


def _no_max_jobs() -> DrainError:
    return DrainError(
        "max_jobs needs a pgdispatch whose work() procedure takes max_jobs; "
        "the installed one does not (drain without max_jobs, or upgrade pgdispatch)"
    )


def _not_idle(what: str) -> DrainError:
    return DrainError(
        f"drain() needs a connection outside a transaction ({what}): pgdispatch.work() "
        "commits after each batch of jobs, which PostgreSQL refuses inside a transaction "
        "block. Commit first (jobs dispatched by an uncommitted transaction are invisible "
        "to any worker anyway), or pass the Engine."
    )


def _watchdog_conninfo(raw: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> str:
    """How to open another connection as the drained one: same parameters, same role
    (the password is not part of ``info.dsn``)."""
    password = raw.info.password
    if password:
        return make_conninfo(raw.info.dsn, password=password)
    return raw.info.dsn


def _watchdog_unavailable(exc: psycopg.Error) -> DrainError:
    return DrainError(
        "drain() could not open the connection of its watchdog, which interrupts jobs past "
        f"their timeout as the role's pg_cron watchdog does: {exc}"
    )


def _watchdog_failed(exc: BaseException) -> DrainError:
    return DrainError(f"the watchdog of the drain failed, job timeouts were not enforced: {exc}")


class _Watchdog(AbstractContextManager["_Watchdog"]):
    """``pgdispatch.watchdog()`` for the drained role, on a connection of its own in a
    thread, while the drain runs: a job past its timeout (or cancelled while running)
    is interrupted with ``pg_cancel_backend()`` and ``work()`` records it as a worker
    does. Leaving the block cancels the round in progress and closes the connection
    (which releases the watchdog lock); an error of the watchdog itself is raised then
    as a :class:`DrainError` (unless the drain is raising already)."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        try:
            self.conn = psycopg.connect(_watchdog_conninfo(raw), autocommit=True)
            self.conn.execute(_WATCHDOG_SESSION)
        except psycopg.Error as exc:
            raise _watchdog_unavailable(exc) from exc
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="pgdispatch drain watchdog",
                                       daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with self.conn.cursor() as cur:
                while not self.stopping.is_set():
                    began = time.monotonic()
                    cur.execute(_WATCHDOG)
                    if time.monotonic() - began < _WATCHDOG_RETRY:
                        self.stopping.wait(_WATCHDOG_RETRY)
        except psycopg.Error as exc:
            if not self.stopping.is_set():
                self.error = exc

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stopping.set()
        cancel = getattr(self.conn, "cancel_safe", self.conn.cancel)
        deadline = time.monotonic() + 10
        # (repeated: a cancel that arrives between two rounds is lost)
        while self.thread.is_alive() and time.monotonic() < deadline:
            with suppress(psycopg.Error):
                cancel()
            self.thread.join(0.05)
        self.conn.close()
        if self.error is not None and exc_type is None:
            raise _watchdog_failed(self.error) from self.error


class _AsyncWatchdog(AbstractAsyncContextManager["_AsyncWatchdog"]):
    """:class:`_Watchdog` for :func:`drain_async`: an asyncio task on an async
    connection of its own."""

    def __init__(self, raw: psycopg.AsyncConnection[Any]) -> None:
        self.raw = raw
        self.stopping = asyncio.Event()
        self.error: BaseException | None = None

    async def __aenter__(self) -> _AsyncWatchdog:
        try:
            self.conn = await psycopg.AsyncConnection.connect(
                _watchdog_conninfo(self.raw), autocommit=True
            )
            await self.conn.execute(_WATCHDOG_SESSION)
        except psycopg.Error as exc:
            raise _watchdog_unavailable(exc) from exc
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        try:
            async with self.conn.cursor() as cur:
                while not self.stopping.is_set():
                    began = time.monotonic()
                    await cur.execute(_WATCHDOG)
                    if time.monotonic() - began < _WATCHDOG_RETRY:
                        with suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(self.stopping.wait(), _WATCHDOG_RETRY)
        except psycopg.Error as exc:
            if not self.stopping.is_set():
                self.error = exc

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stopping.set()
        deadline = time.monotonic() + 10
        while not self.task.done() and time.monotonic() < deadline:
            with suppress(psycopg.Error):
                if hasattr(self.conn, "cancel_safe"):
                    await self.conn.cancel_safe()
                else:  # psycopg < 3.2
                    self.conn.cancel()
            await asyncio.wait({self.task}, timeout=0.05)
        if not self.task.done():
            self.task.cancel()
        await self.conn.close()
        if self.error is not None and exc_type is None:
            raise _watchdog_failed(self.error) from self.error


def _drain_raw(raw: psycopg.Connection[Any], max_jobs: int | None) -> int:
    if raw.info.transaction_status != pq.TransactionStatus.IDLE:
        raise _not_idle(f"transaction status {raw.info.transaction_status.name}")
    previous = raw.autocommit
    raw.autocommit = True
    try:
        with raw.cursor() as cur:
            started = cur.execute(_START).fetchone()
            assert started is not None
            if max_jobs is not None:
                has = cur.execute(_HAS_MAX_JOBS).fetchone()
                if not (has and has[0]):
                    raise _no_max_jobs()
            watchdog: AbstractContextManager[Any] = (
                _Watchdog(raw) if started[1] else nullcontext()
            )
            with watchdog:
                if max_jobs is None:
                    cur.execute(_WORK)
                else:
                    cur.execute(_WORK_MAX, (max_jobs,))
            row = cur.execute(_FINISHED, (started[0],)).fetchone()
            return int(row[0]) if row else 0
    except psycopg.Error as exc:
        raise _translate(exc) from exc
    finally:
        if not raw.closed and raw.info.transaction_status == pq.TransactionStatus.IDLE:
            raw.autocommit = previous


def drain(conn_or_engine: DrainTarget, *, max_jobs: int | None = None) -> int:
    """Run every due job of the connected role now, in this process; return how many
    jobs finished (succeeded, failed or cancelled) meanwhile.

    ``conn_or_engine``: a SQLAlchemy ``Engine`` (a pooled connection is used), a
    SQLAlchemy ``Connection`` or a psycopg ``Connection`` *outside a transaction*
    (raises :class:`DrainError` otherwise: ``work()`` commits). Jobs run as the
    connection's login role; jobs of other roles are left alone. A job that fails and
    has attempts left is retried after its backoff and is not counted until it
    finishes. The count includes jobs of this role that the role's pg_cron workers
    finished at the same time, if it has any running.

    ``max_jobs`` stops after that many jobs (needs ``work(max_jobs => ...)`` in the
    installed SQL; raises :class:`DrainError` otherwise).

    Job timeouts and cancellations of running jobs are enforced as on a worker: the
    role's watchdog runs on a second connection (same parameters) while the jobs run;
    :class:`DrainError` when it cannot be opened.
    """
    _check_max_jobs(max_jobs)
    if isinstance(conn_or_engine, sa.Engine):
        with conn_or_engine.connect() as conn:
            return drain(conn, max_jobs=max_jobs)
    if isinstance(conn_or_engine, sa.Connection):
        if conn_or_engine.in_transaction():
            raise _not_idle("the SQLAlchemy Connection has begun a transaction")
        raw = conn_or_engine.connection.driver_connection
        if not isinstance(raw, psycopg.Connection):
            raise DrainError("drain() needs a psycopg 3 connection (postgresql+psycopg://)")
        return _drain_raw(raw, max_jobs)
    if isinstance(conn_or_engine, psycopg.Connection):
        return _drain_raw(conn_or_engine, max_jobs)
    raise ArgumentTypeError(
        f"expected an Engine, a Connection or a psycopg Connection, got {conn_or_engine!r}"
    )


async def _drain_raw_async(raw: psycopg.AsyncConnection[Any], max_jobs: int | None) -> int:
    if raw.info.transaction_status != pq.TransactionStatus.IDLE:
        raise _not_idle(f"transaction status {raw.info.transaction_status.name}")
    previous = raw.autocommit
    await raw.set_autocommit(True)
    try:
        async with raw.cursor() as cur:
            started = await (await cur.execute(_START)).fetchone()
            assert started is not None
            if max_jobs is not None:
                has = await (await cur.execute(_HAS_MAX_JOBS)).fetchone()
                if not (has and has[0]):
                    raise _no_max_jobs()
            watchdog: AbstractAsyncContextManager[Any] = (
                _AsyncWatchdog(raw) if started[1] else nullcontext()
            )
            async with watchdog:
                if max_jobs is None:
                    await cur.execute(_WORK)
                else:
                    await cur.execute(_WORK_MAX, (max_jobs,))
            row = await (await cur.execute(_FINISHED, (started[0],))).fetchone()
            return int(row[0]) if row else 0
    except psycopg.Error as exc:
        raise _translate(exc) from exc
    finally:
        if not raw.closed and raw.info.transaction_status == pq.TransactionStatus.IDLE:
            await raw.set_autocommit(previous)


async def drain_async(conn_or_engine: AsyncDrainTarget, *, max_jobs: int | None = None) -> int:
    """:func:`drain` for ``AsyncEngine``, ``AsyncConnection`` or psycopg
    ``AsyncConnection`` (outside a transaction). The jobs run in the database session;
    the event loop is free meanwhile."""
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    _check_max_jobs(max_jobs)
    if isinstance(conn_or_engine, AsyncEngine):
        async with conn_or_engine.connect() as conn:
            return await drain_async(conn, max_jobs=max_jobs)
    if isinstance(conn_or_engine, AsyncConnection):
        if conn_or_engine.in_transaction():
            raise _not_idle("the SQLAlchemy AsyncConnection has begun a transaction")
        raw = (await conn_or_engine.get_raw_connection()).driver_connection
        if not isinstance(raw, psycopg.AsyncConnection):
            raise DrainError("drain_async() needs psycopg 3 (postgresql+psycopg://)")
        return await _drain_raw_async(raw, max_jobs)
    if isinstance(conn_or_engine, psycopg.AsyncConnection):
        return await _drain_raw_async(conn_or_engine, max_jobs)
    raise ArgumentTypeError(
        f"expected an AsyncEngine, an AsyncConnection or a psycopg AsyncConnection, "
        f"got {conn_or_engine!r}"
    )


class Drainer:
    """What the ``pgdispatch_drain`` fixture gives: :func:`drain` with a default target.

    ``pgdispatch_drain()`` drains the jobs of the ``pgdispatch_db`` engine's role (the
    superuser of the test server); ``pgdispatch_drain(engine_of_alice)`` those of
    another role. ``.last`` is the count of the last call, ``.total`` the sum.
    """

    def __init__(self, default: DrainTarget) -> None:
        self.default = default
        self.last = 0
        self.total = 0

    def __call__(self, target: DrainTarget | None = None, *, max_jobs: int | None = None) -> int:
        self.last = drain(self.default if target is None else target, max_jobs=max_jobs)
        self.total += self.last
        return self.last
