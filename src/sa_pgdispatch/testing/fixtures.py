"""pytest fixtures that give a test a server with pgdispatch installed.

``pgdispatch_db`` installs pgdispatch once per session on ``pgdispatch_server`` and
stops the superuser's background workers, so tests run jobs deterministically with
``CALL pgdispatch.work(drain => true)`` (or :func:`sa_pgdispatch.testing.drain`).
``pgdispatch_drain`` runs due jobs on demand. ``pgdispatch_role`` makes login roles
allowed to dispatch, for tests that need a role of their own (pg_cron end-to-end
tests, privilege tests).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, text

from ..install import install
from .drain import Drainer

__all__ = ["pgdispatch_db", "pgdispatch_drain", "pgdispatch_role"]


@pytest.fixture(scope="session")
def pgdispatch_db(pgdispatch_engine: Engine) -> Engine:
    """The session Engine, with pgdispatch installed and no background worker for it."""
    with pgdispatch_engine.begin() as conn:
        install(conn, workers=0)
        conn.execute(text("SELECT pgdispatch.stop()"))
    return pgdispatch_engine


@pytest.fixture
def pgdispatch_drain(pgdispatch_db: Engine) -> Drainer:
    """Run due jobs now, in this process: ``pgdispatch_drain()`` returns how many finished."""
    return Drainer(pgdispatch_db)


@pytest.fixture(scope="session")
def pgdispatch_role(pgdispatch_db: Engine) -> Iterator[Callable[..., str]]:
    """A factory of login roles granted pgdispatch usage: ``pgdispatch_role("alice")``.

    The role gets a unique name (the prefix plus a random suffix), LOGIN, USAGE on
    schema cron (so it can run its own workers) and ``pgdispatch.grant_usage``. Roles
    are dropped, with what they own, at the end of the session.
    """
    made: list[str] = []

    def make(prefix: str = "role", *, login: bool = True, superuser: bool = False) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        attrs = ("LOGIN" if login else "NOLOGIN") + (" SUPERUSER" if superuser else "")
        with pgdispatch_db.begin() as conn:
            conn.execute(text(f'CREATE ROLE "{name}" {attrs}'))
            conn.execute(text(f'GRANT USAGE ON SCHEMA cron TO "{name}"'))
            conn.execute(text(f'GRANT CREATE ON DATABASE "{conn.engine.url.database}" TO "{name}"'))
            conn.execute(text("SELECT pgdispatch.grant_usage(:r)"), {"r": name})
        made.append(name)
        return name

    yield make
    with pgdispatch_db.begin() as conn:
        for name in made:
            conn.execute(
                text("SELECT cron.unschedule(jobid) FROM cron.job WHERE username = :r"), {"r": name}
            )
            conn.execute(text("DELETE FROM pgdispatch.worker WHERE role = :r"), {"r": name})
            conn.execute(text(f'DROP OWNED BY "{name}" CASCADE'))
            conn.execute(text(f'DROP ROLE "{name}"'))
