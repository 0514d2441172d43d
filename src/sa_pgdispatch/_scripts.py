"""The pgdispatch scripts of ``sql/`` and the SQL text made of them, without a database.

Which versions there are (:func:`available_versions`, :func:`latest_version`), the chain
of upgrade scripts between two (:func:`upgrade_path`), and the scripts that install,
upgrade or uninstall pgdispatch as they are run offline (:func:`install_sql`,
:func:`upgrade_sql`, :func:`uninstall_sql`: plain SQL, ``CREATE``/``ALTER EXTENSION``, or
pg_tle registration calls carrying the scripts as dollar-quoted literals).
:mod:`sa_pgdispatch.install` runs them against a database, and is where the public names
are imported from.
"""

from __future__ import annotations

import itertools
import re
from collections import deque
from functools import cache
from typing import Literal, get_args

from ._resources import sql_dir
from .errors import InstallError

__all__ = [
    "EXTENSION_NAME",
    "REFRESH_DEFINER_FUNCTIONS",
    "VIAS",
    "Via",
    "available_versions",
    "check_via",
    "create_extension_sql",
    "dollar_quoted",
    "install_sql",
    "latest_version",
    "sql_literal",
    "target_version",
    "tle_register_sql",
    "uninstall_sql",
    "upgrade_path",
    "upgrade_sql",
    "version_key",
]

#: How pgdispatch gets into a database: plain SQL, a native extension, a pg_tle extension.
Via = Literal["sql", "extension", "pg_tle"]
VIAS: tuple[Via, ...] = get_args(Via)
#: The extension's name (``sql/pgdispatch.control``), natively and as registered with pg_tle.
EXTENSION_NAME = "pgdispatch"

_INSTALL_RE = re.compile(r"^pgdispatch--(\d+\.\d+\.\d+)\.sql$")
_UPGRADE_RE = re.compile(r"^pgdispatch--(\d+\.\d+\.\d+)--(\d+\.\d+\.\d+)\.sql$")
_CONTROL_RE = re.compile(r"^\s*(\w+)\s*=\s*(?:'((?:[^']|'')*)'|(\S+))\s*(?:#.*)?$")
_SCHEMA = "pgdispatch"


def version_key(version: str) -> tuple[int, ...]:
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


@cache
def _control() -> dict[str, str]:
    """The keys of ``sql/pgdispatch.control`` (quoted values unquoted)."""
    path = sql_dir() / f"{EXTENSION_NAME}.control"
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        m = _CONTROL_RE.match(line)
        if m is None:
            raise InstallError(f"{path}: cannot read {line!r}")
        quoted, bare = m.group(2), m.group(3)
        values[m.group(1)] = quoted.replace("''", "'") if quoted is not None else bare
    return values


def available_versions() -> list[str]:
    """Versions that can be installed from scratch or reached by upgrades, oldest first."""
    installs, upgrades = _scripts()
    versions = set(installs) | {to for _, to in upgrades}
    return sorted(versions, key=version_key)


def latest_version() -> str:
    """The newest version this package ships (the control file's ``default_version``)."""
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
        for src, dst in sorted(upgrades, key=lambda p: version_key(p[1])):
            if src == current and dst not in previous and dst != from_version:
                previous[dst] = src
                if dst == to_version:
                    path = [dst]
                    while path[-1] != from_version:
                        path.append(previous[path[-1]])
                    return path[::-1]
                queue.append(dst)
    raise InstallError(f"no upgrade path from pgdispatch {from_version} to {to_version}")


def check_via(via: str) -> Via:
    if via not in VIAS:
        raise InstallError(f"via must be one of {', '.join(VIAS)}, not {via!r}")
    return via


def target_version(version: str | None) -> str:
    target = version or latest_version()
    if target not in available_versions():
        raise InstallError(f"unknown pgdispatch version {target!r}; have {available_versions()}")
    return target


# ---------------------------------------------------------------------------------------
# SQL text


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def dollar_quoted(text: str, base: str) -> str:
    """``text`` as a dollar-quoted literal whose tag does not occur in it."""
    for n in itertools.count():
        tag = f"${base}{n or ''}$"
        if tag not in text:
            return f"{tag}{text}{tag}"
    raise AssertionError("unreachable")  # pragma: no cover


def _do(body: str) -> str:
    """A DO block running ``body`` (PL/pgSQL statements)."""
    return f"DO {dollar_quoted(f'BEGIN{chr(10)}{body}END{chr(10)}', 'pgdispatch_do')};\n"


def _tle_registered(function: str) -> str:
    """SQL condition: pg_tle holds ``pgtle."<function>"()`` (a registered script/control)."""
    return (
        "EXISTS (SELECT 1 FROM pg_catalog.pg_proc WHERE pronamespace = "
        f"'pgtle'::regnamespace AND proname = {sql_literal(function)})"
    )


def tle_register_sql(target: str, *, fresh: bool) -> str:
    """SQL that registers with pg_tle every script ``CREATE EXTENSION pgdispatch VERSION
    target`` and ``ALTER EXTENSION pgdispatch UPDATE TO target`` may need: the full scripts
    and the update paths up to ``target``, which becomes the default version (what a restore
    of a pg_dump creates). ``fresh``: replace whatever was registered (nothing is created
    yet); else only what is missing is registered."""
    installs, upgrades = _scripts()
    fulls = sorted((v for v in installs if version_key(v) <= version_key(target)), key=version_key)
    paths = sorted(
        ((a, b) for a, b in upgrades if version_key(b) <= version_key(target)),
        key=lambda p: (version_key(p[1]), version_key(p[0])),
    )
    name = sql_literal(EXTENSION_NAME)
    parts: list[str] = []
    if fresh:
        parts.append(f"SELECT pgtle.uninstall_extension_if_exists({name});\n")
        first, *rest = fulls
        parts.append(
            f"SELECT pgtle.install_extension({name}, {sql_literal(first)}, "
            f"{sql_literal(_control().get('comment', EXTENSION_NAME))},\n"
            f"{dollar_quoted(installs[first], 'pgdispatch_sql')},\n"
            f"ARRAY['plpgsql'], {sql_literal(_SCHEMA)});\n"
        )
        for v in rest:
            parts.append(
                f"SELECT pgtle.install_extension_version_sql({name}, {sql_literal(v)},\n"
                f"{dollar_quoted(installs[v], 'pgdispatch_sql')});\n"
            )
        for a, b in paths:
            parts.append(
                f"SELECT pgtle.install_update_path({name}, {sql_literal(a)}, {sql_literal(b)},\n"
                f"{dollar_quoted(upgrades[(a, b)], 'pgdispatch_sql')});\n"
            )
    else:
        for v in fulls:
            parts.append(_do(
                f"IF NOT {_tle_registered(f'{EXTENSION_NAME}--{v}.sql')} THEN\n"
                f"  PERFORM pgtle.install_extension_version_sql({name}, {sql_literal(v)},\n"
                f"{dollar_quoted(installs[v], 'pgdispatch_sql')});\n"
                "END IF;\n"
            ))
        for a, b in paths:
            parts.append(_do(
                f"IF NOT {_tle_registered(f'{EXTENSION_NAME}--{a}--{b}.sql')} THEN\n"
                f"  PERFORM pgtle.install_update_path({name}, {sql_literal(a)}, {sql_literal(b)},\n"
                f"{dollar_quoted(upgrades[(a, b)], 'pgdispatch_sql')});\n"
                "END IF;\n"
            ))
    parts.append(f"SELECT pgtle.set_default_version({name}, {sql_literal(target)});\n")
    return "".join(parts)


# Inside ALTER EXTENSION UPDATE an upgrade script may not replace the SECURITY DEFINER
# trigger functions definer_trigger_function() made (they are not the extension's
# members): their owner refreshes them once the extension is updated.
REFRESH_DEFINER_FUNCTIONS = _do(
    "PERFORM pgdispatch.definer_trigger_function(n.nspname)\n"
    "   FROM pgdispatch.definer_function d\n"
    "   JOIN pg_catalog.pg_proc p ON p.oid = d.fn\n"
    "   JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace\n"
    "  WHERE p.proowner = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user);\n"
)


def create_extension_sql(target: str) -> str:
    return f"CREATE EXTENSION {EXTENSION_NAME} VERSION {sql_literal(target)};\n"


def install_sql(
    version: str | None = None, *, workers: int | None = 1, via: Via = "sql"
) -> str:
    """The SQL that installs ``version`` (default: latest) from scratch.

    With ``workers``, it also starts that many pg_cron workers for the installing role.
    ``via="extension"``: ``CREATE EXTENSION`` (the files must be in the server's extension
    directory); ``via="pg_tle"``: the scripts registered with pg_tle (as dollar-quoted
    literals), then ``CREATE EXTENSION``. Used as-is by offline (``--sql``) Alembic
    migrations.
    """
    check_via(via)
    installs, upgrades = _scripts()
    target = version or latest_version()
    if via == "sql":
        base = max(
            (v for v in installs if version_key(v) <= version_key(target)),
            key=version_key,
            default=None,
        )
        if base is None:
            raise InstallError(f"pgdispatch {target} cannot be installed from scratch")
        parts = [installs[base]]
        path = upgrade_path(base, target)
        parts += [upgrades[(a, b)] for a, b in itertools.pairwise(path)]
    else:
        target = target_version(target)
        parts = [] if via == "extension" else [tle_register_sql(target, fresh=True)]
        parts.append(create_extension_sql(target))
    if workers:
        parts.append(f"SELECT pgdispatch.start({int(workers)});\n")
    return "\n".join(parts)


def upgrade_sql(from_version: str, to_version: str | None = None, *, via: Via = "sql") -> str:
    """The SQL that upgrades an installed ``from_version`` to ``to_version``.

    ``via`` is how pgdispatch was installed: the extension paths run ``ALTER EXTENSION
    pgdispatch UPDATE`` (``pg_tle`` registers the missing update paths first) and then
    refresh the installing role's definer trigger functions.
    """
    check_via(via)
    _, upgrades = _scripts()
    target = to_version or latest_version()
    path = upgrade_path(from_version, target)
    if via == "sql" or len(path) == 1:
        return "\n".join(upgrades[(a, b)] for a, b in itertools.pairwise(path))
    parts = [] if via == "extension" else [tle_register_sql(target, fresh=False)]
    parts.append(f"ALTER EXTENSION {EXTENSION_NAME} UPDATE TO {sql_literal(target)};\n")
    parts.append(REFRESH_DEFINER_FUNCTIONS)
    return "\n".join(parts)


def uninstall_sql(*, force: bool = False, via: Via = "sql") -> str:
    """The SQL that removes pgdispatch: every object and pg_cron job it made.

    Without ``force`` it raises while unfinished jobs or dispatch triggers exist. ``via``
    is how pgdispatch was installed: the extension paths drop the extension (and the
    schema it leaves), ``pg_tle`` also removes the registration.
    """
    check_via(via)
    parts = [f"SELECT pgdispatch.prepare_uninstall(force => {'true' if force else 'false'});\n"]
    if via != "sql":
        parts.append(f"DROP EXTENSION {EXTENSION_NAME} CASCADE;\n")
    parts.append(
        "DROP SCHEMA pgdispatch CASCADE;\n" if via == "sql"
        else "DROP SCHEMA IF EXISTS pgdispatch CASCADE;\n"
    )
    if via == "pg_tle":
        name = sql_literal(EXTENSION_NAME)
        parts.append(f"SELECT pgtle.uninstall_extension_if_exists({name});\n")
    return "".join(parts)

