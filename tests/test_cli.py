"""The sa-pgdispatch command: main(argv) in-process, and once as a console script."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, text

from sa_pgdispatch import cli, jobs
from sa_pgdispatch.testing import EphemeralPostgres
from sa_pgdispatch.testing.drain import drain
from sa_pgdispatch.testing.server import PgServer


def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    out = io.StringIO()
    if env is not None:
        saved = {k: os.environ.get(k) for k in (*cli.URL_ENV_VARS, cli.CRON_URL_ENV_VAR)}
        for k in saved:
            os.environ.pop(k, None)
        os.environ.update(env)
    try:
        code = cli.main(list(argv), stdout=out)
    finally:
        if env is not None:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return code, out.getvalue()


@pytest.fixture(scope="module")
def role_url(pgdispatch_server: PgServer, pgdispatch_role: Callable[..., str]) -> Iterator[str]:
    """A role with its workers stopped: its jobs run only when drained."""
    url = pgdispatch_server.connect_url(user=pgdispatch_role("cli"))
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("SELECT pgdispatch.stop()"))
    engine.dispose()
    return url


@pytest.fixture
def role_engine(role_url: str) -> Iterator[Engine]:
    engine = create_engine(role_url)
    yield engine
    engine.dispose()


def dispatch(engine: Engine, command: str) -> int:
    with engine.begin() as conn:
        return int(
            conn.execute(text("SELECT pgdispatch.dispatch(:c)"), {"c": command}).scalar_one()
        )


def test_help_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "Exit codes" in capsys.readouterr().out
    for command in ("install", "uninstall", "start", "stop", "status", "jobs", "stats",
                    "wait", "drain", "init", "demo"):
        assert cli.main([command, "--help"]) == 0
        assert f"usage: sa-pgdispatch {command}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "url", "plain"),
    [
        (["--url", "A", "status"], "A", False),
        (["status", "--url", "A"], "A", False),
        (["--url", "A", "status", "--url", "B"], "B", False),  # the later one wins
        (["--plain", "jobs"], None, True),
        (["jobs", "--plain"], None, True),
        (["--plain", "--url", "A", "install", "--workers", "0"], "A", True),
        (["status"], None, False),
    ],
)
def test_global_options_before_and_after_the_command(
    argv: list[str], url: str | None, plain: bool
) -> None:
    """A command's own copy of a global option must not reset one given before it."""
    args = cli.build_parser().parse_args(argv)
    assert (args.url, args.plain) == (url, plain)


@pytest.mark.parametrize(
    ("argv", "cron_url"),
    [
        (["--cron-url", "C", "install"], "C"),
        (["install", "--cron-url", "C"], "C"),
        (["--cron-url", "C", "uninstall", "--url", "A"], "C"),
        (["--cron-url", "C", "start", "--cron-url", "D"], "D"),
        (["stop", "--cron-url", "C"], "C"),
        (["--url", "A", "--cron-url", "C", "status", "--plain"], "C"),
        (["status"], None),
    ],
)
def test_cron_url_before_and_after_the_command(argv: list[str], cron_url: str | None) -> None:
    assert cli.build_parser().parse_args(argv).cron_url == cron_url


def test_cron_url_resolution(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"SA_PGDISPATCH_CRON_URL": "postgresql://e@h/postgres"}
    assert cli.resolve_cron_url(None, {}) is None
    assert cli.resolve_cron_url(None, env) == "postgresql://e@h/postgres"
    assert cli.resolve_cron_url("host=h dbname=postgres", env) == "host=h dbname=postgres"
    assert cli.resolve_cron_url("", {"SA_PGDISPATCH_CRON_URL": ""}) is None
    with pytest.raises(cli.UsageError, match="--cron-url"):
        cli.resolve_cron_url("mysql://u@h/d", {})
    code, _ = run("install", "--url", "postgresql://u@/nodb?host=/nonexistent-dir",
                  "--cron-url", "mysql://u@h/d", env={})
    assert code == cli.EXIT_USAGE
    assert "cron_url must be a PostgreSQL URL" in capsys.readouterr().err


def test_url_before_the_command_reaches_the_database(role_url: str) -> None:
    code, out = run("--url", role_url, "jobs", "--limit", "1", env={})
    assert code == 0, out
    assert "recent jobs" in out
    code, out = run("--plain", "--url", role_url, "stats", env={})
    assert code == 0, out


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == cli.EXIT_USAGE
    assert cli.main(["nope"]) == cli.EXIT_USAGE
    code, _ = run("status", env={})
    assert code == cli.EXIT_USAGE
    assert "no database URL" in capsys.readouterr().err
    assert run("status", "--url", "mysql://x@y/z")[0] == cli.EXIT_USAGE


def test_url_resolution() -> None:
    assert cli.resolve_url(None, {"DATABASE_URL": "postgres://u@h/d"}) == (
        "postgresql+psycopg://u@h/d"
    )
    assert cli.resolve_url(
        None, {"SA_PGDISPATCH_URL": "postgresql://a@h/d", "DATABASE_URL": "postgresql://b@h/d"}
    ) == "postgresql+psycopg://a@h/d"
    assert cli.resolve_url("postgresql://c@h/d", {"SA_PGDISPATCH_URL": "postgresql://a@h/d"}) == (
        "postgresql+psycopg://c@h/d"
    )
    with pytest.raises(cli.UsageError, match="psycopg"):
        cli.resolve_url("postgresql+asyncpg://u@h/d", {})


def test_unreachable_database(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run("status", "--url", "postgresql://nobody@/nodb?host=/nonexistent-dir&port=1")
    assert code == cli.EXIT_UNAVAILABLE
    assert "cannot reach the database" in capsys.readouterr().err


def test_status(role_url: str, pgdispatch_server: PgServer) -> None:
    code, out = run("status", "--url", pgdispatch_server.url)
    assert code == 0, out
    assert "pgdispatch" in out
    assert "pg_cron mode" in out
    assert "libpq" in out
    assert "cron.database_name" in out
    assert ", in this database" in out  # pg_cron runs here
    assert "background workers (used / max_worker_processes)" in out
    assert "free background workers" in out
    assert "pgdispatch's background workers" in out
    assert "cron.max_running_jobs" in out
    assert "workers per role" in out
    assert "recent pg_cron run failures" in out
    assert "queued" in out
    # plain text when not a terminal: no box drawing
    assert "┃" not in out
    assert "│" not in out
    code, out = run("status", url_env(role_url))
    assert code == 0


def url_env(url: str) -> str:
    return f"--url={url}"


def test_jobs_stats_wait_drain(role_url: str, role_engine: Engine) -> None:
    ok = dispatch(role_engine, "SELECT 1")
    bad = dispatch(role_engine, "SELECT 1/0")
    code, out = run("jobs", "--url", role_url, "--state", "queued")
    assert code == 0
    assert str(ok) in out
    assert str(bad) in out
    code, out = run("drain", "--url", role_url)
    assert code == 0
    assert "2 job(s)" in out
    code, out = run("jobs", "--url", role_url, "--limit", "5")
    assert "succeeded" in out
    assert "failed" in out
    assert "division by zero" in out
    code, out = run("stats", "--url", role_url)
    assert code == 0
    assert "throughput" in out
    assert "p50" in out
    code, out = run("wait", str(ok), "--url", role_url)
    assert code == 0
    assert f"job {ok}: succeeded" in out
    code, out = run("wait", str(bad), "--url", role_url)
    assert code == cli.EXIT_FAILURE
    assert "division by zero" in out


def test_wait_shows_progress_and_times_out(role_url: str, role_engine: Engine) -> None:
    job_id = dispatch(role_engine, "SELECT pg_sleep(0.3)")
    code, out = run("wait", str(job_id), "--url", role_url, "--timeout", "0.3")
    assert code == cli.EXIT_TIMEOUT
    assert f"job {job_id} is still queued" in out

    worker = threading.Thread(target=lambda: (time.sleep(0.3), drain(role_engine)), daemon=True)
    worker.start()
    code, out = run("wait", str(job_id), "--url", role_url, "--timeout", "30")
    worker.join()
    assert code == 0
    lines = [ln for ln in out.splitlines() if ln.startswith(f"job {job_id}:")]
    states = [ln.split()[2] for ln in lines]
    assert states[0] == "queued"
    assert states[-1] == "succeeded"
    assert "running" in states  # pg_sleep(0.3) is long enough to be seen running

    code, _ = run("wait", "2000000003", "--url", role_url)
    assert code == cli.EXIT_FAILURE


def test_jobs_watch(role_url: str) -> None:
    code, out = run("jobs", "--url", role_url, "--watch", "0.05", "--iterations", "3")
    assert code == 0
    assert out.count("recent jobs") == 3


@pytest.mark.db  # a server of its own
def test_install_status_uninstall_on_a_server_of_its_own() -> None:
    with EphemeralPostgres() as server:
        url = server.url
        code, _ = run("status", "--url", url)
        assert code == cli.EXIT_UNAVAILABLE
        code, out = run("install", "--url", url, "--workers", "0")
        assert code == 0
        assert "installed pgdispatch" in out
        code, out = run("install", "--url", url)
        assert "already installed" in out
        engine = create_engine(url)
        try:
            dispatch(engine, "SELECT 1")  # schedules the role's workers (first dispatch)
            code, out = run("status", "--url", url)
            assert code == 0
            assert "pgdispatch:1" in out
            assert "pgdispatch:watchdog" in out
            code, out = run("uninstall", "--url", url)
            assert code == cli.EXIT_FAILURE  # a queued job
            code, out = run("uninstall", "--url", url, "--force")
            assert code == 0
            assert "uninstalled" in out
            with engine.connect() as conn:
                left = conn.execute(
                    text("SELECT count(*) FROM cron.job WHERE jobname LIKE 'pgdispatch:%'")
                ).scalar_one()
            assert left == 0
        finally:
            engine.dispose()
        code, out = run("uninstall", "--url", url)
        assert "not installed" in out


def test_init(tmp_path: Path) -> None:
    code, out = run("init", str(tmp_path / "migrations"), "--url", "postgresql://u@h/d")
    assert code == 0
    ini = tmp_path / "alembic.ini"
    assert ini.exists()
    assert "postgresql+psycopg://u@h/d" in ini.read_text()
    assert list((tmp_path / "migrations" / "versions").glob("*install_pgdispatch*.py"))
    assert "alembic -c" in out
    code, _ = run("init", str(tmp_path / "migrations"))  # exists, not empty
    assert code == cli.EXIT_FAILURE


def test_console_script(role_url: str, role_engine: Engine) -> None:
    job_id = dispatch(role_engine, "SELECT 1")
    drain(role_engine)
    script = Path(sys.executable).with_name("sa-pgdispatch")
    env = {**os.environ, "SA_PGDISPATCH_URL": role_url}
    done = subprocess.run(
        [str(script), "wait", str(job_id)], capture_output=True, text=True, env=env,
        timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"job {job_id}: succeeded" in done.stdout
    bad = subprocess.run(
        [str(script), "wait"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert bad.returncode == cli.EXIT_USAGE
    assert "JOB_ID" in bad.stderr
    assert jobs.get(role_engine, job_id).state is jobs.JobState.SUCCEEDED


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["jobs", "--limit", "0"], "--limit"),
        (["jobs", "--limit", "-3"], "--limit"),
        (["jobs", "--watch", "-1"], "--watch"),
        (["jobs", "--watch", "0"], "--watch"),
        (["jobs", "--watch", "nan"], "--watch"),
        (["jobs", "--watch", "1", "--iterations", "-1"], "--iterations"),
        (["status", "--failures", "-1"], "--failures"),
        (["stats", "--window", "-5"], "--window"),
        (["stats", "--window", "0"], "--window"),
        (["stats", "--window", "inf"], "--window"),
        (["wait", "1", "--timeout", "-1"], "--timeout"),
        (["install", "--workers", "-1"], "--workers"),
        (["install", "--workers", "17"], "--workers"),
        (["demo", "--profiles", "0"], "--profiles"),
        (["init", "some-dir", "--metadata", "nocolon"], "--metadata"),
        (["init", "some-dir", "--metadata", "a.b:c, :d"], "--metadata"),
    ],
)
def test_bad_arguments_are_usage_errors(
    argv: list[str], option: str, role_url: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Refused by the parser before anything runs: exit 2, the option named, no
    traceback, nothing printed on stdout (no half report, no table)."""
    if argv[0] == "init":
        argv = [argv[0], str(tmp_path / argv[1]), *argv[2:]]
    code, out = run(*argv, "--url", role_url)
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE, (out, err)
    assert out == ""
    assert f"argument {option}" in err
    assert "Traceback" not in err
    assert not (tmp_path / "some-dir").exists()


def test_good_edge_arguments_are_accepted(role_url: str) -> None:
    assert run("jobs", "--url", role_url, "--limit", "1")[0] == 0
    assert run("status", "--url", role_url, "--failures", "0")[0] == 0
    assert run("stats", "--url", role_url, "--window", "0.5")[0] == 0
    code, out = run("jobs", "--url", role_url, "--watch", "0.01", "--iterations", "1")
    assert code == 0
    assert out.count("recent jobs") == 1


@pytest.mark.parametrize(
    "raw", ["postgresql+psycopg2://u:secret@h/d", "postgres+psycopg2://u:secret@h/d"]
)
def test_other_drivers_are_refused_saying_how_to_write_the_url(
    raw: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/cli.md: other drivers are refused (psycopg2 was silently rewritten, and
    postgres+psycopg2 was told it "needs PostgreSQL, not postgres")."""
    code, out = run("status", "--url", raw)
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert out == ""
    assert "psycopg2" in err
    assert "psycopg 3" in err
    assert "postgresql+psycopg://u:***@h/d" in err  # how to write it, password hidden
    assert "secret" not in err
    assert "not postgres" not in err


def test_heroku_style_urls_are_read_as_psycopg() -> None:
    for raw in ("postgres://u@h/d", "postgresql://u@h/d", "postgres+psycopg://u@h/d",
                "postgresql+psycopg://u@h/d"):
        assert cli.resolve_url(raw, {}) == "postgresql+psycopg://u@h/d"


def _worker_jobs(engine: Engine, role: str) -> list[str]:
    """The role's pg_cron jobs for pgdispatch, by what they run: the worker slots ("1",
    "2", ...) and "watchdog" (whatever their job names)."""
    with engine.connect() as conn:
        return sorted(
            conn.execute(
                text("SELECT coalesce(substring(command FROM 'slot => ([0-9]+)'),"
                     " CASE WHEN command LIKE '%pgdispatch.watchdog%' THEN 'watchdog' END,"
                     " command)"
                     " FROM cron.job WHERE username = :r AND jobname LIKE 'pgdispatch:%'"),
                {"r": role},
            ).scalars()
        )


def test_install_workers_on_an_existing_install_starts_them(
    pgdispatch_server: PgServer, pgdispatch_role: Callable[..., str], pgdispatch_db: Engine
) -> None:
    """docs/cli.md: install --workers N starts N workers, also when pgdispatch is
    already installed (it upgraded or did nothing, and started none)."""
    role = pgdispatch_role("inst")
    url = pgdispatch_server.connect_url(user=role)
    engine = create_engine(url)
    try:
        code, out = run("install", "--url", url, "--workers", "2")
        assert code == 0, out
        assert "already installed" in out
        assert "2 pg_cron worker(s) started" in out
        assert _worker_jobs(pgdispatch_db, role) == ["1", "2", "watchdog"]
        # without --workers an existing install keeps the workers it has
        code, out = run("install", "--url", url)
        assert code == 0, out
        assert "started" not in out
        assert len(_worker_jobs(pgdispatch_db, role)) == 3
        code, out = run("install", "--url", url, "--workers", "1")
        assert code == 0, out
        assert _worker_jobs(pgdispatch_db, role) == ["1", "watchdog"]
    finally:
        with engine.begin() as conn:
            conn.execute(text("SELECT pgdispatch.stop()"))
        engine.dispose()
    assert _worker_jobs(pgdispatch_db, role) == []


@pytest.mark.db  # a server of its own
def test_install_workers_on_an_older_install_upgrades_and_starts_them() -> None:
    with EphemeralPostgres() as server:
        url = server.url
        code, out = run("install", "--url", url, "--version", "0.1.0", "--workers", "0")
        assert code == 0, out
        engine = create_engine(url)
        try:
            assert _worker_jobs(engine, "postgres") == []
            code, out = run("install", "--url", url, "--workers", "2")
            assert code == 0, out
            assert "upgraded pgdispatch 0.1.0 ->" in out
            assert "2 pg_cron worker(s) started" in out
            assert _worker_jobs(engine, "postgres") == ["1", "2", "watchdog"]
        finally:
            engine.dispose()


# ----------------------------------------------------------------------------- app database


@pytest.fixture
def app_db(pgdispatch_server: PgServer) -> Iterator[tuple[str, str, str, str]]:
    """(role, app database, its URL as role, pg_cron's database URL as role): an app
    database apart from pg_cron's, owned by a new login role that may schedule jobs in it
    from pg_cron's database."""
    suffix = uuid.uuid4().hex[:10]
    role, name = f"cli_app_{suffix}", f"app_{suffix}"
    with psycopg.connect(pgdispatch_server.dsn, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(f'CREATE DATABASE "{name}" OWNER "{role}"')
        admin.execute(f'GRANT USAGE ON SCHEMA cron TO "{role}"')
        admin.execute("GRANT EXECUTE ON FUNCTION cron.schedule_in_database(text,text,text,"
                      f'text,text,boolean) TO "{role}"')
    try:
        yield (role, name, pgdispatch_server.connect_url(user=role, dbname=name),
               pgdispatch_server.connect_url(user=role))
    finally:
        with psycopg.connect(pgdispatch_server.dsn, autocommit=True) as admin:
            admin.execute("SELECT cron.unschedule(jobid) FROM cron.job WHERE username = %s",
                          (role,))
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE "{role}"')


@pytest.mark.cron
def test_install_start_stop_status_uninstall_in_an_app_database(
    app_db: tuple[str, str, str, str], pgdispatch_db: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    role, name, url, cron_url = app_db
    with pgdispatch_db.connect() as conn:
        oid = conn.execute(
            text("SELECT oid FROM pg_database WHERE datname = :d"), {"d": name}
        ).scalar_one()
    remote = [f"pgdispatch:1@{oid}", f"pgdispatch:watchdog@{oid}"]  # their names in status

    code, _ = run("install", "--url", url, env={})
    assert code == cli.EXIT_FAILURE  # a worker to start, and nowhere to say where
    err = capsys.readouterr().err
    assert f"pg_cron runs in database {pgdispatch_db.url.database}" in err
    assert "--cron-url URL, or $SA_PGDISPATCH_CRON_URL" in err

    code, out = run("--cron-url", cron_url, "install", "--url", url, env={})
    assert code == 0, out
    assert "1 pg_cron worker(s) started" in out
    assert _worker_jobs(pgdispatch_db, role) == ["1", "watchdog"]

    code, out = run("status", "--url", url, env={})
    assert code == 0, out
    assert f"runs in database {pgdispatch_db.url.database}, not in this one" in out
    assert "pass --cron-url" in out  # to list the jobs
    assert "used / max_worker_processes" in out
    # the app database's owner cannot see other sessions' backend types
    assert re.search(r"free background workers\s+unknown\n", out)
    code, out = run("status", "--url", url, "--cron-url", cron_url, env={})
    assert code == 0, out
    assert re.search(r"pg_cron\s+\d+\.\d+\S*, runs in database", out)  # read over there
    assert remote[0] in out
    assert remote[1] in out

    code, out = run("stop", "--url", url, env={"SA_PGDISPATCH_CRON_URL": cron_url})
    assert code == 0, out
    assert _worker_jobs(pgdispatch_db, role) == []
    code, out = run("start", "--url", url, "--workers", "2", "--cron-url", cron_url, env={})
    assert code == 0, out
    assert "started 2 pg_cron worker(s)" in out
    assert _worker_jobs(pgdispatch_db, role) == ["1", "2", "watchdog"]
    code, _ = run("start", "--url", url, env={})
    assert code == cli.EXIT_FAILURE
    assert "--cron-url" in capsys.readouterr().err

    code, _ = run("uninstall", "--url", url, env={})
    assert code == cli.EXIT_FAILURE  # its workers are scheduled in pg_cron's database
    assert "--cron-url URL, or $SA_PGDISPATCH_CRON_URL" in capsys.readouterr().err
    code, out = run("uninstall", "--url", url, env={"SA_PGDISPATCH_CRON_URL": cron_url})
    assert code == 0, out
    assert "uninstalled pgdispatch" in out
    assert _worker_jobs(pgdispatch_db, role) == []


@pytest.mark.cron
def test_start_and_stop_in_pg_cron_database(role_url: str, pgdispatch_db: Engine) -> None:
    role = create_engine(role_url).url.username
    assert role is not None
    try:
        code, out = run("start", "--url", role_url, "--workers", "1", env={})
        assert code == 0, out
        assert "started 1 pg_cron worker(s)" in out
        assert _worker_jobs(pgdispatch_db, role) == ["1", "watchdog"]
    finally:
        code, out = run("stop", "--url", role_url, env={})  # role_url's workers stay stopped
    assert code == 0, out
    assert _worker_jobs(pgdispatch_db, role) == []


def test_wait_shows_a_captured_result_as_json(role_url: str, role_engine: Engine) -> None:
    with role_engine.begin() as conn:
        job_id = int(
            conn.execute(
                text("SELECT pgdispatch.dispatch(:c, capture => true)"),
                {"c": "SELECT 12345678901234567890.5 AS n, 'x' AS s, NULL AS z"},
            ).scalar_one()
        )
    drain(role_engine)
    code, out = run("wait", str(job_id), "--url", role_url)
    assert code == 0
    assert '[{"n": 12345678901234567890.5, "s": "x", "z": null}]' in out
