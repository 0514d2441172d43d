"""Choosing how pg_cron runs jobs on ephemeral servers: libpq (default) or bgw."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from sa_pgdispatch.testing import ENV_TEST_BACKEND, ENV_TEST_DSN, HarnessError
from sa_pgdispatch.testing.binaries import (
    control_default_version,
    find_postgres_bin,
    has_pg_tle,
    pg_cron_control_file,
    pg_cron_default_version,
)
from sa_pgdispatch.testing.server import (
    CRON_MODES,
    ENV_CRON_MODE,
    EphemeralPostgres,
    resolve_cron_mode,
)


def _settings(server: EphemeralPostgres, *names: str) -> dict[str, str]:
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", [list(names)]
        ).fetchall()
    return dict(rows)


def test_default_is_libpq(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_CRON_MODE, raising=False)
    assert resolve_cron_mode() == "libpq"
    assert EphemeralPostgres().cron_mode == "libpq"
    assert CRON_MODES == ("libpq", "bgw")


def test_environment_and_keyword(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CRON_MODE, " BGW ")
    assert EphemeralPostgres().cron_mode == "bgw"
    assert EphemeralPostgres(cron_mode="libpq").cron_mode == "libpq"  # the keyword wins
    monkeypatch.setenv(ENV_CRON_MODE, "")
    assert EphemeralPostgres().cron_mode == "libpq"


def test_invalid_environment_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CRON_MODE, "workers")
    with pytest.raises(HarnessError) as raised:
        EphemeralPostgres()
    message = str(raised.value)
    assert "'workers'" in message
    assert ENV_CRON_MODE in message
    assert "'libpq'" in message
    assert "'bgw'" in message


def test_invalid_keyword_value() -> None:
    with pytest.raises(HarnessError, match=r"invalid pg_cron mode 'bgworker' \(from cron_mode\)"):
        EphemeralPostgres(cron_mode="bgworker")


def test_pg_cron_version_before_start_is_the_control_files() -> None:
    bin_dir = find_postgres_bin()
    expected = control_default_version(pg_cron_control_file(bin_dir))
    assert expected is not None
    assert pg_cron_default_version(bin_dir) == expected
    assert EphemeralPostgres(pg_bin=bin_dir).pg_cron_version == expected


def test_control_default_version_parsing(tmp_path: Path) -> None:
    control = tmp_path / "x.control"
    control.write_text("comment = 'x'\n  default_version = '1.6'\nrelocatable = false\n")
    assert control_default_version(control) == "1.6"
    control.write_text("comment = 'no version'\n")
    assert control_default_version(control) is None
    assert control_default_version(tmp_path / "missing.control") is None


@pytest.mark.db  # a server of its own
def test_bgw_mode_settings_and_overrides() -> None:
    # The installed pg_cron (>= 1.4) knows cron.use_background_workers.
    with EphemeralPostgres(cron_mode="bgw", settings={"max_worker_processes": "16"}) as server:
        assert server.cron_mode == "bgw"
        settings = _settings(
            server,
            "cron.use_background_workers",
            "max_worker_processes",
            "cron.max_running_jobs",
            "shared_preload_libraries",
        )
        assert settings["cron.use_background_workers"] == "on"
        assert settings["max_worker_processes"] == "16"  # the caller's
        assert settings["cron.max_running_jobs"] == "12"  # fits the caller's workers
        expected_preload = "pg_cron,pg_tle" if has_pg_tle(server.bin_dir) else "pg_cron"
        assert settings["shared_preload_libraries"] == expected_preload
        assert server.pg_cron_version == pg_cron_default_version(server.bin_dir)

    with EphemeralPostgres(cron_mode="bgw", settings={"cron.max_running_jobs": "3"}) as server:
        settings = _settings(server, "max_worker_processes", "cron.max_running_jobs")
        assert settings == {"max_worker_processes": "64", "cron.max_running_jobs": "3"}


@pytest.mark.db  # a server of its own
def test_libpq_mode_leaves_workers_alone() -> None:
    with EphemeralPostgres(cron_mode="libpq") as server:
        settings = _settings(server, "cron.use_background_workers", "max_worker_processes")
        assert settings == {"cron.use_background_workers": "off", "max_worker_processes": "8"}


@pytest.mark.db  # a server of its own
def test_start_checks_the_mode_the_server_runs() -> None:
    server = EphemeralPostgres(cron_mode="libpq", settings={"cron.use_background_workers": "on"})
    try:
        with pytest.raises(HarnessError, match=r"runs jobs in bgw mode .* not libpq mode"):
            server.start()
    finally:
        server.cleanup(mode="immediate")


@pytest.mark.db  # a pytest process reading the PostgreSQL installation, twice
def test_report_header_shows_the_installation(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = find_postgres_bin()
    monkeypatch.setenv(ENV_CRON_MODE, "bgw")
    monkeypatch.delenv(ENV_TEST_BACKEND, raising=False)
    monkeypatch.delenv(ENV_TEST_DSN, raising=False)
    pytester.makepyfile(test_user="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--co")
    result.stdout.fnmatch_lines(
        [
            f"sa_pgdispatch: test server backend ephemeral, PostgreSQL * at {bin_dir}, "
            f"pg_cron {pg_cron_default_version(bin_dir)}, cron mode bgw"
        ]
    )

    monkeypatch.setenv(ENV_CRON_MODE, "nope")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--co")
    result.stdout.fnmatch_lines(
        ["sa_pgdispatch: test server backend ephemeral (invalid pg_cron mode*"]
    )
