"""`sa-pgdispatch demo` end to end: its own server, real Alembic, real pg_cron workers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sa_pgdispatch.testing import TEMP_PREFIX


@pytest.mark.e2e
@pytest.mark.slow
def test_demo_runs_end_to_end() -> None:
    script = Path(sys.executable).with_name("sa-pgdispatch")
    env = {k: v for k, v in os.environ.items() if k not in ("SA_PGDISPATCH_URL", "DATABASE_URL")}
    # pg_cron 1.4 ticks each minute: the demo waits at most one tick (+ set-up)
    done = subprocess.run(
        [str(script), "demo", "--profiles", "4"],
        capture_output=True, text=True, env=env, timeout=150, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "role demo_app: LOGIN, not a superuser" in out
    assert "alembic upgrade head" in out
    assert "pg_cron started the first worker of demo_app" in out
    # job lines: "job N (profile M): queued|running|succeeded ..." (running is usually
    # seen too, but a 0.2 s state can fall between two polls on a loaded machine)
    assert re.search(r"job \d+ \(profile \d+\): queued", out)
    assert len(re.findall(r"job \d+ \(profile \d+\): succeeded", out)) == 4
    assert re.search(r"side effects \(notifications\) dispatched +4/4", out)
    assert re.search(r"side effects \(notifications\) inline +4/4", out)
    assert "all side effects present" in out
    assert "server stopped and removed" in out
    assert "\x1b[" not in out  # plain text when not a terminal
    # cleaned up: the demo's server directory is gone
    server_dir = re.search(r"server up: (\S+) port", out)
    assert server_dir is not None
    assert Path(server_dir.group(1)).name.startswith(TEMP_PREFIX)
    assert not Path(server_dir.group(1)).exists()
