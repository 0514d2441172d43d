"""The measured scenarios (docs/benchmarks.md describes each)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.common import (
    APP_ROLE,
    DRAIN_ROLE,
    STOPPED_ROLE,
    CpuSampler,
    Ctx,
    backend_pids,
    load_average,
    median,
    pgbench,
    summary_ms,
    table,
    wait_until,
)
from bench.peers import Peer
from bench.setup import DRAIN_COMMAND, DRAIN_COMMAND_CAPTURE

# ---------------------------------------------------------------------------------------
# helpers


def app_worker_pids(ctx: Ctx) -> list[int]:
    return backend_pids(ctx, "usename = %s AND query LIKE 'CALL pgdispatch.work(%%'", (APP_ROLE,))


def app_watchdog_pids(ctx: Ctx) -> list[int]:
    return backend_pids(
        ctx, "usename = %s AND query LIKE 'CALL pgdispatch.watchdog(%%'", (APP_ROLE,)
    )


class OwnWorkers:
    """The app role's workers run by us instead of pg_cron (``--quick``: no minute wait).

    Each is exactly what pg_cron runs, ``CALL pgdispatch.work(slot => i, ...)`` as the
    app role, plus its watchdog; they are terminated by pid at the end.
    """

    def __init__(self, ctx: Ctx, workers: int) -> None:
        self.ctx = ctx
        self.conns = [ctx.connect(APP_ROLE) for _ in range(workers + 1)]
        self.threads: list[threading.Thread] = []
        calls = [
            f"CALL pgdispatch.work(slot => {i + 1}, max_runtime => '30 minutes')"
            for i in range(workers)
        ]
        calls.append("CALL pgdispatch.watchdog(max_runtime => '30 minutes')")
        for conn, call in zip(self.conns, calls, strict=True):
            t = threading.Thread(target=self._run, args=(conn, call), daemon=True)
            t.start()
            self.threads.append(t)

    @staticmethod
    def _run(conn: Any, call: str) -> None:
        with contextlib.suppress(Exception):  # terminated at the end
            conn.execute(call)

    def close(self) -> None:
        pids = [c.info.backend_pid for c in self.conns]
        self.ctx.sql("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (pids,))
        for t in self.threads:
            t.join(timeout=10)


def wait_for_app_workers(ctx: Ctx, workers: int, timeout: float) -> float:
    """Wait until the app role's pg_cron workers run; returns the seconds waited."""
    t0 = time.monotonic()
    ok = wait_until(lambda: len(app_worker_pids(ctx)) >= workers, timeout, 0.5)
    if not ok:
        raise RuntimeError(
            f"the {workers} pg_cron worker(s) of {APP_ROLE} did not start within {timeout:.0f} s"
        )
    return time.monotonic() - t0


def queue_len(ctx: Ctx, role: str) -> int:
    return int(ctx.scalar("SELECT count(*) FROM pgdispatch.job WHERE role = %s", (role,)))


def wait_sink(ctx: Ctx, tag: str, lo: int, hi: int, timeout: float) -> bool:
    want = hi - lo + 1
    return wait_until(
        lambda: (
            int(
                ctx.scalar(
                    "SELECT count(*) FROM bench.sink WHERE tbl = %s AND id BETWEEN %s AND %s",
                    (tag, lo, hi),
                )
            )
            >= want
        ),
        timeout,
        0.2,
    )


@dataclass
class System:
    """A dispatch-triggered table: pgdispatch's or a peer's, and the sink tag of its jobs."""

    name: str
    label: str
    table: str
    tag: str
    peer: Peer | None = None


def pgdispatch_system() -> System:
    return System("pgdispatch", "pgdispatch", "src_row", "row")


def peer_system(peer: Peer) -> System:
    tag = {"graphile": "graphile", "procrastinate": "procrastinate", "pgd1": "pgd1"}[peer.name]
    return System(peer.name, peer.label, peer.table, tag, peer)


# ---------------------------------------------------------------------------------------
# 1. caller overhead


def caller_overhead(ctx: Ctx, peers: list[Peer]) -> dict[str, Any]:
    """pgbench TPS of single-row INSERTs with and without dispatch triggers, interleaved."""
    rounds, seconds = (1, 1.0) if ctx.quick else (3, 3.0)
    one = "INSERT INTO bench.src_{t} (v) VALUES (1);\n"
    hundred = "INSERT INTO bench.src_{t} (v) SELECT g FROM generate_series(1, 100) g;\n"
    variants: list[tuple[str, str, str, str]] = [
        ("a", "no trigger", APP_ROLE, one.format(t="plain")),
        ("b", "pgdispatch.trigger row trigger", APP_ROLE, one.format(t="row")),
        ("b_stopped", "row trigger, workers stopped", STOPPED_ROLE, one.format(t="row")),
        ("a100", "100-row INSERT, no trigger", APP_ROLE, hundred.format(t="plain")),
        ("c", "100-row INSERT, statement dispatch", APP_ROLE, hundred.format(t="stmt")),
        ("d", "side effect inline in trigger", APP_ROLE, one.format(t="inline")),
    ]
    for peer in peers:
        if peer.available:
            variants.append(
                (peer.name, f"{peer.label} trigger", APP_ROLE, one.format(t=peer.table[4:]))
            )
    tps: dict[str, dict[int, list[float]]] = {v[0]: {1: [], 2: []} for v in variants}
    waits: dict[str, float] = {}
    deleted: dict[str, int] = {}  # pgd1: its cron jobs deleted unrun after each run
    for rnd in range(rounds):
        for clients in (1, 2):
            k = (rnd * 2 + clients) % len(variants)
            order = variants[k:] + variants[:k]  # rotate: no variant always goes first
            for key, _label, role, script in order:
                res = pgbench(ctx, script, role=role, clients=clients, seconds=seconds)
                tps[key][clients].append(res.tps)
                # let this variant's workers drain before the next one is measured
                t0 = time.monotonic()
                deleted[key] = deleted.get(key, 0) + _wait_drained(
                    ctx, key, peers, timeout=3 if ctx.quick else 8
                )
                waits[key] = waits.get(key, 0.0) + time.monotonic() - t0
    # the jobs of the stopped role: drain them in one session (a data point, too)
    t0 = time.monotonic()
    backlog = queue_len(ctx, STOPPED_ROLE)
    with ctx.connect(STOPPED_ROLE) as conn:
        conn.execute("CALL pgdispatch.work(drain => true)")
    stopped_drain_s = time.monotonic() - t0

    med = {k: {c: median(v[c]) for c in (1, 2)} for k, v in tps.items()}
    ratios: dict[str, dict[int, float]] = {}
    for c in (1, 2):
        a, a100 = med["a"][c], med["a100"][c]
        ratios.setdefault("b/a", {})[c] = med["b"][c] / a
        ratios.setdefault("b_stopped/a", {})[c] = med["b_stopped"][c] / a
        ratios.setdefault("c/a'", {})[c] = med["c"][c] / a100
        ratios.setdefault("d/a", {})[c] = med["d"][c] / a
        for peer in peers:
            if peer.available:
                ratios.setdefault(f"{peer.name}/a", {})[c] = med[peer.name][c] / a
    labels = {v[0]: v[1] for v in variants}
    table(
        f"1. caller overhead: pgbench TPS, median of {rounds} x {seconds:.0f} s (interleaved)",
        ["variant", "what", "1 client", "2 clients"],
        [[k, labels[k], med[k][1], med[k][2]] for k in med],
    )
    table(
        "1. caller overhead: ratios (rows/s of 100-row INSERTs compare with a')",
        ["ratio", "1 client", "2 clients"],
        [[name, r[1], r[2]] for name, r in ratios.items()],
    )
    return {
        "rounds": rounds,
        "seconds": seconds,
        "tps_runs": {k: {str(c): v[c] for c in v} for k, v in tps.items()},
        "tps_median": {k: {str(c): v[c] for c in v} for k, v in med.items()},
        "rows_per_s_median": {
            k: {str(c): v[c] * (100 if k in ("a100", "c") else 1) for c in v}
            for k, v in med.items()
        },
        "ratios": {k: {str(c): v[c] for c in v} for k, v in ratios.items()},
        "labels": labels,
        "drain_wait_s": waits,
        "deleted_unrun": {k: v for k, v in deleted.items() if v},
        "stopped_backlog": backlog,
        "stopped_backlog_drain_s": stopped_drain_s,
    }


def _wait_drained(ctx: Ctx, key: str, peers: list[Peer], timeout: float) -> int:
    """Wait for *key*'s queue to drain; pgd1's jobs are deleted instead (their count)."""
    if key in ("b", "c"):
        wait_until(lambda: queue_len(ctx, APP_ROLE) == 0, timeout, 0.1)
    elif key == "graphile":
        wait_until(
            lambda: int(ctx.scalar("SELECT count(*) FROM graphile_worker.jobs")) == 0, timeout
        )
    elif key == "pgd1":
        # thousands of '1 seconds' cron jobs per pgbench run: more than pg_cron 1.6.7 can
        # start (it stops starting jobs above ~150 fires/s). The caller's cost is what is
        # measured: the jobs not yet run are deleted (bench/pgd1.py).
        return int(
            ctx.scalar(
                "WITH d AS (DELETE FROM cron.job WHERE jobname LIKE 'pgd1-%' RETURNING 1) "
                "SELECT count(*) FROM d"
            )
        )
    elif key == "procrastinate":
        wait_until(
            lambda: (
                int(ctx.scalar("SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'"))
                == 0
            ),
            timeout,
        )
    return 0


# ---------------------------------------------------------------------------------------
# 2. fire-to-start latency


class Firer:
    """Insert one row every *interval* seconds into a dispatch-triggered table (autocommit)."""

    def __init__(self, ctx: Ctx, system: System, interval: float) -> None:
        self.ctx, self.system, self.interval = ctx, system, interval
        self.ids: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self, count: int | None = None) -> list[int]:
        sql = f"INSERT INTO bench.{self.system.table} (v) VALUES (1) RETURNING id"
        with self.ctx.connect(APP_ROLE) as conn:
            conn.execute(sql)  # warm the session (worker check, plan cache); not measured
            t0 = time.monotonic()
            i = 0
            while not self._stop.is_set() and (count is None or i < count):
                delay = t0 + i * self.interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                row = conn.execute(sql).fetchone()
                assert row is not None
                self.ids.append(int(row[0]))
                i += 1
        return self.ids

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()

    def stop(self) -> list[int]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.ids


def latencies(ctx: Ctx, system: System, ids: list[int]) -> dict[str, Any]:
    """Fire-to-effect (and, for pgdispatch, fire-to-start) latencies of the rows *ids*."""
    if not ids:
        return {"n": 0}
    lo, hi = min(ids), max(ids)
    done = wait_sink(ctx, system.tag, lo, hi, timeout=30)
    effect = [
        float(r[0])
        for r in ctx.sql(
            f"SELECT extract(epoch FROM s.at - r.fired_at) * 1000 FROM bench.{system.table} r "
            "JOIN bench.sink s ON s.tbl = %s AND s.id = r.id WHERE r.id = ANY(%s)",
            (system.tag, ids),
        )
    ]
    out: dict[str, Any] = {
        "fired": len(ids),
        "completed": len(effect),
        "all_done": done,
        "effect_ms": summary_ms(effect),
        "effect_samples": effect,
    }
    if system.name == "pgdispatch":
        start = [
            float(r[0])
            for r in ctx.sql(
                "SELECT extract(epoch FROM h.started_at - r.fired_at) * 1000 "
                f"FROM bench.{system.table} r JOIN pgdispatch.job_history h "
                "ON h.role = %s AND h.command = 'SELECT bench.effect_row($1)' "
                "AND (h.payload ->> 'id')::bigint = r.id WHERE r.id = ANY(%s)",
                (APP_ROLE, ids),
            )
        ]
        dispatch_to_start = [
            float(r[0])
            for r in ctx.sql(
                "SELECT extract(epoch FROM h.started_at - h.created_at) * 1000 "
                "FROM pgdispatch.job_history h WHERE h.role = %s "
                "AND h.command = 'SELECT bench.effect_row($1)' "
                "AND (h.payload ->> 'id')::bigint = ANY(%s)",
                (APP_ROLE, ids),
            )
        ]
        out["start_ms"] = summary_ms(start)
        out["start_samples"] = start
        out["created_to_start_ms"] = summary_ms(dispatch_to_start)
    return out


def steady_latency(ctx: Ctx, systems: list[System]) -> dict[str, Any]:
    n = 100 if ctx.quick else 500
    out: dict[str, Any] = {}
    for system in systems:
        ids = Firer(ctx, system, 0.02).run(n)
        out[system.name] = latencies(ctx, system, ids)
    _print_latency(f"2. fire-to-start latency, one job every 20 ms, {n} jobs", out)
    return out


def _print_latency(title: str, results: dict[str, Any]) -> None:
    rows = []
    for name, r in results.items():
        if not r.get("fired"):
            continue
        if "start_ms" in r:
            s = r["start_ms"]
            rows.append([f"{name} (start)", s["n"], s["p50"], s["p95"], s["p99"], s["max"]])
        e = r["effect_ms"]
        rows.append([f"{name} (effect)", e["n"], e["p50"], e["p95"], e["p99"], e["max"]])
    table(title, ["system", "n", "p50 ms", "p95 ms", "p99 ms", "max ms"], rows)


# ---------------------------------------------------------------------------------------
# 5. idle cost (and 2b: first job after the idle period)


def idle_cost(ctx: Ctx, systems: list[System], seconds: float) -> dict[str, Any]:
    groups: dict[str, Callable[[], list[int]]] = {
        "pgdispatch workers": lambda: app_worker_pids(ctx),
        "pgdispatch watchdog": lambda: app_watchdog_pids(ctx),
    }
    for system in systems:
        peer = system.peer
        if peer is not None and peer.available and peer.proc is not None:
            groups[f"{peer.name} process"] = peer.os_pids
            groups[f"{peer.name} backends"] = lambda p=peer: p.backend_pids(ctx)  # type: ignore[misc]
    t_idle = time.time()
    with CpuSampler(groups) as sampler:
        time.sleep(seconds)
    elapsed = sampler.elapsed
    cpu = {name: sampler.seconds(name) for name in groups}
    pids = {name: sampler.pids(name) for name in groups}
    workers = len(set(pids["pgdispatch workers"]))
    per_worker_pct = {}
    n_slots = int(ctx.scalar("SELECT workers FROM pgdispatch.worker WHERE role = %s", (APP_ROLE,)))
    per_worker_pct["pgdispatch worker"] = 100 * cpu["pgdispatch workers"] / n_slots / elapsed
    per_worker_pct["pgdispatch watchdog"] = 100 * cpu["pgdispatch watchdog"] / elapsed
    for system in systems:
        peer = system.peer
        if peer is not None and f"{peer.name} process" in cpu:
            per_worker_pct[f"{peer.name} worker (process)"] = (
                100 * cpu[f"{peer.name} process"] / elapsed
            )
            per_worker_pct[f"{peer.name} worker (backends)"] = (
                100 * cpu[f"{peer.name} backends"] / elapsed
            )
    table(
        f"5. idle cost over {elapsed:.0f} s (% of one core)",
        ["what", "% core"],
        [[k, v] for k, v in per_worker_pct.items()],
    )
    # 2b: the first job after the idle period, each system in turn
    first: dict[str, Any] = {}
    for system in systems:
        ids = Firer(ctx, system, 0.02).run(1)
        first[system.name] = latencies(ctx, system, ids)
        first[system.name]["idle_s"] = time.time() - t_idle
    rows = []
    for name, r in first.items():
        rows.append([name, r.get("start_ms", {}).get("max"), r["effect_ms"]["max"], r["idle_s"]])
    table("2. first job after the idle period", ["system", "start ms", "effect ms", "idle s"], rows)
    return {
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "pids": pids,
        "pgdispatch_backends_seen": workers,
        "pct_of_core": per_worker_pct,
        "first_after_idle": first,
        "idle_started_at_second_of_minute": time.localtime(t_idle).tm_sec,
    }


# ---------------------------------------------------------------------------------------
# 3. drain throughput (own work() sessions, the drain role)


def _reset_drain(ctx: Ctx) -> None:
    with ctx.connect() as conn:
        conn.execute("TRUNCATE bench.dsink")
        conn.execute("DELETE FROM pgdispatch.job_history WHERE role = %s", (DRAIN_ROLE,))
        conn.execute("VACUUM (ANALYZE) pgdispatch.job, pgdispatch.job_history")


WAITS: dict[str, int] = {}


def run_workers(ctx: Ctx, role: str, workers: int) -> float:
    """Run *workers* sessions of ``CALL pgdispatch.work(slot => i, drain => true)`` at once.

    Connections are opened first; the clock runs from the common start to the last return.
    What the sessions wait on is sampled every 50 ms into ``WAITS`` (for diagnosis).
    """
    conns = [ctx.connect(role) for _ in range(workers)]
    pids = [c.info.backend_pid for c in conns]
    done = threading.Event()

    def sample_waits() -> None:
        with ctx.connect() as mon:
            while not done.wait(0.05):
                for (ev,) in mon.execute(
                    "SELECT coalesce(wait_event_type || ':' || wait_event, state) "
                    "FROM pg_stat_activity WHERE pid = ANY(%s)",
                    (pids,),
                ):
                    WAITS[str(ev)] = WAITS.get(str(ev), 0) + 1
                # who holds the oldest snapshot (xmin horizon) besides the workers?
                row = mon.execute(
                    "SELECT usename || ': ' || left(query, 50), age(backend_xmin) "
                    "FROM pg_stat_activity WHERE backend_xmin IS NOT NULL "
                    "AND NOT pid = ANY(%s) AND pid <> pg_backend_pid() "
                    "ORDER BY age(backend_xmin) DESC LIMIT 1",
                    (pids,),
                ).fetchone()
                if row is not None and row[1] is not None and int(row[1]) > 100:
                    key = f"xmin>100 xids held by {row[0]}"
                    WAITS[key] = WAITS.get(key, 0) + 1

    monitor = threading.Thread(target=sample_waits, daemon=True)
    monitor.start()
    barrier = threading.Barrier(workers + 1)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait()
            conns[i].execute(f"CALL pgdispatch.work(slot => {i + 1}, drain => true)")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    done.set()
    monitor.join()
    for c in conns:
        c.close()
    if errors:
        raise errors[0]
    return elapsed


def drain_throughput(ctx: Ctx, under_load: System | None) -> dict[str, Any]:
    sizes = [2_000, 10_000] if ctx.quick else [10_000, 100_000]
    # capture at the small size only: the 100k capture run alone took ~35 s
    configs = [(n, w, False) for n in sizes for w in (1, 2)] + [(sizes[0], 1, True)]
    firer = Firer(ctx, under_load, 0.02) if under_load is not None else None
    if firer is not None:
        firer.start()
    runs = []
    try:
        for n, workers, capture in configs:
            _reset_drain(ctx)
            cmd = DRAIN_COMMAND_CAPTURE if capture else DRAIN_COMMAND
            with ctx.connect(DRAIN_ROLE) as conn:
                t0 = time.perf_counter()
                conn.execute(
                    "SELECT count(pgdispatch.dispatch(%s, to_jsonb(i), capture => %s)) "
                    "FROM generate_series(1, %s) i",
                    (cmd, capture, n),
                )
                enqueue_s = time.perf_counter() - t0
            WAITS.clear()
            elapsed = run_workers(ctx, DRAIN_ROLE, workers)
            done, distinct = ctx.sql("SELECT count(*), count(DISTINCT v) FROM bench.dsink")[0]
            failed = int(
                ctx.scalar(
                    "SELECT count(*) FROM pgdispatch.job_history WHERE role = %s "
                    "AND state <> 'succeeded'",
                    (DRAIN_ROLE,),
                )
            )
            left = queue_len(ctx, DRAIN_ROLE)
            runs.append(
                {
                    "jobs": n,
                    "workers": workers,
                    "capture": capture,
                    "enqueue_s": enqueue_s,
                    "enqueue_per_s": n / enqueue_s,
                    "drain_s": elapsed,
                    "jobs_per_s": n / elapsed,
                    "effects": int(done),
                    "distinct_effects": int(distinct),
                    "failed": failed,
                    "left_in_queue": left,
                    "wait_samples": dict(WAITS),
                    "jobs_per_s_by_tenth": rate_by_tenth(ctx, DRAIN_ROLE),
                }
            )
    finally:
        ids = firer.stop() if firer is not None else []
    table(
        "3. drain throughput (CALL pgdispatch.work(slot => i, drain => true) sessions)",
        ["jobs", "workers", "capture", "jobs/s", "drain s", "enqueue/s", "effects", "failed"],
        [
            [
                r["jobs"],
                r["workers"],
                r["capture"],
                r["jobs_per_s"],
                r["drain_s"],
                r["enqueue_per_s"],
                r["effects"],
                r["failed"],
            ]
            for r in runs
        ],
    )
    out: dict[str, Any] = {"runs": runs}
    if under_load is not None:
        out["latency_under_load"] = latencies(ctx, under_load, ids)
        _print_latency(
            "2. fire-to-start latency under load (one job every 20 ms while 3. runs)",
            {"pgdispatch": out["latency_under_load"]},
        )
    return out


# ---------------------------------------------------------------------------------------
# 4. burst


def rate_by_tenth(ctx: Ctx, role: str) -> list[float]:
    """The drain rate as the backlog shrinks: jobs/s in each tenth of the jobs (by start)."""
    return [
        float(r[0])
        for r in ctx.sql(
            "SELECT count(*) / nullif(extract(epoch FROM max(started_at) - min(started_at)), 0) "
            "FROM (SELECT started_at, ntile(10) OVER (ORDER BY started_at) AS tenth "
            "      FROM pgdispatch.job_history WHERE role = %s) t GROUP BY tenth ORDER BY tenth",
            (role,),
        )
        if r[0] is not None
    ]


def _sizes(ctx: Ctx) -> dict[str, int]:
    rows = ctx.sql(
        "SELECT c.relname, pg_total_relation_size(c.oid), pg_relation_size(c.oid), "
        "pg_indexes_size(c.oid) FROM pg_class c "
        "WHERE c.oid IN ('pgdispatch.job'::regclass, 'pgdispatch.job_history'::regclass)"
    )
    out: dict[str, int] = {}
    for name, total, heap, idx in rows:
        out[f"{name}.total"] = int(total)
        out[f"{name}.heap"] = int(heap)
        out[f"{name}.indexes"] = int(idx)
    return out


def burst(ctx: Ctx) -> dict[str, Any]:
    n = 20_000 if ctx.quick else 100_000
    _reset_drain(ctx)
    ctx.sql("TRUNCATE bench.src_burst")
    ctx.sql("DELETE FROM bench.sink WHERE tbl = 'burst'")
    cron_jobs_before = int(ctx.scalar("SELECT count(*) FROM cron.job"))
    sizes_before = _sizes(ctx)
    with ctx.connect(DRAIN_ROLE) as conn:
        t0 = time.perf_counter()
        conn.execute("INSERT INTO bench.src_burst (v) SELECT g FROM generate_series(1, %s) g", (n,))
        insert_s = time.perf_counter() - t0
    cron_jobs_after = int(ctx.scalar("SELECT count(*) FROM cron.job"))
    sizes_queued = _sizes(ctx)
    peak = [queue_len(ctx, DRAIN_ROLE)]
    stop = threading.Event()

    def sample() -> None:
        with ctx.connect() as conn:
            while not stop.wait(0.2):
                row = conn.execute(
                    "SELECT count(*) FROM pgdispatch.job WHERE role = %s", (DRAIN_ROLE,)
                ).fetchone()
                assert row is not None
                peak.append(int(row[0]))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    drain_s = run_workers(ctx, DRAIN_ROLE, 2)
    stop.set()
    sampler.join()
    sizes_drained = _sizes(ctx)
    deciles = rate_by_tenth(ctx, DRAIN_ROLE)
    effects, distinct = ctx.sql(
        "SELECT count(*), count(DISTINCT id) FROM bench.sink WHERE tbl = 'burst'"
    )[0]
    states = dict(
        ctx.sql(
            "SELECT state, count(*) FROM pgdispatch.job_history WHERE role = %s GROUP BY state",
            (DRAIN_ROLE,),
        )
    )
    # retention pruning: retention 0, prune everything of the role, then VACUUM
    retention = ctx.scalar("SELECT retention::text FROM pgdispatch.settings")
    ctx.sql("UPDATE pgdispatch.settings SET retention = '0'")
    try:
        with ctx.connect(DRAIN_ROLE) as conn:
            t0 = time.perf_counter()
            row = conn.execute("SELECT pgdispatch.prune(%s)", (n * 2,)).fetchone()
            prune_s = time.perf_counter() - t0
            pruned = int(row[0]) if row else 0
    finally:
        ctx.sql("UPDATE pgdispatch.settings SET retention = %s::interval", (retention,))
    sizes_pruned = _sizes(ctx)
    ctx.sql("VACUUM pgdispatch.job, pgdispatch.job_history")
    sizes_vacuumed = _sizes(ctx)
    out = {
        "jobs": n,
        "insert_s": insert_s,
        "drain_s": drain_s,
        "jobs_per_s": n / drain_s,
        "peak_queue": max(peak),
        "jobs_per_s_by_tenth": deciles,
        "effects": int(effects),
        "distinct_effects": int(distinct),
        "states": {str(k): int(v) for k, v in states.items()},
        "errors": sum(int(v) for k, v in states.items() if k != "succeeded"),
        "cron_jobs_before": cron_jobs_before,
        "cron_jobs_after": cron_jobs_after,
        "pruned": pruned,
        "prune_s": prune_s,
        "sizes": {
            "before": sizes_before,
            "queued": sizes_queued,
            "drained": sizes_drained,
            "pruned": sizes_pruned,
            "pruned_vacuumed": sizes_vacuumed,
        },
    }
    table(
        f"4. burst: {n} jobs from one INSERT ... SELECT, two workers",
        [
            "insert s",
            "drain s",
            "jobs/s",
            "peak queue",
            "effects",
            "errors",
            "cron.job before/after",
        ],
        [
            [
                insert_s,
                drain_s,
                n / drain_s,
                max(peak),
                int(effects),
                out["errors"],
                f"{cron_jobs_before}/{cron_jobs_after}",
            ]
        ],
    )
    print("  jobs/s in each tenth of the drain: " + ", ".join(f"{d:,.0f}" for d in deciles))
    mb = 1024 * 1024
    table(
        "4. burst: sizes (MB, pg_total_relation_size / indexes)",
        ["stage", "job", "job idx", "history", "history idx"],
        [
            [
                stage,
                s["job.total"] / mb,
                s["job.indexes"] / mb,
                s["job_history.total"] / mb,
                s["job_history.indexes"] / mb,
            ]
            for stage, s in out["sizes"].items()  # type: ignore[attr-defined]
        ],
    )
    return out


# ---------------------------------------------------------------------------------------
# 6. sustained rate


def sustained(ctx: Ctx, rate: int, seconds: float) -> dict[str, Any]:
    ctx.sql("TRUNCATE bench.src_sust")
    ctx.sql("DELETE FROM bench.sink WHERE tbl = 'sust'")
    samples: list[tuple[float, int, float]] = []
    stop = threading.Event()

    def sample() -> None:
        with ctx.connect() as conn:
            t0 = time.monotonic()
            while not stop.wait(0.5):
                row = conn.execute(
                    "SELECT count(*), coalesce(extract(epoch FROM max(clock_timestamp() - run_at)),"
                    " 0) FROM pgdispatch.job WHERE role = %s",
                    (APP_ROLE,),
                ).fetchone()
                assert row is not None
                samples.append((time.monotonic() - t0, int(row[0]), float(row[1])))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    load_before = load_average()
    res = pgbench(
        ctx,
        "INSERT INTO bench.src_sust (v) VALUES (1);\n",
        role=APP_ROLE,
        clients=2,
        seconds=seconds,
        rate=rate,
    )
    drained = wait_until(lambda: queue_len(ctx, APP_ROLE) == 0, 30, 0.2)
    stop.set()
    sampler.join()
    dispatched = int(ctx.scalar("SELECT count(*) FROM bench.src_sust"))
    effects, distinct = ctx.sql(
        "SELECT count(*), count(DISTINCT id) FROM bench.sink WHERE tbl = 'sust'"
    )[0]
    lost = int(
        ctx.scalar(
            "SELECT count(*) FROM bench.src_sust r WHERE NOT EXISTS "
            "(SELECT 1 FROM bench.sink s WHERE s.tbl = 'sust' AND s.id = r.id)"
        )
    )
    failed = int(
        ctx.scalar(
            "SELECT count(*) FROM pgdispatch.job_history WHERE role = %s AND state <> 'succeeded' "
            "AND command = 'SELECT bench.effect_sust($1)'",
            (APP_ROLE,),
        )
    )
    ages = [s[2] for s in samples]
    out = {
        "target_rate": rate,
        "seconds": seconds,
        "pgbench_tps": res.tps,
        "dispatched": dispatched,
        "pgbench_lag_avg_ms": res.lag_avg_ms,
        "pgbench_lag_max_ms": res.lag_max_ms,
        "effects": int(effects),
        "distinct_effects": int(distinct),
        "lost": lost,
        "duplicated": int(effects) - int(distinct),
        "failed": failed,
        "drained_after": drained,
        "max_backlog_age_s": max(ages) if ages else float("nan"),
        "max_queue": max((s[1] for s in samples), default=0),
        "samples": samples,
        "load_before": load_before,
    }
    table(
        f"6. sustained: pgbench -R {rate} for {seconds:.0f} s with workers draining",
        [
            "dispatches/s",
            "dispatched",
            "effects",
            "lost",
            "dup",
            "failed",
            "max backlog age s",
            "max queue",
        ],
        [
            [
                res.tps,
                dispatched,
                int(effects),
                lost,
                out["duplicated"],
                failed,
                out["max_backlog_age_s"],
                out["max_queue"],
            ]
        ],
    )
    return out


# ---------------------------------------------------------------------------------------
# peers: drain rate with their workers running


def peer_drain(ctx: Ctx, systems: list[System]) -> dict[str, Any]:
    """Jobs/s of each system's running worker(s) for a batch from one INSERT ... SELECT."""
    out: dict[str, Any] = {}
    for system in systems:
        peer = system.peer
        if peer is not None and not peer.available:
            continue
        # pgd1: one pg_cron job per fire, ~150-240 jobs/s at most (design brief)
        n = {"graphile": 5000, "procrastinate": 1000, "pgd1": 1000}.get(system.name, 20000)
        if ctx.quick:
            n //= 5
        lo = int(ctx.scalar(f"SELECT coalesce(max(id), 0) + 1 FROM bench.{system.table}"))
        t0 = time.perf_counter()
        with ctx.connect(APP_ROLE) as conn:
            conn.execute(
                f"INSERT INTO bench.{system.table} (v) SELECT g FROM generate_series(1, %s) g",
                (n,),
            )
        committed = time.perf_counter()
        hi = int(ctx.scalar(f"SELECT max(id) FROM bench.{system.table}"))
        done = wait_sink(ctx, system.tag, lo, hi, timeout=20)
        first, last = ctx.sql(
            "SELECT min(at), max(at) FROM bench.sink WHERE tbl = %s AND id BETWEEN %s AND %s",
            (system.tag, lo, hi),
        )[0]
        span = (last - first).total_seconds() if first and last else float("nan")
        completed = int(
            ctx.scalar(
                "SELECT count(*) FROM bench.sink WHERE tbl = %s AND id BETWEEN %s AND %s",
                (system.tag, lo, hi),
            )
        )
        out[system.name] = {
            "jobs": n,
            "completed": completed,
            "insert_s": committed - t0,
            "all_done": done,
            "effect_span_s": span,
            "jobs_per_s": completed / span if span == span and span > 0 else float("nan"),
        }
    table(
        "3. drain rate of the running workers (one INSERT ... SELECT, first to last effect)",
        ["system", "jobs", "jobs/s", "span s", "done"],
        [
            [k, v["jobs"], v["jobs_per_s"], v["effect_span_s"], v["all_done"]]
            for k, v in out.items()
        ],
    )
    return out
