"""Every way to reach a schema version leaves the same catalog: a fresh install of the
latest version (its full script) and an install of the oldest version upgraded step by
step through the upgrade scripts. Compared: functions and procedures with their bodies
and attributes, tables, columns in order, indexes, constraints, policies, views,
sequences, grants and the rows of the settings and meta tables."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from sa_pgdispatch.install import available_versions, install, latest_version, upgrade

CATALOG: dict[str, str] = {
    "routines": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args, p.prokind,
               pg_get_function_result(p.oid) AS result, p.prosrc, p.provolatile,
               p.prosecdef, p.proconfig, l.lanname, p.proacl::text
          FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
         WHERE p.pronamespace = 'pgdispatch'::regnamespace
         ORDER BY 1, 2""",
    "relations": """
        SELECT c.relname, c.relkind, c.relrowsecurity, c.relforcerowsecurity, c.reloptions,
               c.relacl::text
          FROM pg_class c
         WHERE c.relnamespace = 'pgdispatch'::regnamespace
         ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type,
               a.attnotnull, a.attidentity, pg_get_expr(d.adbin, d.adrelid) AS default,
               a.attacl::text,
               row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) AS position
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE c.relnamespace = 'pgdispatch'::regnamespace AND a.attnum > 0
           AND NOT a.attisdropped
         ORDER BY 1, position""",
    "indexes": """
        SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'pgdispatch'
         ORDER BY 1""",
    "constraints": """
        SELECT conrelid::regclass::text AS relation, conname, contype, convalidated,
               pg_get_constraintdef(oid) AS definition
          FROM pg_constraint WHERE connamespace = 'pgdispatch'::regnamespace
         ORDER BY 1, 2""",
    "policies": """
        SELECT tablename, policyname, permissive, roles::text, cmd, qual, with_check
          FROM pg_policies WHERE schemaname = 'pgdispatch' ORDER BY 1, 2""",
    "views": """
        SELECT viewname, definition FROM pg_views WHERE schemaname = 'pgdispatch'
         ORDER BY 1""",
    "sequences": """
        SELECT sequencename, data_type::text, start_value, increment_by, cycle
          FROM pg_sequences WHERE schemaname = 'pgdispatch' ORDER BY 1""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid)
          FROM pg_trigger
         WHERE NOT tgisinternal
           AND tgrelid IN (SELECT oid FROM pg_class
                            WHERE relnamespace = 'pgdispatch'::regnamespace)
         ORDER BY 1, 2""",
    "schema": "SELECT nspacl::text FROM pg_namespace WHERE nspname = 'pgdispatch'",
    "settings": "SELECT to_jsonb(s) FROM pgdispatch.settings s",
    "meta": "SELECT key, value FROM pgdispatch.meta ORDER BY 1",
}


def _catalog(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.begin() as conn:
        return {name: [tuple(r) for r in conn.execute(text(sql))] for name, sql in CATALOG.items()}


@pytest.fixture
def database(pgdispatch_server: Any, pgdispatch_engine: Engine) -> Iterator[Any]:
    """A factory of fresh databases (same server, owned by the superuser), dropped after."""
    made: list[str] = []
    engines: list[Engine] = []

    def make() -> Engine:
        name = f"schema_{uuid.uuid4().hex[:10]}"
        with pgdispatch_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        engine = create_engine(pgdispatch_server.connect_url(dbname=name))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()
    with pgdispatch_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        for name in made:
            c.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))


def _difference(part: str, fresh: list[tuple[Any, ...]], upgraded: list[tuple[Any, ...]]) -> str:
    """The rows of one catalog part that differ, one a line, readable in a failed assert."""
    lines = [f"{part} differ between fresh and upgraded installs"]
    only_fresh = [r for r in fresh if r not in upgraded]
    only_upgraded = [r for r in upgraded if r not in fresh]
    lines += [f"  only fresh:    {r!r}" for r in only_fresh]
    lines += [f"  only upgraded: {r!r}" for r in only_upgraded]
    if not only_fresh and not only_upgraded:
        lines.append("  same rows, other order or count:")
        pairs = zip(fresh, upgraded, strict=False)
        lines += [f"  fresh {f!r}\n  upgr. {u!r}" for f, u in pairs if f != u]
    return "\n".join(lines)


def test_fresh_latest_equals_oldest_upgraded_step_by_step(database: Any) -> None:
    versions = available_versions()
    fresh, upgraded = database(), database()
    # (a database apart from pg_cron's: an app database's install, no workers)
    with fresh.begin() as conn:
        install(conn, workers=None)
    with upgraded.begin() as conn:
        install(conn, version=versions[0], workers=None)
    for version in versions[1:]:
        with upgraded.begin() as conn:
            upgrade(conn, version)
    expected, got = _catalog(fresh), _catalog(upgraded)
    assert got["meta"] == expected["meta"]
    assert ("version", latest_version()) in got["meta"]
    for part in CATALOG:
        assert got[part] == expected[part], _difference(part, expected[part], got[part])
