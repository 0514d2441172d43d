"""Using an existing server (SA_PGDISPATCH_TEST_DSN) and choosing the backend."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import create_engine, text

from sa_pgdispatch.testing import (
    ENV_TEST_BACKEND,
    ENV_TEST_DSN,
    EphemeralPostgres,
    ExistingServer,
    HarnessError,
    PgServer,
    provision_server,
    resolve_backend,
    server_from_env,
)


def _keyword_dsn(server: PgServer) -> str:
    return f"host={server.host} port={server.port} dbname={server.dbname} user={server.superuser}"


@pytest.mark.parametrize("form", ["uri", "keywords"])
def test_existing_server_validates_and_connects(pgdispatch_server: PgServer, form: str) -> None:
    dsn = pgdispatch_server.dsn if form == "uri" else _keyword_dsn(pgdispatch_server)
    existing = ExistingServer(dsn).validate()
    assert existing.pg_cron_version is not None
    assert existing.pg_cron_version.startswith("1.")
    assert existing.dsn == dsn
    assert (existing.host, existing.port) == (pgdispatch_server.host, pgdispatch_server.port)
    assert existing.dbname == pgdispatch_server.dbname
    assert existing.superuser == pgdispatch_server.superuser
    engine = create_engine(existing.url)
    try:
        with engine.connect() as conn:
            current = conn.execute(text("SELECT current_database()")).scalar_one()
            assert current == pgdispatch_server.dbname
    finally:
        engine.dispose()
    with psycopg.connect(existing.connect_dsn(dbname="postgres")) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("postgres",)


@pytest.fixture
def database_without_pg_cron(pgdispatch_server: PgServer) -> Iterator[str]:
    name = f"nocron_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pgdispatch_server.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(pgdispatch_server.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_dsn_of_another_database_is_refused_clearly(
    pgdispatch_server: PgServer, database_without_pg_cron: str
) -> None:
    dsn = pgdispatch_server.connect_dsn(dbname=database_without_pg_cron)
    with pytest.raises(HarnessError, match=f"runs jobs from database '{pgdispatch_server.dbname}'"):
        ExistingServer(dsn).validate()


def test_unreachable_server_is_reported() -> None:
    with pytest.raises(HarnessError, match="cannot connect"):
        ExistingServer("postgresql://postgres@127.0.0.1:1/pgdispatch").validate()


def test_invalid_dsn_is_reported() -> None:
    with pytest.raises(HarnessError, match="invalid DSN"):
        ExistingServer("bogus")


def test_password_is_not_shown(pgdispatch_server: PgServer) -> None:
    dsn = "postgresql://postgres:s3cret@127.0.0.1:1/pgdispatch"
    with pytest.raises(HarnessError) as info:
        ExistingServer(dsn).validate()
    assert "s3cret" not in str(info.value)


@pytest.mark.db  # a server of its own
def test_missing_extension_is_created() -> None:
    # A server preloading pg_cron whose cron database lacks the extension.
    with EphemeralPostgres() as server, psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute("DROP EXTENSION pg_cron")
        with pytest.raises(HarnessError, match="no pg_cron extension"):
            ExistingServer(server.dsn).validate(create_extension=False)
        assert ExistingServer(server.dsn).validate().pg_cron_version is not None


def test_server_from_env(pgdispatch_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_TEST_DSN, raising=False)
    assert server_from_env() is None
    monkeypatch.setenv(ENV_TEST_DSN, pgdispatch_server.dsn)
    existing = server_from_env()
    assert isinstance(existing, ExistingServer)
    assert existing.pg_cron_version is not None


def test_backend_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_TEST_DSN, raising=False)
    monkeypatch.delenv(ENV_TEST_BACKEND, raising=False)
    assert resolve_backend() == "ephemeral"
    monkeypatch.setenv(ENV_TEST_DSN, "postgresql://x@/y")
    assert resolve_backend() == "dsn"
    monkeypatch.setenv(ENV_TEST_BACKEND, "Docker")
    assert resolve_backend() == "docker"
    assert resolve_backend("ephemeral") == "ephemeral"
    with pytest.raises(HarnessError, match="unknown test backend"):
        resolve_backend("kubernetes")


def test_provision_dsn_backend(
    pgdispatch_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_TEST_DSN, pgdispatch_server.dsn)
    with provision_server() as server:
        assert isinstance(server, ExistingServer)
        assert server.port == pgdispatch_server.port
    monkeypatch.delenv(ENV_TEST_DSN)
    with pytest.raises(HarnessError, match=ENV_TEST_DSN), provision_server("dsn"):
        pass


@pytest.mark.db  # a server of its own
def test_provision_ephemeral_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_TEST_DSN, raising=False)
    monkeypatch.delenv(ENV_TEST_BACKEND, raising=False)
    with provision_server(dbname="provisioned") as server:
        assert isinstance(server, EphemeralPostgres)
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SHOW cron.database_name").fetchone() == ("provisioned",)
        base = server.base_dir
    assert not base.exists()
