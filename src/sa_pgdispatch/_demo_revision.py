"""demo app: profiles, notifications, a slow welcome, dispatched on insert

Revision ID: demo_app
Revises: the install revision of the migrations template

The Alembic revision of the app that ``sa-pgdispatch demo`` writes: the demo copies
this file into the app's ``versions/`` folder, setting ``revision``, ``down_revision``
and ``SCHEMA`` (see :func:`sa_pgdispatch.demo.demo_revision`).
"""

import sqlalchemy as sa
from alembic import op

from sa_pgdispatch.triggers import DispatchTrigger

revision: str = "demo_app"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

SCHEMA = "demo"

metadata = sa.MetaData(schema=SCHEMA)
profiles = sa.Table(
    "profiles",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("mode", sa.Text, nullable=False),  # 'inline' or 'dispatched'
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    # The side effect of a new profile, run by a pg_cron worker after the INSERT commits.
    DispatchTrigger(
        "profiles_welcome",
        SCHEMA + ".send_welcome",
        on="insert",
        when="NEW.mode = 'dispatched'",
    ),
)
notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("profile_id", sa.BigInteger, nullable=False, unique=True),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True), server_default=sa.func.clock_timestamp()),
)


def upgrade() -> None:
    op.execute(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"')
    # tables, then the dispatch trigger declared on profiles
    metadata.create_all(op.get_bind())
    op.execute(f"""
    CREATE FUNCTION "{SCHEMA}".send_welcome(profile jsonb) RETURNS void
    LANGUAGE plpgsql AS $$
    BEGIN
      PERFORM pg_sleep(0.2);  -- a slow side effect: an e-mail API, a PDF, a webhook...
      INSERT INTO "{SCHEMA}".notifications (profile_id, message)
      VALUES ((profile ->> 'id')::bigint, 'Welcome, ' || (profile ->> 'name') || '!');
    END $$""")
    # The "RPC" your API calls: with the side effect inline, the caller waits for it...
    op.execute(f"""
    CREATE FUNCTION "{SCHEMA}".create_profile_inline(name text, email text) RETURNS bigint
    LANGUAGE plpgsql AS $$
    DECLARE p "{SCHEMA}".profiles;
    BEGIN
      INSERT INTO "{SCHEMA}".profiles (name, email, mode) VALUES (name, email, 'inline')
      RETURNING * INTO p;
      PERFORM "{SCHEMA}".send_welcome(to_jsonb(p));
      RETURN p.id;
    END $$""")
    # ...dispatched, the trigger queues it and the caller returns at once.
    op.execute(f"""
    CREATE FUNCTION "{SCHEMA}".create_profile(name text, email text) RETURNS bigint
    LANGUAGE plpgsql AS $$
    DECLARE new_id bigint;
    BEGIN
      INSERT INTO "{SCHEMA}".profiles (name, email, mode) VALUES (name, email, 'dispatched')
      RETURNING id INTO new_id;
      RETURN new_id;
    END $$""")


def downgrade() -> None:
    op.execute(f'DROP SCHEMA "{SCHEMA}" CASCADE')
