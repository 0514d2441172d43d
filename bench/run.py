"""Run the sa_pgdispatch benchmarks: ``.venv/bin/python -m bench [--quick] [--url URL]``.

Unless ``--no-limits``, the same run then measures pgdispatch against the hand-written
limits of bench/limits.py on the same server (caller trigger vs a minimal trigger,
``work()`` vs a SKIP LOCKED loop) and ends with one table of issue 14's targets, met or
missed (bench/targets.py), also saved in the JSON (``targets``).

``--scale`` runs the scale scenarios instead (bench/scale.py: a 1M backlog, a soak, many
idle roles) on a server of their own.

Starts a durable ephemeral PostgreSQL with pg_cron (unless ``--url``), installs
pgdispatch and the peers, runs the scenarios of docs/benchmarks.md, prints a table
per scenario and writes ``bench/results/<timestamp>.json`` and ``latest.json`` (``--quick``:
``<timestamp>-quick.json`` and ``latest-quick.json``; latest.json is left alone).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import scenarios
from bench.common import APP_ROLE, DRAIN_ROLE, STOPPED_ROLE, Ctx, load_average, table
from bench.peers import all_peers
from bench.setup import setup_database

RESULTS = Path(__file__).resolve().parent / "results"
APP_WORKERS = 2


def _machine() -> dict[str, Any]:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _clean(obj: Any) -> Any:
    """JSON without NaN/inf (null instead)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a ~2 minute smoke run")
    parser.add_argument("--url", help="use this server (libpq DSN, superuser, pg_cron database)")
    parser.add_argument("--no-peers", action="store_true", help="skip the peer comparisons")
    parser.add_argument(
        "--no-pgd1",
        action="store_true",
        help="skip the pg_dispatch 1.x baseline (run on a pg_cron 1.6.7 server when the "
        "main server's pg_cron cannot run it)",
    )
    parser.add_argument(
        "--no-limits",
        action="store_true",
        help="skip the hand-written limits (bench/limits.py; ~5 min, quick ~20 s)",
    )
    parser.add_argument("--no-plots", action="store_true", help="do not write docs/img/*.png")
    parser.add_argument(
        "--idle", type=float, default=None, help="idle period in seconds (default 60; quick 10)"
    )
    from bench.scale import add_arguments, run_scale

    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.scale:
        return run_scale(args)
    started = time.time()
    load_start = load_average()
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")

    with ExitStack() as stack:
        if args.url:
            dsn = args.url.replace("postgresql+psycopg://", "postgresql://")
            bin_dir = Path("/usr/lib/postgresql/15/bin")
        else:
            from sa_pgdispatch.testing import EphemeralPostgres

            server = EphemeralPostgres(durable=True, settings={"max_connections": "200"})
            stack.enter_context(server)
            dsn, bin_dir = server.dsn, server.bin_dir
        pgbench = bin_dir / "pgbench"
        if not pgbench.exists():
            found = shutil.which("pgbench")
            if found is None:
                print("pgbench not found", file=sys.stderr)
                return 2
            pgbench = Path(found)
        ctx = Ctx(dsn=dsn, pgbench=pgbench, quick=args.quick)
        results: dict[str, Any] = {}

        t0 = time.monotonic()
        version = setup_database(ctx, APP_WORKERS, cron=not args.quick)
        if args.quick:
            # no wait for pg_cron's next minute: the same work() calls, in our sessions
            stack.callback(scenarios.OwnWorkers(ctx, APP_WORKERS).close)
            print(f"pgdispatch {version} installed; {APP_WORKERS} work() sessions of our own")
        else:
            print(
                f"pgdispatch {version} installed; {APP_ROLE} starts {APP_WORKERS} pg_cron workers"
            )
        peers = [] if args.no_peers else all_peers()
        for peer in peers:
            peer.install(ctx)
            stack.callback(peer.stop)
            peer.start(ctx)
            state = f"version {peer.version}" if peer.available else f"skipped: {peer.skip_reason}"
            print(f"peer {peer.label}: {state}")
            if not peer.available:
                ctx.note(f"{peer.label} skipped: {peer.skip_reason}")
        results["setup_s"] = time.monotonic() - t0
        systems = [scenarios.pgdispatch_system()] + [
            scenarios.peer_system(p) for p in peers if p.available
        ]
        loads: dict[str, tuple[float, float, float]] = {"start": load_start}

        def phase(name: str) -> None:
            loads[name] = load_average()
            print(f"\n## {name} (load {loads[name][0]:.2f}, t+{time.time() - started:.0f} s)")

        # While pg_cron has not started the app role's workers (next minute boundary),
        # run what uses workers of our own: the burst.
        phase("4. burst")
        results["burst"] = scenarios.burst(ctx)
        phase("waiting for the pg_cron workers")
        results["workers_wait_s"] = scenarios.wait_for_app_workers(ctx, APP_WORKERS, 75)
        phase("1. caller overhead")
        results["overhead"] = scenarios.caller_overhead(ctx, peers)
        phase("2. latency")
        results["latency"] = scenarios.steady_latency(ctx, systems)
        phase("5. idle")
        idle_s = args.idle if args.idle is not None else (10.0 if args.quick else 60.0)
        results["idle"] = scenarios.idle_cost(ctx, systems, idle_s)
        phase("3. drain throughput (+ latency under load)")
        results["drain"] = scenarios.drain_throughput(ctx, systems[0])
        results["peer_drain"] = scenarios.peer_drain(ctx, systems)
        phase("6. sustained")
        rate, seconds = (500, 10.0) if args.quick else (2000, 60.0)
        results["sustained"] = scenarios.sustained(ctx, rate, seconds)
        if not args.no_limits:
            phase("limits: pgdispatch / hand-written (bench/limits.py)")
            results["limits"] = _limits(ctx, peers, args.quick)
        if any(p.name == "pgd1" and not p.available for p in peers) and not args.no_pgd1:
            phase("pg_dispatch 1.x baseline (a server of its own)")
            from bench.pgd1 import run_baseline

            for peer in peers:
                peer.stop()  # their workers: not part of that server's measurements
            results["pgd1_baseline"] = run_baseline(args.quick)
        phase("end")

        versions = {
            "postgresql": ctx.scalar("SHOW server_version"),
            "pg_cron": ctx.scalar("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'"),
            "pgdispatch": version,
            "synchronous_commit": ctx.scalar("SHOW synchronous_commit"),
            "fsync": ctx.scalar("SHOW fsync"),
            "settings": ctx.sql(
                "SELECT jsonb_object_agg(key, value) FROM jsonb_each_text("
                "(SELECT to_jsonb(s) - 'singleton' FROM pgdispatch.settings s))"
            )[0][0],
        }
        try:
            pgbench_version = subprocess.run(
                [str(pgbench), "--version"], capture_output=True, text=True, check=False
            ).stdout.strip()
        except OSError:
            pgbench_version = ""
        doc = {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": time.time() - started,
            "quick": args.quick,
            "machine": _machine(),
            "versions": versions,
            "pgbench": pgbench_version,
            "peers": {p.name: p.as_json() for p in peers},
            "load": loads,
            "notes": ctx.notes,
            "app_workers": APP_WORKERS,
            "results": results,
        }
    from bench.targets import evaluate, verdict

    # from the JSON form, as bench/report.py reads it back
    doc = json.loads(json.dumps(_clean(doc), default=str))
    doc["targets"] = evaluate(doc["results"])
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    text = json.dumps(doc, indent=1)
    suffix = "-quick" if args.quick else ""
    (RESULTS / f"{stamp}{suffix}.json").write_text(text)
    (RESULTS / f"latest{suffix}.json").write_text(text)
    print(f"wrote {RESULTS / f'{stamp}{suffix}.json'} and latest{suffix}.json")
    if not args.no_plots:
        from bench.plots import plot_all

        for path in plot_all(json.loads(text), quick=args.quick):
            print(f"wrote {path}")
    table(
        "run",
        ["duration s", "load start", "load end"],
        [[doc["duration_s"], loads["start"][0], loads["end"][0]]],
    )
    table(
        "targets (issue 14)"
        + (" - quick run: smaller workloads, not the targets' figures" if args.quick else ""),
        ["target", "threshold", "measured", "verdict", "detail"],
        [
            [t["target"], t["threshold"], t["value"], verdict(t["met"]), t["detail"]]
            for t in doc["targets"]
        ],
    )
    return 0


def _limits(ctx: Ctx, peers: list[Any], quick: bool) -> dict[str, Any]:
    """bench/limits.py's parts 1 and 2 on this server, once the scenarios are done.

    The peers' processes are stopped and the benchmark roles' job history deleted first, so
    that pgdispatch's tables are in the state of bench.limits' own server; the app
    role's two workers and watchdog idle on (about 2% of a core).
    """
    from bench import limits

    for peer in peers:
        peer.stop()
    with ctx.connect() as conn:  # the benchmark's roles only (--url: a server of yours)
        conn.execute(
            "DELETE FROM pgdispatch.job_history WHERE role = ANY(%s)",
            ([APP_ROLE, DRAIN_ROLE, STOPPED_ROLE, limits.ROLE],),
        )
        conn.execute("VACUUM (ANALYZE) pgdispatch.job_history")
    info = limits.prepare(ctx, install_pgdispatch=False)
    seconds, rounds, jobs = (3.0, 1, 10_000) if quick else (10.0, 3, 100_000)
    out = limits.measure(ctx, seconds, rounds, jobs)
    out["server"] = info
    return out


if __name__ == "__main__":
    raise SystemExit(main())
