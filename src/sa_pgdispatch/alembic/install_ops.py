"""The Alembic operations on pgdispatch itself: ``op.install_pgdispatch()``,
``op.uninstall_pgdispatch()`` (each the reverse of the other) and
``op.upgrade_pgdispatch()`` (no reverse), with where they find ``cron_url``
(:func:`resolve_cron_url`). Their implementations are in :mod:`.toimpl`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from alembic.operations import MigrateOperation, Operations
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError

from ..errors import DispatchTriggerOpError
from ..install import InstallError, Via
from ..urls import CRON_URL_ENV_VAR

__all__ = [
    "CRON_URL_ATTRIBUTE",
    "CRON_URL_ENV_VAR",
    "CRON_URL_INI_OPTION",
    "CRON_URL_OPTION",
    "CRON_URL_X_ARGUMENT",
    "FORCE_UNINSTALL_OPTION",
    "InstallPgdispatchOp",
    "PgdispatchMigrationError",
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
#: alembic.ini option, section ``[alembic]`` (a URL without a password: ~/.pgpass).
CRON_URL_INI_OPTION = "sa_pgdispatch.cron_url"


class PgdispatchMigrationError(InstallError, CommandError):
    """pgdispatch cannot be installed, upgraded or uninstalled by a migration.

    An :class:`~sa_pgdispatch.install.InstallError` for Python callers, and an
    ``alembic.util.CommandError`` so that the ``alembic`` command prints
    ``FAILED: <message>`` instead of a traceback.
    """


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

