"""Finding the PostgreSQL binaries and pg_cron, and the errors when they are missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sa_pgdispatch.testing import (
    ENV_PG_BIN,
    EphemeralPostgres,
    HarnessError,
    PgCronNotFound,
    PostgresNotFound,
    find_postgres_bin,
    pg_cron_control_file,
    pg_major,
    require_pg_cron,
)


def test_finds_the_installed_server() -> None:
    bin_dir = find_postgres_bin()
    for program in ("postgres", "initdb", "pg_ctl"):
        assert os.access(bin_dir / program, os.X_OK)
    assert pg_major(bin_dir) >= 13
    control = require_pg_cron(bin_dir)
    assert control == pg_cron_control_file(bin_dir)
    assert control.is_file()


def test_env_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    real = find_postgres_bin()
    monkeypatch.setenv(ENV_PG_BIN, str(real))
    monkeypatch.setenv("PATH", "/nonexistent")  # no pg_config on PATH either
    assert find_postgres_bin() == real


def test_env_variable_pointing_nowhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_PG_BIN, str(tmp_path))
    with pytest.raises(PostgresNotFound) as info:
        find_postgres_bin()
    message = str(info.value)
    assert str(tmp_path) in message
    assert "postgresql-15 postgresql-15-cron" in message
    assert "SA_PGDISPATCH_TEST_DSN" in message
    assert isinstance(info.value, HarnessError)
    assert isinstance(info.value, RuntimeError)


def _bin_dir_without_pg_cron(tmp_path: Path) -> Path:
    """The real server programs, but a pg_config whose sharedir has no pg_cron."""
    real = find_postgres_bin()
    fake = tmp_path / "bin"
    fake.mkdir()
    for program in ("postgres", "initdb", "pg_ctl"):
        (fake / program).symlink_to(real / program)
    share = tmp_path / "share"
    (share / "extension").mkdir(parents=True)
    pg_config = fake / "pg_config"
    pg_config.write_text(f'#!/bin/sh\n[ "$1" = --sharedir ] && echo "{share}"\n')
    pg_config.chmod(0o755)
    return fake


def test_missing_pg_cron_names_the_package(tmp_path: Path) -> None:
    fake = _bin_dir_without_pg_cron(tmp_path)
    major = pg_major(fake)
    with pytest.raises(PgCronNotFound) as info:
        require_pg_cron(fake)
    message = str(info.value)
    assert f"postgresql-{major}-cron" in message
    assert str(tmp_path / "share" / "extension" / "pg_cron.control") in message


def test_ephemeral_server_checks_pg_cron_before_doing_anything(tmp_path: Path) -> None:
    server = EphemeralPostgres(pg_bin=_bin_dir_without_pg_cron(tmp_path))
    with pytest.raises(PgCronNotFound), server:
        pass
    assert not server.running
