"""The ephemeral server: configuration, privileges, network exposure, lifecycle."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from sa_pgdispatch.testing import (
    HARNESS_USER,
    EphemeralPostgres,
    HarnessError,
    PgServer,
)

pytestmark = pytest.mark.db  # the session's server, and servers of its own


def _require_ephemeral(server: PgServer) -> EphemeralPostgres:
    if not isinstance(server, EphemeralPostgres):
        pytest.skip("checks the ephemeral backend's own server")
    return server


def _expected_os_user() -> str:
    return HARNESS_USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name


def _proc_owner(pid: int) -> str:
    return pwd.getpwuid(Path(f"/proc/{pid}").stat().st_uid).pw_name


def _live_processes_mentioning(needle: str) -> list[tuple[int, str]]:
    """Non-zombie processes whose command line contains *needle*."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z" and int(entry.name) != os.getpid():
            found.append((int(entry.name), cmdline))
    return found


def _wait_no_processes(needle: str, timeout: float = 15) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    while (left := _live_processes_mentioning(needle)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _pid_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


# --------------------------------------------------------------------------- session server


def test_settings_are_applied(pgdispatch_server: PgServer, pgdispatch_psycopg) -> None:
    server = _require_ephemeral(pgdispatch_server)
    settings = dict(
        pgdispatch_psycopg.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
            [
                [
                    "shared_preload_libraries",
                    "cron.database_name",
                    "cron.host",
                    "listen_addresses",
                    "port",
                    "unix_socket_directories",
                    "max_connections",
                    "log_min_messages",
                    "log_line_prefix",
                    "fsync",
                    "synchronous_commit",
                    "full_page_writes",
                    "data_directory",
                ]
            ],
        ).fetchall()
    )
    assert "pg_cron" in settings["shared_preload_libraries"].split(",")
    assert settings["cron.database_name"] == server.dbname == "pgdispatch"
    assert settings["cron.host"] == server.host
    assert settings["listen_addresses"] == "127.0.0.1"
    assert int(settings["port"]) == server.port
    assert settings["unix_socket_directories"] == server.host
    assert settings["max_connections"] == "100"
    assert settings["log_min_messages"] == "warning"
    assert settings["log_line_prefix"] == "%m [%p] %u@%d "
    assert (settings["fsync"], settings["synchronous_commit"], settings["full_page_writes"]) == (
        "off",
        "off",
        "off",
    )
    assert Path(settings["data_directory"]) == server.data_dir
    assert server.log_path.is_file()
    assert server.pg_major >= 13


def test_dsn_and_url_shapes(pgdispatch_server: PgServer) -> None:
    server = _require_ephemeral(pgdispatch_server)
    query = f"?host={server.host}&port={server.port}"
    assert server.dsn == f"postgresql://postgres@/pgdispatch{query}"
    assert server.url == f"postgresql+psycopg://postgres@/pgdispatch{query}"
    assert server.superuser == "postgres"
    assert server.connect_dsn(user="alice") == f"postgresql://alice@/pgdispatch{query}"
    assert server.connect_url(user="bob", dbname="other") == (
        f"postgresql+psycopg://bob@/other{query}"
    )


def test_pg_cron_extension_and_scheduler(pgdispatch_server: PgServer, pgdispatch_psycopg) -> None:
    version = pgdispatch_psycopg.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'"
    ).fetchone()
    assert version is not None
    launchers = pgdispatch_psycopg.execute(
        "SELECT datname FROM pg_stat_activity WHERE backend_type = 'pg_cron launcher'"
    ).fetchall()
    assert launchers == [(pgdispatch_server.dbname,)]


def test_runs_as_unprivileged_user(pgdispatch_server: PgServer, pgdispatch_psycopg) -> None:
    server = _require_ephemeral(pgdispatch_server)
    expected = _expected_os_user()
    assert server.os_user == expected
    pid = server.postmaster_pid()
    assert pid is not None
    assert _proc_owner(pid) == expected
    # every server process, including our own backend and pg_cron's launcher
    pids = [
        row[0] for row in pgdispatch_psycopg.execute("SELECT pid FROM pg_stat_activity").fetchall()
    ]
    assert pgdispatch_psycopg.info.backend_pid in pids
    assert {_proc_owner(p) for p in pids if Path(f"/proc/{p}").exists()} == {expected}
    assert pwd.getpwuid(server.data_dir.stat().st_uid).pw_name == expected
    assert pwd.getpwuid(server.base_dir.stat().st_uid).pw_name == expected
    if os.geteuid() == 0:
        assert expected != "root"


def test_hba_is_trust_on_socket_and_loopback_only(
    pgdispatch_server: PgServer, pgdispatch_psycopg
) -> None:
    _require_ephemeral(pgdispatch_server)
    rules = pgdispatch_psycopg.execute(
        "SELECT type, database, user_name, address, auth_method, error"
        " FROM pg_hba_file_rules ORDER BY line_number"
    ).fetchall()
    assert rules == [
        ("local", ["all"], ["all"], None, "trust", None),
        ("host", ["all"], ["all"], "127.0.0.1", "trust", None),
        ("host", ["all"], ["all"], "::1", "trust", None),
    ]


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on *port* (from /proc/net)."""
    found: set[str] = set()
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(addr_hex)
            if name == "tcp":
                found.add(".".join(str(b) for b in reversed(raw)))
            else:
                words = [raw[i : i + 4][::-1].hex() for i in range(0, 16, 4)]
                found.add("ipv6:" + "".join(words))
    return found


def test_listens_only_on_127_0_0_1(pgdispatch_server: PgServer) -> None:
    server = _require_ephemeral(pgdispatch_server)
    assert _listening_addresses(server.port) == {"127.0.0.1"}
    tcp = server.connect_dsn().replace(f"host={server.host}", "host=127.0.0.1")
    with psycopg.connect(tcp, connect_timeout=5) as conn:
        assert conn.execute("SELECT inet_client_addr()::text").fetchone() == ("127.0.0.1/32",)
    # another loopback address: nothing listens there
    other = server.connect_dsn().replace(f"host={server.host}", "host=127.0.0.2")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(other, connect_timeout=5)


# --------------------------------------------------------------------------- lifecycle


def test_stop_start_restart_keep_data() -> None:
    with EphemeralPostgres(dbname="lifecycle") as server:
        first_pid = server.postmaster_pid()
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (v int)")
            conn.execute("INSERT INTO kept VALUES (1)")

        server.stop()
        assert not server.running
        assert server.postmaster_pid() is None
        assert first_pid is not None
        assert not _pid_running(first_pid)
        assert server.data_dir.is_dir()
        server.stop()  # no-op when stopped

        server.start()
        assert server.running
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [(1,)]

        server.restart()  # immediate: crash + recovery
        assert server.running
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (1,)
            launchers = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_cron launcher'"
            ).fetchone()
            assert launchers == (1,)


def test_durable_server_survives_immediate_restart() -> None:
    with EphemeralPostgres(durable=True, settings={"work_mem": "8MB"}) as server:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            assert conn.execute("SHOW fsync").fetchone() == ("on",)
            assert conn.execute("SHOW work_mem").fetchone() == ("8MB",)
            conn.execute("CREATE TABLE durable (v int)")
            conn.execute("INSERT INTO durable VALUES (42)")
        offset = server.log_path.stat().st_size
        server.restart("immediate")
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT v FROM durable").fetchall() == [(42,)]
        log = server.log_path.read_text()[offset:]
        assert "was interrupted" in log or "not properly shut down" in log


def test_cleanup_leaves_no_process_and_no_directory() -> None:
    server = EphemeralPostgres(dbname="postgres")
    server.start()
    base = server.base_dir
    pid = server.postmaster_pid()
    assert pid is not None
    with psycopg.connect(server.dsn) as conn:
        backend_pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity")]
    assert _live_processes_mentioning(str(base))

    server.cleanup()
    server.cleanup()  # idempotent

    assert not base.exists()
    assert _wait_no_processes(str(base)) == []
    assert not _pid_running(pid)
    assert [p for p in backend_pids if _pid_running(p)] == []
    with pytest.raises(HarnessError, match="cleaned up"):
        server.start()


def test_explicit_port_and_settings_override(unused_tcp_port: int) -> None:
    with EphemeralPostgres(
        port=unused_tcp_port, settings={"max_connections": "42", "cron.max_running_jobs": "7"}
    ) as server:
        assert server.port == unused_tcp_port
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SHOW port").fetchone() == (str(unused_tcp_port),)
            assert conn.execute("SHOW max_connections").fetchone() == ("42",)
            assert conn.execute("SHOW cron.max_running_jobs").fetchone() == ("7",)


def test_port_setting_is_rejected() -> None:
    with pytest.raises(ValueError, match="port="):
        EphemeralPostgres(settings={"port": "5432"})


@pytest.mark.parametrize("dbname", ["pgdispatch", "postgres"])
def test_start_failure_raises_with_the_server_messages(dbname: str) -> None:
    # "postgres" needs no single-user step: the failure is pg_ctl's (with the log tail)
    server = EphemeralPostgres(dbname=dbname, settings={"shared_buffers": "lots"})
    with pytest.raises(HarnessError) as info, server:
        pass
    message = str(info.value)
    assert "failed to start" in message
    assert 'invalid value for parameter "shared_buffers"' in message  # the server's words
    if dbname == "postgres":
        assert "last lines of" in message
    assert not server.running
    with pytest.raises(HarnessError):
        _ = server.base_dir  # cleaned up by __enter__


def test_without_pg_cron_preloaded_start_says_so() -> None:
    server = EphemeralPostgres(settings={"shared_preload_libraries": ""})
    with pytest.raises(HarnessError, match="does not preload pg_cron"), server:
        pass


# --------------------------------------------------------------------------- safety net

_CHILD = textwrap.dedent(
    """
    import sys, time
    from sa_pgdispatch.testing import EphemeralPostgres
    server = EphemeralPostgres(dbname="postgres")
    server.start()
    print(server.postmaster_pid(), server.base_dir, flush=True)
    if sys.argv[1] == "wait":
        time.sleep(120)
    # exit without cleanup(): the atexit hook must do it
    """
)


def test_atexit_cleans_up_a_forgotten_server() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, "exit"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    pid_text, base_text = result.stdout.split()
    assert not Path(base_text).exists()
    assert _wait_no_processes(base_text) == []
    assert not _pid_running(int(pid_text))


def test_sigterm_cleans_up() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, "wait"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        pid_text, base_text = child.stdout.readline().split()
        assert Path(base_text).is_dir()
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == -signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert not Path(base_text).exists()
    assert _wait_no_processes(base_text) == []
    assert not _pid_running(int(pid_text))
