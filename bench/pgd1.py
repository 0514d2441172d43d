"""The pg_dispatch 1.x baseline: ``python -m bench.pgd1 [--quick]``.

pg_dispatch 1.x schedules one self-unscheduling ``'1 seconds'`` pg_cron job per fire
(``bench.peers.PgDispatch1``), which needs pg_cron >= 1.5: it runs on a server of its
own, PostgreSQL 15 + pg_cron 1.6.7 in libpq mode (the tree of
``scripts/build-test-trees.sh``), beside pgdispatch on the same server. ``python -m
bench`` runs it after its own scenarios when its server's pg_cron is older (the
results' ``pgd1_baseline``); this module runs it alone.

Scenarios, the same code as the main run's, in this order because a fire rate above
~150/s stops pg_cron 1.6.7 from starting jobs (docs/benchmarks.md):

* latency (2): one fire every 20 ms, 500 per system (100 with ``--quick``);
* drain (3): 1,000 jobs from one ``INSERT ... SELECT`` (200 with ``--quick``), first to
  last side effect;
* caller overhead (1): the pgbench variants of the main run plus pgd1's trigger. After
  each pgd1 measurement its scheduled, not yet run cron jobs are deleted (thousands
  per run: what is measured is the caller's cost of scheduling them).

pgdispatch's workers on this server are sessions of our own running
``CALL pgdispatch.work(slot => i, ...)`` (as ``--quick`` does in the main run), so that
pgd1's load on pg_cron cannot stop them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/pgd1.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import scenarios
from bench.common import Ctx, load_average
from bench.peers import PgDispatch1
from bench.setup import setup_database

APP_WORKERS = 2


def delete_pending(ctx: Ctx) -> int:
    """Delete pgd1's scheduled cron jobs (those not yet run and unscheduled)."""
    return int(
        ctx.scalar(
            "WITH d AS (DELETE FROM cron.job WHERE jobname LIKE 'pgd1-%' RETURNING 1) "
            "SELECT count(*) FROM d"
        )
    )


def run_baseline(quick: bool) -> dict[str, Any]:
    """Start the 1.6.7 server, run the scenarios; the results (or why they are skipped)."""
    from bench.scale import pick_tree
    from sa_pgdispatch.testing import EphemeralPostgres

    bin_dir, label = pick_tree()
    if bin_dir is None:
        return {"skipped": f"no pg_cron >= 1.5 server: {label}", "configuration": label}
    started = time.time()
    out: dict[str, Any] = {"configuration": label, "load_start": load_average()}
    with ExitStack() as stack:
        server = EphemeralPostgres(
            pg_bin=bin_dir, cron_mode="libpq", durable=True, settings={"max_connections": "200"}
        )
        stack.enter_context(server)
        ctx = Ctx(dsn=server.dsn, pgbench=server.bin_dir / "pgbench", quick=quick)
        out["pgdispatch"] = setup_database(ctx, APP_WORKERS, cron=False)
        stack.callback(scenarios.OwnWorkers(ctx, APP_WORKERS).close)
        peer = PgDispatch1()
        peer.install(ctx)
        out.update(
            postgresql=ctx.scalar("SHOW server_version"),
            pg_cron=ctx.scalar("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'"),
            cron_max_running_jobs=ctx.scalar("SHOW cron.max_running_jobs"),
            peer=peer.as_json(),
        )
        if not peer.available:
            out["skipped"] = peer.skip_reason
            return out
        print(f"pg_dispatch 1.x baseline on {label}: pg_cron {out['pg_cron']}", flush=True)
        systems = [scenarios.pgdispatch_system(), scenarios.peer_system(peer)]
        out["latency"] = scenarios.steady_latency(ctx, systems)
        out["pending_after_latency"] = delete_pending(ctx)
        out["peer_drain"] = scenarios.peer_drain(ctx, systems)
        out["pending_after_drain"] = delete_pending(ctx)
        out["overhead"] = scenarios.caller_overhead(ctx, [peer])
        out["pending_after_overhead"] = delete_pending(ctx)
        out["load_end"] = load_average()
    out["duration_s"] = time.time() - started
    return out


def main(argv: list[str] | None = None) -> int:
    from bench.run import RESULTS, _clean, _machine

    parser = argparse.ArgumentParser(prog="python -m bench.pgd1", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer jobs, 1 s pgbench runs")
    args = parser.parse_args(argv)
    started = time.time()
    doc = {
        "kind": "pgd1",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": _machine(),
        "results": {"pgd1_baseline": run_baseline(args.quick)},
    }
    RESULTS.mkdir(exist_ok=True)
    name = "pgd1-latest-quick.json" if args.quick else "pgd1-latest.json"
    (RESULTS / name).write_text(json.dumps(_clean(doc), indent=1, default=str))
    print(f"wrote {RESULTS / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
