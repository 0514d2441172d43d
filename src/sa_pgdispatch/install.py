"""Install, upgrade and uninstall the in-database dispatcher (the ``sql/`` scripts).

The SQL itself lives in ``sql/``: ``pgdispatch--<version>.sql`` installs a version from
scratch, ``pgdispatch--<from>--<to>.sql`` upgrades one version to the next. This module
only picks the scripts and runs them, so the SQL stays usable from psql alone.

Every function takes a SQLAlchemy ``Connection`` (it runs inside the connection's
transaction; the caller commits), a SQLAlchemy ``Engine`` (a transaction of its own,
committed), or a psycopg ``Connection`` (its current transaction; the caller commits).
"""

from __future__ import annotations

import itertools
import re
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any, TypeAlias

import psycopg
import sqlalchemy as sa

from ._resources import sql_dir

__all__ = [
    "Connectable",
    "InstallError",
    "available_versions",
    "install",
    "install_sql",
    "installed_version",
    "latest_version",
    "uninstall",
    "uninstall_sql",
    "upgrade",
    "upgrade_path",
    "upgrade_sql",
]

Connectable: TypeAlias = "sa.Connection | sa.Engine | psycopg.Connection[Any]"

_INSTALL_RE = re.compile(r"^pgdispatch--(\d+\.\d+\.\d+)\.sql$")
_UPGRADE_RE = re.compile(r"^pgdispatch--(\d+\.\d+\.\d+)--(\d+\.\d+\.\d+)\.sql$")
# Serialises concurrent installs/upgrades of the same database.
_INSTALL_LOCK = 1885824111


class InstallError(RuntimeError):
    """pgdispatch cannot be installed, upgraded or uninstalled as asked."""


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


@cache
def _scripts() -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    installs: dict[str, str] = {}
    upgrades: dict[tuple[str, str], str] = {}
    for path in sorted(sql_dir().glob("pgdispatch--*.sql")):
        if m := _INSTALL_RE.match(path.name):
            installs[m.group(1)] = path.read_text(encoding="utf-8")
        elif m := _UPGRADE_RE.match(path.name):
            upgrades[(m.group(1), m.group(2))] = path.read_text(encoding="utf-8")
    if not installs:
        raise InstallError(f"no pgdispatch--<version>.sql script in {sql_dir()}")
    return installs, upgrades


def available_versions() -> list[str]:
    """Versions that can be installed from scratch or reached by upgrades, oldest first."""
    installs, upgrades = _scripts()
    versions = set(installs) | {to for _, to in upgrades}
    return sorted(versions, key=_key)


def latest_version() -> str:
    """The newest version this package ships."""
    return available_versions()[-1]


def upgrade_path(from_version: str, to_version: str) -> list[str]:
    """The chain of versions from ``from_version`` to ``to_version`` (both included)."""
    _, upgrades = _scripts()
    if from_version == to_version:
        return [from_version]
    previous: dict[str, str] = {}
    queue = deque([from_version])
    while queue:
        current = queue.popleft()
        for src, dst in sorted(upgrades, key=lambda p: _key(p[1])):
            if src == current and dst not in previous and dst != from_version:
                previous[dst] = src
                if dst == to_version:
                    path = [dst]
                    while path[-1] != from_version:
                        path.append(previous[path[-1]])
                    return path[::-1]
                queue.append(dst)
    raise InstallError(f"no upgrade path from pgdispatch {from_version} to {to_version}")


def install_sql(version: str | None = None, *, workers: int | None = 1) -> str:
    """The SQL that installs ``version`` (default: latest) from scratch.

    With ``workers``, it also starts that many pg_cron workers for the installing role.
    Used as-is by offline (``--sql``) Alembic migrations.
    """
    installs, upgrades = _scripts()
    target = version or latest_version()
    base = max((v for v in installs if _key(v) <= _key(target)), key=_key, default=None)
    if base is None:
        raise InstallError(f"pgdispatch {target} cannot be installed from scratch")
    parts = [installs[base]]
    path = upgrade_path(base, target)
    parts += [upgrades[(a, b)] for a, b in itertools.pairwise(path)]
    if workers:
        parts.append(f"SELECT pgdispatch.start({int(workers)});\n")
    return "\n".join(parts)


def upgrade_sql(from_version: str, to_version: str | None = None) -> str:
    """The SQL that upgrades an installed ``from_version`` to ``to_version``."""
    _, upgrades = _scripts()
    path = upgrade_path(from_version, to_version or latest_version())
    return "\n".join(upgrades[(a, b)] for a, b in itertools.pairwise(path))


def uninstall_sql(*, force: bool = False) -> str:
    """The SQL that removes pgdispatch: every object and pg_cron job it made.

    Without ``force`` it raises while unfinished jobs or dispatch triggers exist.
    """
    return (
        f"SELECT pgdispatch.prepare_uninstall(force => {'true' if force else 'false'});\n"
        "DROP SCHEMA pgdispatch CASCADE;\n"
    )


@contextmanager
def _raw(conn: Connectable) -> Iterator[psycopg.Connection[Any]]:
    """The psycopg connection behind ``conn``, inside a transaction."""
    if isinstance(conn, sa.Engine):
        with conn.begin() as sa_conn, _raw(sa_conn) as raw:
            yield raw
        return
    if isinstance(conn, sa.Connection):
        if conn.dialect.name != "postgresql" or conn.dialect.driver != "psycopg":
            raise InstallError(
                "sa_pgdispatch needs PostgreSQL through psycopg 3 "
                f"(postgresql+psycopg://...), not {conn.dialect.name}+{conn.dialect.driver}"
            )
        if not conn.in_transaction():
            conn.begin()
        driver = conn.connection.driver_connection
        if not isinstance(driver, psycopg.Connection):
            raise InstallError("sa_pgdispatch needs a psycopg 3 (sync) connection")
        yield driver
        return
    if isinstance(conn, psycopg.Connection):
        yield conn
        return
    raise TypeError(
        f"expected a SQLAlchemy Connection/Engine or a psycopg Connection, got {conn!r}"
    )


def _run(raw: psycopg.Connection[Any], script: str) -> None:
    # No parameters: psycopg sends the script as one simple query, statements and all.
    with raw.cursor() as cur:
        cur.execute(script.encode())


def _installed(raw: psycopg.Connection[Any]) -> str | None:
    with raw.cursor() as cur:
        cur.execute("SELECT to_regclass('pgdispatch.meta') IS NOT NULL")
        row = cur.fetchone()
        if not row or not row[0]:
            return None
        cur.execute("SELECT value FROM pgdispatch.meta WHERE key = 'version'")
        row = cur.fetchone()
        return str(row[0]) if row else None


def installed_version(conn: Connectable) -> str | None:
    """The installed pgdispatch version, or None when it is not installed."""
    with _raw(conn) as raw:
        return _installed(raw)


def _lock(raw: psycopg.Connection[Any]) -> None:
    with raw.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_INSTALL_LOCK,))


def install(conn: Connectable, *, version: str | None = None, workers: int | None = 1) -> str:
    """Install pgdispatch (or upgrade an older install) and return the installed version.

    Idempotent: when ``version`` (default: the latest) is already installed, nothing is
    done. An older install is upgraded in place with the versioned upgrade scripts,
    keeping its queued jobs. A fresh install starts ``workers`` pg_cron workers for the
    installing role (``workers=None`` or 0: none; the first dispatch starts them).
    """
    target = version or latest_version()
    if target not in available_versions():
        raise InstallError(f"unknown pgdispatch version {target!r}; have {available_versions()}")
    with _raw(conn) as raw:
        _lock(raw)
        current = _installed(raw)
        if current == target:
            return target
        if current is None:
            _run(raw, install_sql(target, workers=workers))
        elif _key(current) < _key(target):
            _run(raw, upgrade_sql(current, target))
        else:
            raise InstallError(
                f"pgdispatch {current} is installed, newer than {target}: "
                "downgrades are not supported"
            )
        return target


def upgrade(conn: Connectable, to_version: str | None = None) -> str:
    """Upgrade an installed pgdispatch to ``to_version`` (default: the latest)."""
    target = to_version or latest_version()
    with _raw(conn) as raw:
        _lock(raw)
        current = _installed(raw)
        if current is None:
            raise InstallError("pgdispatch is not installed; use install()")
        if current != target:
            _run(raw, upgrade_sql(current, target))
        return target


def uninstall(conn: Connectable, *, force: bool = False) -> bool:
    """Remove pgdispatch: its schema, its pg_cron jobs, its definer trigger functions.

    Refuses (``InstallError``) while unfinished jobs or dispatch triggers exist, unless
    ``force``. Returns False when pgdispatch was not installed.
    """
    with _raw(conn) as raw:
        _lock(raw)
        if _installed(raw) is None:
            return False
        try:
            _run(raw, uninstall_sql(force=force))
        except psycopg.errors.ObjectInUse as exc:
            raise InstallError(_message(exc)) from exc
        except psycopg.errors.DependentObjectsStillExist as exc:
            raise InstallError(_message(exc)) from exc
        return True


def _message(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = diag.message_primary or str(exc)
    return f"{text} ({diag.message_hint})" if diag.message_hint else text
