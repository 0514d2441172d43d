"""The Alembic operations on dispatch triggers: ``op.create_dispatch_trigger(...)`` /
``op.drop_dispatch_trigger(...)`` (a drop carries the full definition, so that its
reverse re-creates the same trigger) and ``op.replace_dispatch_trigger(...,
existing={...})`` (a changed definition, migrated in place; its reverse restores
``existing``). Their implementations are in :mod:`.toimpl`.

The operations carry a :class:`~sa_pgdispatch.triggers.DispatchSpec` (built once from
the call's keywords, validated there), or an :class:`~sa_pgdispatch.triggers.InvalidSpec`
for a definition given only so that a drop or replace can be reversed that the spec
refuses. Their keywords come from the spec's: ``create_dispatch_trigger`` /
``replace_dispatch_trigger`` take ``**options: Unpack[DispatchOptions]`` (the TypedDict
next to ``DispatchSpec``), so an option added to the spec needs no change here.
Alembic's ``register_operation`` copies each classmethod's argument list into
``Operations.<name>`` (the ``op.<name>`` proxy is ``*args, **kw`` plus the docstring),
which is why the trigger name, table, function and ``schema`` stay explicit: they are
the operation's own, not the spec's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

import sqlalchemy as sa
from alembic.operations import MigrateOperation, Operations

from ..errors import DispatchTriggerError, DispatchTriggerOpError
from ..triggers import (
    DispatchOptions,
    DispatchSpec,
    DispatchTrigger,
    DispatchTriggerInfo,
    IntervalOptionError,
    InvalidSpec,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack: Python 3.11

__all__ = [
    "CreateDispatchTriggerOp",
    "Definition",
    "DropDispatchTriggerOp",
    "ReplaceDispatchTriggerOp",
    "TriggerDefinition",
    "TriggerOp",
    "recreatable",
]

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


def recreatable(definition: Definition, what: str, op: TriggerOp) -> DispatchSpec:
    """``definition`` as a spec to create a trigger from; raises
    :class:`DispatchTriggerOpError` for an :class:`InvalidSpec`."""
    try:
        return definition.to_spec(op.trigger_name)
    except DispatchTriggerError as exc:
        raise DispatchTriggerOpError(
            f"{what} trigger {op.trigger_name!r} on {op.table_name!r}: its definition "
            f"cannot be re-created: {exc}"
        ) from exc


class TriggerOp(MigrateOperation):
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
        return recreatable(definition, what, self)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.trigger_name!r}, {self.table_name!r}, "
            f"schema={self.schema!r}, definition={self.definition!r})"
        )


@Operations.register_operation("create_dispatch_trigger")
class CreateDispatchTriggerOp(TriggerOp):
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
class DropDispatchTriggerOp(TriggerOp):
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
        invalid definition is carried into the reverse, see :class:`TriggerOp`)."""
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
class ReplaceDispatchTriggerOp(TriggerOp):
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

