"""sa_pgdispatch: asynchronous SQL side effects inside PostgreSQL, on pg_cron.

The dispatcher itself is SQL (schema ``pgdispatch``, see docs/sql-api.md); this package
installs it and makes it native to SQLAlchemy and Alembic:

* :func:`install` / :func:`upgrade` / :func:`uninstall` - the SQL schema, versioned, as
  plain SQL, a native extension or a pg_tle extension (:func:`installed_via`).
* :func:`start_workers` / :func:`stop_workers` / :func:`worker_budget` - a role's pg_cron
  workers (also from pg_cron's database, for an app database: ``cron_url``).
* ``func.pgdispatch.*`` - typed SQL functions (registered on import).
* :func:`fire` / :func:`snooze` / :func:`dispatch` - dispatch a SQLAlchemy statement.
* :class:`DispatchTrigger` - declarative dispatch triggers for models and tables.
* :mod:`sa_pgdispatch.jobs` - follow jobs to their results (sync and async).
* :mod:`sa_pgdispatch.alembic` - Alembic operations and autogenerate (imported on
  demand: importing it registers them with Alembic).
* :mod:`sa_pgdispatch.testing` - throwaway PostgreSQL + pg_cron, ``drain``, pytest plugin.

See docs/architecture.md for how the parts fit.
"""

from __future__ import annotations

from . import functions, jobs
from .errors import (
    DrainError,
    JobCancelled,
    JobFailed,
    JobNotFinished,
    JobNotFound,
    JobTimeout,
    NotInstalled,
    PermissionDenied,
    PgDispatchError,
    WorkerError,
)
from .functions import VOID
from .install import (
    InstallError,
    available_versions,
    install,
    install_sql,
    installed_version,
    installed_via,
    latest_version,
    uninstall,
    uninstall_sql,
    upgrade,
    upgrade_sql,
)
from .jobs import Job, JobState, JobStats
from .statements import DispatchRenderError, dispatch, fire, render_sql, snooze
from .triggers import (
    CreateDefinerTriggerFunction,
    CreateDispatchTrigger,
    DispatchSpec,
    DispatchTrigger,
    DispatchTriggerError,
    DispatchTriggerInfo,
    DropDispatchTrigger,
    PgDispatchNotInstalledError,
    create_dispatch_trigger_ddl,
    definitions_equal,
    dispatch_triggers,
    metadata_dispatch_triggers,
    new_row,
    old_row,
    reflect_dispatch_triggers,
)
from .workers import WorkerBudget, start_workers, stop_workers, worker_budget

__version__ = "0.1.0"

__all__ = [
    "VOID",
    "CreateDefinerTriggerFunction",
    "CreateDispatchTrigger",
    "DispatchRenderError",
    "DispatchSpec",
    "DispatchTrigger",
    "DispatchTriggerError",
    "DispatchTriggerInfo",
    "DrainError",
    "DropDispatchTrigger",
    "InstallError",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobNotFinished",
    "JobNotFound",
    "JobState",
    "JobStats",
    "JobTimeout",
    "NotInstalled",
    "PermissionDenied",
    "PgDispatchError",
    "PgDispatchNotInstalledError",
    "WorkerBudget",
    "WorkerError",
    "__version__",
    "available_versions",
    "create_dispatch_trigger_ddl",
    "definitions_equal",
    "dispatch",
    "dispatch_triggers",
    "fire",
    "functions",
    "install",
    "install_sql",
    "installed_version",
    "installed_via",
    "jobs",
    "latest_version",
    "metadata_dispatch_triggers",
    "new_row",
    "old_row",
    "reflect_dispatch_triggers",
    "render_sql",
    "snooze",
    "start_workers",
    "stop_workers",
    "uninstall",
    "uninstall_sql",
    "upgrade",
    "upgrade_sql",
    "worker_budget",
]
