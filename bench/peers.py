"""Peers measured side by side with pgdispatch, each installed from its registry.

* graphile-worker (npm): ``graphile_worker.add_job`` from an AFTER INSERT trigger, a
  Node worker (concurrency 1) whose task does the same INSERT as the pgdispatch jobs.
* procrastinate (PyPI): ``procrastinate_defer_jobs_v1`` from the trigger, a Python
  worker (concurrency 1), in a virtualenv of its own.
* pg_dispatch 1.x design: one self-unscheduling pg_cron job ``'1 seconds'`` per fire,
  written here from its public description; needs pg_cron >= 1.5.

Downloads go to ``bench/.peers`` (gitignored). A peer that cannot be installed is
skipped with a note saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import conninfo

from bench.common import APP_ROLE, Ctx, process_tree

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / ".peers"
WORKERS_DIR = HERE / "peer_workers"


@dataclass
class Peer:
    """A job system compared with pgdispatch. ``table`` is its dispatch-triggered table."""

    name: str
    label: str
    table: str
    version: str | None = None
    skip_reason: str | None = None
    proc: subprocess.Popen[str] | None = None
    backend_app: str = ""  # application_name prefix of its worker's backends, if known
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.skip_reason is None

    def install(self, ctx: Ctx) -> None:
        raise NotImplementedError

    def start(self, ctx: Ctx) -> None:
        """Start the peer's worker."""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def os_pids(self) -> list[int]:
        """The worker process and its children (for CPU accounting)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return process_tree(self.proc.pid)

    def backend_pids(self, ctx: Ctx) -> list[int]:
        """Backends of the worker's connections (client address = its process)."""
        return []

    def as_json(self) -> dict[str, object]:
        return {"label": self.label, "version": self.version, "skipped": self.skip_reason}


def _tcp_dsn(ctx: Ctx, **overrides: str) -> tuple[str, dict[str, str]]:
    params = {k: str(v) for k, v in conninfo.conninfo_to_dict(ctx.dsn).items() if v is not None}
    uri = f"postgres://{params['user']}@127.0.0.1:{params['port']}/{params['dbname']}"
    params.update(overrides)
    return uri, params


def _wait_ready(proc: subprocess.Popen[str], timeout: float = 60) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"worker exited ({proc.returncode}): {err[-2000:]}")
            time.sleep(0.05)
            continue
        if line.strip() == "ready":
            return
    raise RuntimeError("worker did not report ready")


def _tcp_backends(ctx: Ctx, pids: list[int]) -> list[int]:
    """Backends whose client is one of *pids* (TCP connections from 127.0.0.1)."""
    if not pids:
        return []
    ports: set[int] = set()
    # map our sockets to client ports through /proc/<pid>/fd -> socket inodes -> /proc/net/tcp
    inodes: set[str] = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            for fd in fd_dir.iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[9] in inodes:
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    if not ports:
        return []
    rows = ctx.sql("SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s)", (sorted(ports),))
    return [int(r[0]) for r in rows]


class Graphile(Peer):
    def __init__(self) -> None:
        super().__init__("graphile", "graphile-worker", "src_graphile")
        self.dir = PEERS_DIR / "graphile"

    def _env(self, ctx: Ctx) -> dict[str, str]:
        uri, _ = _tcp_dsn(ctx)
        env = dict(os.environ)
        env["NODE_PATH"] = str(self.dir / "node_modules")
        env["BENCH_DSN"] = uri
        return env

    def install(self, ctx: Ctx) -> None:
        node = shutil.which("node")
        npm = shutil.which("npm")
        if node is None or npm is None:
            self.skip_reason = "node/npm not found"
            return
        pkg = self.dir / "node_modules" / "graphile-worker" / "package.json"
        if not pkg.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "package.json").write_text('{"name": "bench-peers", "private": true}\n')
            out = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "graphile-worker"],
                cwd=self.dir,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if out.returncode != 0 or not pkg.exists():
                self.skip_reason = f"npm install graphile-worker failed: {out.stderr[-500:]}"
                return
        self.version = json.loads(pkg.read_text())["version"]
        out = subprocess.run(
            ["node", str(WORKERS_DIR / "graphile_worker.cjs"), "migrate"],
            env=self._env(ctx),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if out.returncode != 0:
            self.skip_reason = f"graphile-worker migration failed: {out.stderr[-500:]}"
            return
        with ctx.connect() as conn:
            for stmt in (
                f"GRANT USAGE ON SCHEMA graphile_worker TO {APP_ROLE}",
                f"GRANT ALL ON ALL TABLES IN SCHEMA graphile_worker TO {APP_ROLE}",
                f"GRANT ALL ON ALL SEQUENCES IN SCHEMA graphile_worker TO {APP_ROLE}",
                f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA graphile_worker TO {APP_ROLE}",
                # graphile-worker's tables have row level security without policies: only
                # their owner writes them, so the trigger function runs as that owner
                # (SECURITY DEFINER; no SET clause, which would add a GUC save/restore)
                """CREATE FUNCTION bench.graphile_trg() RETURNS trigger LANGUAGE plpgsql
                   SECURITY DEFINER AS $$
                   BEGIN
                     PERFORM graphile_worker.add_job('bench', json_build_object('id', NEW.id));
                     RETURN NULL;
                   END $$""",
                "CREATE TRIGGER dispatch AFTER INSERT ON bench.src_graphile FOR EACH ROW "
                "EXECUTE FUNCTION bench.graphile_trg()",
            ):
                conn.execute(stmt)

    def start(self, ctx: Ctx) -> None:
        if not self.available:
            return
        self.proc = subprocess.Popen(
            ["node", str(WORKERS_DIR / "graphile_worker.cjs")],
            env=self._env(ctx),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_ready(self.proc)

    def backend_pids(self, ctx: Ctx) -> list[int]:
        return _tcp_backends(ctx, self.os_pids())


class Procrastinate(Peer):
    def __init__(self) -> None:
        super().__init__("procrastinate", "procrastinate", "src_procr")
        self.venv = PEERS_DIR / "procrastinate-venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def _env(self, ctx: Ctx) -> dict[str, str]:
        uri, _ = _tcp_dsn(ctx)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "VIRTUAL_ENV"))}
        env["BENCH_DSN"] = uri
        return env

    def install(self, ctx: Ctx) -> None:
        if not self.python.exists():
            out = subprocess.run(
                [sys.executable, "-m", "venv", str(self.venv)],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if out.returncode != 0:
                self.skip_reason = f"cannot create a venv: {out.stderr[-300:]}"
                return
        probe = subprocess.run(
            [str(self.python), "-c", "import procrastinate; print(procrastinate.__version__)"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode != 0:
            out = subprocess.run(
                [
                    str(self.python),
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "procrastinate",
                    "psycopg[binary]",
                ],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            probe = subprocess.run(
                [str(self.python), "-c", "import procrastinate; print(procrastinate.__version__)"],
                capture_output=True,
                text=True,
                check=False,
            )
            if probe.returncode != 0:
                self.skip_reason = f"pip install procrastinate failed: {out.stderr[-500:]}"
                return
        self.version = probe.stdout.strip()
        schema = subprocess.run(
            [str(self.python), str(WORKERS_DIR / "procrastinate_worker.py"), "schema"],
            env=self._env(ctx),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if schema.returncode != 0:
            self.skip_reason = f"cannot read procrastinate's schema: {schema.stderr[-500:]}"
            return
        with ctx.connect() as conn:
            conn.execute(schema.stdout)  # procrastinate's own schema (public schema)
            for stmt in (
                f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {APP_ROLE}",
                f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}",
                """CREATE FUNCTION bench.procr_trg() RETURNS trigger LANGUAGE plpgsql AS $$
                   BEGIN
                     PERFORM procrastinate_defer_jobs_v1(ARRAY[ROW(
                       'default', 'bench_task', 0, NULL, NULL,
                       jsonb_build_object('id', NEW.id), NULL
                     )::procrastinate_job_to_defer_v1]);
                     RETURN NULL;
                   END $$""",
                "CREATE TRIGGER dispatch AFTER INSERT ON bench.src_procr FOR EACH ROW "
                "EXECUTE FUNCTION bench.procr_trg()",
            ):
                conn.execute(stmt)

    def start(self, ctx: Ctx) -> None:
        if not self.available:
            return
        self.proc = subprocess.Popen(
            [str(self.python), str(WORKERS_DIR / "procrastinate_worker.py")],
            env=self._env(ctx),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_ready(self.proc)

    def backend_pids(self, ctx: Ctx) -> list[int]:
        return _tcp_backends(ctx, self.os_pids())


class PgDispatch1(Peer):
    """The pg_dispatch 1.x design: each fire schedules a self-unscheduling pg_cron job.

    ``bench_pgd1.fire(command)`` schedules ``'1 seconds'`` job ``pgd1-<uuid>`` whose
    command runs *command* and then unschedules itself. pg_cron runs it within a
    second. ``'1 seconds'`` exists from pg_cron 1.5; on older versions this peer is
    skipped.
    """

    def __init__(self) -> None:
        super().__init__("pgd1", "pg_dispatch 1.x design (cron job per fire)", "src_pgd1")

    def install(self, ctx: Ctx) -> None:
        version, second = ctx.sql(
            "SELECT extversion, (SELECT second_schedules FROM pgdispatch.cron_info()) "
            "FROM pg_extension WHERE extname = 'pg_cron'"
        )[0]
        self.version = f"pg_cron {version}"
        if not second:
            self.skip_reason = (
                f"needs pg_cron >= 1.5 for '1 seconds' schedules; this server has pg_cron "
                f"{version}, which rejects them (ERROR: invalid schedule: 1 seconds)"
            )
            return
        with ctx.connect() as conn:
            for stmt in (
                "CREATE SCHEMA bench_pgd1",
                f"GRANT USAGE ON SCHEMA cron TO {APP_ROLE}",  # cron.schedule as the caller
                f"GRANT USAGE ON SCHEMA bench_pgd1 TO {APP_ROLE}",
                """CREATE FUNCTION bench_pgd1.fire(command text) RETURNS void
                   LANGUAGE plpgsql AS $$
                   DECLARE
                     jobname text := 'pgd1-' || gen_random_uuid();
                   BEGIN
                     PERFORM cron.schedule(jobname, '1 seconds',
                       format('%s; SELECT cron.unschedule(%L);', command, jobname));
                   END $$""",
                """CREATE FUNCTION bench.pgd1_trg() RETURNS trigger LANGUAGE plpgsql AS $$
                   BEGIN
                     PERFORM bench_pgd1.fire(format(
                       'INSERT INTO bench.sink (tbl, id) VALUES (''pgd1'', %s)', NEW.id));
                     RETURN NULL;
                   END $$""",
                "CREATE TRIGGER dispatch AFTER INSERT ON bench.src_pgd1 FOR EACH ROW "
                "EXECUTE FUNCTION bench.pgd1_trg()",
            ):
                conn.execute(stmt)


def all_peers() -> list[Peer]:
    return [Graphile(), Procrastinate(), PgDispatch1()]
