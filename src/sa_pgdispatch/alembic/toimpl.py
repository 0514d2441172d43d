"""What the operations of :mod:`.install_ops` and :mod:`.trigger_ops` do, online and
in offline mode (``alembic upgrade --sql``): the pgdispatch scripts come from
:func:`sa_pgdispatch.install.install_sql` / :func:`~sa_pgdispatch.install.uninstall_sql`,
the trigger DDL from the constructs of :mod:`sa_pgdispatch.triggers`.

Importing this module registers the implementations (``Operations.implementation_for``);
``import sa_pgdispatch.alembic`` does.
"""

from __future__ import annotations

import psycopg
import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.sql.expression import TableClause

from ..errors import DispatchTriggerOpError, WorkerError
from ..install import (
    InstallError,
    install,
    install_sql,
    uninstall,
    uninstall_sql,
    upgrade,
    upgrade_sql,
)
from ..triggers import (
    DispatchTrigger,
    DropDispatchTrigger,
    IntervalOptionError,
    check_installed,
    create_dispatch_trigger_ddl,
)
from .install_ops import (
    CRON_URL_ATTRIBUTE,
    CRON_URL_ENV_VAR,
    CRON_URL_INI_OPTION,
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
    Definition,
    DropDispatchTriggerOp,
    ReplaceDispatchTriggerOp,
    TriggerOp,
    recreatable,
)

__all__: list[str] = []  # registrations only

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
        script = upgrade_sql(operation.from_version, operation.to_version, via=operation.via)
        if script.strip():
            _static(operations, script)
    else:
        try:
            upgrade(_connection(operations), operation.to_version)
        except PgdispatchMigrationError:
            raise
        except InstallError as exc:
            raise PgdispatchMigrationError(str(exc)) from exc


def _table(operation: TriggerOp) -> TableClause:
    return sa.table(operation.table_name, schema=operation.schema)


def _create(operations: Operations, operation: TriggerOp, definition: Definition,
            *, or_replace: bool = False) -> None:
    spec = recreatable(definition, "cannot create", operation)
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
