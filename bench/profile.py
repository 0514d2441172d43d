"""Where the dispatcher's time goes: ``python -m bench.profile [--url URL] [--quick]``.

Separate from ``python -m bench`` (which must stay under 10 minutes). Two parts:

1. the pieces of a job's life in ``pgdispatch.work()``, timed in DO-block loops
   (microseconds per iteration);
2. the caller's pgbench TPS for a row dispatch trigger while workers drain, with the
   workers' commits synchronous (as shipped) or not (``synchronous_commit=off`` given as
   a connection option, which ``RESET ALL`` between jobs keeps), against no worker at
   all, interleaved. The workers are our own ``CALL pgdispatch.work(slot => i)``
   sessions, what pg_cron runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg

from bench.common import APP_ROLE, Ctx, median, pgbench, table
from bench.setup import setup_database

RESULTS = Path(__file__).resolve().parent / "results"

PIECES = [
    ("EXECUTE of the INSERT job command", "EXECUTE 'INSERT INTO bench.dsink (v) VALUES ($1::bigint)' USING to_jsonb(i);"),  # noqa: E501
    ("EXECUTE 'SELECT fn($1)' (trigger job)", "EXECUTE 'SELECT bench.effect_row($1)' USING jsonb_build_object('id', i);"),  # noqa: E501
    ("the same in a BEGIN/EXCEPTION block", "BEGIN EXECUTE 'SELECT bench.effect_row($1)' USING jsonb_build_object('id', i); EXCEPTION WHEN OTHERS THEN NULL; END;"),  # noqa: E501
    ("advisory lock + unlock", "PERFORM pg_advisory_lock(1885824112, i); PERFORM pg_advisory_unlock(1885824112, i);"),  # noqa: E501
    ("RESET ALL", "RESET ALL;"),
    ("DEALLOCATE ALL", "DEALLOCATE ALL;"),
    ("UNLISTEN *", "UNLISTEN *;"),
    ("pg_prepared_statements read", "PERFORM ARRAY(SELECT ps.name FROM pg_prepared_statements ps);"),  # noqa: E501
    ("pg_my_temp_schema()", "PERFORM pg_my_temp_schema();"),
    ("idle poll: claim query on an empty queue", "PERFORM * FROM pgdispatch.job q WHERE q.role = session_user AND q.run_at <= clock_timestamp() ORDER BY q.priority DESC, q.run_at, q.id LIMIT 50 FOR UPDATE SKIP LOCKED;"),  # noqa: E501
    ("idle poll: read settings", "PERFORM * FROM pgdispatch.settings;"),
    ("pg_sleep(0)", "PERFORM pg_sleep(0);"),
]  # fmt: skip


def pieces(ctx: Ctx, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for label, body in PIECES:
        with ctx.connect(APP_ROLE) as conn:
            t0 = time.perf_counter()
            conn.execute(f"DO $$ BEGIN FOR i IN 1..{n} LOOP {body} END LOOP; END $$")
            out[label] = (time.perf_counter() - t0) / n * 1e6
        ctx.sql("TRUNCATE bench.dsink, bench.sink")
    table("time per piece (DO-block loop)", ["piece", "us"], [[k, v] for k, v in out.items()])
    return out


class Workers:
    def __init__(self, ctx: Ctx, n: int, options: str) -> None:
        dsn = ctx.role_dsn(APP_ROLE)
        self.conns = [psycopg.connect(dsn, autocommit=True, options=options) for _ in range(n)]
        self.ctx = ctx
        self.threads = []
        for i, conn in enumerate(self.conns):
            call = f"CALL pgdispatch.work(slot => {i + 1}, max_runtime => '10 minutes')"
            t = threading.Thread(target=self._run, args=(conn, call), daemon=True)
            t.start()
            self.threads.append(t)

    @staticmethod
    def _run(conn: Any, call: str) -> None:
        with contextlib.suppress(Exception):  # terminated by close()
            conn.execute(call)

    def close(self) -> None:
        pids = [c.info.backend_pid for c in self.conns]
        self.ctx.sql("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (pids,))
        for t in self.threads:
            t.join(timeout=10)


def worker_commit_modes(ctx: Ctx, rounds: int, seconds: float) -> dict[str, Any]:
    script = "INSERT INTO bench.src_row (v) VALUES (1);\n"
    plain = "INSERT INTO bench.src_plain (v) VALUES (1);\n"
    modes = {
        "no workers": None,
        "workers, sync commit": "",
        "workers, async commit": "-c synchronous_commit=off",
    }
    tps: dict[str, dict[int, list[float]]] = {m: {1: [], 2: []} for m in [*modes, "no trigger"]}
    for _ in range(rounds):
        for clients in (1, 2):
            tps["no trigger"][clients].append(
                pgbench(ctx, plain, role=APP_ROLE, clients=clients, seconds=seconds).tps
            )
            for mode, options in modes.items():
                workers = Workers(ctx, 2, options) if options is not None else None
                try:
                    time.sleep(0.5)
                    res = pgbench(ctx, script, role=APP_ROLE, clients=clients, seconds=seconds)
                    tps[mode][clients].append(res.tps)
                finally:
                    if workers is not None:
                        workers.close()
                # drain what the mode left (the no-worker mode queues everything)
                with ctx.connect(APP_ROLE) as conn:
                    conn.execute("CALL pgdispatch.work(drain => true)")
    med = {m: {c: median(v[c]) for c in (1, 2)} for m, v in tps.items()}
    base = med["no trigger"]
    table(
        f"caller TPS, row dispatch trigger, median of {rounds} x {seconds:.0f} s",
        ["mode", "1 client", "2 clients", "ratio 1", "ratio 2"],
        [[m, v[1], v[2], v[1] / base[1], v[2] / base[2]] for m, v in med.items()],
    )
    return {"tps_runs": tps, "tps_median": med}


NEIGHBOURS = [
    "nothing",
    "idle workers",
    "watchdog",
    "workers + watchdog",
    "workers + firer",
    "workers + watchdog + firer",
]


def neighbours(ctx: Ctx, rounds: int, jobs: int, kinds: list[str] = NEIGHBOURS) -> dict[str, Any]:
    """Drain rate of one role's backlog while another role's workers idle (or not).

    One drain session of the drain role; the app role has: nothing, two idle workers
    (``work(slot => i)``), its watchdog only, both, or workers serving one job every
    20 ms (so they poll fast). Interleaved rounds.
    """
    from bench.common import DRAIN_ROLE
    from bench.scenarios import (
        WAITS,
        Firer,
        _reset_drain,
        pgdispatch_system,
        rate_by_tenth,
        run_workers,
    )
    from bench.setup import DRAIN_COMMAND

    def start(kind: str) -> list[psycopg.Connection[Any]]:
        calls = []
        if kind.startswith(("idle workers", "workers")):
            calls += [f"CALL pgdispatch.work(slot => {i}, max_runtime => '10 minutes')"
                      for i in (1, 2)]  # fmt: skip
        if "watchdog" in kind:
            calls.append("CALL pgdispatch.watchdog(max_runtime => '10 minutes')")
        conns = [ctx.connect(APP_ROLE) for _ in calls]
        for conn, call in zip(conns, calls, strict=True):
            threading.Thread(target=Workers._run, args=(conn, call), daemon=True).start()
        return conns

    rates: dict[str, list[float]] = {k: [] for k in kinds}
    tenths: dict[str, list[list[float]]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for kind in kinds:
            _reset_drain(ctx)
            with ctx.connect(DRAIN_ROLE) as conn:
                conn.execute(
                    "SELECT count(pgdispatch.dispatch(%s, to_jsonb(i))) "
                    "FROM generate_series(1, %s) i",
                    (DRAIN_COMMAND, jobs),
                )
            conns = start(kind)
            firer = Firer(ctx, pgdispatch_system(), 0.02) if "firer" in kind else None
            if firer is not None:
                firer.start()
            time.sleep(2)  # the idle workers back off to poll_max
            try:
                WAITS.clear()
                rates[kind].append(jobs / run_workers(ctx, DRAIN_ROLE, 1))
                tenths[kind].append(rate_by_tenth(ctx, DRAIN_ROLE))
            finally:
                if firer is not None:
                    firer.stop()
                pids = [c.info.backend_pid for c in conns]
                ctx.sql("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (pids,))
    table(
        f"drain of a {jobs} backlog (1 session) while the app role's workers idle",
        ["app role runs", "jobs/s runs", "median"],
        [[k, " ".join(f"{x:,.0f}" for x in v), median(v)] for k, v in rates.items()],
    )
    return {"jobs": jobs, "rates": rates, "tenths": tenths}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--url")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        if args.url:
            dsn, pgb = args.url, Path("/usr/lib/postgresql/15/bin/pgbench")
        else:
            from sa_pgdispatch.testing import EphemeralPostgres

            server = stack.enter_context(EphemeralPostgres(durable=True))
            dsn, pgb = server.dsn, server.bin_dir / "pgbench"
        ctx = Ctx(dsn=dsn, pgbench=pgb, quick=args.quick)
        setup_database(ctx, 2, cron=False)
        out = {
            "neighbours": neighbours(ctx, 1 if args.quick else 3, 10000 if args.quick else 50000),
            "pieces_us": pieces(ctx, 2000 if args.quick else 20000),
            "worker_commit": worker_commit_modes(
                ctx, 1 if args.quick else 3, 2 if args.quick else 4
            ),
        }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"profile-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
