"""Helpers of the reliability and security suite: crashes, restarts, retries, bad
input, privileges, roles and load.

Workers here are plain sessions running ``CALL pgdispatch.work(...)`` as a login role:
exactly what a pg_cron worker runs. Tests that must crash, restart or uninstall use a
server of their own (:func:`own_server`); the others use the shared session server
with roles from ``pgdispatch_role``.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine

from sa_pgdispatch.install import install
from sa_pgdispatch.testing import EphemeralPostgres, PgServer
from sa_pgdispatch.testing import drain as _drain

Conn = psycopg.Connection[tuple[Any, ...]]


def connect(server: PgServer, user: str | None = None, *, autocommit: bool = True) -> Conn:
    """A psycopg connection to *server* as *user* (default: the superuser)."""
    return psycopg.connect(server.connect_dsn(user=user), autocommit=autocommit)


def drain(server: PgServer, role: str) -> None:
    """Run every due job of *role* in a session of that role, then return
    (:func:`sa_pgdispatch.testing.drain`: the role's watchdog runs beside it)."""
    with connect(server, role) as conn:
        _drain(conn)


def make_role(server: PgServer, prefix: str, *, login: bool = True) -> str:
    """A new role granted pgdispatch usage (and USAGE on schema cron)."""
    name = f"{prefix}_{uuid.uuid4().hex[:6]}"
    with connect(server) as su:
        su.execute(
            sql.SQL("CREATE ROLE {} " + ("LOGIN" if login else "NOLOGIN")).format(
                sql.Identifier(name)
            )
        )
        su.execute(sql.SQL("GRANT USAGE ON SCHEMA cron TO {}").format(sql.Identifier(name)))
        su.execute("SELECT pgdispatch.grant_usage(%s)", (name,))
    return name


@contextlib.contextmanager
def own_server(*, durable: bool = False) -> Iterator[EphemeralPostgres]:
    """A private server with pgdispatch installed and the superuser's workers stopped."""
    with EphemeralPostgres(durable=durable) as server:
        with connect(server) as su:
            install(su, workers=0)
            su.execute("SELECT pgdispatch.stop()")
        yield server


def wait_for(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.1, what: str = ""
) -> float:
    """Poll *predicate* until true; returns the seconds waited, fails after *timeout*."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
        time.sleep(interval)
    return time.monotonic() - start


class WorkerThread(threading.Thread):
    """A worker session (``CALL pgdispatch.work(...)``) in a thread, as *role*.

    With ``reconnect``, a session killed under it (terminate, crash, restart) is
    replaced by a new one until :meth:`halt`. ``pid`` is the current backend's pid.
    """

    def __init__(
        self, server: PgServer, role: str, call: str, *, reconnect: bool = False
    ) -> None:
        super().__init__(daemon=True)
        self.server, self.role, self.call, self.reconnect = server, role, call, reconnect
        self.pid: int | None = None
        self.sessions = 0
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                with connect(self.server, self.role) as conn:
                    row = conn.execute("SELECT pg_backend_pid()").fetchone()
                    assert row is not None
                    self.pid = int(row[0])
                    self.sessions += 1
                    conn.execute(self.call)
            except psycopg.Error as exc:
                self.errors.append(f"{type(exc).__name__}: {str(exc).strip()[:200]}")
                if not self.reconnect:
                    return
                time.sleep(0.1)
                continue
            finally:
                self.pid = None
            if not self.reconnect:
                return

    def halt(self) -> None:
        self._halt.set()


def count(conn: Conn, query: str, params: Sequence[Any] | None = None) -> int:
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return int(row[0])


class Rel:
    """The helpers above, for test modules (importlib mode cannot import conftest)."""

    Conn = Conn
    WorkerThread = WorkerThread
    connect = staticmethod(connect)
    drain = staticmethod(drain)
    make_role = staticmethod(make_role)
    own_server = staticmethod(own_server)
    wait_for = staticmethod(wait_for)
    count = staticmethod(count)


@pytest.fixture(scope="session")
def rel() -> type[Rel]:
    return Rel


@pytest.fixture(scope="module")
def shared_schema(pgdispatch_db: Engine, pgdispatch_server: PgServer) -> Iterator[str]:
    """A schema of the module on the shared server (dropped afterwards)."""
    name = f"rel_{uuid.uuid4().hex[:8]}"
    with connect(pgdispatch_server) as su:
        su.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    with connect(pgdispatch_server) as su:
        su.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
