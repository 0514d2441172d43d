"""Project-only fixtures (the pgdispatch_* fixtures come from sa_pgdispatch's plugin)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import pytest
from sqlalchemy import Engine, text

pytest_plugins = ["pytester"]

# Markers that mean "needs a PostgreSQL server" by themselves.
_SERVER_MARKERS = ("cron", "e2e")


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``db`` every test that uses a PostgreSQL server: its fixtures reach
    ``pgdispatch_server``, or it is marked ``cron`` or ``e2e``. Tests that start servers
    of their own are marked ``db`` in their modules. ``pytest -m "not db"`` is then the
    fast loop (docs/testing.md)."""
    for item in items:
        if "pgdispatch_server" in getattr(item, "fixturenames", ()) or any(
            item.get_closest_marker(name) for name in _SERVER_MARKERS
        ):
            item.add_marker(pytest.mark.db)


@pytest.fixture
def schema(pgdispatch_engine: Engine) -> Iterator[str]:
    """A fresh schema ``test_<uuid>`` for one test, dropped (CASCADE) afterwards."""
    name = f"test_{uuid.uuid4().hex}"
    with pgdispatch_engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        yield name
    finally:
        with pgdispatch_engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))


@dataclass(frozen=True)
class CronProof:
    """A pg_cron job scheduled at session start whose run the e2e test waits for."""

    jobid: int
    jobname: str
    table: str
    token: str
    scheduled_at: float  # time.monotonic() when it was scheduled
    scheduled_db: datetime  # the server's clock_timestamp() then


def _session_has_e2e(session: pytest.Session) -> bool:
    return any(item.get_closest_marker("e2e") is not None for item in session.items)


@pytest.fixture(scope="session", autouse=True)
def cron_proof(request: pytest.FixtureRequest) -> Iterator[CronProof | None]:
    """Schedule the pg_cron proof job as early as possible in the session.

    pg_cron 1.4 only has minute schedules, so a job scheduled now runs at the next
    minute boundary: up to 60 s away. Scheduling it when the session starts lets
    that minute pass while the other tests run; the e2e test then only waits for
    what is left. Nothing is done when no collected test is marked ``e2e``.
    """
    if not _session_has_e2e(request.session):
        yield None
        return
    try:
        engine: Engine = request.getfixturevalue("pgdispatch_engine")
    except pytest.skip.Exception:  # backend unavailable: the e2e tests skip by themselves
        yield None
        return
    token = uuid.uuid4().hex
    table = f"public.sa_pgdispatch_cron_proof_{token[:12]}"
    jobname = f"sa_pgdispatch_cron_proof_{token[:12]}"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {table} (token text NOT NULL, ran_at timestamptz)"))
        jobid = conn.execute(
            text("SELECT cron.schedule(:name, '* * * * *', :command)"),
            {
                "name": jobname,
                "command": f"INSERT INTO {table} VALUES ('{token}', clock_timestamp())",
            },
        ).scalar_one()
        scheduled_db = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    try:
        yield CronProof(int(jobid), jobname, table, token, time.monotonic(), scheduled_db)
    finally:
        with engine.begin() as conn:
            conn.execute(
                text("SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = :name"),
                {"name": jobname},
            )
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
