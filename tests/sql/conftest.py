"""Helpers for the dispatcher's SQL tests: run SQL, drain the queue, read jobs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from sa_pgdispatch.testing import drain as _drain


def run(engine: Engine, sql: str, **params: Any) -> Any:
    """Run one statement in its own committed transaction; return the first column of
    the first row (or None)."""
    with engine.begin() as conn:
        result = conn.execute(text(sql), params)
        return result.scalar() if result.returns_rows else None


def rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.begin() as conn:
        return list(conn.execute(text(sql), params).mappings())


def drain(engine: Engine) -> None:
    """Run every due job of the engine's role in this process: the package's
    :func:`sa_pgdispatch.testing.drain` (``CALL pgdispatch.work(drain => true)`` in
    autocommit, the role's watchdog beside it)."""
    _drain(engine)


def wait_until(check: Callable[[], Any], timeout: float) -> bool:
    """Call *check* every 20 ms until it returns something true (True) or *timeout*
    seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def job(engine: Engine, job_id: int) -> dict[str, Any]:
    found = rows(engine, "SELECT * FROM pgdispatch.jobs WHERE id = :id", id=job_id)
    assert found, f"job {job_id} not visible"
    return dict(found[0])


@pytest.fixture
def db(pgdispatch_db: Engine, schema: str) -> Engine:
    """The superuser's engine, pgdispatch installed, an empty queue, a fresh schema."""
    drain(pgdispatch_db)
    run(
        pgdispatch_db,
        f'CREATE TABLE "{schema}".t (v text, at timestamptz DEFAULT clock_timestamp())',
    )
    return pgdispatch_db


@pytest.fixture
def settings(pgdispatch_db: Engine) -> Iterator[Any]:
    """Change pgdispatch.settings for one test; restored afterwards."""
    saved = rows(pgdispatch_db, "SELECT * FROM pgdispatch.settings")[0]

    def change(**values: Any) -> None:
        sets = ", ".join(f"{k} = :{k}" for k in values)
        run(pgdispatch_db, f"UPDATE pgdispatch.settings SET {sets}", **values)

    yield change
    change(**{k: v for k, v in saved.items() if k != "singleton"})


def role_engine(server: Any, role: str) -> Engine:
    return create_engine(server.connect_url(user=role))


@pytest.fixture(scope="session", autouse=True)
def cron_role(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """A login role whose pg_cron workers are started as soon as the first SQL test
    runs, so that pg_cron's first minute tick passes while the other tests run.
    Only when end-to-end (``e2e``) tests were collected."""
    if not any(item.get_closest_marker("e2e") for item in request.session.items):
        yield None
        return
    make = request.getfixturevalue("pgdispatch_role")
    server = request.getfixturevalue("pgdispatch_server")
    role = make("cron")
    engine = role_engine(server, role)
    try:
        run(engine, "SELECT pgdispatch.start(1)")
        yield role
        run(engine, "SELECT pgdispatch.stop()")
    finally:
        engine.dispose()
