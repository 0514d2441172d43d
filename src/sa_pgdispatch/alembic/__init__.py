"""Alembic support for sa_pgdispatch: operations, autogenerate and a project template.

``import sa_pgdispatch.alembic`` (the template's env.py and revision files do) registers:

* the operations ``op.install_pgdispatch``, ``op.uninstall_pgdispatch``,
  ``op.upgrade_pgdispatch``, ``op.create_dispatch_trigger``, ``op.drop_dispatch_trigger``
  and ``op.replace_dispatch_trigger`` (:mod:`.ops`);
* the autogenerate comparison of declared ``DispatchTrigger`` objects with the database,
  and the renderers of those operations (:mod:`.autogenerate`).

:func:`init_project` writes an Alembic environment wired for sa_pgdispatch
(``sa-pgdispatch init``). See docs/alembic.md.
"""

from __future__ import annotations

from .autogenerate import OBJECT_TYPE, compare_dispatch_triggers
from .ops import (
    CRON_URL_ATTRIBUTE,
    CRON_URL_ENV_VAR,
    CRON_URL_INI_OPTION,
    CRON_URL_OPTION,
    CRON_URL_X_ARGUMENT,
    FORCE_UNINSTALL_OPTION,
    CreateDispatchTriggerOp,
    DispatchTriggerOpError,
    DropDispatchTriggerOp,
    InstallPgdispatchOp,
    PgdispatchMigrationError,
    ReplaceDispatchTriggerOp,
    TriggerDefinition,
    UninstallPgdispatchOp,
    UpgradePgdispatchOp,
    resolve_cron_url,
)
from .template import (
    configure_options,
    database_url,
    include_name,
    init_project,
    load_target_metadata,
)

__all__ = [
    "CRON_URL_ATTRIBUTE",
    "CRON_URL_ENV_VAR",
    "CRON_URL_INI_OPTION",
    "CRON_URL_OPTION",
    "CRON_URL_X_ARGUMENT",
    "FORCE_UNINSTALL_OPTION",
    "OBJECT_TYPE",
    "CreateDispatchTriggerOp",
    "DispatchTriggerOpError",
    "DropDispatchTriggerOp",
    "InstallPgdispatchOp",
    "PgdispatchMigrationError",
    "ReplaceDispatchTriggerOp",
    "TriggerDefinition",
    "UninstallPgdispatchOp",
    "UpgradePgdispatchOp",
    "compare_dispatch_triggers",
    "configure_options",
    "database_url",
    "include_name",
    "init_project",
    "load_target_metadata",
    "resolve_cron_url",
]
