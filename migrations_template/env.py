"""Alembic environment of a project that uses sa_pgdispatch (PostgreSQL only).

Written by ``sa-pgdispatch init`` (``sa_pgdispatch.alembic.init_project``). Edit freely:
it is yours now. What it does:

* ``import sa_pgdispatch.alembic`` registers the pgdispatch operations
  (``op.install_pgdispatch``, ``op.create_dispatch_trigger``, ...) and the autogenerate
  comparison of the ``DispatchTrigger`` objects declared in your metadata.
* The database URL comes from ``$SA_PGDISPATCH_URL``, else ``$DATABASE_URL``, else
  ``sqlalchemy.url`` in alembic.ini. It must be PostgreSQL; ``postgresql://`` and
  ``postgres://`` URLs are read as ``postgresql+psycopg://`` (psycopg 3).
* ``target_metadata`` is loaded from ``sa_pgdispatch.metadata`` in alembic.ini
  (``package.module:attribute``, e.g. ``myapp.models:Base.metadata``).
* Each migration runs in its own transaction (``transaction_per_migration``), online
  and in offline (``--sql``) mode.
* ``alembic -x force_uninstall=true downgrade ...`` lets ``op.uninstall_pgdispatch()``
  drop pgdispatch even while jobs are still queued (they are lost).
* In an app database apart from pg_cron's, the install/uninstall operations read the URL
  of pg_cron's database (same role) from ``-x cron_url=...``, ``$SA_PGDISPATCH_CRON_URL``
  or ``sa_pgdispatch.cron_url`` in alembic.ini (or ``context.configure(...,
  pgdispatch_cron_url=...)`` below).
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

import sa_pgdispatch.alembic  # noqa: F401  (registers the operations and autogenerate)
from sa_pgdispatch.alembic import template

config = context.config

if config.config_file_name is not None:
    fileConfig(config.config_file_name)

# The models' MetaData, for autogenerate (None when sa_pgdispatch.metadata is not set).
target_metadata = template.load_target_metadata(config)

# Options shared by online and offline runs. include_name keeps autogenerate away from
# the schemas that sa_pgdispatch and pg_cron own (pgdispatch, cron); add your own
# include_object / include_name filters around it if you need more.
configure_options = template.configure_options(
    config,
    x_arguments=context.get_x_argument(as_dictionary=True),
    include_schemas=False,
)


def run_migrations_offline() -> None:
    """Write the migrations as SQL (``alembic upgrade head --sql``), no connection."""
    context.configure(
        url=template.database_url(config),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **configure_options,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the database."""
    engine = create_engine(template.database_url(config), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            **configure_options,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
