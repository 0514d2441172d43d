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
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import psycopg
import sqlalchemy as sa
from alembic.operations import MigrateOperation, Operations
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.sql.expression import TableClause

from .._interval import IntervalArg
from ..errors import DispatchTriggerOpError, WorkerError
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
    DispatchSpec,
    DispatchTrigger,
    DispatchTriggerInfo,
    DropDispatchTrigger,
    IntervalOptionError,
    check_installed,
    create_dispatch_trigger_ddl,
)

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


@dataclasses.dataclass(frozen=True)
class TriggerDefinition:
    """What a dispatch trigger does, as a migration writes it: the arguments of a
    :class:`~sa_pgdispatch.triggers.DispatchSpec` (``when`` as SQL text).

    Built from a spec (:meth:`build`, :meth:`from_spec`, :meth:`from_trigger`: validated
    and normalised there), or from a reflected trigger (:meth:`from_info`: what the
    database holds, which may be what pgdispatch.trigger() refuses - the ``existing`` of a
    replace, the definition a drop carries); :meth:`to_spec` validates it again.
    """

    function: str
    on: tuple[str, ...] = ("insert",)
    columns: tuple[str, ...] | None = None
    when: str | None = None
    for_each: Literal["row", "statement"] = "row"
    delay: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    timeout: str | None = None
    security: Literal["invoker", "definer"] = "invoker"

    @classmethod
    def build(cls, trigger_name: str, function: str, **arguments: Any) -> TriggerDefinition:
        """Validate the arguments (those of :class:`DispatchSpec`, ``when`` as SQL text)
        and normalise them."""
        when = arguments.get("when")
        if when is not None and not isinstance(when, str):
            raise DispatchTriggerOpError(
                f"trigger {trigger_name!r}: in a migration, when is SQL text "
                f"(e.g. \"NEW.status = 'active'\"), got {when!r}"
            )
        return cls.from_spec(DispatchSpec(function, trigger_name=trigger_name, **arguments))

    @classmethod
    def from_spec(cls, spec: DispatchSpec) -> TriggerDefinition:
        """The definition of a spec whose ``when`` is SQL text (or None)."""
        return cls(**spec.arguments())

    @classmethod
    def from_trigger(
        cls, trigger: DispatchTrigger, table: sa.Table | TableClause | None = None
    ) -> TriggerDefinition:
        """The definition of a declared :class:`DispatchTrigger` (``when`` rendered)."""
        when = trigger.when_sql(table if table is not None else trigger.table)
        return cls.from_spec(trigger.spec.replace(when=when, trigger_name=trigger.name))

    @classmethod
    def from_info(cls, info: DispatchTriggerInfo) -> TriggerDefinition:
        """The definition of a reflected trigger (:func:`reflect_dispatch_triggers`)."""
        if info.timing != "after" or info.unknown_options:
            raise DispatchTriggerOpError(
                f"trigger {info.name!r} on {info.table_name!r} uses pgdispatch.trigger() in a "
                "way a DispatchTrigger cannot express (timing "
                f"{info.timing}, events {info.events}, unknown options {info.unknown_options})"
            )
        return cls(
            function=info.function,
            on=info.events,
            columns=info.columns or None,
            when=info.when,
            for_each="statement" if info.for_each == "statement" else "row",
            delay=info.delay,
            priority=None if info.priority is None else int(info.priority),
            max_attempts=None if info.max_attempts is None else int(info.max_attempts),
            timeout=info.timeout,
            security="definer" if info.security == "definer" else "invoker",
        )

    @classmethod
    def from_mapping(cls, trigger_name: str, values: Mapping[str, Any]) -> TriggerDefinition:
        """A definition from keyword arguments (``drop_dispatch_trigger(**definition)``,
        ``existing={...}``); ``function`` is required."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DispatchTriggerOpError(
                f"trigger {trigger_name!r}: unknown definition argument(s) {', '.join(unknown)} "
                f"(expected {', '.join(sorted(known))})"
            )
        if not values.get("function"):
            raise DispatchTriggerOpError(
                f"trigger {trigger_name!r}: the definition needs function='schema.fn'"
            )
        return cls.build(trigger_name, **values)

    def kwargs(self) -> dict[str, Any]:
        """Every field but ``function`` (the ``op.create_dispatch_trigger`` keywords)."""
        values = dataclasses.asdict(self)
        del values["function"]
        return values

    def non_default_kwargs(self) -> dict[str, Any]:
        """The keywords whose value is not the default, in field order (for rendering)."""
        defaults = TriggerDefinition(function=self.function)
        return {k: v for k, v in self.kwargs().items() if getattr(defaults, k) != v}

    def as_mapping(self) -> dict[str, Any]:
        """All non-default fields including ``function`` (``existing={...}``)."""
        return {"function": self.function, **self.non_default_kwargs()}

    def to_spec(self, trigger_name: str | None = None) -> DispatchSpec:
        """The validated :class:`DispatchSpec` of this definition."""
        return DispatchSpec(**self.kwargs(), function=self.function, trigger_name=trigger_name)

    def to_trigger(self, trigger_name: str) -> DispatchTrigger:
        """A (detached) :class:`DispatchTrigger` with this definition."""
        return DispatchTrigger.from_spec(trigger_name, self.to_spec(trigger_name))


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


def _definition_to_recreate(
    trigger_name: str, values: Mapping[str, Any]
) -> tuple[TriggerDefinition | None, IntervalOptionError | None]:
    """A definition given only so that an operation can be reversed (a drop's, the
    ``existing`` of a replace): a trigger whose delay or timeout an older sa_pgdispatch
    let through (and pgdispatch.trigger() refuses) must not stop the migration that
    drops or replaces it. Only re-creating it is refused, by the reverse."""
    try:
        return TriggerDefinition.from_mapping(trigger_name, values), None
    except IntervalOptionError as exc:
        return None, exc


class _TriggerOp(MigrateOperation):
    #: why the definition to re-create the trigger from is unusable (see
    #: _definition_to_recreate); the reverse raises it
    definition_error: IntervalOptionError | None = None

    def __init__(
        self,
        trigger_name: str,
        table_name: str,
        definition: TriggerDefinition | None,
        *,
        schema: str | None = None,
    ) -> None:
        self.trigger_name = trigger_name
        self.table_name = table_name
        self.schema = schema
        self.definition = definition

    def _required_definition(self, what: str) -> TriggerDefinition:
        if self.definition is None and self.definition_error is not None:
            raise DispatchTriggerOpError(
                f"{what} trigger {self.trigger_name!r} on {self.table_name!r}: its definition "
                f"cannot be re-created: {self.definition_error}"
            ) from self.definition_error
        if self.definition is None:
            raise DispatchTriggerOpError(
                f"{what} trigger {self.trigger_name!r} on {self.table_name!r}: its definition is "
                "unknown; give drop_dispatch_trigger() the trigger's arguments "
                "(function=..., on=..., ...) so that it can be re-created"
            )
        return self.definition

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.trigger_name!r}, {self.table_name!r}, "
            f"schema={self.schema!r}, definition={self.definition!r})"
        )


@Operations.register_operation("create_dispatch_trigger")
class CreateDispatchTriggerOp(_TriggerOp):
    """``CREATE TRIGGER ... EXECUTE FUNCTION pgdispatch.trigger(...)``; reverse: drop."""

    definition: TriggerDefinition

    def __init__(
        self,
        trigger_name: str,
        table_name: str,
        definition: TriggerDefinition,
        *,
        schema: str | None = None,
    ) -> None:
        super().__init__(trigger_name, table_name, definition, schema=schema)

    @classmethod
    def create_dispatch_trigger(
        cls,
        operations: Operations,
        trigger_name: str,
        table_name: str,
        function: str,
        *,
        schema: str | None = None,
        on: str | Sequence[str] = ("insert",),
        columns: Sequence[str] | None = None,
        when: str | None = None,
        for_each: Literal["row", "statement"] = "row",
        delay: IntervalArg | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        timeout: IntervalArg | None = None,
        security: Literal["invoker", "definer"] = "invoker",
    ) -> None:
        """Create a dispatch trigger: an ``AFTER`` trigger that dispatches ``function``.

        The arguments are those of :class:`sa_pgdispatch.triggers.DispatchTrigger`
        (``when`` as SQL text). ``security="definer"`` first makes
        ``<schema>.pgdispatch_definer_trigger()`` (``pgdispatch.definer_trigger_function``).
        """
        definition = TriggerDefinition.build(
            trigger_name,
            function,
            on=on,
            columns=columns,
            when=when,
            for_each=for_each,
            delay=delay,
            priority=priority,
            max_attempts=max_attempts,
            timeout=timeout,
            security=security,
        )
        operations.invoke(cls(trigger_name, table_name, definition, schema=schema))

    @classmethod
    def from_trigger(
        cls, trigger: DispatchTrigger, table: sa.Table, *, schema: str | None = None
    ) -> CreateDispatchTriggerOp:
        """The operation that creates a declared trigger (``schema`` as rendered)."""
        return cls(
            trigger.name, table.name, TriggerDefinition.from_trigger(trigger, table), schema=schema
        )

    def reverse(self) -> DropDispatchTriggerOp:
        return DropDispatchTriggerOp(
            self.trigger_name, self.table_name, self.definition, schema=self.schema
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
        reverse: one with a delay or timeout pgdispatch.trigger() refuses is kept as the
        reverse's error, and the drop still runs)."""
        parsed, error = (
            _definition_to_recreate(trigger_name, definition) if definition else (None, None)
        )
        op = cls(trigger_name, table_name, parsed, schema=schema)
        if error is not None:
            op.definition_error = error
        return op

    @classmethod
    def from_info(cls, info: DispatchTriggerInfo, *, schema: str | None) -> DropDispatchTriggerOp:
        """The operation that drops a reflected trigger (``schema`` as rendered)."""
        return cls(info.name, info.table_name, TriggerDefinition.from_info(info), schema=schema)

    def reverse(self) -> CreateDispatchTriggerOp:
        definition = self._required_definition("cannot reverse the drop of")
        return CreateDispatchTriggerOp(
            self.trigger_name, self.table_name, definition, schema=self.schema
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

    definition: TriggerDefinition

    def __init__(
        self,
        trigger_name: str,
        table_name: str,
        definition: TriggerDefinition,
        *,
        schema: str | None = None,
        existing: TriggerDefinition | None = None,
    ) -> None:
        super().__init__(trigger_name, table_name, definition, schema=schema)
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
        on: str | Sequence[str] = ("insert",),
        columns: Sequence[str] | None = None,
        when: str | None = None,
        for_each: Literal["row", "statement"] = "row",
        delay: IntervalArg | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        timeout: IntervalArg | None = None,
        security: Literal["invoker", "definer"] = "invoker",
        existing: Mapping[str, Any] | None = None,
    ) -> None:
        """Give an existing dispatch trigger a new definition (the arguments of
        ``create_dispatch_trigger``); ``existing`` (``{"function": ..., ...}``) is the
        old definition, needed only to reverse the operation."""
        definition = TriggerDefinition.build(
            trigger_name,
            function,
            on=on,
            columns=columns,
            when=when,
            for_each=for_each,
            delay=delay,
            priority=priority,
            max_attempts=max_attempts,
            timeout=timeout,
            security=security,
        )
        old, error = (
            _definition_to_recreate(trigger_name, existing) if existing else (None, None)
        )
        op = cls(trigger_name, table_name, definition, schema=schema, existing=old)
        if error is not None:
            op.existing_error = error
        operations.invoke(op)

    #: why ``existing`` cannot be restored (a delay or timeout pgdispatch.trigger()
    #: refuses); the reverse raises it
    existing_error: IntervalOptionError | None = None

    def reverse(self) -> ReplaceDispatchTriggerOp:
        if self.existing is None and self.existing_error is not None:
            raise DispatchTriggerOpError(
                f"cannot reverse the replacement of trigger {self.trigger_name!r} on "
                f"{self.table_name!r}: the definition it replaced cannot be re-created: "
                f"{self.existing_error}"
            ) from self.existing_error
        if self.existing is None:
            raise DispatchTriggerOpError(
                f"cannot reverse the replacement of trigger {self.trigger_name!r} on "
                f"{self.table_name!r}: give replace_dispatch_trigger() existing={{...}} "
                "(the definition it replaces)"
            )
        return ReplaceDispatchTriggerOp(
            self.trigger_name,
            self.table_name,
            self.existing,
            schema=self.schema,
            existing=self.definition,
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


def _create(operations: Operations, operation: _TriggerOp, definition: TriggerDefinition,
            *, or_replace: bool = False) -> None:
    trigger = definition.to_trigger(operation.trigger_name)
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
