"""Alembic operations for pgdispatch and dispatch triggers, with their reverses.

Importing this module (``import sa_pgdispatch.alembic`` does) registers on
``alembic.op``:

* ``op.install_pgdispatch(version=None, workers=1, cron_url=None, via="sql")`` /
  ``op.uninstall_pgdispatch(force=False, cron_url=None)`` (each the reverse of the other;
  ``via``: plain SQL, a native ``extension`` or a ``pg_tle`` extension);
* ``op.upgrade_pgdispatch(to_version=None, from_version=None)`` (no reverse: pgdispatch
  has no downgrade scripts; online it follows the installed path, offline ``via=...``
  names it);
* ``op.create_dispatch_trigger(...)`` / ``op.drop_dispatch_trigger(...)`` (a drop carries
  the full definition, so that its reverse re-creates the same trigger) and
  ``op.replace_dispatch_trigger(..., existing={...})`` (a changed definition, migrated
  in place; its reverse restores ``existing``).

Every operation works online and in offline mode (``alembic upgrade --sql``): the
pgdispatch scripts come from :func:`sa_pgdispatch.install.install_sql` /
:func:`~sa_pgdispatch.install.uninstall_sql`, the trigger DDL from the constructs of
:mod:`sa_pgdispatch.triggers`.

The trigger operations carry a :class:`~sa_pgdispatch.triggers.DispatchSpec` (built once
from the call's keywords, validated there), or an
:class:`~sa_pgdispatch.triggers.InvalidSpec` for a definition given only so that a drop
or replace can be reversed that the spec refuses. Their keywords come from the spec's:
``create_dispatch_trigger`` / ``replace_dispatch_trigger`` take
``**options: Unpack[DispatchOptions]`` (the TypedDict next to ``DispatchSpec``), so an
option added to the spec needs no change here. Alembic's ``register_operation`` copies
each classmethod's argument list into ``Operations.<name>`` (the ``op.<name>`` proxy is
``*args, **kw`` plus the docstring), which is why the trigger name, table, function and
``schema`` stay explicit: they are the operation's own, not the spec's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

import psycopg
import sqlalchemy as sa
from alembic.operations import MigrateOperation, Operations
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.sql.expression import TableClause

from ..errors import DispatchTriggerError, DispatchTriggerOpError, WorkerError
from ..install import (
    InstallError,
    Via,
    install,
    install_sql,
    uninstall,
    uninstall_sql,
    upgrade,
)
from ..install import upgrade_sql as _upgrade_sql
from ..triggers import (
    DispatchOptions,
    DispatchSpec,
    DispatchTrigger,
    DispatchTriggerInfo,
    DropDispatchTrigger,
    IntervalOptionError,
    InvalidSpec,
    check_installed,
    create_dispatch_trigger_ddl,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack: Python 3.11

__all__ = [
    "CRON_URL_ATTRIBUTE",
    "CRON_URL_ENV_VAR",
    "CRON_URL_INI_OPTION",
    "CRON_URL_OPTION",
    "CRON_URL_X_ARGUMENT",
    "FORCE_UNINSTALL_OPTION",
    "CreateDispatchTriggerOp",
    "DispatchTriggerOpError",
    "DropDispatchTriggerOp",
    "InstallPgdispatchOp",
    "PgdispatchMigrationError",
    "ReplaceDispatchTriggerOp",
    "TriggerDefinition",
    "UninstallPgdispatchOp",
    "UpgradePgdispatchOp",
    "resolve_cron_url",
]

#: MigrationContext option (``context.configure(pgdispatch_force_uninstall=True)``) that
#: makes every ``op.uninstall_pgdispatch()`` forced. The template's env.py sets it from
#: ``alembic -x force_uninstall=true ...``.
FORCE_UNINSTALL_OPTION = "pgdispatch_force_uninstall"

# Where ``op.install_pgdispatch()`` / ``op.uninstall_pgdispatch()`` find ``cron_url`` (the
# URL of pg_cron's database, for an app database apart from it) when the operation does
# not name one; the first that is set wins (see resolve_cron_url):
#: MigrationContext option: ``context.configure(pgdispatch_cron_url=...)``.
CRON_URL_OPTION = "pgdispatch_cron_url"
#: ``alembic -x cron_url=... upgrade head``.
CRON_URL_X_ARGUMENT = "cron_url"
#: ``Config.attributes`` key, for programmatic runs (``cfg.attributes[...] = url``).
CRON_URL_ATTRIBUTE = "sa_pgdispatch.cron_url"
#: Environment variable (also read by the ``sa-pgdispatch`` command).
CRON_URL_ENV_VAR = "SA_PGDISPATCH_CRON_URL"
#: alembic.ini option, section ``[alembic]`` (a URL without a password: ~/.pgpass).
CRON_URL_INI_OPTION = "sa_pgdispatch.cron_url"


class PgdispatchMigrationError(InstallError, CommandError):
    """pgdispatch cannot be installed, upgraded or uninstalled by a migration.

    An :class:`~sa_pgdispatch.install.InstallError` for Python callers, and an
    ``alembic.util.CommandError`` so that the ``alembic`` command prints
    ``FAILED: <message>`` instead of a traceback.
    """


# ---------------------------------------------------------------------------------------
# trigger definitions

TriggerDefinition = DispatchSpec
"""What a dispatch trigger operation carries: a :class:`DispatchSpec` (this name is kept
for the code that imported it; a drop or replace may instead carry an
:class:`~sa_pgdispatch.triggers.InvalidSpec`, see :data:`Definition`)."""

Definition: TypeAlias = DispatchSpec | InvalidSpec
"""A spec, or the arguments of one that the spec refused: a trigger read from the
database, or the definition written into a migration, that pgdispatch.trigger() would
refuse (a drop or replace still runs; re-creating it raises)."""

_KEYWORDS = frozenset(DispatchSpec("f").arguments())


def _spec(trigger_name: str, function: str, options: DispatchOptions) -> DispatchSpec:
    """The spec of ``op.create_dispatch_trigger`` / ``op.replace_dispatch_trigger``
    arguments (``when`` must be SQL text in a migration)."""
    when = options.get("when")
    if when is not None and not isinstance(when, str):
        raise DispatchTriggerOpError(
            f"trigger {trigger_name!r}: in a migration, when is SQL text "
            f"(e.g. \"NEW.status = 'active'\"), got {when!r}"
        )
    return DispatchSpec(function, trigger_name=trigger_name, **options)


def _definition(trigger_name: str, values: Mapping[str, Any]) -> Definition:
    """The definition of keyword arguments given so that an operation can be reversed (a
    drop's ``**definition``, the ``existing={...}`` of a replace). One whose delay or
    timeout an older sa_pgdispatch let through (and pgdispatch.trigger() refuses) must not
    stop the migration that drops or replaces it: it becomes an :class:`InvalidSpec`, and
    only re-creating it (the reverse) raises. Any other refusal raises here."""
    unknown = sorted(set(values) - _KEYWORDS)
    if unknown:
        raise DispatchTriggerOpError(
            f"trigger {trigger_name!r}: unknown definition argument(s) {', '.join(unknown)} "
            f"(expected {', '.join(sorted(_KEYWORDS))})"
        )
    if not values.get("function"):
        raise DispatchTriggerOpError(
            f"trigger {trigger_name!r}: the definition needs function='schema.fn'"
        )
    options = cast(DispatchOptions, {k: v for k, v in values.items() if k != "function"})
    try:
        return _spec(trigger_name, values["function"], options)
    except IntervalOptionError as exc:
        return InvalidSpec.of(values, exc)


def _recreatable(definition: Definition, what: str, op: _TriggerOp) -> DispatchSpec:
    """``definition`` as a spec to create a trigger from; raises
    :class:`DispatchTriggerOpError` for an :class:`InvalidSpec`."""
    try:
        return definition.to_spec(op.trigger_name)
    except DispatchTriggerError as exc:
        raise DispatchTriggerOpError(
            f"{what} trigger {op.trigger_name!r} on {op.table_name!r}: its definition "
            f"cannot be re-created: {exc}"
        ) from exc


# ---------------------------------------------------------------------------------------
# pgdispatch itself


@Operations.register_operation("install_pgdispatch")
class InstallPgdispatchOp(MigrateOperation):
    """Install pgdispatch (``version``: default the latest this package ships).

    ``workers``: pg_cron workers started for the migrating role (0 or None: none; the
    first dispatch starts them). Online, an existing older install is upgraded and the
    same version is left alone (:func:`sa_pgdispatch.install.install`); offline it
    writes the full install script, for an empty database.

    ``cron_url``: for an app database apart from pg_cron's, a URL of pg_cron's database
    (``cron.database_name``) for the same role, where the workers are scheduled with
    ``cron.schedule_in_database()``. Better left out of the migration and given by the
    deployment (``-x cron_url=...``, ``$SA_PGDISPATCH_CRON_URL``, ...: see
    :func:`resolve_cron_url`). Offline, with a ``cron_url`` from anywhere, the script
    starts no workers and ends with comments saying how to start them from pg_cron's
    database.

    ``via``: how a fresh install is made (:func:`sa_pgdispatch.install.install`):
    ``"sql"`` (plain SQL), ``"extension"`` (``CREATE EXTENSION`` from the server's
    extension directory) or ``"pg_tle"`` (registered with pg_tle by a member of
    ``pgtle_admin``, then ``CREATE EXTENSION``; offline, the registration calls carry the
    scripts as dollar-quoted literals).
    """

    def __init__(
        self,
        version: str | None = None,
        workers: int | None = 1,
        cron_url: str | None = None,
        via: Via = "sql",
    ) -> None:
        self.version = version
        self.workers = workers
        self.cron_url = cron_url
        self.via: Via = via

    @classmethod
    def install_pgdispatch(
        cls,
        operations: Operations,
        version: str | None = None,
        workers: int | None = 1,
        cron_url: str | None = None,
        via: Via = "sql",
    ) -> None:
        """Install pgdispatch; see :class:`InstallPgdispatchOp`."""
        operations.invoke(cls(version=version, workers=workers, cron_url=cron_url, via=via))

    def reverse(self) -> UninstallPgdispatchOp:
        return UninstallPgdispatchOp(
            force=False,
            version=self.version,
            workers=self.workers,
            cron_url=self.cron_url,
            via=self.via,
        )

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("install_pgdispatch", self.version)


@Operations.register_operation("uninstall_pgdispatch")
class UninstallPgdispatchOp(MigrateOperation):
    """Remove pgdispatch: its schema, its pg_cron jobs, its definer trigger functions.

    Refuses (in SQL, ``pgdispatch.prepare_uninstall``, so offline scripts refuse too)
    while jobs are queued or running, or dispatch triggers exist, unless ``force`` (or
    the migration context option ``pgdispatch_force_uninstall``, set by the template's
    env.py from ``alembic -x force_uninstall=true``). ``version`` / ``workers`` only
    serve the reverse (the install it undoes).

    ``cron_url`` (as for :class:`InstallPgdispatchOp`): in an app database, where its
    workers are unscheduled. Offline, with a ``cron_url`` from anywhere, comments before
    the ``DROP`` say how to unschedule them in pg_cron's database.

    ``via``: online, pgdispatch is removed the way it was installed (an extension is
    dropped, and pg_tle's registration of it removed); offline, ``via`` says which way
    that was. It is also the reverse's ``via``.
    """

    def __init__(
        self,
        force: bool = False,
        *,
        version: str | None = None,
        workers: int | None = 1,
        cron_url: str | None = None,
        via: Via = "sql",
    ) -> None:
        self.force = force
        self.version = version
        self.workers = workers
        self.cron_url = cron_url
        self.via: Via = via

    @classmethod
    def uninstall_pgdispatch(
        cls,
        operations: Operations,
        force: bool = False,
        cron_url: str | None = None,
        via: Via = "sql",
    ) -> None:
        """Uninstall pgdispatch; see :class:`UninstallPgdispatchOp`."""
        operations.invoke(cls(force=force, cron_url=cron_url, via=via))

    def reverse(self) -> InstallPgdispatchOp:
        return InstallPgdispatchOp(
            version=self.version, workers=self.workers, cron_url=self.cron_url, via=self.via
        )

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("uninstall_pgdispatch", self.force)


@Operations.register_operation("upgrade_pgdispatch")
class UpgradePgdispatchOp(MigrateOperation):
    """Upgrade an installed pgdispatch to ``to_version`` (default: the latest).

    Online the installed version, and how it was installed, are read from the database
    (an extension is updated with ``ALTER EXTENSION``). Offline they cannot be, so
    ``from_version`` is required there, and ``via`` says how pgdispatch was installed.
    pgdispatch has no downgrade scripts, so this operation has no reverse: :meth:`reverse`
    raises, and the ``downgrade()`` of a revision that upgrades pgdispatch is written by
    hand (usually ``pass``: the newer version stays installed, with its queued jobs).
    """

    def __init__(
        self,
        to_version: str | None = None,
        from_version: str | None = None,
        via: Via = "sql",
    ) -> None:
        self.to_version = to_version
        self.from_version = from_version
        self.via: Via = via

    @classmethod
    def upgrade_pgdispatch(
        cls,
        operations: Operations,
        to_version: str | None = None,
        from_version: str | None = None,
        via: Via = "sql",
    ) -> None:
        """Upgrade pgdispatch; see :class:`UpgradePgdispatchOp`."""
        operations.invoke(cls(to_version=to_version, from_version=from_version, via=via))

    def reverse(self) -> MigrateOperation:
        raise DispatchTriggerOpError(
            "op.upgrade_pgdispatch() has no reverse: pgdispatch upgrades cannot be "
            "downgraded. Write this revision's downgrade() by hand (usually `pass`: the "
            "newer version stays installed)."
        )

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("upgrade_pgdispatch", self.from_version, self.to_version)


# ---------------------------------------------------------------------------------------
# dispatch triggers


class _TriggerOp(MigrateOperation):
    """A trigger operation. Its ``definition`` (and a replace's ``existing``) is a
    :class:`DispatchSpec`, or an :class:`InvalidSpec` where the trigger it re-creates is
    one pgdispatch.trigger() refuses (see :func:`_definition`); running an operation
    that would create an InvalidSpec raises.

    ``invalid_reverse`` says what :meth:`reverse` does with an InvalidSpec it would
    re-create: ``"raise"`` (the default: an operation a migration runs, whose reverse
    would run at once) or ``"carry"`` (an operation autogenerate made from the database:
    its reverse is rendered into the downgrade, which refuses the definition when it
    runs, as any migration creating it does).
    """

    def __init__(
        self,
        trigger_name: str,
        table_name: str,
        definition: Definition | None,
        *,
        schema: str | None = None,
        invalid_reverse: Literal["raise", "carry"] = "raise",
    ) -> None:
        self.trigger_name = trigger_name
        self.table_name = table_name
        self.schema = schema
        self.definition = definition
        self.invalid_reverse: Literal["raise", "carry"] = invalid_reverse

    def _reversed(self, definition: Definition | None, what: str, missing: str) -> Definition:
        """``definition`` for the reverse operation to create."""
        if definition is None:
            raise DispatchTriggerOpError(
                f"{what} trigger {self.trigger_name!r} on {self.table_name!r}: {missing}"
            )
        if self.invalid_reverse == "carry":
            return definition
        return _recreatable(definition, what, self)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.trigger_name!r}, {self.table_name!r}, "
            f"schema={self.schema!r}, definition={self.definition!r})"
        )


@Operations.register_operation("create_dispatch_trigger")
class CreateDispatchTriggerOp(_TriggerOp):
    """``CREATE TRIGGER ... EXECUTE FUNCTION pgdispatch.trigger(...)``; reverse: drop."""

    definition: Definition

    def __init__(
        self,
        trigger_name: str,
        table_name: str,
        definition: Definition,
        *,
        schema: str | None = None,
        invalid_reverse: Literal["raise", "carry"] = "raise",
    ) -> None:
        super().__init__(
            trigger_name, table_name, definition, schema=schema, invalid_reverse=invalid_reverse
        )

    @classmethod
    def create_dispatch_trigger(
        cls,
        operations: Operations,
        trigger_name: str,
        table_name: str,
        function: str,
        *,
        schema: str | None = None,
        **options: Unpack[DispatchOptions],
    ) -> None:
        """Create a dispatch trigger: an ``AFTER`` trigger that dispatches ``function``.

        The keywords are those of :class:`sa_pgdispatch.triggers.DispatchTrigger`
        (``on``, ``columns``, ``when`` - as SQL text -, ``for_each``, ``delay``,
        ``priority``, ``max_attempts``, ``timeout``, ``security``; see there).
        ``security="definer"`` first makes ``<schema>.pgdispatch_definer_trigger()``
        (``pgdispatch.definer_trigger_function``).
        """
        spec = _spec(trigger_name, function, options)
        operations.invoke(cls(trigger_name, table_name, spec, schema=schema))

    @classmethod
    def from_trigger(
        cls, trigger: DispatchTrigger, table: sa.Table, *, schema: str | None = None
    ) -> CreateDispatchTriggerOp:
        """The operation that creates a declared trigger (``schema`` as rendered)."""
        return cls(trigger.name, table.name, trigger.spec_for(table), schema=schema)

    def reverse(self) -> DropDispatchTriggerOp:
        return DropDispatchTriggerOp(
            self.trigger_name, self.table_name, self.definition, schema=self.schema,
            invalid_reverse=self.invalid_reverse,
        )

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("add_dispatch_trigger", self.schema, self.table_name, self.trigger_name,
                self.definition)


@Operations.register_operation("drop_dispatch_trigger")
class DropDispatchTriggerOp(_TriggerOp):
    """``DROP TRIGGER``; reverse: create, from the definition the drop carries."""

    @classmethod
    def drop_dispatch_trigger(
        cls,
        operations: Operations,
        trigger_name: str,
        table_name: str,
        schema: str | None = None,
        **definition: Any,
    ) -> None:
        """Drop a dispatch trigger.

        ``definition`` (``function=..., on=..., when=...``, the keywords of
        ``create_dispatch_trigger``) is optional for the drop itself; autogenerate
        always writes it, so that the operation can be reversed.
        """
        operations.invoke(cls.from_definition(trigger_name, table_name, schema, **definition))

    @classmethod
    def from_definition(
        cls, trigger_name: str, table_name: str, schema: str | None = None, **definition: Any
    ) -> DropDispatchTriggerOp:
        """The operation ``drop_dispatch_trigger()`` runs (``definition`` only serves the
        reverse: one with a delay or timeout pgdispatch.trigger() refuses is kept as an
        :class:`InvalidSpec`, whose reverse raises, and the drop still runs)."""
        parsed = _definition(trigger_name, definition) if definition else None
        return cls(trigger_name, table_name, parsed, schema=schema)

    @classmethod
    def from_info(cls, info: DispatchTriggerInfo, *, schema: str | None) -> DropDispatchTriggerOp:
        """The operation that drops a reflected trigger (``schema`` as rendered; an
        invalid definition is carried into the reverse, see :class:`_TriggerOp`)."""
        return cls(
            info.name, info.table_name, info.definition, schema=schema, invalid_reverse="carry"
        )

    def reverse(self) -> CreateDispatchTriggerOp:
        definition = self._reversed(
            self.definition,
            "cannot reverse the drop of",
            "its definition is unknown; give drop_dispatch_trigger() the trigger's arguments "
            "(function=..., on=..., ...) so that it can be re-created",
        )
        return CreateDispatchTriggerOp(
            self.trigger_name, self.table_name, definition, schema=self.schema,
            invalid_reverse=self.invalid_reverse,
        )

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("remove_dispatch_trigger", self.schema, self.table_name, self.trigger_name,
                self.definition)


@Operations.register_operation("replace_dispatch_trigger")
class ReplaceDispatchTriggerOp(_TriggerOp):
    """Change a dispatch trigger's definition in place, in the migration's transaction.

    ``CREATE OR REPLACE TRIGGER`` on PostgreSQL 14 and later, ``DROP TRIGGER`` then
    ``CREATE TRIGGER`` before 14 and in offline mode (where the server version is not
    known). ``existing`` is the definition being replaced: the reverse restores it.
    """

    definition: Definition

    def __init__(
        self,
        trigger_name: str,
        table_name: str,
        definition: Definition,
        *,
        schema: str | None = None,
        existing: Definition | None = None,
        invalid_reverse: Literal["raise", "carry"] = "raise",
    ) -> None:
        super().__init__(
            trigger_name, table_name, definition, schema=schema, invalid_reverse=invalid_reverse
        )
        self.existing = existing

    @classmethod
    def replace_dispatch_trigger(
        cls,
        operations: Operations,
        trigger_name: str,
        table_name: str,
        function: str,
        *,
        schema: str | None = None,
        existing: Mapping[str, Any] | None = None,
        **options: Unpack[DispatchOptions],
    ) -> None:
        """Give an existing dispatch trigger a new definition (the arguments of
        ``create_dispatch_trigger``); ``existing`` (``{"function": ..., ...}``) is the
        old definition, needed only to reverse the operation."""
        spec = _spec(trigger_name, function, options)
        old = _definition(trigger_name, existing) if existing else None
        operations.invoke(cls(trigger_name, table_name, spec, schema=schema, existing=old))

    def reverse(self) -> ReplaceDispatchTriggerOp:
        existing = self._reversed(
            self.existing,
            "cannot reverse the replacement of",
            "give replace_dispatch_trigger() existing={...} (the definition it replaces)",
        )
        return ReplaceDispatchTriggerOp(
            self.trigger_name,
            self.table_name,
            existing,
            schema=self.schema,
            existing=self.definition,
            invalid_reverse=self.invalid_reverse,
        )

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("replace_dispatch_trigger", self.schema, self.table_name, self.trigger_name,
                self.existing, self.definition)


# ---------------------------------------------------------------------------------------
# implementations


def _context(operations: Operations) -> MigrationContext:
    return operations.get_context()


def _static(operations: Operations, script: str) -> None:
    """Write an SQL script verbatim into the offline output (no compilation: the
    pgdispatch scripts hold dollar quotes, % signs and colons)."""
    _context(operations).impl.static_output(script.strip())


def _connection(operations: Operations) -> sa.Connection:
    conn = _context(operations).connection
    if conn is None:  # pragma: no cover - online mode always has one
        raise DispatchTriggerOpError("no database connection in online mode")
    return conn


def resolve_cron_url(
    context: MigrationContext,
    cron_url: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The ``cron_url`` an install/uninstall operation uses: the first that is set of

    1. the operation's own ``cron_url=...`` (``cron_url`` here);
    2. the MigrationContext option ``pgdispatch_cron_url``
       (``context.configure(..., pgdispatch_cron_url=...)`` in env.py);
    3. ``alembic -x cron_url=... upgrade head``;
    4. ``config.attributes["sa_pgdispatch.cron_url"]`` (``command.upgrade(cfg, ...)``
       from Python);
    5. ``$SA_PGDISPATCH_CRON_URL``;
    6. ``sa_pgdispatch.cron_url`` in alembic.ini (section ``[alembic]``).

    An empty value counts as unset. None: no cron_url (pgdispatch lives in pg_cron's
    database, which is the usual case). The URL is never written into offline output.
    """
    if cron_url:
        return cron_url
    option = context.opts.get(CRON_URL_OPTION)
    if option:
        return str(option)
    env_context = context.environment_context
    config = context.config
    if env_context is not None and config is not None and config.cmd_opts is not None:
        x_value = env_context.get_x_argument(as_dictionary=True).get(CRON_URL_X_ARGUMENT)
        if x_value:
            return x_value
    if config is not None and config.attributes.get(CRON_URL_ATTRIBUTE):
        return str(config.attributes[CRON_URL_ATTRIBUTE])
    env = os.environ if environ is None else environ
    if env.get(CRON_URL_ENV_VAR):
        return env[CRON_URL_ENV_VAR]
    if config is not None and config.config_file_name is not None:
        ini_value = config.get_main_option(CRON_URL_INI_OPTION)
        if ini_value and ini_value.strip():
            return ini_value.strip()
    return None


def _cron_database_name(cron_url: str) -> str | None:
    """The database named by *cron_url* (never its password), for offline comments."""
    try:
        if "://" in cron_url:
            return make_url(cron_url).database
        return conninfo_to_dict(cron_url).get("dbname")  # type: ignore[return-value]
    except (ArgumentError, psycopg.Error, ValueError):
        return None


def _comment(text: str) -> str:
    return "\n".join(f"-- {line}".rstrip() for line in text.strip().splitlines())


def _cron_steps(cron_db: str, args: str, role_note: str) -> str:
    """The two steps that carry out ``cron_statements(<args>)`` from an app database."""
    return f"""
  1. in THIS database, connected as the role that runs this script, run
       SELECT * FROM pgdispatch.cron_statements({args});
  2. run the statements it returns, in order, in {cron_db},
     connected as the SAME role ({role_note}). With psql:
       psql "$APP_DATABASE_URL" -Atc \\
         "SELECT s || ';' FROM pgdispatch.cron_statements({args}) s" \\
         | psql "$CRON_DATABASE_URL" -v ON_ERROR_STOP=1 --single-transaction
"""


def _offline_start_comment(cron_url: str, workers: int | None) -> str:
    """What to run after an offline install into an app database (no workers started)."""
    where = _cron_database_name(cron_url)
    cron_db = f"pg_cron's database ({where})" if where else "pg_cron's database"
    count = int(workers) if workers else None
    args = "'start'" if count is None else f"'start', {count}"
    steps = _cron_steps(cron_db, args, "they call cron.schedule_in_database()")
    return _comment(f"""
pgdispatch: pg_cron runs in another database than this one (cron_url is set), so this
script starts no workers. Once it has run, start them from {cron_db}:
{steps.strip(chr(10))}
From Python: sa_pgdispatch.start_workers(conn, {count}, cron_url=...).
The role needs, once, in pg_cron's database: GRANT USAGE ON SCHEMA cron TO <role>;
GRANT EXECUTE ON FUNCTION cron.schedule_in_database(text, text, text, text, text, boolean)
TO <role>;
""")


def _offline_uninstall_comment(cron_url: str) -> str:
    """What to run in pg_cron's database when an offline uninstall drops pgdispatch from
    an app database (its workers are scheduled there)."""
    where = _cron_database_name(cron_url)
    cron_db = f"pg_cron's database ({where})" if where else "pg_cron's database"
    steps = _cron_steps(
        cron_db, "'uninstall'", "as a superuser: every role's workers of this database"
    )
    return _comment(f"""
pgdispatch: pg_cron runs in another database than this one (cron_url is set), where this
database's workers are scheduled. Unschedule them before the DROP SCHEMA below runs
(e.g. before applying this script):
{steps.strip(chr(10))}
Once pgdispatch is dropped, the same is, in {cron_db}:
  SELECT cron.unschedule(j.jobid) FROM cron.job j
   WHERE j.database = '<this database>' AND j.jobname LIKE 'pgdispatch:%';
""")


def _cron_hint(exc: Exception) -> str:
    return (
        f"{exc}. In a migration, give cron_url without writing it into the revision: "
        f"`alembic -x {CRON_URL_X_ARGUMENT}=postgresql://<same role>@<host>/<pg_cron's "
        f"database> ...`, ${CRON_URL_ENV_VAR}, config.attributes[{CRON_URL_ATTRIBUTE!r}] "
        f"or {CRON_URL_INI_OPTION} in alembic.ini"
    )


@Operations.implementation_for(InstallPgdispatchOp)
def _install(operations: Operations, operation: InstallPgdispatchOp) -> None:
    ctx = _context(operations)
    cron_url = resolve_cron_url(ctx, operation.cron_url)
    via = operation.via
    if ctx.as_sql:
        if cron_url is None:
            _static(operations, install_sql(operation.version, workers=operation.workers, via=via))
        else:
            _static(operations, install_sql(operation.version, workers=None, via=via))
            _static(operations, _offline_start_comment(cron_url, operation.workers))
        return
    try:
        install(
            _connection(operations),
            version=operation.version,
            workers=operation.workers,
            cron_url=cron_url,
            via=via,
        )
    except (InstallError, WorkerError) as exc:
        if isinstance(exc, PgdispatchMigrationError):
            raise
        message = _cron_hint(exc) if "cron_url" in str(exc) else str(exc)
        raise PgdispatchMigrationError(message) from exc


@Operations.implementation_for(UninstallPgdispatchOp)
def _uninstall(operations: Operations, operation: UninstallPgdispatchOp) -> None:
    ctx = _context(operations)
    force = operation.force or bool(ctx.opts.get(FORCE_UNINSTALL_OPTION, False))
    cron_url = resolve_cron_url(ctx, operation.cron_url)
    if ctx.as_sql:
        script = uninstall_sql(force=force, via=operation.via)
        if cron_url is not None:
            # before the first DROP (the extension's, or the schema's)
            at = script.index("\nDROP ") + 1
            script = f"{script[:at]}{_offline_uninstall_comment(cron_url)}\n{script[at:]}"
        _static(operations, script)
        return
    try:
        uninstall(_connection(operations), force=force, cron_url=cron_url)
    except PgdispatchMigrationError:
        raise
    except WorkerError as exc:
        raise PgdispatchMigrationError(str(exc)) from exc
    except InstallError as exc:
        if "cron_url" in str(exc):
            raise PgdispatchMigrationError(_cron_hint(exc)) from exc
        raise PgdispatchMigrationError(
            f"{exc}. To uninstall anyway (queued jobs are lost), force it: "
            "op.uninstall_pgdispatch(force=True), or with the sa_pgdispatch template "
            "`alembic -x force_uninstall=true downgrade ...`"
        ) from exc


@Operations.implementation_for(UpgradePgdispatchOp)
def _upgrade(operations: Operations, operation: UpgradePgdispatchOp) -> None:
    if _context(operations).as_sql:
        if operation.from_version is None:
            raise PgdispatchMigrationError(
                "op.upgrade_pgdispatch() in offline (--sql) mode needs from_version=...: "
                "the installed version cannot be read without a database"
            )
        script = _upgrade_sql(operation.from_version, operation.to_version, via=operation.via)
        if script.strip():
            _static(operations, script)
    else:
        try:
            upgrade(_connection(operations), operation.to_version)
        except PgdispatchMigrationError:
            raise
        except InstallError as exc:
            raise PgdispatchMigrationError(str(exc)) from exc


def _table(operation: _TriggerOp) -> TableClause:
    return sa.table(operation.table_name, schema=operation.schema)


def _create(operations: Operations, operation: _TriggerOp, definition: Definition,
            *, or_replace: bool = False) -> None:
    spec = _recreatable(definition, "cannot create", operation)
    trigger = DispatchTrigger.from_spec(operation.trigger_name, spec)
    if _context(operations).as_sql:
        # online, the DDL checks them through the server before it runs (CreateDispatchTrigger)
        for option, value in trigger.unchecked_intervals:
            raise IntervalOptionError(
                option, value,
                f"{option} {value!r} cannot be checked without a database (offline --sql "
                "mode), and pgdispatch.trigger() would refuse it on every statement that "
                "fires the trigger if it is not a valid interval: write it as a timedelta or "
                "as plain text such as '5 seconds', '1 hour 30 minutes' or 'PT5S'",
            )
    else:
        # a clear error instead of "function pgdispatch.trigger() does not exist"
        check_installed(_connection(operations))
    for ddl in create_dispatch_trigger_ddl(trigger, _table(operation), or_replace=or_replace):
        operations.execute(ddl)


@Operations.implementation_for(CreateDispatchTriggerOp)
def _create_trigger(operations: Operations, operation: CreateDispatchTriggerOp) -> None:
    _create(operations, operation, operation.definition)


@Operations.implementation_for(DropDispatchTriggerOp)
def _drop_trigger(operations: Operations, operation: DropDispatchTriggerOp) -> None:
    operations.execute(DropDispatchTrigger(operation.trigger_name, _table(operation)))


def _supports_or_replace(operations: Operations) -> bool:
    ctx = _context(operations)
    if ctx.as_sql:
        return False
    version = ctx.dialect.server_version_info
    return version is not None and version >= (14,)


@Operations.implementation_for(ReplaceDispatchTriggerOp)
def _replace_trigger(operations: Operations, operation: ReplaceDispatchTriggerOp) -> None:
    if _supports_or_replace(operations):
        _create(operations, operation, operation.definition, or_replace=True)
    else:
        operations.execute(DropDispatchTrigger(operation.trigger_name, _table(operation)))
        _create(operations, operation, operation.definition)
