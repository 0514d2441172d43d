"""Declarative dispatch triggers: a schema item, DDL constructs and introspection.

A :class:`DispatchTrigger` in ``__table_args__`` (or as an argument of
:class:`~sqlalchemy.schema.Table`) declares an ``AFTER`` trigger that dispatches a
side-effect function through ``pgdispatch.trigger()`` (argument format:
``docs/architecture.md``)::

    class Profile(Base):
        __tablename__ = "profiles"
        __table_args__ = (
            DispatchTrigger("profiles_welcome", "app.send_welcome",
                            on=("insert",), delay=timedelta(seconds=5)),
            {"schema": "app"},
        )

``metadata.create_all()`` creates the trigger right after its table (it first checks
that pgdispatch is installed), ``drop_all()`` drops it before the table. The DDL is
also available as :class:`CreateDispatchTrigger` / :class:`DropDispatchTrigger`, and
:func:`reflect_dispatch_triggers` reads existing dispatch triggers back into
:class:`DispatchTriggerInfo` records (name, table, a :class:`DispatchSpec` - or an
:class:`InvalidSpec` for a definition the spec refuses - and what reflection adds) that
compare equal to :meth:`DispatchTrigger.info_for` of the definition that made them.

Identifiers (trigger, table, schema, column names) are quoted by the dialect's
preparer; the side-effect function name is parsed and re-quoted canonically; option
values are validated and rendered as escaped SQL string literals; ``when`` text is
checked to be one self-contained SQL expression (closed quotes, balanced parentheses,
no ``;``, no comments) so that it cannot leave its ``WHEN ( ... )`` clause.

The package is split by role (each module imports only the ones before it):

* ``_sql`` - identifiers, the SQL lexer, ``when`` text, ``pg_get_triggerdef()`` output;
* ``_values`` - option values: intervals as PostgreSQL reads them, ints;
* ``spec`` - :class:`DispatchSpec`, what a trigger does, and all its validation;
  :class:`InvalidSpec`, what it refused;
* ``normalise`` - values normalised through the server, for comparison;
* ``ddl`` - the DDL constructs and their compilers;
* ``schema`` - :class:`DispatchTrigger` (a name plus a spec), :class:`DispatchTriggerInfo`,
  :class:`RowReference`;
* ``reflection`` - :func:`reflect_dispatch_triggers`.

Every name is importable from here, as it was from the single module this was.
"""

from __future__ import annotations

from .._interval import IntervalArg as IntervalArg
from ..errors import DispatchTriggerError, IntervalOptionError, PgDispatchNotInstalledError
from ._sql import MAX_IDENTIFIER_BYTES as MAX_IDENTIFIER_BYTES
from ._sql import check_when_text, parse_function_name

# the private names tests import (they were module-level in the single module)
from ._sql import standardise_strings as _standardise_strings  # noqa: F401
from ._sql import when_from_triggerdef as _when_from_triggerdef  # noqa: F401
from .ddl import DEFINER_FUNCTION as DEFINER_FUNCTION
from .ddl import TRANSITION_NEW as TRANSITION_NEW
from .ddl import TRANSITION_OLD as TRANSITION_OLD
from .ddl import (
    CreateDefinerTriggerFunction,
    CreateDispatchTrigger,
    DropDispatchTrigger,
    check_installed,
    create_dispatch_trigger_ddl,
)
from .reflection import reflect_dispatch_triggers
from .schema import INFO_KEY as INFO_KEY
from .schema import (
    DispatchTrigger,
    DispatchTriggerInfo,
    RowReference,
    definitions_equal,
    dispatch_triggers,
    metadata_dispatch_triggers,
    new_row,
    old_row,
)
from .spec import EVENTS as EVENTS
from .spec import OPTIONS as OPTIONS
from .spec import DispatchOptions, DispatchSpec, InvalidSpec
from .spec import WhenArg as WhenArg
from .spec import check_interval_on_server as check_interval_on_server

__all__ = [
    "CreateDefinerTriggerFunction",
    "CreateDispatchTrigger",
    "DispatchOptions",
    "DispatchSpec",
    "DispatchTrigger",
    "DispatchTriggerError",
    "DispatchTriggerInfo",
    "DropDispatchTrigger",
    "IntervalOptionError",
    "InvalidSpec",
    "PgDispatchNotInstalledError",
    "RowReference",
    "check_installed",
    "check_when_text",
    "create_dispatch_trigger_ddl",
    "definitions_equal",
    "dispatch_triggers",
    "metadata_dispatch_triggers",
    "new_row",
    "old_row",
    "parse_function_name",
    "reflect_dispatch_triggers",
]
