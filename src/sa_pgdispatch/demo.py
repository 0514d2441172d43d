"""``sa-pgdispatch demo``: a slow side effect, inline and dispatched, run by real pg_cron.

What it does (about a minute on pg_cron 1.4, most of it waiting for the first tick):

1. Starts a throwaway PostgreSQL + pg_cron
   (:class:`~sa_pgdispatch.testing.EphemeralPostgres`), or uses ``--url``.
2. Makes a login role ``demo_app`` (not a superuser: jobs run with its privileges only;
   the superuser only grants it CREATE on the database and USAGE on schema cron),
   installs pgdispatch *as that role* and starts its 2 pg_cron workers first thing, so
   that the wait for pg_cron's first minute tick overlaps the set-up. With ``--url``
   the connected role plays ``demo_app``.
3. Writes an app from the migrations template (``init_project``) in a temporary
   directory: a ``profiles`` table with an AFTER INSERT ``DispatchTrigger`` whose side
   effect ``send_welcome(jsonb)`` is deliberately slow (``pg_sleep(0.2)`` then an
   INSERT into ``notifications``), and two "RPC" functions; runs ``alembic upgrade head``.
4. Inserts profiles through the RPC with the side effect inline (the caller waits for
   it), then, once a worker runs, through the RPC whose trigger dispatches it; shows
   the caller's latency, the jobs going queued -> running -> succeeded and the
   notifications landing; ends with a summary.
5. Cleans up (server stopped and removed; with ``--url``: the demo's schema, and
   pgdispatch/workers when the demo installed/started them). Returns True only when
   every side effect landed.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.live import Live
from rich.table import Table
from sqlalchemy.pool import NullPool

from ._output import Output
from .errors import UnexpectedStateError
from .install import install, installed_version, uninstall

__all__ = ["DEMO_ROLE", "DemoResult", "run_demo"]

DEMO_ROLE = "demo_app"
WORKERS = 2
TICK_WAIT_LIMIT = 75.0  # seconds: pg_cron 1.4 ticks every minute
JOBS_WAIT_LIMIT = 60.0
_REVISION_MODULE = "_demo_revision.py"  # the app's Alembic revision, shipped in this package


@dataclass
class DemoResult:
    """What the demo measured."""

    inline_latencies: list[float] = field(default_factory=list)  # seconds
    dispatched_latencies: list[float] = field(default_factory=list)
    start_latencies: list[float] = field(default_factory=list)  # job started_at - created_at
    jobs_succeeded: int = 0
    notifications_inline: int = 0
    notifications_dispatched: int = 0
    profiles: int = 0
    tick_wait: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.profiles > 0
            and self.jobs_succeeded == self.profiles
            and self.notifications_inline == self.profiles
            and self.notifications_dispatched == self.profiles
        )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


class _Reporter:
    def __init__(self, out: Output) -> None:
        self.out = out
        self.t0 = time.monotonic()

    def step(self, text: str) -> None:
        stamp = f"[{time.monotonic() - self.t0:5.1f}s]"
        if self.out.rich:
            self.out.console.print(f"[dim]{stamp}[/dim] {text}", highlight=False)
        else:
            self.out.line(f"{stamp} {_plain(text)}")

    def detail(self, text: str) -> None:
        if self.out.rich:
            self.out.console.print(f"         {text}", highlight=False)
        else:
            self.out.line(f"         {_plain(text)}")


def _plain(text: str) -> str:
    from rich.text import Text

    return Text.from_markup(text).plain


@contextlib.contextmanager
def _server(url: str | None, report: _Reporter) -> Iterator[tuple[str, bool]]:
    """(superuser or given URL, ephemeral?)"""
    if url is not None:
        yield url, False
        return
    from .testing import EphemeralPostgres

    report.step("starting a throwaway PostgreSQL + pg_cron server ...")
    with EphemeralPostgres(dbname="pgdispatch_demo") as server:
        report.step(f"server up: {server.host} port {server.port} (removed at the end)")
        yield server.url, True
    report.step("server stopped and removed")


def _role_url(base: str, role: str) -> str:
    return sa.engine.make_url(base).set(username=role, password=None).render_as_string(
        hide_password=False
    )


def _worker_alive(conn: sa.Connection, role: str) -> int | None:
    return conn.execute(
        sa.text(
            "SELECT l.pid FROM pg_locks l JOIN pg_roles r ON r.rolname = :role"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2"
            " AND l.classid::bigint BETWEEN 1885824114 AND 1885824113 + 16"
            " AND l.objid::bigint = (r.oid::bigint & 4294967295) LIMIT 1"
        ),
        {"role": role},
    ).scalar()


def run_demo(url: str | None = None, *, profiles: int = 10, out: Output | None = None) -> bool:
    """Run the demo (see the module docstring); True when every side effect landed."""
    out = out or Output()
    report = _Reporter(out)
    try:
        result = _run(url, profiles, report)
    except Exception as exc:
        report.step(f"[red]demo failed:[/red] {type(exc).__name__}: {exc}")
        return False
    return result.ok


def _run(url: str | None, profiles: int, report: _Reporter) -> DemoResult:
    result = DemoResult(profiles=profiles)
    schema = f"demo_{uuid.uuid4().hex[:6]}"
    with _server(url, report) as (base_url, ephemeral), contextlib.ExitStack() as cleanup:
        admin = sa.create_engine(base_url, poolclass=NullPool)
        cleanup.callback(admin.dispose)
        if ephemeral:
            role = DEMO_ROLE
            with admin.begin() as conn:
                dbname = conn.execute(sa.text("SELECT current_database()")).scalar_one()
                conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
                conn.execute(sa.text(f'GRANT CREATE ON DATABASE "{dbname}" TO "{role}"'))
                conn.execute(sa.text(f'GRANT USAGE ON SCHEMA cron TO "{role}"'))
            app_url = _role_url(base_url, role)
            report.step(
                f"role [bold]{role}[/bold]: LOGIN, not a superuser; granted CREATE on the "
                "database and USAGE on schema cron"
            )
        else:
            app_url = base_url
            with admin.connect() as conn:
                role = conn.execute(sa.text("SELECT current_user")).scalar_one()
        app = sa.create_engine(app_url, poolclass=NullPool)
        cleanup.callback(app.dispose)

        # 1. pgdispatch and the workers first: pg_cron 1.4 starts them at the next minute.
        before = installed_version(app)
        version = install(app, workers=None)
        with app.begin() as conn:
            had_workers = conn.execute(
                sa.text("SELECT enabled FROM pgdispatch.worker"
                        " WHERE role_id = to_regrole(quote_ident(current_user))")
            ).scalar()
            conn.execute(sa.text("SELECT pgdispatch.start(:n)"), {"n": WORKERS})
            cron = conn.execute(
                sa.text("SELECT version, background_workers FROM pgdispatch.cron_info()")
            ).one()
        if not ephemeral:
            if before is None:
                cleanup.callback(lambda: uninstall(app, force=True))
            elif not had_workers:
                cleanup.callback(_stop_workers, app)
        tick = _next_tick()
        report.step(
            f"pgdispatch {version} {'installed' if before is None else 'already installed'} "
            f"as {role}; pg_cron {cron.version} "
            f"({'background workers' if cron.background_workers else 'libpq'} mode)"
        )
        report.step(
            f"scheduled {WORKERS} pg_cron workers for {role} (pgdispatch:1..{WORKERS}, as {role}, "
            f"'* * * * *'): the first one starts at the next minute tick, in {tick:.0f} s"
        )

        # 2. The app, from the migrations template, migrated by real Alembic. Everything
        # lives in one schema (Alembic's version table too: search_path), dropped at the end.
        with app.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        if not ephemeral:
            cleanup.callback(_drop_schema, app, schema)
        migrate_url = (
            sa.engine.make_url(app_url)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
        workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="pgd-demo-")))
        ini = _write_app(workdir, migrate_url, schema)
        report.step(f"wrote the app from the migrations template: {ini}")
        _alembic_upgrade(ini, migrate_url)
        report.step(
            f"alembic upgrade head: schema [bold]{schema}[/bold], tables profiles and "
            "notifications, DispatchTrigger profiles_welcome -> send_welcome (pg_sleep 0.2 s)"
        )

        # 3. Inline: the caller waits for the side effect.
        report.step(f"[bold]inline[/bold]: {profiles} calls of {schema}.create_profile_inline()")
        for i in range(profiles):
            result.inline_latencies.append(
                _call(app, f'SELECT "{schema}".create_profile_inline(:n, :e)', i, "inline")
            )
        report.detail(
            f"caller latency p50 {_ms(statistics.median(result.inline_latencies))}, "
            f"max {_ms(max(result.inline_latencies))}"
        )

        # 4. Wait for pg_cron's first tick (a worker holding its slot lock).
        result.tick_wait = _wait_for_worker(admin, role, report)

        # 5. Dispatched: the trigger queues the side effect, the workers run it.
        report.step(f"[bold]dispatched[/bold]: {profiles} calls of {schema}.create_profile()")
        first_job = _max_job_id(app)
        for i in range(profiles):
            result.dispatched_latencies.append(
                _call(app, f'SELECT "{schema}".create_profile(:n, :e)', i, "dispatched")
            )
        report.detail(
            f"caller latency p50 {_ms(statistics.median(result.dispatched_latencies))}, "
            f"max {_ms(max(result.dispatched_latencies))}"
        )
        _follow_jobs(app, schema, first_job, profiles, report)

        # 6. Check and summarize.
        with app.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT state, extract(epoch FROM started_at - created_at) AS latency"
                    " FROM pgdispatch.jobs WHERE id > :first AND command LIKE :cmd"
                ),
                {"first": first_job, "cmd": f"%{schema}%send_welcome%"},
            ).all()
            result.jobs_succeeded = sum(1 for r in rows if r.state == "succeeded")
            result.start_latencies = [float(r.latency) for r in rows if r.latency is not None]
            counts: dict[str, int] = dict(
                conn.execute(
                    sa.text(
                        f'SELECT p.mode, count(n.id) FROM "{schema}".profiles p'
                        f' LEFT JOIN "{schema}".notifications n ON n.profile_id = p.id'
                        " GROUP BY p.mode"
                    )
                ).all()
            )
        result.notifications_inline = int(counts.get("inline", 0))
        result.notifications_dispatched = int(counts.get("dispatched", 0))
        _summary(report, result)
    return result


def _next_tick() -> float:
    now = datetime.now()
    return 60.0 - now.second - now.microsecond / 1e6


def _stop_workers(app: sa.Engine) -> None:
    with app.begin() as conn:
        conn.execute(sa.text("SELECT pgdispatch.stop()"))


def _drop_schema(app: sa.Engine, schema: str) -> None:
    with app.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def _write_app(workdir: Path, app_url: str, schema: str) -> Path:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from .alembic import init_project

    ini = init_project(workdir / "migrations", url=app_url, install_revision=True)
    head = ScriptDirectory.from_config(Config(str(ini))).get_current_head()
    rev = uuid.uuid4().hex[:12]
    (workdir / "migrations" / "versions" / f"{rev}_demo_app.py").write_text(
        demo_revision(rev, head, schema), encoding="utf-8"
    )
    return ini


def demo_revision(revision: str, down_revision: str | None, schema: str) -> str:
    """The source of the app's Alembic revision (``sa_pgdispatch/_demo_revision.py``)
    with its revision id, parent revision and schema set."""
    source = resources.files("sa_pgdispatch").joinpath(_REVISION_MODULE).read_text("utf-8")
    lines = source.splitlines(keepends=True)
    for start, value in (
        ("Revision ID: ", revision),
        ("Revises: ", down_revision or ""),
        ("revision: str = ", repr(revision)),
        ("down_revision: str | None = ", repr(down_revision)),
        ("SCHEMA = ", repr(schema)),
    ):
        found = [i for i, line in enumerate(lines) if line.startswith(start)]
        if len(found) != 1:
            raise UnexpectedStateError(f"{_REVISION_MODULE}: expected one line starting {start!r}")
        lines[found[0]] = f"{start}{value}\n"
    return "".join(lines)


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _alembic_upgrade(ini: Path, app_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    # $SA_PGDISPATCH_URL overrides alembic.ini in the template's env.py: point it here.
    with _env("SA_PGDISPATCH_URL", app_url):
        command.upgrade(Config(str(ini)), "head")


def _call(app: sa.Engine, sql: str, i: int, mode: str) -> float:
    with app.connect() as conn:
        started = time.perf_counter()
        conn.execute(sa.text(sql), {"n": f"{mode} user {i}", "e": f"{mode}{i}@example.org"})
        conn.commit()
        return time.perf_counter() - started


def _max_job_id(app: sa.Engine) -> int:
    with app.connect() as conn:
        last = conn.execute(sa.text("SELECT coalesce(max(id), 0) FROM pgdispatch.jobs"))
        return int(last.scalar_one())


def _wait_for_worker(admin: sa.Engine, role: str, report: _Reporter) -> float:
    started = time.monotonic()
    out = report.out

    def alive() -> int | None:
        with admin.connect() as conn:
            return _worker_alive(conn, role)

    pid = alive()
    if pid is None:
        if out.rich:
            with out.console.status("") as status:
                while (pid := alive()) is None and time.monotonic() - started < TICK_WAIT_LIMIT:
                    status.update(
                        f"waiting for pg_cron's first tick: {_next_tick():.0f} s "
                        f"(waited {time.monotonic() - started:.0f} s)"
                    )
                    time.sleep(0.2)
        else:
            report.step(f"waiting for pg_cron's first tick: {_next_tick():.0f} s")
            last = time.monotonic()
            while (pid := alive()) is None and time.monotonic() - started < TICK_WAIT_LIMIT:
                if time.monotonic() - last >= 10:
                    report.detail(f"... {_next_tick():.0f} s to the tick")
                    last = time.monotonic()
                time.sleep(0.2)
    if pid is None:
        with admin.connect() as conn:
            failures = conn.execute(
                sa.text(
                    "SELECT d.return_message FROM cron.job_run_details d"
                    " JOIN cron.job j USING (jobid) WHERE j.jobname LIKE 'pgdispatch:%'"
                    " AND d.status = 'failed' ORDER BY d.start_time DESC LIMIT 3"
                )
            ).scalars().all()
        raise UnexpectedStateError(
            f"no pg_cron worker started within {TICK_WAIT_LIMIT:.0f} s"
            + (f"; recent pg_cron failures: {list(failures)}" if failures else "")
        )
    waited = time.monotonic() - started
    report.step(f"pg_cron started the first worker of {role} (backend pid {pid})")
    return waited


_JOBS = sa.text(
    "SELECT id, state, (payload ->> 'id')::bigint AS profile, worker_pid,"
    " extract(epoch FROM started_at - created_at) AS latency"
    " FROM pgdispatch.jobs WHERE id > :first AND command LIKE :cmd ORDER BY id"
)


def _follow_jobs(app: sa.Engine, schema: str, first: int, n: int, report: _Reporter) -> None:
    out = report.out
    params = {"first": first, "cmd": f"%{schema}%send_welcome%"}
    notif = sa.text(f'SELECT count(*) FROM "{schema}".notifications n'
                    f' JOIN "{schema}".profiles p ON p.id = n.profile_id'
                    " WHERE p.mode = 'dispatched'")
    started = time.monotonic()
    seen: dict[int, str] = {}

    def fetch() -> tuple[list[Any], int]:
        with app.connect() as conn:
            return list(conn.execute(_JOBS, params).all()), int(conn.execute(notif).scalar_one())

    def done(rows: list[Any]) -> bool:
        return len(rows) >= n and all(r.state in ("succeeded", "failed", "cancelled") for r in rows)

    def table(rows: list[Any], landed: int) -> Table:
        t = Table(title=f"jobs ({time.monotonic() - started:.1f} s) - notifications "
                  f"landed {landed}/{n}", title_justify="left")
        for h in ("job", "profile", "state", "worker pid", "fire-to-start"):
            t.add_column(h)
        style = {"queued": "yellow", "running": "cyan", "succeeded": "green", "failed": "red"}
        for r in rows:
            t.add_row(str(r.id), str(r.profile), f"[{style.get(r.state, '')}]{r.state}[/]",
                      str(r.worker_pid or "-"),
                      "-" if r.latency is None else _ms(float(r.latency)))
        return t

    rows, landed = fetch()
    if out.rich:
        with Live(table(rows, landed), console=out.console, auto_refresh=False) as live:
            while not done(rows) and time.monotonic() - started < JOBS_WAIT_LIMIT:
                time.sleep(0.05)
                rows, landed = fetch()
                live.update(table(rows, landed), refresh=True)
    else:
        def log(rows: list[Any], landed: int) -> None:
            for r in rows:
                # a job that ran shows "queued" again until its worker commits the batch
                # (the view derives "running" from the worker's lock): not a regression
                if r.state == "queued" and seen.get(r.id) == "running":
                    continue
                if seen.get(r.id) != r.state:
                    seen[r.id] = r.state
                    extra = "" if r.latency is None else f" (fire-to-start {_ms(float(r.latency))})"
                    report.detail(f"job {r.id} (profile {r.profile}): {r.state}{extra}"
                                  f" - notifications {landed}/{n}")

        log(rows, landed)
        while not done(rows) and time.monotonic() - started < JOBS_WAIT_LIMIT:
            time.sleep(0.05)
            rows, landed = fetch()
            log(rows, landed)
    report.step(f"jobs finished in {time.monotonic() - started:.1f} s; "
                f"notifications landed {landed}/{n}")


def _summary(report: _Reporter, r: DemoResult) -> None:
    def p50(values: list[float]) -> str:
        return _ms(statistics.median(values)) if values else "-"

    rows = [
        ("caller latency p50, side effect inline", p50(r.inline_latencies)),
        ("caller latency p50, side effect dispatched", p50(r.dispatched_latencies)),
        ("fire-to-start p50 / max (started_at - created_at)",
         f"{p50(r.start_latencies)} / "
         + (_ms(max(r.start_latencies)) if r.start_latencies else "-")),
        ("jobs succeeded", f"{r.jobs_succeeded}/{r.profiles}"),
        ("side effects (notifications) inline", f"{r.notifications_inline}/{r.profiles}"),
        ("side effects (notifications) dispatched", f"{r.notifications_dispatched}/{r.profiles}"),
        ("waited for pg_cron's first tick", f"{r.tick_wait:.1f} s"),
    ]
    report.out.table("summary", ["", ""], rows)
    if r.ok:
        report.step("[green]all side effects present[/green]")
    else:
        report.step("[red]some side effects are missing[/red]")
