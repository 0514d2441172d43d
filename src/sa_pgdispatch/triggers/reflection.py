"""Reflection: the dispatch triggers of a database, read from ``pg_trigger``.

A trigger is a dispatch trigger when its function is ``pgdispatch.trigger`` or a
SECURITY DEFINER ``pgdispatch_definer_trigger``; each is read into the keyword arguments
of a :class:`~sa_pgdispatch.triggers.DispatchSpec` (the ``key=value`` options of
:data:`~sa_pgdispatch.triggers.spec.OPTIONS` generically, ints and intervals by
:data:`~.spec.INT_OPTIONS` / :data:`~.spec.INTERVAL_OPTIONS`), normalised through the
server (:mod:`.normalise`) like :meth:`DispatchTrigger.info_for
<sa_pgdispatch.triggers.DispatchTrigger.info_for>`, and recorded as a
:class:`~sa_pgdispatch.triggers.DispatchTriggerInfo`: with a spec, or, when the spec
refuses them (a trigger made by hand or by an older sa_pgdispatch), with an
:class:`~sa_pgdispatch.triggers.InvalidSpec`.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..errors import DispatchTriggerError
from ._sql import (
    format_ident,
    parse_function_name,
    qualified,
    standardise_strings,
    when_from_triggerdef,
)
from .ddl import DEFINER_FUNCTION
from .normalise import normalise_interval, standard_conforming_strings
from .schema import DispatchTriggerInfo
from .spec import INT_OPTIONS, INTERVAL_OPTIONS, OPTIONS

__all__ = ["reflect_dispatch_triggers"]

# pg_trigger.tgtype bits (src/include/catalog/pg_trigger.h)
_TG_ROW = 1 << 0
_TG_BEFORE = 1 << 1
_TG_INSERT = 1 << 2
_TG_DELETE = 1 << 3
_TG_UPDATE = 1 << 4
_TG_TRUNCATE = 1 << 5
_TG_INSTEAD = 1 << 6

_REFLECT_SQL = """
SELECT t.tgname AS name, n.nspname AS schema, c.relname AS table_name, t.tgtype AS tgtype,
       t.tgargs AS tgargs, t.tgnargs AS nargs, pn.nspname AS function_schema,
       p.proname AS function_name, p.prosecdef AS secdef,
       ARRAY(SELECT a.attname::text
               FROM unnest(t.tgattr::int2[]) AS k(attnum)
               JOIN pg_attribute a ON a.attrelid = t.tgrelid AND a.attnum = k.attnum
              ORDER BY a.attname) AS columns,
       t.tgqual IS NOT NULL AS has_when,
       pg_get_triggerdef(t.oid) AS definition
  FROM pg_trigger t
  JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_proc p ON p.oid = t.tgfoid
  JOIN pg_namespace pn ON pn.oid = p.pronamespace
 WHERE NOT t.tgisinternal
   {parent}
   AND ((pn.nspname = 'pgdispatch' AND p.proname = 'trigger')
        OR (p.proname = 'pgdispatch_definer_trigger' AND p.prosecdef))
   AND (CAST(:schema AS name) IS NULL OR n.nspname = CAST(:schema AS name))
   AND (CAST(:table_name AS name) IS NULL OR c.relname = CAST(:table_name AS name))
 ORDER BY n.nspname, c.relname, t.tgname
"""


def _canonical_function(arg: str) -> str:
    try:
        schema, name = parse_function_name(arg)
    except DispatchTriggerError:
        return arg
    return format_ident(name) if schema is None else qualified(schema, name)


def reflect_dispatch_triggers(
    conn: Connection, schema: str | None = None, table_name: str | None = None
) -> list[DispatchTriggerInfo]:
    """The dispatch triggers in the database: triggers whose function is
    ``pgdispatch.trigger`` or a SECURITY DEFINER ``pgdispatch_definer_trigger``.

    ``schema`` / ``table_name`` filter (``None``: any). Inherited clones of triggers on
    partitions are left out. Values are normalised like :meth:`DispatchTrigger.info_for`
    with a connection. The trigger arguments are decoded as UTF-8 (a UTF8 database).
    """
    version = conn.dialect.server_version_info
    parent = "AND t.tgparentid = 0" if version is None or version >= (13,) else ""
    rows = (
        conn.execute(
            text(_REFLECT_SQL.format(parent=parent)), {"schema": schema, "table_name": table_name}
        )
        .mappings()
        .all()
    )
    result = []
    scs = standard_conforming_strings(conn)
    for row in rows:
        raw = bytes(row["tgargs"])
        args = [a.decode("utf-8") for a in raw.split(b"\x00")[: row["nargs"]]]
        tgtype = int(row["tgtype"])
        events = tuple(
            ev
            for ev, bit in (("insert", _TG_INSERT), ("update", _TG_UPDATE), ("delete", _TG_DELETE))
            if tgtype & bit
        )
        if tgtype & _TG_TRUNCATE:
            events += ("truncate",)
        timing = (
            "before" if tgtype & _TG_BEFORE else "instead of" if tgtype & _TG_INSTEAD else "after"
        )
        options: dict[str, Any] = {}
        unknown: list[str] = []
        for opt in args[1:]:
            key, sep, value = opt.partition("=")
            key, value = key.strip(), value.strip()
            if sep and key in OPTIONS and key not in options:
                options[key] = value
            else:
                unknown.append(opt)
        for key in INT_OPTIONS:
            if key in options:
                with contextlib.suppress(ValueError):
                    options[key] = int(options[key])
        for key in INTERVAL_OPTIONS:
            options[key] = normalise_interval(conn, options.get(key))
        when = when_from_triggerdef(row["definition"]) if row["has_when"] else None
        if when is not None:
            when = standardise_strings(when, standard_conforming_strings=scs)
        arguments = {
            "function": _canonical_function(args[0]) if args else "",
            "on": events,
            "columns": tuple(row["columns"]) or None,
            "when": when,
            "for_each": "row" if tgtype & _TG_ROW else "statement",
            **{key: options.get(key) for key in OPTIONS},
            "security": "definer" if row["function_name"] == DEFINER_FUNCTION else "invoker",
        }
        result.append(
            DispatchTriggerInfo.read(
                row["name"],
                row["table_name"],
                row["schema"],
                arguments,
                timing=timing,
                unknown_options=tuple(unknown),
            )
        )
    return result
