"""Install, upgrade and uninstall the in-database dispatcher (the ``sql/`` scripts).

The SQL itself lives in ``sql/``: ``pgdispatch--<version>.sql`` installs a version from
scratch, ``pgdispatch--<from>--<to>.sql`` upgrades one version to the next, and
``pgdispatch.control`` makes the folder a PostgreSQL extension. This module only picks
the scripts and runs them, so the SQL stays usable from psql alone. The same scripts get
in three ways (``via``):

* ``"sql"``: run as plain SQL (the default; what psql would do);
* ``"extension"``: ``CREATE EXTENSION pgdispatch``, from the files a self-hosted server
  has in its extension directory (``make -C sql install``);
* ``"pg_tle"``: registered with pg_tle (``pgtle.install_extension()``, ...) by a member
  of ``pgtle_admin``, then ``CREATE EXTENSION pgdispatch``: managed services.

``via`` picks how a fresh install is made; an installed pgdispatch is upgraded and
uninstalled the way it was installed (:func:`installed_via`).

The scripts, and the SQL text an offline install, upgrade or uninstall runs
(:func:`install_sql`, ...), are made in :mod:`sa_pgdispatch._scripts`; this module runs
them against a database (and is where those names are imported from).

Every function takes a SQLAlchemy ``Connection`` (it runs inside the connection's
transaction; the caller commits), a SQLAlchemy ``Engine`` (a transaction of its own,
committed), or a psycopg ``Connection`` (its current transaction; the caller commits).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import psycopg
from psycopg import sql as pgsql

from ._connections import Connectable, error_message, raw_connection
from ._scripts import (
    EXTENSION_NAME,
    VIAS,
    Via,
    available_versions,
    install_sql,
    latest_version,
    uninstall_sql,
    upgrade_path,
    upgrade_sql,
)
from ._scripts import REFRESH_DEFINER_FUNCTIONS as _REFRESH_DEFINER_FUNCTIONS
from ._scripts import check_via as _check_via
from ._scripts import create_extension_sql as _create_extension_sql
from ._scripts import sql_literal as _literal
from ._scripts import target_version as _target
from ._scripts import tle_register_sql as _tle_register_sql
from ._scripts import version_key as _key
from .errors import InstallError
from .workers import cron_statements, run_in_cron_database, unschedule_for_uninstall

__all__ = [
    "EXTENSION_NAME",
    "VIAS",
    "Connectable",
    "InstallError",
    "Via",
    "available_versions",
    "install",
    "install_sql",
    "installed_version",
    "installed_via",
    "latest_version",
    "uninstall",
    "uninstall_sql",
    "upgrade",
    "upgrade_path",
    "upgrade_sql",
]


# Serialises concurrent installs/upgrades of the same database.
_INSTALL_LOCK = 1885824111


# ---------------------------------------------------------------------------------------
# online


def _raw(conn: Connectable) -> AbstractContextManager[psycopg.Connection[Any]]:
    """The psycopg connection behind ``conn``, inside a transaction."""
    return raw_connection(conn, InstallError)


def _run(raw: psycopg.Connection[Any], script: str) -> None:
    # No parameters: psycopg sends the script as one simple query, statements and all.
    with raw.cursor() as cur:
        cur.execute(script.encode())


def _scalar(raw: psycopg.Connection[Any], query: str, params: tuple[Any, ...] = ()) -> Any:
    with raw.cursor() as cur:
        cur.execute(query, params)
        row = cur.fetchone()
    return row[0] if row else None


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


def _extension_name(raw: psycopg.Connection[Any]) -> str | None:
    """The extension whose member ``pgdispatch.meta`` is (``pgdispatch``, or the name
    database.dev gave it), or None (plain SQL, or not installed)."""
    return _scalar(  # type: ignore[no-any-return]
        raw,
        "SELECT e.extname::text FROM pg_catalog.pg_depend d"
        " JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid"
        " WHERE d.classid = 'pg_catalog.pg_class'::regclass"
        " AND d.objid = to_regclass('pgdispatch.meta')"
        " AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'",
    )


def _via(raw: psycopg.Connection[Any]) -> Via | None:
    if _installed(raw) is None:
        return None
    name = _extension_name(raw)
    if name is None:
        return "sql"
    # pgtle.available_extensions() lists what pg_tle registered: a pgtle."<name>.control"()
    registered = _scalar(
        raw,
        "SELECT to_regnamespace('pgtle') IS NOT NULL AND EXISTS (SELECT 1 FROM pg_catalog.pg_proc"
        " WHERE pronamespace = to_regnamespace('pgtle') AND proname = %s)",
        (f"{name}.control",),
    )
    return "pg_tle" if registered else "extension"


def installed_via(conn: Connectable) -> Via | None:
    """How the installed pgdispatch got into the database: ``"sql"`` (plain SQL),
    ``"extension"`` (a native extension), ``"pg_tle"`` (an extension registered with
    pg_tle, as ``pgtle.available_extensions()`` lists), or None when it is not installed."""
    with _raw(conn) as raw:
        return _via(raw)


def _lock(raw: psycopg.Connection[Any]) -> None:
    with raw.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_INSTALL_LOCK,))


def _describe(via: Via) -> str:
    return {
        "sql": "as plain SQL",
        "extension": "as a native extension",
        "pg_tle": "as a pg_tle extension",
    }[via]


def install(
    conn: Connectable,
    *,
    version: str | None = None,
    workers: int | None = 1,
    cron_url: str | None = None,
    via: Via = "sql",
) -> str:
    """Install pgdispatch (or upgrade an older install) and return the installed version.

    Idempotent: when ``version`` (default: the latest) is already installed, nothing is
    done. An older install is upgraded in place with the versioned upgrade scripts,
    keeping its queued jobs. A fresh install starts ``workers`` pg_cron workers for the
    installing role (``workers=None`` or 0: none; the first dispatch starts them).

    In a database other than pg_cron's (an app database), pass ``cron_url``: a URL of
    pg_cron's database (``cron.database_name``) for the same role; the workers are
    scheduled there with ``cron.schedule_in_database()`` to run in this database.

    ``via`` is how a fresh install is made: ``"sql"`` runs the scripts as plain SQL,
    ``"extension"`` runs ``CREATE EXTENSION pgdispatch`` from the server's extension
    directory (``make -C sql install``), ``"pg_tle"`` registers the scripts with pg_tle
    (the role must be a member of ``pgtle_admin``) and then creates the extension. An
    existing install is upgraded the way it was installed; asking for another extension
    path than the installed one raises :class:`InstallError`.
    """
    _check_via(via)
    target = _target(version)
    with _raw(conn) as raw:
        _lock(raw)
        current = _installed(raw)
        if current is not None:
            current_via = _via(raw) or "sql"
            if via != "sql" and via != current_via:
                raise InstallError(
                    f"pgdispatch {current} is installed {_describe(current_via)}, not "
                    f"{_describe(via)}: an install cannot change paths in place. Uninstall it "
                    "(which drops its queue) and install again, or leave via out"
                )
        if current == target:
            return target
        if current is None:
            _create(raw, target, via)
            if workers:
                _start_after_install(raw, workers, cron_url)
        elif _key(current) < _key(target):
            _upgrade(raw, current, target)
        else:
            raise InstallError(
                f"pgdispatch {current} is installed, newer than {target}: "
                "downgrades are not supported"
            )
        return target


def _create(raw: psycopg.Connection[Any], target: str, via: Via) -> None:
    if via == "sql":
        _run(raw, install_sql(target, workers=None))
        return
    if via == "extension":
        _check_extension_files(raw, target)
    else:
        _check_pg_tle(raw)
        _run_tle(raw, _tle_register_sql(target, fresh=True))
    _run(raw, _create_extension_sql(target))


def _check_extension_files(raw: psycopg.Connection[Any], target: str) -> None:
    """The server's extension directory holds pgdispatch files that reach ``target``."""
    versions = [
        str(v) for v in _scalar(
            raw,
            "SELECT coalesce(array_agg(version::text), '{}') FROM"
            " pg_catalog.pg_available_extension_versions WHERE name = %s",
            (EXTENSION_NAME,),
        )
    ]
    install_hint = (
        "copy them with `make -C <sa_pgdispatch's sql folder> install PG_CONFIG=<the server's "
        "pg_config>` (the folder: python -c 'import sa_pgdispatch._resources as r; "
        "print(r.sql_dir())'), or install via='sql' or via='pg_tle'"
    )
    if not versions:
        raise InstallError(
            "pgdispatch's extension files (pgdispatch.control, pgdispatch--*.sql) are not in "
            f"this server's extension directory (pg_config --sharedir)/extension: {install_hint}"
        )
    if target not in versions:
        raise InstallError(
            "the server's extension directory has pgdispatch "
            f"{', '.join(sorted(versions, key=_key))}, not {target}: {install_hint}"
        )


def _check_pg_tle(raw: psycopg.Connection[Any]) -> None:
    if not _scalar(raw, "SELECT count(*) FROM pg_catalog.pg_extension WHERE extname = 'pg_tle'"):
        raise InstallError(
            "pg_tle is not installed in this database: it needs pg_tle in "
            "shared_preload_libraries, then CREATE EXTENSION pg_tle (run by a superuser, or "
            "on a managed service by its administrator role); or install via='sql'"
        )
    if not _scalar(
        raw,
        "SELECT pg_catalog.pg_has_role(current_user, 'pgtle_admin', 'MEMBER')"
        " FROM pg_catalog.pg_roles WHERE rolname = 'pgtle_admin'",
    ):
        role = _scalar(raw, "SELECT current_user")
        raise InstallError(
            f"role {role} is not a member of pgtle_admin, which registers pg_tle extensions: "
            f"GRANT pgtle_admin TO {role} (as a superuser or pgtle_admin's administrator)"
        )


def _run_tle(raw: psycopg.Connection[Any], script: str) -> None:
    try:
        _run(raw, script)
    except psycopg.errors.ObjectNotInPrerequisiteState as exc:
        # "control file already exists for the pgdispatch extension"
        raise InstallError(
            f"pg_tle refused to register pgdispatch: {error_message(exc)}. A native extension's "
            "files for pgdispatch are in this server's extension directory, and pg_tle does "
            "not register an extension of the same name: install via='extension'"
        ) from exc


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


def _upgrade(raw: psycopg.Connection[Any], current: str, target: str) -> None:
    via = _via(raw) or "sql"
    if via == "sql":
        _run(raw, upgrade_sql(current, target))
        return
    upgrade_path(current, target)  # no path: InstallError before anything runs
    name = _extension_name(raw) or EXTENSION_NAME
    if name != EXTENSION_NAME:
        raise InstallError(
            f"pgdispatch is installed as extension {name!r} (from database.dev?): upgrade it "
            f"the way it was installed, e.g. select dbdev.install({_literal(name)}); "
            f'alter extension "{name}" update to {_literal(target)};'
        )
    if via == "extension":
        _check_extension_files(raw, target)
    else:
        _run_tle(raw, _tle_register_sql(target, fresh=False))
    _run(raw, f"ALTER EXTENSION {EXTENSION_NAME} UPDATE TO {_literal(target)};\n")
    _run(raw, _REFRESH_DEFINER_FUNCTIONS)


def upgrade(conn: Connectable, to_version: str | None = None) -> str:
    """Upgrade an installed pgdispatch to ``to_version`` (default: the latest).

    Plain SQL installs run the upgrade scripts; extensions are updated with ``ALTER
    EXTENSION pgdispatch UPDATE TO``, after pg_tle has the missing update paths.
    """
    target = to_version or latest_version()
    with _raw(conn) as raw:
        _lock(raw)
        current = _installed(raw)
        if current is None:
            raise InstallError("pgdispatch is not installed; use install()")
        if current != target:
            _upgrade(raw, current, target)
        return target


def uninstall(conn: Connectable, *, force: bool = False, cron_url: str | None = None) -> bool:
    """Remove pgdispatch: its schema, its pg_cron jobs, its definer trigger functions.

    Refuses (``InstallError``) while unfinished jobs or dispatch triggers exist, unless
    ``force``. Returns False when pgdispatch was not installed. In an app database apart
    from pg_cron's, ``cron_url`` (pg_cron's database, same role) is where its workers
    are unscheduled; without it, uninstall refuses while workers are scheduled.

    An extension (native or pg_tle) is dropped with ``DROP EXTENSION``, then the schema
    it leaves behind; pg_tle's registration of it is removed too.
    """
    with _raw(conn) as raw:
        _lock(raw)
        if _installed(raw) is None:
            return False
        via = _via(raw) or "sql"
        name = _extension_name(raw)
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
            raise InstallError(error_message(exc)) from exc
        except psycopg.errors.DependentObjectsStillExist as exc:
            raise InstallError(error_message(exc)) from exc
        if cron_db is not None and cron_url is not None:
            unschedule_for_uninstall(raw, cron_url)
        if name is None:
            _run(raw, "DROP SCHEMA pgdispatch CASCADE;\n")
            return True
        extension = pgsql.Identifier(name).as_string(raw)
        _run(raw, f"DROP EXTENSION {extension} CASCADE;\n")
        _run(raw, "DROP SCHEMA IF EXISTS pgdispatch CASCADE;\n")
        if via == "pg_tle":
            with raw.cursor() as cur:
                cur.execute("SELECT pgtle.uninstall_extension_if_exists(%s)", (name,))
        return True


def _scheduled_workers(raw: psycopg.Connection[Any]) -> int:
    with raw.cursor() as cur:
        cur.execute("SELECT count(*) FROM pgdispatch.worker WHERE enabled")
        row = cur.fetchone()
    return int(row[0]) if row else 0


