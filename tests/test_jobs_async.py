"""The asyncio job API (sa_pgdispatch.jobs.aio) against a real server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from sa_pgdispatch.errors import (
    JobCancelled,
    JobFailed,
    JobNotFinished,
    JobNotFound,
    JobTimeout,
    PermissionDenied,
    PgDispatchError,
)
from sa_pgdispatch.jobs import JobState
from sa_pgdispatch.jobs import aio as jobs
from sa_pgdispatch.testing.drain import drain_async
from sa_pgdispatch.testing.server import PgServer

FAILING = (
    "DO $$ BEGIN RAISE EXCEPTION 'boom' USING ERRCODE = '22012', "
    "DETAIL = 'the detail', HINT = 'the hint'; END $$"
)


@pytest.fixture
async def engine(
    pgdispatch_server: PgServer, pgdispatch_role: Callable[..., str]
) -> AsyncIterator[AsyncEngine]:
    """An async engine of a fresh role whose workers are stopped (jobs run on drain)."""
    role = pgdispatch_role("ajobs")
    eng = create_async_engine(pgdispatch_server.connect_url(user=role))
    async with eng.begin() as conn:
        await conn.execute(text("SELECT pgdispatch.stop()"))
    yield eng
    await eng.dispose()


async def dispatch(engine: AsyncEngine, command: str, **options: object) -> int:
    args = "".join(f", {k} => :{k}" for k in options)
    async with engine.begin() as conn:
        job_id = (
            await conn.execute(
                text(f"SELECT pgdispatch.dispatch(:command{args})"),
                {"command": command, **options},
            )
        ).scalar_one()
    return int(job_id)


async def drain_later(engine: AsyncEngine, delay: float = 0.2) -> int:
    await asyncio.sleep(delay)
    return await drain_async(engine)


async def test_get_wait_result(engine: AsyncEngine) -> None:
    job_id = await dispatch(engine, "SELECT 7 AS n", capture=True)
    async with engine.connect() as conn:
        job = await jobs.get(conn, job_id)
        assert job.state is JobState.QUEUED
        with pytest.raises(JobNotFinished):
            await jobs.result(conn, job_id)
        await conn.rollback()
        worker = asyncio.create_task(drain_later(engine))
        job = await jobs.wait(conn, job_id, timeout=30)
        assert not conn.in_transaction()  # wait() ended the transactions it began
    assert await worker == 1
    assert job.state is JobState.SUCCEEDED
    assert await jobs.result(engine, job_id) == [{"n": 7}]


async def test_wait_with_an_async_session(engine: AsyncEngine) -> None:
    job_id = await dispatch(engine, "SELECT 1")
    worker = asyncio.create_task(drain_later(engine))
    async with AsyncSession(engine) as session:
        job = await jobs.wait(session, job_id, timeout=30)
        assert not session.in_transaction()
    await worker
    assert job.state is JobState.SUCCEEDED


async def test_wait_in_a_session_transaction(engine: AsyncEngine) -> None:
    job_id = await dispatch(engine, "SELECT 1")
    worker = asyncio.create_task(drain_later(engine))
    async with AsyncSession(engine) as session, session.begin():
        job = await jobs.wait(session, job_id, timeout=30)
    await worker
    assert job.state is JobState.SUCCEEDED


async def test_wait_times_out(engine: AsyncEngine) -> None:
    job_id = await dispatch(engine, "SELECT 1")
    started = time.monotonic()
    with pytest.raises(JobTimeout, match=rf"job {job_id} is still queued after 0.2 s") as info:
        await jobs.wait(engine, job_id, timeout=0.2)
    assert time.monotonic() - started >= 0.2
    assert info.value.job.state is JobState.QUEUED


async def test_wait_refuses_repeatable_read_and_uncommitted(engine: AsyncEngine) -> None:
    job_id = await dispatch(engine, "SELECT 1")
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        await conn.execute(text("SELECT 1"))
        with pytest.raises(PgDispatchError, match="REPEATABLE READ"):
            await jobs.wait(conn, job_id, timeout=5)
    async with engine.connect() as conn:
        mine = (await conn.execute(text("SELECT pgdispatch.dispatch('SELECT 1')"))).scalar_one()
        with pytest.raises(PgDispatchError, match="has not committed"):
            await jobs.wait(conn, mine, timeout=5)
        await conn.rollback()


async def test_failed_job(engine: AsyncEngine) -> None:
    job_id = await dispatch(engine, FAILING)
    assert await drain_async(engine) == 1
    with pytest.raises(JobFailed) as info:
        await jobs.result(engine, job_id)
    assert (info.value.sqlstate, info.value.message) == ("22012", "boom")
    assert (info.value.detail, info.value.hint) == ("the detail", "the hint")
    with pytest.raises(JobFailed):
        await jobs.wait(engine, job_id, raise_on_failure=True)


async def test_cancel(engine: AsyncEngine) -> None:
    job_id = await dispatch(engine, "SELECT 1", delay=timedelta(hours=1))
    async with engine.connect() as conn:
        assert await jobs.cancel(conn, job_id) is True
        await conn.commit()
    assert (await jobs.get(engine, job_id)).state is JobState.CANCELLED
    with pytest.raises(JobCancelled):
        await jobs.result(engine, job_id)
    assert await jobs.cancel(engine, job_id) is False
    with pytest.raises(JobNotFound):
        await jobs.cancel(engine, 2_000_000_002)
    with pytest.raises(JobNotFound):
        await jobs.get(engine, 2_000_000_002)


async def test_list_and_stats(engine: AsyncEngine) -> None:
    ok = await dispatch(engine, "SELECT 1")
    bad = await dispatch(engine, FAILING)
    assert await drain_async(engine) == 2
    assert [j.id for j in await jobs.list(engine, limit=10)] == [bad, ok]
    assert [j.id for j in await jobs.list_jobs(engine, state="failed")] == [bad]
    s = await jobs.stats(engine)
    assert s.counts[JobState.SUCCEEDED] == 1
    assert s.counts[JobState.FAILED] == 1
    assert s.finished_last_minute == 2
    assert s.p50_run_time is not None


@pytest.fixture
async def asyncpg_engine(
    pgdispatch_server: PgServer, pgdispatch_role: Callable[..., str]
) -> AsyncIterator[AsyncEngine]:
    """The same as ``engine``, through asyncpg (``postgresql+asyncpg://``)."""
    pytest.importorskip("asyncpg")
    role = pgdispatch_role("apgjobs")
    url = pgdispatch_server.connect_url(user=role).replace(
        "postgresql+psycopg://", "postgresql+asyncpg://"
    )
    eng = create_async_engine(url)
    async with eng.begin() as conn:
        await conn.execute(text("SELECT pgdispatch.stop()"))
    yield eng
    await eng.dispose()


async def test_every_function_over_asyncpg(asyncpg_engine: AsyncEngine) -> None:
    eng = asyncpg_engine
    ok = await dispatch(eng, "SELECT 1.5::numeric AS x, now() AS t", capture=True)
    bad = await dispatch(eng, FAILING)
    late = await dispatch(eng, "SELECT 1", delay=timedelta(hours=1))
    # drain_async is psycopg-only: run the jobs through a psycopg engine of the same role
    psycopg_engine = create_async_engine(
        eng.url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    )
    try:
        assert await drain_async(psycopg_engine) == 2
    finally:
        await psycopg_engine.dispose()
    async with eng.connect() as conn:
        s = await jobs.stats(conn, window=timedelta(minutes=1))
        assert s.counts[JobState.SUCCEEDED] == 1
        assert s.counts[JobState.FAILED] == 1
        assert s.counts[JobState.QUEUED] == 1
        assert s.window == timedelta(minutes=1)
        assert s.p50_run_time is not None
        # the transaction is still usable after stats()
        assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        job = await jobs.get(conn, ok)
        assert job.state is JobState.SUCCEEDED
        assert (await jobs.result(conn, ok))[0]["x"] == Decimal("1.5")
        assert [j.id for j in await jobs.list_jobs(conn, limit=10)] == [late, bad, ok]
        assert [j.id for j in await jobs.list_jobs(conn, state="failed")] == [bad]
        with pytest.raises(JobFailed, match="boom"):
            await jobs.wait(conn, bad, raise_on_failure=True)
        with pytest.raises(JobTimeout):  # polls in the transaction (isolation checked)
            await jobs.wait(conn, late, timeout=0.2)
        assert await jobs.cancel(conn, late) is True
        await conn.commit()
    assert (await jobs.get(eng, late)).state is JobState.CANCELLED
    assert (await jobs.stats(eng)).counts[JobState.CANCELLED] == 1


async def test_errors_over_asyncpg(asyncpg_engine: AsyncEngine) -> None:
    with pytest.raises(JobNotFound):
        await jobs.cancel(asyncpg_engine, 2_000_000_002)
    with pytest.raises(JobNotFound):
        await jobs.get(asyncpg_engine, 2_000_000_002)
    with pytest.raises(ValueError, match="limit"):
        await jobs.list_jobs(asyncpg_engine, limit=0)


async def test_permission_denied_over_asyncpg(
    pgdispatch_db: Engine, pgdispatch_server: PgServer
) -> None:
    pytest.importorskip("asyncpg")
    role = f"nousage_{uuid.uuid4().hex[:8]}"
    with pgdispatch_db.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
    url = pgdispatch_server.connect_url(user=role).replace("+psycopg", "+asyncpg")
    eng = create_async_engine(url)
    try:
        with pytest.raises(PermissionDenied) as info:
            await jobs.stats(eng)
        # the server's message, not the driver's exception class
        assert str(info.value).startswith("permission denied for ")
        assert "grant_usage" in str(info.value)
    finally:
        await eng.dispose()
        with pgdispatch_db.begin() as conn:
            conn.execute(text(f'DROP ROLE "{role}"'))
