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

Every operation works online and in offline mode (``alembic upgrade --sql``).

This module gathers them where they have always been imported from. As in Alembic
(``operations/ops.py``, ``operations/toimpl.py``, ``autogenerate/render.py``), they live
in :mod:`.install_ops` (the operations on pgdispatch itself, and where they find
``cron_url``), :mod:`.trigger_ops` (the dispatch trigger operations), :mod:`.toimpl`
(what they do, online and offline) and :mod:`.autogenerate` (the comparator, and the
renderers that write them into revision files).
"""

from __future__ import annotations

from ..errors import DispatchTriggerOpError
from . import toimpl as toimpl  # the implementations: registered on import
from .install_ops import (
    CRON_URL_ATTRIBUTE,
    CRON_URL_ENV_VAR,
    CRON_URL_INI_OPTION,
    CRON_URL_OPTION,
    CRON_URL_X_ARGUMENT,
    FORCE_UNINSTALL_OPTION,
    InstallPgdispatchOp,
    PgdispatchMigrationError,
    UninstallPgdispatchOp,
    UpgradePgdispatchOp,
    resolve_cron_url,
)
from .trigger_ops import (
    CreateDispatchTriggerOp,
    DropDispatchTriggerOp,
    ReplaceDispatchTriggerOp,
    TriggerDefinition,
)
from .trigger_ops import Definition as Definition  # a type alias the docs name

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
