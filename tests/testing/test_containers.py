"""The docker (testcontainers) backend: real when an engine answers, a clear skip otherwise."""

from __future__ import annotations

import psycopg
import pytest

from sa_pgdispatch.testing import BackendUnavailable, provision_server
from sa_pgdispatch.testing.containers import (
    DEFAULT_IMAGE,
    ENV_TEST_IMAGE,
    DockerPostgres,
    docker_engine_status,
)

ENGINE = docker_engine_status()


@pytest.mark.skipif(ENGINE is None, reason="a Docker engine answers here")
def test_without_engine_the_backend_is_unavailable() -> None:
    server = DockerPostgres()
    with pytest.raises(BackendUnavailable, match="needs a Docker engine"), server:
        pass
    with pytest.raises(BackendUnavailable), provision_server("docker"):
        pass


def test_command_carries_the_pg_cron_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_TEST_IMAGE, raising=False)
    server = DockerPostgres(dbname="cronhere", settings={"work_mem": "8MB"})
    command = server._command()
    assert command[0] == "postgres"
    pairs = dict(arg.split("=", 1) for arg in command[2::2])
    assert pairs["shared_preload_libraries"] == "pg_cron"
    assert pairs["cron.database_name"] == "cronhere"
    assert pairs["fsync"] == "off"
    assert pairs["work_mem"] == "8MB"
    assert server.image == DEFAULT_IMAGE
    monkeypatch.setenv(ENV_TEST_IMAGE, "example/postgres-with-cron:15")
    assert DockerPostgres().image == "example/postgres-with-cron:15"


@pytest.mark.slow
@pytest.mark.db  # a server in a container
@pytest.mark.skipif(ENGINE is not None, reason=f"no Docker engine answers ({ENGINE})")
def test_container_runs_pg_cron() -> None:
    with DockerPostgres() as server, psycopg.connect(server.dsn) as conn:
        assert conn.execute("SHOW cron.database_name").fetchone() == ("pgdispatch",)
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'")
        assert row.fetchone() is not None
