# Alembic configuration of a project that uses sa_pgdispatch.
# Written by `sa-pgdispatch init`; see docs/alembic.md of sa_pgdispatch.

[alembic]
# Path to the migration environment (env.py, script.py.mako, versions/).
script_location = ${script_location}

# Prepended to sys.path: lets env.py import your models from the project root.
prepend_sys_path = .
path_separator = os

# Where your models' MetaData lives, for `alembic revision --autogenerate`:
# "package.module:attribute", e.g. myapp.models:Base.metadata (or myapp.db:metadata).
# The DispatchTrigger objects declared on its tables are compared with the database.
sa_pgdispatch.metadata = ${metadata}

# The database: PostgreSQL through psycopg 3. $SA_PGDISPATCH_URL, then $DATABASE_URL,
# override this line. postgresql:// and postgres:// URLs are read as postgresql+psycopg://.
# Percent signs must be doubled here (%%), as everywhere in this file.
sqlalchemy.url = ${url}

[post_write_hooks]

[loggers]
keys = root,sqlalchemy,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
datefmt = %H:%M:%S
