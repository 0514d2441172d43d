"""The Alembic environment template (``migrations_template/``) and what its env.py uses.

:func:`init_project` copies the template into a project, like ``alembic init``, and can
write a first revision that installs pgdispatch. The helpers below keep the generated
env.py short: :func:`database_url` (PostgreSQL through psycopg 3 only),
:func:`load_target_metadata` (``sa_pgdispatch.metadata = module:attribute`` in
alembic.ini), :func:`include_name` (keeps autogenerate out of the ``pgdispatch`` and
``cron`` schemas) and :func:`configure_options`.
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from alembic.autogenerate import render_python_code
from alembic.config import Config
from alembic.operations import ops
from alembic.script import ScriptDirectory
from alembic.util import CommandError, rev_id
from mako.template import Template  # type: ignore[import-untyped]
from sqlalchemy import MetaData
from sqlalchemy.engine import URL

from .._resources import template_dir
from ..errors import PgDispatchError
from ..urls import UrlError, normalize_url
from .install_ops import FORCE_UNINSTALL_OPTION, InstallPgdispatchOp

__all__ = [
    "FORCE_UNINSTALL_OPTION",
    "METADATA_OPTION",
    "OWN_SCHEMAS",
    "URL_ENV_VARS",
    "configure_options",
    "database_url",
    "include_name",
    "init_project",
    "load_target_metadata",
]

#: Environment variables read (in this order) for the database URL.
URL_ENV_VARS = ("SA_PGDISPATCH_URL", "DATABASE_URL")
#: The alembic.ini option (section [alembic]) naming the models' MetaData.
METADATA_OPTION = "sa_pgdispatch.metadata"
#: Schemas owned by sa_pgdispatch and pg_cron, never compared by autogenerate.
OWN_SCHEMAS = frozenset({"pgdispatch", "cron"})

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}
_URL_PLACEHOLDER = "postgresql+psycopg://user:password@localhost/dbname"
_METADATA_PLACEHOLDER = ""
_TEMPLATE_SKIP = {"alembic.ini.mako", "__pycache__"}

NameFilter = Callable[[str | None, str, Mapping[str, Any]], bool]


class TemplateError(PgDispatchError, CommandError):
    """The project template cannot be used as asked (a bad URL, option or target)."""


# ------------------------------------------------------------------------- env.py helpers


def _normalize_url(raw: str, source: str) -> URL:
    """The rule of :mod:`sa_pgdispatch.urls` (the CLI's too), as a ``CommandError``
    naming where the URL came from."""
    try:
        return normalize_url(raw)
    except UrlError as exc:
        raise TemplateError(f"{exc} (the URL from {source})") from None


def database_url(config: Config, environ: Mapping[str, str] | None = None) -> URL:
    """The migrations' database URL: ``$SA_PGDISPATCH_URL``, ``$DATABASE_URL``, alembic.ini.

    ``postgresql://`` and ``postgres://`` become ``postgresql+psycopg://``
    (:mod:`sa_pgdispatch.urls`, the rule the CLI follows too). Raises
    ``alembic.util.CommandError`` (shown by the ``alembic`` command as ``FAILED: ...``)
    when there is no URL, or when it is not PostgreSQL through psycopg 3.
    """
    env = os.environ if environ is None else environ
    for var in URL_ENV_VARS:
        if env.get(var):
            return _normalize_url(env[var], f"${var}")
    configured = config.get_main_option("sqlalchemy.url")
    if configured and configured.strip() and configured.strip() != _URL_PLACEHOLDER:
        return _normalize_url(configured.strip(), f"sqlalchemy.url in {config.config_file_name}")
    raise TemplateError(
        "no database URL: set $SA_PGDISPATCH_URL or $DATABASE_URL, or sqlalchemy.url in "
        f"{config.config_file_name or 'alembic.ini'} (postgresql+psycopg://user@host/dbname)"
    )


def _load_one(spec: str) -> MetaData:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise TemplateError(
            f"{METADATA_OPTION} = {spec!r}: expected 'package.module:attribute', "
            "e.g. myapp.models:Base.metadata"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise TemplateError(f"{METADATA_OPTION}: cannot import {module_name!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TemplateError(
                f"{METADATA_OPTION} = {spec!r}: {module_name} has no attribute {attribute!r}"
            ) from None
    if not isinstance(obj, MetaData):
        raise TemplateError(
            f"{METADATA_OPTION} = {spec!r} is a {type(obj).__name__}, not a sqlalchemy MetaData"
        )
    return obj


def load_target_metadata(config: Config) -> MetaData | list[MetaData] | None:
    """The MetaData named by ``sa_pgdispatch.metadata`` in alembic.ini (None when unset).

    The option is ``package.module:attribute`` (``myapp.models:Base.metadata``); several,
    separated by commas or whitespace, give a list (Alembic compares them all).
    """
    value = config.get_main_option(METADATA_OPTION) or ""
    specs = value.replace(",", " ").split()
    if not specs:
        return None
    loaded = [_load_one(spec) for spec in specs]
    return loaded[0] if len(loaded) == 1 else loaded


def include_name(name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
    """An ``include_name`` filter that skips the ``pgdispatch`` and ``cron`` schemas.

    Those schemas belong to sa_pgdispatch and pg_cron: autogenerate must never try to
    drop their tables (it would with ``include_schemas=True``).
    """
    if type_ == "schema":
        return name not in OWN_SCHEMAS
    return parent_names.get("schema_name") not in OWN_SCHEMAS


def _flag(value: str | None, name: str) -> bool:
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise TemplateError(f"-x {name}={value!r}: expected true or false")


def configure_options(
    config: Config,
    *,
    x_arguments: Mapping[str, str] | None = None,
    include_schemas: bool = False,
    name_filter: NameFilter | None = None,
) -> dict[str, Any]:
    """Options for ``context.configure()`` shared by online and offline runs.

    * ``transaction_per_migration=True``: each revision commits on its own.
    * ``include_name``: :func:`include_name`, and then ``name_filter`` when given.
    * ``pgdispatch_force_uninstall``: from ``alembic -x force_uninstall=true ...``; lets
      ``op.uninstall_pgdispatch()`` drop pgdispatch while jobs are queued.
    """
    x_args = dict(x_arguments or {})
    force = _flag(x_args.get("force_uninstall"), "force_uninstall")

    def _include_name(name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
        if not include_name(name, type_, parent_names):
            return False
        return name_filter is None or name_filter(name, type_, parent_names)

    return {
        "transaction_per_migration": True,
        "include_schemas": include_schemas,
        "include_name": _include_name,
        FORCE_UNINSTALL_OPTION: force,
    }


# ------------------------------------------------------------------------- init_project


def _ini_value(value: str) -> str:
    # alembic.ini is read with ConfigParser interpolation: a literal % is written %%.
    return value.replace("%", "%%")


def _first_revision_text(operations: list[ops.MigrateOperation]) -> str:
    """The rendered calls, without Alembic's "commands auto generated" comments (the
    first revision is written by us, not detected), indented for script.py.mako."""
    rendered = render_python_code(ops.UpgradeOps(ops=operations))
    lines = [line.strip() for line in rendered.splitlines()]
    return "\n    ".join(line for line in lines if line and not line.startswith("# ###"))


def init_project(
    directory: str | os.PathLike[str],
    *,
    url: str | None = None,
    install_revision: bool = True,
    config_file: str | os.PathLike[str] | None = None,
    metadata: str | None = None,
) -> Path:
    """Write an Alembic environment wired for sa_pgdispatch; return the alembic.ini path.

    Like ``alembic init <directory>``: ``directory`` becomes the migration environment
    (``env.py``, ``script.py.mako``, ``README.md``, ``versions/``) and must be absent or
    empty; ``alembic.ini`` is written next to it (or at ``config_file``) and must not
    exist yet. ``url`` goes into ``sqlalchemy.url`` (``$SA_PGDISPATCH_URL`` and
    ``$DATABASE_URL`` still override it at run time); ``metadata`` into
    ``sa_pgdispatch.metadata`` (``myapp.models:Base.metadata``). With
    ``install_revision`` a first revision installs pgdispatch (its downgrade
    uninstalls it). Nothing touches a database.
    """
    target = Path(directory).absolute()
    ini = Path(config_file).absolute() if config_file is not None else target.parent / "alembic.ini"
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise TemplateError(f"Directory {target} already exists and is not empty")
    if ini.exists():
        raise TemplateError(f"{ini} already exists; pass another config_file or remove it")
    if url is not None:
        _normalize_url(url, "init_project(url=...)")
    if metadata is not None and metadata.strip():
        for spec in metadata.replace(",", " ").split():
            if ":" not in spec:
                raise TemplateError(
                    f"metadata={metadata!r}: expected 'package.module:attribute'"
                )

    source = template_dir()
    target.mkdir(parents=True, exist_ok=True)
    (target / "versions").mkdir()
    for item in sorted(source.iterdir()):
        if item.name in _TEMPLATE_SKIP or not item.is_file():
            continue
        shutil.copyfile(item, target / item.name)

    try:
        rel = target.relative_to(ini.parent)
        script_location = "%(here)s/" + rel.as_posix()
    except ValueError:
        script_location = target.as_posix()
    rendered = Template(
        filename=str(source / "alembic.ini.mako")
    ).render(
        script_location=script_location,
        url=_ini_value(url) if url else _URL_PLACEHOLDER,
        metadata=_ini_value(metadata.strip()) if metadata else _METADATA_PLACEHOLDER,
    )
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text(rendered, encoding="utf-8")

    if install_revision:
        install = InstallPgdispatchOp()
        cfg = Config(str(ini))
        script = ScriptDirectory.from_config(cfg)
        script.generate_revision(
            rev_id(),
            "install pgdispatch",
            refresh=True,
            upgrades=_first_revision_text([install]),
            downgrades=_first_revision_text([install.reverse()]),
        )
    return ini
