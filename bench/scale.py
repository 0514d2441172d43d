"""The scale run: ``python -m bench --scale`` (docs/benchmarks.md, "Scale").

Three scenarios on one durable server of their own, PostgreSQL 15 + pg_cron 1.6.7 in
libpq mode when ``scripts/build-test-trees.sh`` has built that tree (``'1 seconds'``
worker schedules), else the default server (Debian's pg_cron 1.4.2, minute ticks):

* Backlog: the drain role's queue filled to 100,000 and to 1,000,000 jobs by
  ``SELECT pgdispatch.dispatch(...) FROM generate_series(...)`` in chunks of a tenth
  of the large backlog (the dispatch rate of each chunk, so at each backlog); at the
  full backlog the claim statement of ``pgdispatch.work()`` (read from the installed
  procedure) under ``EXPLAIN ANALYZE`` as a worker runs it, and the caller's pgbench
  TPS of single-row INSERTs through a dispatch trigger (another role's); then the
  drain rate of 1 and 2 ``CALL pgdispatch.work(slot => i, drain => true)`` sessions,
  and its rate in each tenth of the drain.
* Soak: ``pgbench -R 2000`` single-row INSERTs through a dispatch trigger for 10
  minutes while the app role's pg_cron workers drain; per minute the p99 fire-to-start
  (``job_history.started_at - fired_at``, copied out every 5 s before pruning takes the
  rows) and fire-to-effect, the backlog (queue length, oldest queued job's age), and
  ``pg_total_relation_size`` of ``pgdispatch.job`` and ``pgdispatch.job_history``.
  Retention is shortened so that it applies within the soak (default a fifth of it);
  the prune settings stay as installed.
* Many roles: 20 login roles, each ``pgdispatch.start(1)`` (one worker and its
  watchdog), idle; the CPU of each role's backends, of pg_cron's launcher and of the
  whole server (the postmaster's own and reaped children's time, plus its live
  children's: short-lived connections count too) against the same server idle before
  the roles started, and the connections per role.

Writes ``bench/results/scale-<timestamp>.json`` and ``scale-latest.json``
(``-quick``/not latest when shortened) and the plots ``docs/img/scale_*.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.common import (
    APP_ROLE,
    CLK_TCK,
    DRAIN_ROLE,
    STOPPED_ROLE,
    CpuSampler,
    Ctx,
    backend_pids,
    load_average,
    percentile,
    pgbench,
    proc_cpu_seconds,
    table,
    wait_until,
)
from bench.scenarios import _reset_drain, _sizes, queue_len, rate_by_tenth, run_workers
from bench.setup import DRAIN_COMMAND, setup_database

APP_WORKERS = 2
#: The issue's targets (issue 14, item 3).
TARGET_RATIO = 0.8  # 1M figures against the 100k ones
TARGET_SOAK_P99_MS = 5.0
TARGET_SOAK_BACKLOG_S = 1.0
TARGET_IDLE_ROLE_PCT = 0.5
IDLE_ROLE_PREFIX = "bench_idle_"


# ---------------------------------------------------------------------------------------
# pure helpers (tests/test_bench_helpers.py)

_CLAIM_RE = re.compile(r"FOR\s+j\s+IN\s+(SELECT\b.*?SKIP\s+LOCKED)\s+LOOP", re.S | re.I)


#: work()'s parameters, and its variables when the source given has no DECLARE block.
_ALWAYS_VARIABLES = {"me", "me_id", "slot", "drain", "cfg", "batch_limit", "max_runtime"}
_DECLARED_RE = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s+(?!:=)[a-z]", re.M)


def _plpgsql_names(work_source: str) -> set[str]:
    """The variables work() declares (its DECLARE block), which the claim may use."""
    m = re.search(r"\bDECLARE\b(.*?)\n\s*BEGIN\b", work_source, re.S | re.I)
    return set(_DECLARED_RE.findall(m.group(1))) if m else set()


def claim_statement(work_source: str) -> str:
    """The claim of ``pgdispatch.work()`` as a standalone statement.

    *work_source* is the procedure's source (``pg_get_functiondef``); its variables for
    the role (``me_id``) and the cut-off time (``t_now``) become ``$1`` and ``$2``;
    ``watched`` (the role's watchdog runs, so jobs with a timeout may start) is ``true``;
    the claim starts from the head of the queue (``c_lo``/``c_hi``/``c_run_at``/``c_id``,
    where a claim after a batch cut short resumes, span every key).
    """
    m = _CLAIM_RE.search(work_source)
    if m is None:
        raise ValueError("no 'FOR j IN SELECT ... SKIP LOCKED LOOP' claim in pgdispatch.work()")
    stmt = m.group(1)
    for var, param in (
        ("me_id", "$1"),
        ("t_now", "$2"),
        ("watched", "true"),
        ("c_lo", "(-2147483648)"),
        ("c_hi", "2147483647"),
        ("c_run_at", "'-infinity'::timestamptz"),
        ("c_id", "(-9223372036854775808)"),
    ):
        stmt = re.sub(rf"\b{var}\b", param, stmt)
    leftover = re.findall(r"(?<![.\w$'])([a-z_][a-z0-9_]*)\b(?!\s*\()", stmt)
    unknown = set(leftover) & (_plpgsql_names(work_source) | _ALWAYS_VARIABLES)
    if unknown:
        raise ValueError(f"the claim uses variables this benchmark does not bind: {unknown}")
    return stmt


def per_minute(
    samples: list[tuple[float, float]], minute_s: float = 60.0
) -> list[dict[str, float]]:
    """Statistics of ``(seconds since start, value)`` samples per minute (by the seconds)."""
    buckets: dict[int, list[float]] = {}
    for t, v in samples:
        buckets.setdefault(int(t // minute_s), []).append(v)
    return [
        {
            "minute": m + 1,
            "n": len(vs),
            "p50": percentile(vs, 50),
            "p99": percentile(vs, 99),
            "max": max(vs),
        }
        for m, vs in sorted(buckets.items())
    ]


def growth(points: list[tuple[float, float]], since_s: float) -> float:
    """How much the value grew from the last point at or before *since_s* to the end."""
    if not points:
        return float("nan")
    before = [v for t, v in points if t <= since_s]
    start = before[-1] if before else points[0][1]
    return points[-1][1] - start


# ---------------------------------------------------------------------------------------
# server CPU from /proc


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def server_cpu_seconds(postmaster: int) -> float:
    """CPU seconds of a server: the postmaster's own and its reaped children's, plus its
    live children's. Differences of two readings count every process of the interval,
    connections that came and went within it included."""
    fields = _stat_fields(postmaster)
    if fields is None:
        return float("nan")
    # utime, stime, cutime, cstime: fields 14-17 of /proc/<pid>/stat
    total = sum(int(x) for x in fields[11:15])
    for child in children(postmaster):
        cf = _stat_fields(child)
        if cf is not None:
            total += int(cf[11]) + int(cf[12])
    return total / CLK_TCK


def postmaster_pid(ctx: Ctx) -> int:
    with ctx.connect() as conn:  # the backend must live while we read its parent
        fields = _stat_fields(conn.info.backend_pid)
    if fields is None:
        raise RuntimeError("cannot read /proc/<backend>/stat: is the server on this host?")
    return int(fields[1])  # ppid (field 4)


# ---------------------------------------------------------------------------------------
# server


def pick_tree() -> tuple[Path | None, str]:
    """The bin directory for the scale run and a label naming the configuration."""
    env = os.environ.get("SA_PGDISPATCH_PG_BIN")
    if env:
        return Path(env), f"SA_PGDISPATCH_PG_BIN={env}"
    from bench.configs import _trees

    trees, reason = _trees()
    tree = trees.get("pg15-cron1.6.7")
    if tree is not None:
        return tree, "PG 15 + pg_cron 1.6.7 (scripts/build-test-trees.sh), libpq mode"
    return None, f"default server (PG 15 + Debian's pg_cron 1.4.2); no 1.6.7 tree: {reason}"


# ---------------------------------------------------------------------------------------
# backlog


class ClaimProbe:
    """work()'s claim (read from the installed procedure) under EXPLAIN ANALYZE, in a
    session of *role* with the settings work() uses for its own statements in a worker
    session (slot >= 1); each probe is rolled back (its row locks last ~0.1 ms)."""

    def __init__(self, ctx: Ctx, role: str) -> None:
        source = str(ctx.scalar("SELECT pg_get_functiondef('pgdispatch.work'::regproc)"))
        self.statement = claim_statement(source)
        self.conn = ctx.connect(role, autocommit=False)
        for guc in ("enable_seqscan", "enable_bitmapscan", "enable_sort", "jit"):
            self.conn.execute(f"SET {guc} = off")
        self.conn.execute(f"PREPARE claim(regrole, timestamptz) AS {self.statement}")
        self.conn.commit()

    def once(self) -> tuple[float, int, int]:
        """(execution ms, rows claimed, shared buffers hit + read)."""
        row = self.conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "
            "EXECUTE claim(to_regrole(quote_ident(current_user)), clock_timestamp())"
        ).fetchone()
        self.conn.rollback()
        assert row is not None
        doc = row[0][0]
        plan = doc["Plan"]
        buffers = int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0))
        return float(doc["Execution Time"]), int(plan.get("Actual Rows", 0)), buffers

    def plan_text(self) -> str:
        rows = self.conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS) "
            "EXECUTE claim(to_regrole(quote_ident(current_user)), clock_timestamp())"
        ).fetchall()
        self.conn.rollback()
        return "\n".join(r[0] for r in rows)

    def close(self) -> None:
        self.conn.close()


def _claim_cost(ctx: Ctx, role: str, reps: int) -> dict[str, Any]:
    """The claim's median time over *reps* probes, with the last plan."""
    probe = ClaimProbe(ctx, role)
    try:
        runs = [probe.once() for _ in range(reps)]
        plan = probe.plan_text()
    finally:
        probe.close()
    times = [r[0] for r in runs]
    return {
        "statement": probe.statement,
        "reps": reps,
        "ms_median": statistics.median(times),
        "ms_min": min(times),
        "ms_max": max(times),
        "rows": runs[-1][1],
        "buffers": runs[-1][2],
        "plan": plan,
    }


def _drain_probed(ctx: Ctx, role: str, workers: int, every_s: float) -> tuple[float, list[Any]]:
    """run_workers() with the claim probed every *every_s* seconds meanwhile:
    (drain seconds, [(seconds into the drain, claim ms, rows, buffers)])."""
    probe = ClaimProbe(ctx, role)
    samples: list[tuple[float, float, int, int]] = []
    stop = threading.Event()

    def run() -> None:
        t0 = time.monotonic()
        while not stop.wait(every_s):
            try:
                ms, rows, buffers = probe.once()
            except Exception:  # the probe's session must not end the run
                continue
            samples.append((time.monotonic() - t0, ms, rows, buffers))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        elapsed = run_workers(ctx, role, workers)
    finally:
        stop.set()
        thread.join()
        probe.close()
    return elapsed, samples


def _fill(ctx: Ctx, n: int, chunk: int) -> list[dict[str, float]]:
    """Queue *n* drain jobs in chunks; the dispatch rate of each chunk and its backlog."""
    chunks = []
    done = 0
    with ctx.connect(DRAIN_ROLE) as conn:
        while done < n:
            size = min(chunk, n - done)
            t0 = time.perf_counter()
            conn.execute(
                "SELECT count(pgdispatch.dispatch(%s, to_jsonb(i))) "
                "FROM generate_series(%s::bigint, %s::bigint) i",
                (DRAIN_COMMAND, done + 1, done + size),
            )
            s = time.perf_counter() - t0
            done += size
            chunks.append({"backlog_after": done, "jobs": size, "s": s, "per_s": size / s})
    return chunks


def _caller_tps(ctx: Ctx, seconds: float) -> float:
    """pgbench TPS (1 client) of single-row INSERTs through a dispatch row trigger, as the
    stopped role (its jobs stay queued: removed afterwards)."""
    res = pgbench(
        ctx,
        "INSERT INTO bench.src_row (v) VALUES (1);\n",
        role=STOPPED_ROLE,
        clients=1,
        seconds=seconds,
    )
    ctx.sql("DELETE FROM pgdispatch.job WHERE role = %s", (STOPPED_ROLE,))
    return res.tps


def backlog(
    ctx: Ctx, sizes: list[int], workers: list[int], quick: bool, rounds: int = 1
) -> dict[str, Any]:
    """Fill, probe and drain each backlog size with each number of drain sessions,
    *rounds* times; the sizes alternate in order (small first, then large first, ...),
    so that a trend of the shared machine does not fall on one size."""
    tps_s = 3.0 if quick else 5.0
    reps = 5 if quick else 20
    _reset_drain(ctx)
    out: dict[str, Any] = {"sizes": sizes, "workers": workers, "rounds": rounds, "runs": []}
    out["caller_tps_empty"] = _caller_tps(ctx, tps_s)
    ctx.sql("VACUUM (ANALYZE) pgdispatch.job")
    out["claim_empty"] = _claim_cost(ctx, DRAIN_ROLE, reps)
    print(
        f"  empty queue: caller {out['caller_tps_empty']:,.0f} TPS, claim "
        f"{out['claim_empty']['ms_median']:.3f} ms",
        flush=True,
    )
    order = [
        (rnd, n, w)
        for rnd in range(rounds)
        for k, w in enumerate(workers)
        for n in (sizes if (rnd * len(workers) + k) % 2 == 0 else sizes[::-1])
    ]
    for rnd, n, w in order:
        i = workers.index(w)
        _reset_drain(ctx)
        t0 = time.perf_counter()
        chunks = _fill(ctx, n, max(1, sizes[-1] // 10))
        fill_s = time.perf_counter() - t0
        run: dict[str, Any] = {
            "round": rnd + 1,
            "jobs": n,
            "workers": w,
            "fill_s": fill_s,
            "dispatch_per_s": n / fill_s,
            "chunks": chunks,
            "sizes_queued": _sizes(ctx),
        }
        if i == 0:  # measured once per backlog
            run["claim"] = _claim_cost(ctx, DRAIN_ROLE, reps)
            run["caller_tps"] = _caller_tps(ctx, tps_s)
        elapsed, probes = _drain_probed(ctx, DRAIN_ROLE, w, 1.0)
        run["drain_s"] = elapsed
        run["claim_during_drain"] = probes
        run["jobs_per_s"] = n / elapsed
        run["left_in_queue"] = queue_len(ctx, DRAIN_ROLE)
        run["effects"] = int(ctx.scalar("SELECT count(*) FROM bench.dsink"))
        run["failed"] = int(
            ctx.scalar(
                "SELECT count(*) FROM pgdispatch.job_history WHERE role = %s "
                "AND state <> 'succeeded'",
                (DRAIN_ROLE,),
            )
        )
        run["jobs_per_s_by_tenth"] = rate_by_tenth(ctx, DRAIN_ROLE)
        run["sizes_drained"] = _sizes(ctx)
        out["runs"].append(run)
        during = [p[1] for p in probes]
        run["claim_during_drain_ms_median"] = statistics.median(during) if during else float("nan")
        run["claim_during_drain_ms_max"] = max(during) if during else float("nan")
        claim = run.get("claim", {}).get("ms_median")
        print(
            f"  {n:,} jobs, {w} worker(s): dispatch {run['dispatch_per_s']:,.0f}/s "
            f"(last chunk {chunks[-1]['per_s']:,.0f}/s), drain {run['jobs_per_s']:,.0f}/s"
            + (f", claim {claim:.3f} ms" if claim is not None else "")
            + (f", caller {run['caller_tps']:,.0f} TPS" if "caller_tps" in run else "")
            + f"; claim during the drain: median {run['claim_during_drain_ms_median']:.3f}"
            f" ms, max {run['claim_during_drain_ms_max']:.3f} ms ({len(probes)} probes)",
            flush=True,
        )
    _reset_drain(ctx)
    out["ratios"] = backlog_ratios(out["runs"], sizes)
    table(
        "scale 1. backlog: dispatch and drain",
        ["jobs", "workers", "dispatch/s", "last chunk/s", "drain jobs/s", "claim ms", "caller TPS"],
        [
            [
                r["jobs"],
                r["workers"],
                r["dispatch_per_s"],
                r["chunks"][-1]["per_s"],
                r["jobs_per_s"],
                r.get("claim", {}).get("ms_median"),
                r.get("caller_tps"),
            ]
            for r in out["runs"]
        ],
    )
    table(
        f"scale 1. ratios {sizes[-1]:,} / {sizes[0]:,} (target >= {TARGET_RATIO})",
        ["figure", "ratio"],
        [[k, v] for k, v in out["ratios"].items()],
    )
    return out


def backlog_ratios(runs: list[dict[str, Any]], sizes: list[int]) -> dict[str, float]:
    """Large-backlog figures over small-backlog ones, each the mean of its runs (rates:
    >= 0.8 is the target; claim times: large over small, ~1 means it did not grow)."""
    small, large = sizes[0], sizes[-1]

    def mean(n: int, key: Any, w: int | None = None) -> float:
        vals = [key(r) for r in runs if r["jobs"] == n and (w is None or r["workers"] == w)]
        vals = [v for v in vals if v is not None and v == v]
        return statistics.fmean(vals) if vals else float("nan")

    out: dict[str, float] = {}
    for w in sorted({r["workers"] for r in runs}):
        out[f"dispatch rate, whole fill ({w}w runs)"] = mean(
            large, lambda r: r["dispatch_per_s"], w
        ) / mean(small, lambda r: r["dispatch_per_s"], w)
        out[f"dispatch rate, last chunk ({w}w runs)"] = mean(
            large, lambda r: r["chunks"][-1]["per_s"], w
        ) / mean(small, lambda r: r["chunks"][-1]["per_s"], w)
    for w in sorted({r["workers"] for r in runs}):
        out[f"drain rate, {w} session(s)"] = mean(large, lambda r: r["jobs_per_s"], w) / mean(
            small, lambda r: r["jobs_per_s"], w
        )
    out["claim time at the full backlog"] = mean(
        large, lambda r: r.get("claim", {}).get("ms_median")
    ) / mean(small, lambda r: r.get("claim", {}).get("ms_median"))
    out["claim time during the drain (median of 1 s probes)"] = mean(
        large, lambda r: r.get("claim_during_drain_ms_median")
    ) / mean(small, lambda r: r.get("claim_during_drain_ms_median"))
    out["caller TPS at the full backlog"] = mean(large, lambda r: r.get("caller_tps")) / mean(
        small, lambda r: r.get("caller_tps")
    )
    return out


# ---------------------------------------------------------------------------------------
# soak


def soak(
    ctx: Ctx, rate: int, seconds: float, retention_s: float, prune_batch: int | None
) -> dict[str, Any]:
    ctx.sql("TRUNCATE bench.src_sust")
    ctx.sql("DELETE FROM bench.sink WHERE tbl = 'sust'")
    ctx.sql("DELETE FROM pgdispatch.job_history WHERE role = %s", (APP_ROLE,))
    # from the sizes of an empty queue and history, whatever ran before (the backlog)
    ctx.sql("VACUUM FULL pgdispatch.job, pgdispatch.job_history")
    ctx.sql(
        "CREATE TABLE IF NOT EXISTS bench.soak_start (id bigint PRIMARY KEY, "
        "started_at timestamptz NOT NULL)"
    )
    ctx.sql("TRUNCATE bench.soak_start")
    installed = ctx.sql(
        "SELECT retention::text, prune_batch, prune_interval::text FROM pgdispatch.settings"
    )[0]
    ctx.sql(
        "UPDATE pgdispatch.settings SET retention = make_interval(secs => %s)"
        + (", prune_batch = %s" if prune_batch else ""),
        (retention_s, prune_batch) if prune_batch else (retention_s,),
    )
    settings = ctx.sql(
        "SELECT retention::text, prune_batch, prune_interval::text FROM pgdispatch.settings"
    )[0]
    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    t0_db = ctx.scalar("SELECT clock_timestamp()")
    t0 = time.monotonic()

    def sample() -> None:
        with ctx.connect() as conn:
            k = 0
            while not stop.wait(1.0):
                row = conn.execute(
                    "SELECT count(*), coalesce(extract(epoch FROM max(clock_timestamp() - "
                    "run_at)), 0) FROM pgdispatch.job WHERE role = %s",
                    (APP_ROLE,),
                ).fetchone()
                assert row is not None
                s: dict[str, Any] = {
                    "t": time.monotonic() - t0,
                    "queue": int(row[0]),
                    "age_s": float(row[1]),
                }
                if k % 5 == 0:
                    s.update(_sizes(ctx))
                    # (pg_stat_user_tables lags: workers flush their statistics only
                    # when they exit)
                    s["history_rows"] = int(
                        conn.execute("SELECT count(*) FROM pgdispatch.job_history").fetchone()[0]  # type: ignore[index]
                    )
                samples.append(s)
                k += 1

    def copy_starts() -> None:
        # the start of every soak job, before pruning removes its history row: by id,
        # with a margin for jobs that finish out of id order
        last = 0
        with ctx.connect() as conn:
            while True:
                stopping = stop.wait(5.0)
                row = conn.execute(
                    "WITH c AS (INSERT INTO bench.soak_start (id, started_at) "
                    "SELECT (h.payload ->> 'id')::bigint, h.started_at "
                    "FROM pgdispatch.job_history h WHERE h.id > %s AND h.role = %s "
                    "AND h.command = 'SELECT bench.effect_sust($1)' "
                    "ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*), "
                    "(SELECT max(id) FROM pgdispatch.job_history WHERE id > %s)",
                    (last, APP_ROLE, last),
                ).fetchone()
                assert row is not None
                if row[1] is not None:
                    last = max(0, int(row[1]) - 20 * rate)
                if stopping:
                    return

    threads = [threading.Thread(target=f, daemon=True) for f in (sample, copy_starts)]
    for t in threads:
        t.start()
    load_before = load_average()
    try:
        res = pgbench(
            ctx,
            "INSERT INTO bench.src_sust (v) VALUES (1);\n",
            role=APP_ROLE,
            clients=2,
            seconds=seconds,
            rate=rate,
        )
        drained = wait_until(lambda: queue_len(ctx, APP_ROLE) == 0, 60, 0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
        ctx.sql(
            "UPDATE pgdispatch.settings SET retention = %s::interval, prune_batch = %s",
            (installed[0], installed[1]),
        )
    start_rows = ctx.sql(
        "SELECT extract(epoch FROM r.fired_at - %s::timestamptz), "
        "extract(epoch FROM s.started_at - r.fired_at) * 1000 "
        "FROM bench.src_sust r JOIN bench.soak_start s USING (id)",
        (t0_db,),
    )
    effect_rows = ctx.sql(
        "SELECT extract(epoch FROM r.fired_at - %s::timestamptz), "
        "extract(epoch FROM s.at - r.fired_at) * 1000 "
        "FROM bench.src_sust r JOIN bench.sink s ON s.tbl = 'sust' AND s.id = r.id",
        (t0_db,),
    )
    dispatched = int(ctx.scalar("SELECT count(*) FROM bench.src_sust"))
    effects, distinct = ctx.sql(
        "SELECT count(*), count(DISTINCT id) FROM bench.sink WHERE tbl = 'sust'"
    )[0]
    failed = int(
        ctx.scalar(
            "SELECT count(*) FROM pgdispatch.job_history WHERE role = %s AND state <> "
            "'succeeded' AND command = 'SELECT bench.effect_sust($1)'",
            (APP_ROLE,),
        )
    )
    start_pm = per_minute([(float(a), float(b)) for a, b in start_rows])
    effect_pm = per_minute([(float(a), float(b)) for a, b in effect_rows])
    backlog_pm = per_minute([(s["t"], s["age_s"]) for s in samples])
    queue_pm = per_minute([(s["t"], float(s["queue"])) for s in samples])
    sized = [s for s in samples if "job.total" in s]
    last_minutes = min(2.0, seconds / 60 / 3) * 60
    tail_from = seconds - last_minutes
    grow = {
        key: growth([(s["t"], float(s[key])) for s in sized if s["t"] <= seconds], tail_from)
        for key in ("job.total", "job_history.total", "history_rows")
    }
    out = {
        "target_rate": rate,
        "seconds": seconds,
        "settings": {
            "retention": settings[0],
            "prune_batch": settings[1],
            "prune_interval": settings[2],
        },
        "installed_settings": {
            "retention": installed[0],
            "prune_batch": installed[1],
            "prune_interval": installed[2],
        },
        "pgbench_tps": res.tps,
        "pgbench_lag_avg_ms": res.lag_avg_ms,
        "pgbench_lag_max_ms": res.lag_max_ms,
        "pgbench_skipped": res.skipped,
        "dispatched": dispatched,
        "effects": int(effects),
        "duplicated": int(effects) - int(distinct),
        "lost": dispatched - int(distinct),
        "failed": failed,
        "drained_after": drained,
        "starts_copied": len(start_rows),
        "start_ms_per_minute": start_pm,
        "effect_ms_per_minute": effect_pm,
        "backlog_age_s_per_minute": backlog_pm,
        "queue_per_minute": queue_pm,
        "max_backlog_age_s": max((s["age_s"] for s in samples), default=float("nan")),
        "growth_window_s": last_minutes,
        "growth_in_window": grow,
        "samples": samples,
        "load_before": load_before,
        "load_after": load_average(),
    }
    mb = 1024 * 1024
    table(
        f"scale 2. soak: pgbench -R {rate} for {seconds:.0f} s, retention {settings[0]}, "
        f"prune_batch {settings[1]} per {settings[2]}",
        [
            "minute",
            "jobs",
            "start p50",
            "start p99",
            "effect p99",
            "max age s",
            "job MB",
            "history MB",
        ],
        [
            [
                m["minute"],
                m["n"],
                m["p50"],
                m["p99"],
                effect_pm[i]["p99"] if i < len(effect_pm) else None,
                backlog_pm[i]["max"] if i < len(backlog_pm) else None,
                _size_at(sized, m["minute"] * 60, "job.total") / mb,
                _size_at(sized, m["minute"] * 60, "job_history.total") / mb,
            ]
            for i, m in enumerate(start_pm)
        ],
    )
    print(
        f"  dispatched {dispatched:,}, effects {int(effects):,}, lost {out['lost']}, "
        f"dup {out['duplicated']}, failed {failed}; growth in the last {last_minutes:.0f} s: "
        f"job {grow['job.total'] / mb:.1f} MB, history {grow['job_history.total'] / mb:.1f} MB "
        f"({grow['history_rows']:,.0f} rows)",
        flush=True,
    )
    return out


def _size_at(sized: list[dict[str, Any]], t: float, key: str) -> float:
    before = [s[key] for s in sized if s["t"] <= t]
    if before:
        return float(before[-1])
    return float(sized[0][key]) if sized else float("nan")


# ---------------------------------------------------------------------------------------
# many idle roles


class _SnapshotSampler(CpuSampler):
    """CpuSampler whose groups come from one pg_stat_activity query per sample, on one
    connection (a connection per group and second would cost the server more CPU than
    the idle roles it measures). Also counts the connections by role."""

    def __init__(self, ctx: Ctx) -> None:
        super().__init__({})
        self.conn = ctx.connect()
        self.conns: list[dict[str, int]] = []

    def _sample(self) -> None:
        rows = self.conn.execute(
            "SELECT coalesce(nullif(usename, ''), backend_type), backend_type, pid, "
            "CASE WHEN query LIKE 'CALL pgdispatch.work(%%' THEN 'worker' "
            "     WHEN query LIKE 'CALL pgdispatch.watchdog(%%' THEN 'watchdog' END "
            "FROM pg_stat_activity"
        ).fetchall()
        counts: dict[str, int] = {}
        for who, btype, pid, kind in rows:
            counts[str(who)] = counts.get(str(who), 0) + 1
            if kind is not None:
                name = f"{who} {kind}"
            elif btype == "pg_cron launcher":
                name = "pg_cron launcher"
            else:
                continue
            cpu = proc_cpu_seconds(int(pid))
            if cpu is None:
                continue
            self.first.setdefault((name, int(pid)), cpu)
            self.last[(name, int(pid))] = cpu
        self.conns.append(counts)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.conn.close()


def _monitor(
    ctx: Ctx, postmaster: int, seconds: float
) -> tuple[_SnapshotSampler, list[dict[str, int]], float]:
    """Sample for *seconds*: per-backend CPU, connections, and the server's CPU (%)."""
    sampler = _SnapshotSampler(ctx)
    c0, t0 = server_cpu_seconds(postmaster), time.monotonic()
    with sampler:
        time.sleep(seconds)
    server_pct = 100 * (server_cpu_seconds(postmaster) - c0) / (time.monotonic() - t0)
    return sampler, sampler.conns, server_pct


def many_roles(ctx: Ctx, roles: int, seconds: float, baseline_s: float) -> dict[str, Any]:
    names = [f"{IDLE_ROLE_PREFIX}{i:02d}" for i in range(1, roles + 1)]
    for name in names:
        if not ctx.scalar("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)):
            ctx.sql(f"CREATE ROLE {name} LOGIN")
        ctx.sql("SELECT pgdispatch.grant_usage(%s)", (name,))
    # nothing else of pgdispatch runs: the app role's workers stopped, and they gone
    with ctx.connect(APP_ROLE) as conn:
        conn.execute("SELECT pgdispatch.stop()")
    wait_until(lambda: not backend_pids(ctx, "query LIKE 'CALL pgdispatch.%%'"), 90, 0.5)
    pm = postmaster_pid(ctx)
    _, _, baseline_pct = _monitor(ctx, pm, baseline_s)  # the same monitoring, no roles
    t_start = time.monotonic()
    for name in names:
        with ctx.connect(name) as conn:
            conn.execute("SELECT pgdispatch.start(1)")
    started = wait_until(
        lambda: (
            len(
                backend_pids(
                    ctx, "usename LIKE 'bench\\_idle\\_%%' AND query LIKE 'CALL pgdispatch.%%'"
                )
            )
            >= 2 * roles
        ),
        120,
        0.5,
    )
    up_s = time.monotonic() - t_start
    time.sleep(5.0)  # the first runs' start-up is not idling

    sampler, conns, server_pct = _monitor(ctx, pm, seconds)
    elapsed = sampler.elapsed
    per_role: dict[str, dict[str, float]] = {}
    for name in names:
        w = 100 * sampler.seconds(f"{name} worker") / elapsed
        d = 100 * sampler.seconds(f"{name} watchdog") / elapsed
        per_role[name] = {
            "worker_pct": w,
            "watchdog_pct": d,
            "total_pct": w + d,
            "connections_mean": statistics.fmean(c.get(name, 0) for c in conns) if conns else 0,
            "connections_max": max((c.get(name, 0) for c in conns), default=0),
            "backends_seen": len(sampler.pids(f"{name} worker"))
            + len(sampler.pids(f"{name} watchdog")),
        }
    launcher_pct = 100 * sampler.seconds("pg_cron launcher") / elapsed
    totals = [sum(c.values()) for c in conns]
    role_totals = [r["total_pct"] for r in per_role.values()]
    out = {
        "roles": roles,
        "seconds": elapsed,
        "all_started": started,
        "start_s": up_s,
        "cron_max_running_jobs": ctx.scalar("SHOW cron.max_running_jobs"),
        "baseline_server_pct": baseline_pct,
        "server_pct": server_pct,
        "server_pct_per_role": (server_pct - baseline_pct) / roles,
        "launcher_pct": launcher_pct,
        "backends_pct_per_role_mean": statistics.fmean(role_totals),
        "backends_pct_per_role_max": max(role_totals),
        "connections_total_mean": statistics.fmean(totals) if totals else 0,
        "connections_total_max": max(totals, default=0),
        "per_role": per_role,
        "connections_samples": conns,
    }
    table(
        f"scale 3. {roles} idle roles, one worker + watchdog each, over {elapsed:.0f} s "
        "(% of one core)",
        ["role", "worker", "watchdog", "total", "conns mean", "conns max"],
        [
            [
                k,
                r["worker_pct"],
                r["watchdog_pct"],
                r["total_pct"],
                r["connections_mean"],
                r["connections_max"],
            ]
            for k, r in per_role.items()
        ],
    )
    table(
        "scale 3. totals",
        [
            "server idle before %",
            f"server with {roles} roles %",
            "per role %",
            "backends per role % (mean)",
            "pg_cron launcher %",
            "connections (mean/max)",
        ],
        [
            [
                baseline_pct,
                server_pct,
                out["server_pct_per_role"],
                out["backends_pct_per_role_mean"],
                launcher_pct,
                f"{out['connections_total_mean']:.1f}/{out['connections_total_max']}",
            ]
        ],
    )
    for name in names:
        with ctx.connect(name) as conn:
            conn.execute("SELECT pgdispatch.stop()")
    return out


# ---------------------------------------------------------------------------------------
# the run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("--scale")
    g.add_argument("--scale", action="store_true", help="the scale run instead (this section)")
    g.add_argument("--backlog", type=int, default=1_000_000, help="large backlog (1,000,000)")
    g.add_argument("--backlog-small", type=int, default=100_000, help="reference (100,000)")
    g.add_argument("--backlog-workers", default="1,2", help="drain sessions to run (1,2)")
    g.add_argument("--backlog-rounds", type=int, default=1, help="rounds, sizes alternating (1)")
    g.add_argument("--soak", type=float, default=600.0, help="soak seconds (600)")
    g.add_argument("--soak-rate", type=int, default=2000, help="dispatches/s (2000)")
    g.add_argument(
        "--soak-retention",
        type=float,
        default=None,
        help="retention during the soak, s (a fifth of the soak)",
    )
    g.add_argument(
        "--soak-prune-batch",
        type=int,
        default=None,
        help="prune_batch during the soak (as installed)",
    )
    g.add_argument("--roles", type=int, default=20, help="idle roles (20)")
    g.add_argument("--roles-seconds", type=float, default=60.0, help="idle period (60)")
    g.add_argument(
        "--only", default="backlog,soak,roles", help="scenarios to run (backlog,soak,roles)"
    )


def run_scale(args: argparse.Namespace) -> int:
    from bench.run import RESULTS, _clean, _machine

    started = time.time()
    load_start = load_average()
    only = set(args.only.split(","))
    shortened = (
        args.backlog < 1_000_000 or args.soak < 600 or args.roles < 20 or args.soak_rate < 2000
    )
    bin_dir, tree_label = pick_tree()
    print(f"scale run on: {tree_label}", flush=True)
    results: dict[str, Any] = {}
    loads: dict[str, tuple[float, float, float]] = {"start": load_start}
    with ExitStack() as stack:
        from sa_pgdispatch.testing import EphemeralPostgres

        server = EphemeralPostgres(
            pg_bin=bin_dir,
            cron_mode="libpq",
            durable=True,
            settings={
                "max_connections": "300",
                # pg_cron runs at most 32 jobs at once by default; each role's worker and
                # watchdog are two long-running jobs
                "cron.max_running_jobs": str(max(32, 2 * args.roles + 2 * (APP_WORKERS + 1))),
            },
        )
        stack.enter_context(server)
        pgb = server.bin_dir / "pgbench"
        if not pgb.exists():
            pgb = Path(shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench")
        ctx = Ctx(dsn=server.dsn, pgbench=pgb, quick=shortened)
        version = setup_database(ctx, APP_WORKERS, cron=True)
        versions = {
            "configuration": tree_label,
            "bin_dir": str(server.bin_dir),
            "postgresql": ctx.scalar("SHOW server_version"),
            "pg_cron": ctx.scalar("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'"),
            "worker_schedule": ctx.scalar(
                "SELECT schedule FROM pgdispatch.worker WHERE role = %s", (APP_ROLE,)
            ),
            "pgdispatch": version,
            "fsync": ctx.scalar("SHOW fsync"),
            "synchronous_commit": ctx.scalar("SHOW synchronous_commit"),
        }
        print(f"  {versions}", flush=True)

        def phase(name: str) -> None:
            loads[name] = load_average()
            print(
                f"\n## {name} (load {loads[name][0]:.2f}, t+{time.time() - started:.0f} s)",
                flush=True,
            )

        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
        partial = shortened or only != {"backlog", "soak", "roles"}
        path = RESULTS / f"scale-{stamp}{'-quick' if partial else ''}.json"

        def save() -> str:
            doc = {
                "kind": "scale",
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
                "duration_s": time.time() - started,
                "shortened": shortened,
                "args": vars(args),
                "machine": _machine(),
                "versions": versions,
                "load": loads,
                "results": results,
            }
            RESULTS.mkdir(exist_ok=True)
            text = json.dumps(_clean(doc), indent=1, default=str)
            path.write_text(text)  # after every scenario: a later failure keeps the earlier
            return text

        def run(name: str, title: str, fn: Any) -> None:
            phase(title)
            try:
                results[name] = fn()
            except Exception as exc:  # recorded; the other scenarios still run
                print(f"  {name} FAILED: {exc!r}", flush=True)
                results[f"{name}_error"] = repr(exc)
            save()

        if "backlog" in only:
            sizes = [args.backlog_small, args.backlog]
            workers = [int(w) for w in args.backlog_workers.split(",")]
            run(
                "backlog",
                "scale 1. backlog",
                lambda: backlog(ctx, sizes, workers, shortened, args.backlog_rounds),
            )
        if "soak" in only:
            wait_until(
                lambda: (
                    len(
                        backend_pids(
                            ctx,
                            "usename = %s AND query LIKE 'CALL pgdispatch.work(%%'",
                            (APP_ROLE,),
                        )
                    )
                    >= APP_WORKERS
                ),
                90,
                0.5,
            )
            retention = args.soak_retention if args.soak_retention else args.soak / 5
            run(
                "soak",
                "scale 2. soak",
                lambda: soak(ctx, args.soak_rate, args.soak, retention, args.soak_prune_batch),
            )
        if "roles" in only:
            run(
                "roles",
                "scale 3. many idle roles",
                lambda: many_roles(
                    ctx, args.roles, args.roles_seconds, 10.0 if shortened else 20.0
                ),
            )
        phase("end")
        text = save()
    print(f"wrote {path}")
    if not partial:
        (RESULTS / "scale-latest.json").write_text(text)
    if not args.no_plots:
        from bench.plots import plot_scale

        for img in plot_scale(json.loads(text), quick=partial):
            print(f"wrote {img}")
    return 0
