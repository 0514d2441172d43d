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
from contextlib import AbstractContextManager
from functools import cache
from typing import Any

import psycopg

from ._connections import Connectable, raw_connection
from ._resources import sql_dir
from .errors import InstallError
from .workers import cron_statements, run_in_cron_database, unschedule_for_uninstall

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

_INSTALL_RE = re.compile(r"^pgdispatch--(\d+\.\d+\.\d+)\.sql$")
_UPGRADE_RE = re.compile(r"^pgdispatch--(\d+\.\d+\.\d+)--(\d+\.\d+\.\d+)\.sql$")
# Serialises concurrent installs/upgrades of the same database.
_INSTALL_LOCK = 1885824111


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


def _raw(conn: Connectable) -> AbstractContextManager[psycopg.Connection[Any]]:
    """The psycopg connection behind ``conn``, inside a transaction."""
    return raw_connection(conn, InstallError)


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


def install(
    conn: Connectable,
    *,
    version: str | None = None,
    workers: int | None = 1,
    cron_url: str | None = None,
) -> str:
    """Install pgdispatch (or upgrade an older install) and return the installed version.

    Idempotent: when ``version`` (default: the latest) is already installed, nothing is
    done. An older install is upgraded in place with the versioned upgrade scripts,
    keeping its queued jobs. A fresh install starts ``workers`` pg_cron workers for the
    installing role (``workers=None`` or 0: none; the first dispatch starts them).

    In a database other than pg_cron's (an app database), pass ``cron_url``: a URL of
    pg_cron's database (``cron.database_name``) for the same role; the workers are
    scheduled there with ``cron.schedule_in_database()`` to run in this database.
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
            _run(raw, install_sql(target, workers=None))
            if workers:
                _start_after_install(raw, workers, cron_url)
        elif _key(current) < _key(target):
            _run(raw, upgrade_sql(current, target))
        else:
            raise InstallError(
                f"pgdispatch {current} is installed, newer than {target}: "
                "downgrades are not supported"
            )
        return target


def _cron_database(raw: psycopg.Connection[Any]) -> str | None:
    """pg_cron's database when it is not this one (an app database), else None."""
    with raw.cursor() as cur:
        cur.execute("SELECT version IS NULL, database_name FROM pgdispatch.cron_info()")
        row = cur.fetchone()
    return str(row[1]) if row and row[0] else None


def _start_after_install(raw: psycopg.Connection[Any], workers: int, cron_url: str | None) -> None:
    cron_db = _cron_database(raw)
    if cron_db is None:
        if cron_url is not None:
            raise InstallError(
                "pg_cron runs in this database: leave cron_url out (it is for app databases "
                "apart from pg_cron's)"
            )
        _run(raw, f"SELECT pgdispatch.start({int(workers)});\n")
        return
    if cron_url is None:
        raise InstallError(
            f"pg_cron runs in database {cron_db}, not in this one: pass cron_url (a URL of "
            f"{cron_db} for the same role) so that the workers are scheduled there, or install "
            "with workers=None and start them later (sa_pgdispatch.start_workers)"
        )
    run_in_cron_database(raw, cron_url, cron_statements(raw, "start", workers))


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


def uninstall(conn: Connectable, *, force: bool = False, cron_url: str | None = None) -> bool:
    """Remove pgdispatch: its schema, its pg_cron jobs, its definer trigger functions.

    Refuses (``InstallError``) while unfinished jobs or dispatch triggers exist, unless
    ``force``. Returns False when pgdispatch was not installed. In an app database apart
    from pg_cron's, ``cron_url`` (pg_cron's database, same role) is where its workers
    are unscheduled; without it, uninstall refuses while workers are scheduled.
    """
    with _raw(conn) as raw:
        _lock(raw)
        if _installed(raw) is None:
            return False
        cron_db = _cron_database(raw)
        if cron_db is not None and cron_url is None and _scheduled_workers(raw):
            raise InstallError(
                f"pg_cron runs in database {cron_db}, where this database's workers are "
                f"scheduled: pass cron_url (a URL of {cron_db}) so that they are removed "
                "too, or stop them first"
            )
        try:
            _run(raw, f"SELECT pgdispatch.prepare_uninstall(force => {str(force).lower()});")
        except psycopg.errors.ObjectInUse as exc:
            raise InstallError(_message(exc)) from exc
        except psycopg.errors.DependentObjectsStillExist as exc:
            raise InstallError(_message(exc)) from exc
        if cron_db is not None and cron_url is not None:
            unschedule_for_uninstall(raw, cron_url)
        _run(raw, "DROP SCHEMA pgdispatch CASCADE;\n")
        return True


def _scheduled_workers(raw: psycopg.Connection[Any]) -> int:
    with raw.cursor() as cur:
        cur.execute("SELECT count(*) FROM pgdispatch.worker WHERE enabled")
        row = cur.fetchone()
    return int(row[0]) if row else 0


def _message(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = diag.message_primary or str(exc)
    return f"{text} ({diag.message_hint})" if diag.message_hint else text
