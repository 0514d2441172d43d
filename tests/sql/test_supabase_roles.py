"""Supabase's role model, reproduced on a server of its own: a superuser
``supabase_admin`` that created pg_cron, ``postgres`` as a powerful non-superuser that
installs pgdispatch, and NOLOGIN API roles (``anon``, ``authenticated``,
``service_role``) that a LOGIN ``authenticator`` switches to. A definer dispatch
trigger (made by ``create_all`` and by an Alembic migration) lets ``authenticated``
dispatch; the side effect runs as ``postgres``. Runs with the configured pg_cron tree
and mode (both modes in CI)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Engine, create_engine, exc, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import sa_pgdispatch.alembic  # noqa: F401  (registers the operations)
from sa_pgdispatch import DispatchTrigger
from sa_pgdispatch.install import install
from sa_pgdispatch.testing.server import EphemeralPostgres

from .conftest import run

pytestmark = pytest.mark.cron

SUPABASE_ROLES = """
CREATE ROLE postgres LOGIN NOSUPERUSER CREATEDB CREATEROLE REPLICATION BYPASSRLS;
GRANT USAGE ON SCHEMA cron TO postgres WITH GRANT OPTION;
GRANT ALL ON ALL TABLES IN SCHEMA cron TO postgres WITH GRANT OPTION;
GRANT ALL ON ALL FUNCTIONS IN SCHEMA cron TO postgres WITH GRANT OPTION;
GRANT ALL ON ALL SEQUENCES IN SCHEMA cron TO postgres WITH GRANT OPTION;
CREATE ROLE anon NOLOGIN NOINHERIT;
CREATE ROLE authenticated NOLOGIN NOINHERIT;
CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
CREATE ROLE authenticator LOGIN NOINHERIT;
GRANT anon, authenticated, service_role TO authenticator;
GRANT anon, authenticated, service_role TO postgres;
GRANT ALL ON DATABASE pgdispatch TO postgres;
ALTER SCHEMA public OWNER TO postgres;
"""

APP_SCHEMA = """
CREATE SCHEMA app;
GRANT USAGE ON SCHEMA app TO authenticated;
CREATE TABLE app.welcomes (profile_id bigint, inserted_by text, ran_as text, session_as text);
-- the payload is the new row
CREATE FUNCTION app.send_welcome(payload jsonb) RETURNS void LANGUAGE sql AS $$
  INSERT INTO app.welcomes
  VALUES ((payload ->> 'id')::bigint, payload ->> 'owner', current_user, session_user)
$$;
"""


class Base(DeclarativeBase):
    pass


class Profile(Base):
    __tablename__ = "profiles"
    __table_args__ = (
        DispatchTrigger("profiles_welcome", "app.send_welcome", on=("insert",), security="definer"),
        {"schema": "app"},
    )
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(sa.Text, server_default=sa.text("current_user"))


@pytest.fixture(scope="module")
def supabase() -> Iterator[EphemeralPostgres]:
    with EphemeralPostgres(superuser="supabase_admin") as server:
        admin = create_engine(server.url)
        with admin.begin() as conn:
            conn.execute(text(SUPABASE_ROLES))
        admin.dispose()
        yield server


@pytest.fixture(scope="module")
def postgres(supabase: EphemeralPostgres) -> Iterator[Engine]:
    """``postgres``'s engine, pgdispatch installed by it (its workers started)."""
    engine = create_engine(supabase.connect_url(user="postgres"))
    with engine.begin() as conn:
        superuser = "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        assert conn.execute(text(superuser)).scalar() is False
        install(conn)  # starts postgres's workers: pg_cron 1.4's minute tick starts counting
        conn.execute(text(APP_SCHEMA))
    yield engine
    engine.dispose()


def _rls_and_grants(engine: Engine, table: str) -> None:
    run(engine, f"ALTER TABLE app.{table} ENABLE ROW LEVEL SECURITY")
    run(
        engine,
        f"CREATE POLICY insert_own ON app.{table} FOR INSERT TO authenticated WITH CHECK (true)",
    )
    run(engine, f"GRANT INSERT ON app.{table} TO authenticated")


def _insert_as_authenticated(server: EphemeralPostgres, table: str, profile_id: int) -> None:
    """What PostgREST does for a signed-in user: authenticator, then SET ROLE."""
    client = create_engine(server.connect_url(user="authenticator"))
    try:
        with client.begin() as conn:
            conn.execute(text("SET LOCAL ROLE authenticated"))
            conn.execute(text(f"INSERT INTO app.{table} (id) VALUES (:id)"), {"id": profile_id})
    finally:
        client.dispose()


def _wait_for_welcome(engine: Engine, profile_id: int, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.begin() as conn:
            row = conn.execute(
                text("SELECT * FROM app.welcomes WHERE profile_id = :id"), {"id": profile_id}
            ).mappings().first()
        if row is not None:
            return row
        time.sleep(0.2)
    return None


def test_authenticated_dispatches_through_a_definer_trigger_made_by_create_all(
    supabase: EphemeralPostgres, postgres: Engine
) -> None:
    Base.metadata.create_all(postgres)
    _rls_and_grants(postgres, "profiles")
    _insert_as_authenticated(supabase, "profiles", 1)
    row = _wait_for_welcome(postgres, 1, 75)  # up to a minute on pg_cron 1.4
    assert row is not None, "the side effect never ran"
    assert (row["ran_as"], row["session_as"]) == ("postgres", "postgres")
    assert row["inserted_by"] == "authenticated"  # the row was the API role's


def test_authenticated_dispatches_through_a_definer_trigger_made_by_a_migration(
    supabase: EphemeralPostgres, postgres: Engine
) -> None:
    with postgres.begin() as conn:
        conn.execute(text("CREATE TABLE app.signups (id bigint PRIMARY KEY)"))
        op = Operations(MigrationContext.configure(conn))
        op.create_dispatch_trigger(  # type: ignore[attr-defined]
            "signups_welcome", "signups", "app.send_welcome", schema="app", security="definer"
        )
    _rls_and_grants(postgres, "signups")
    _insert_as_authenticated(supabase, "signups", 2)
    row = _wait_for_welcome(postgres, 2, 75)
    assert row is not None, "the side effect never ran"
    assert (row["ran_as"], row["session_as"]) == ("postgres", "postgres")


def test_authenticated_dispatching_directly_gets_a_clear_error(
    supabase: EphemeralPostgres, postgres: Engine
) -> None:
    run(postgres, "SELECT pgdispatch.grant_usage('authenticated')")
    client = create_engine(supabase.connect_url(user="authenticator"))
    try:
        with client.begin() as conn:
            conn.execute(text("SET LOCAL ROLE authenticated"))
            with pytest.raises(exc.DBAPIError, match="role authenticated cannot log in") as raised:
                conn.execute(text("SELECT pgdispatch.fire('SELECT 1')"))
            conn.rollback()
        assert "SECURITY DEFINER" in str(raised.value)
    finally:
        client.dispose()
