"""Fire-to-start latency by pg_cron configuration: ``python -m bench.configs [--quick]``.

One run, side by side: PostgreSQL 15 + Debian's pg_cron 1.4.2 (libpq mode), PostgreSQL
15 + pg_cron 1.6.7 in libpq and in background-worker mode, PostgreSQL 18 + pg_cron 1.6.7
(libpq). The 1.6.7 trees come from ``scripts/build-test-trees.sh``; without their
vendor sources (exit 3) those configurations are skipped with the reason.

Each configuration gets a durable server of its own. pgdispatch is installed without
workers, a login role ``bench_app`` is granted it and calls ``pgdispatch.start(1)``,
then dispatches one job at once: "first job" is the time from that ``start()`` to the
job's start. All servers are set up before any wait, so pg_cron 1.4's wait for the next
minute overlaps the others' setup.

Then each configuration fires one job every 20 ms (an autocommit single-row INSERT
through a ``pgdispatch.trigger`` row trigger, as in scenario 2 of ``python -m bench``);
the seconds are split into rounds of ~5 s, interleaved in rotated order, so that
shared-CPU noise falls on every configuration alike. All servers run during every
measurement. Fire to start is ``job_history.started_at - fired_at``
(``clock_timestamp()`` as the row is built, before the dispatching commit).

Last, on second schedules (pg_cron >= 1.5) the first job is measured again: ``stop()``,
the workers gone, ``start(1)`` and one job, 5 times (2 with ``--quick``), each after a
random delay of up to a second (pg_cron's launcher wakes once a second: the delay varies
its phase). Writes ``bench/results/configs-latest.json`` (``configs-latest-quick.json``
with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/configs.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import APP_ROLE, Ctx, load_average, percentile, table, wait_until
from bench.run import RESULTS, _clean, _machine
from bench.scenarios import Firer, latencies, pgdispatch_system

ROOT = Path(__file__).resolve().parent.parent
INTERVAL_S = 0.02  # one job every 20 ms: 50 jobs/s
ROUND_S = 5.0  # the measured seconds of each configuration come in rounds of about this
WORKER_WAIT_S = 90.0  # pg_cron 1.4 starts workers at the next minute boundary

#: The issue's targets: background-worker mode at 50 jobs/s, first job on pg_cron 1.6.7.
TARGET_BGW_P50_MS = 3.0
TARGET_BGW_P99_MS = 10.0
TARGET_FIRST_JOB_S = 2.0


@dataclass
class Config:
    key: str
    label: str
    bin_dir: Path | None
    cron_mode: str
    skip_reason: str | None = None
    server: Any = None
    ctx: Ctx | None = None
    info: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)


def _trees() -> tuple[dict[str, Path], str | None]:
    """The test trees by name, or the reason there are none."""
    script = ROOT / "scripts" / "build-test-trees.sh"
    try:
        out = subprocess.run([str(script)], capture_output=True, text=True, check=False)
    except OSError as exc:
        return {}, f"cannot run {script}: {exc}"
    if out.returncode == 3:
        last = out.stderr.strip().splitlines()[-1:] or ["vendor sources missing"]
        return {}, f"no pg_cron 1.6.7 sources ({last[0].removeprefix('trees: ')})"
    if out.returncode != 0:
        return {}, f"{script.name} failed (exit {out.returncode}): {out.stderr.strip()[-500:]}"
    trees = {}
    for line in out.stdout.splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) == 3 and parts[0] == "TREE":
            trees[parts[1]] = Path(parts[2])
    return trees, None


def _configs() -> list[Config]:
    debian = Path("/usr/lib/postgresql/15/bin")
    configs = [
        Config(
            "pg15-cron1.4.2-libpq",
            "PG 15 + pg_cron 1.4.2 (Debian), libpq",
            debian if (debian / "postgres").exists() else None,
            "libpq",
        )
    ]
    trees, reason = _trees()
    for key, tree, label, mode in (
        ("pg15-cron1.6.7-libpq", "pg15-cron1.6.7", "PG 15 + pg_cron 1.6.7, libpq", "libpq"),
        ("pg15-cron1.6.7-bgw", "pg15-cron1.6.7", "PG 15 + pg_cron 1.6.7, bgw", "bgw"),
        ("pg18-cron1.6.7-libpq", "pg18-cron1.6.7", "PG 18 + pg_cron 1.6.7, libpq", "libpq"),
    ):
        skip = reason if tree not in trees and reason else None
        if tree not in trees and skip is None:
            skip = f"{tree} not built by scripts/build-test-trees.sh"
        configs.append(Config(key, label, trees.get(tree), mode, skip_reason=skip))
    return configs


_SETUP = [
    "CREATE SCHEMA bench",
    "CREATE TABLE bench.sink (tbl text NOT NULL, id bigint NOT NULL, "
    "at timestamptz NOT NULL DEFAULT clock_timestamp())",
    # fired_at: clock_timestamp() when the row is built, just before its trigger fires
    "CREATE TABLE bench.src_row (id bigserial PRIMARY KEY, v integer, "
    "fired_at timestamptz NOT NULL DEFAULT clock_timestamp())",
    "CREATE FUNCTION bench.effect_row(p jsonb) RETURNS void LANGUAGE sql AS "
    "$$ INSERT INTO bench.sink (tbl, id) VALUES ('row', (p ->> 'id')::bigint) $$",
    "CREATE TRIGGER dispatch AFTER INSERT ON bench.src_row FOR EACH ROW "
    "EXECUTE FUNCTION pgdispatch.trigger('bench.effect_row')",
    f"CREATE ROLE {APP_ROLE} LOGIN",
    f"GRANT USAGE ON SCHEMA cron TO {APP_ROLE}",
    f"SELECT pgdispatch.grant_usage('{APP_ROLE}')",
    f"GRANT USAGE ON SCHEMA bench TO {APP_ROLE}",
    f"GRANT ALL ON ALL TABLES IN SCHEMA bench TO {APP_ROLE}",
    f"GRANT ALL ON ALL SEQUENCES IN SCHEMA bench TO {APP_ROLE}",
]


def _one(conn: Any, query: str) -> Any:
    row = conn.execute(query).fetchone()
    return row[0] if row else None


def _setup(cfg: Config, stack: ExitStack) -> None:
    """Start the server, install pgdispatch, start the role's worker, dispatch one job."""
    from sa_pgdispatch.install import install
    from sa_pgdispatch.testing import EphemeralPostgres

    server = EphemeralPostgres(pg_bin=cfg.bin_dir, cron_mode=cfg.cron_mode, durable=True)
    t0 = time.monotonic()
    stack.enter_context(server)
    cfg.server = server
    ctx = cfg.ctx = Ctx(dsn=server.dsn, pgbench=server.bin_dir / "pgbench", quick=False)
    cfg.info["server_start_s"] = time.monotonic() - t0
    with ctx.connect() as conn:
        t0 = time.monotonic()
        with conn.transaction():
            version = install(conn, workers=None)
        cfg.info["install_s"] = time.monotonic() - t0
        for stmt in _SETUP:
            conn.execute(stmt)
        cfg.info.update(
            pgdispatch=version,
            postgresql=_one(conn, "SHOW server_version"),
            pg_cron=_one(conn, "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'"),
            background_workers=_one(
                conn, "SELECT current_setting('cron.use_background_workers', true)"
            ),
            bin_dir=str(server.bin_dir),
        )
    for up in (2, 3):  # the trees' BUILD_INFO (pg18: 2 levels above bin, pg15: 3)
        candidate = server.bin_dir.parents[up] / "BUILD_INFO"
        if candidate.exists():
            cfg.info["build_info"] = candidate.read_text().split()
            break
    # pg_cron's launcher wakes once a second: a random phase, not one set by our setup
    time.sleep(random.random())
    cfg.info["start_called_at"], cfg.info["first_job_id"] = _start_and_dispatch(ctx)
    print(
        f"{cfg.key}: PostgreSQL {cfg.info['postgresql']}, pg_cron {cfg.info['pg_cron']} "
        f"(cron.use_background_workers = {cfg.info['background_workers']}), "
        f"pgdispatch {version}; start(1) called, first job dispatched",
        flush=True,
    )


def _start_and_dispatch(ctx: Ctx) -> tuple[Any, int]:
    """As the app role: ``start(1)``, then dispatch one job; (time before start(), row id)."""
    with ctx.connect(APP_ROLE) as conn:
        called_at = _one(conn, "SELECT clock_timestamp()")
        conn.execute("SELECT pgdispatch.start(1)")
        row_id = _one(conn, "INSERT INTO bench.src_row (v) VALUES (0) RETURNING id")
    return called_at, int(row_id)


def _started_after(
    ctx: Ctx, called_at: Any, row_id: int, timeout: float
) -> tuple[float | None, float | None]:
    """Seconds from *called_at* to the start of the job of row *row_id*, and to the start
    of the role's first pg_cron worker run since then (None: not yet)."""

    def started() -> Any:
        return ctx.scalar(
            "SELECT extract(epoch FROM h.started_at - %s::timestamptz) FROM "
            "pgdispatch.job_history h WHERE h.role = %s AND (h.payload ->> 'id')::bigint = %s",
            (called_at, APP_ROLE, row_id),
        )

    wait_until(lambda: started() is not None, timeout, 0.05)
    job = started()
    cron = ctx.scalar(
        "SELECT extract(epoch FROM min(start_time) - %s::timestamptz) "
        "FROM cron.job_run_details WHERE username = %s "
        "AND command LIKE 'CALL pgdispatch.work(%%' AND start_time >= %s::timestamptz",
        (called_at, APP_ROLE, called_at),
    )
    return (
        float(job) if job is not None else None,
        float(cron) if cron is not None else None,
    )


def _backends(ctx: Ctx, like: str) -> int:
    row = ctx.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND query LIKE %s",
        (APP_ROLE, like),
    )
    return int(row[0][0])


def _worker_running(ctx: Ctx) -> bool:
    return _backends(ctx, "CALL pgdispatch.work%") > 0


def _first_job(cfg: Config) -> None:
    """Wait for the role's worker and the first job; record start() -> first job start."""
    ctx = cfg.ctx
    assert ctx is not None
    t0 = time.monotonic()
    ok = wait_until(lambda: _worker_running(ctx), WORKER_WAIT_S, 0.2)
    cfg.info["worker_wait_s"] = time.monotonic() - t0
    if not ok:
        raise RuntimeError(f"{cfg.key}: no pgdispatch worker within {WORKER_WAIT_S:.0f} s")
    cfg.info["first_job_s"], cfg.info["first_cron_run_s"] = _started_after(
        ctx, cfg.info["start_called_at"], cfg.info["first_job_id"], 30
    )
    cfg.info["worker_schedule"] = ctx.scalar(
        "SELECT schedule FROM pgdispatch.worker WHERE role = %s", (APP_ROLE,)
    )


def _restarts(cfg: Config, count: int) -> None:
    """Again ``stop()``, the workers gone, ``start(1)`` + one job: *count* more samples.

    Each start schedules new pg_cron jobs, which pg_cron treats as it did after
    install(); a random delay before each start() varies the phase of its launcher.
    """
    ctx = cfg.ctx
    assert ctx is not None
    samples: list[float | None] = []
    cron_runs: list[float | None] = []
    for _ in range(count):
        with ctx.connect(APP_ROLE) as conn:
            conn.execute("SELECT pgdispatch.stop()")
        if not wait_until(lambda: _backends(ctx, "CALL pgdispatch.%") == 0, 30, 0.1):
            raise RuntimeError(f"{cfg.key}: the workers did not exit within 30 s of stop()")
        time.sleep(random.random())
        called_at, row_id = _start_and_dispatch(ctx)
        job, cron = _started_after(ctx, called_at, row_id, 10)
        samples.append(job)
        cron_runs.append(cron)
    cfg.info["restart_first_job_s"] = samples
    cfg.info["restart_first_cron_run_s"] = cron_runs


def _cpu_times() -> list[int]:
    """The machine's CPU jiffies from /proc/stat (user nice system idle iowait irq
    softirq steal)."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def _cpu_use(before: list[int]) -> dict[str, float]:
    after = _cpu_times()
    d = [a - b for a, b in zip(after, before, strict=True)]
    total = sum(d) or 1
    return {
        "cpu_busy_pct": 100 * (total - d[3] - d[4]) / total,
        "cpu_steal_pct": 100 * d[7] / total,
        "load1": load_average()[0],
    }


def _stats(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "p50": percentile(samples, 50),
        "p90": percentile(samples, 90),
        "p95": percentile(samples, 95),
        "p99": percentile(samples, 99),
        "max": max(samples) if samples else float("nan"),
    }


def _git() -> dict[str, Any]:
    """The commit measured, and whether sql/ or src/ had uncommitted changes."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_sql_src": git("status", "--porcelain", "--", "sql", "src").splitlines(),
    }


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.configs", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 s of firing per configuration")
    parser.add_argument(
        "--seconds", type=float, default=None, help="seconds of firing per configuration (20)"
    )
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (5.0 if args.quick else 20.0)
    rounds = max(1, round(seconds / ROUND_S))
    per_round = max(1, round(seconds / INTERVAL_S / rounds))
    restarts = 2 if args.quick else 5
    started = time.time()
    load_start = load_average()
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")

    configs = _configs()
    system = pgdispatch_system()
    results: dict[str, Any] = {}
    loads: dict[str, tuple[float, float, float]] = {"start": load_start}
    with ExitStack() as stack:
        # every server set up (and its first job dispatched) before any wait
        for cfg in configs:
            if cfg.skip_reason is None:
                try:
                    _setup(cfg, stack)
                except Exception as exc:  # reported as a skipped configuration
                    cfg.skip_reason = f"setup failed: {exc}"
        for cfg in configs:
            if cfg.skip_reason is None:
                try:
                    _first_job(cfg)
                except Exception as exc:
                    cfg.skip_reason = str(exc)
                    continue
                print(
                    f"{cfg.key}: worker running after {cfg.info['worker_wait_s']:.1f} s more; "
                    f"first job started {_fmt_s(cfg.info['first_job_s'])} after start() "
                    f"(its pg_cron run {_fmt_s(cfg.info['first_cron_run_s'])}) "
                    f"(schedule {cfg.info['worker_schedule']!r})",
                    flush=True,
                )
        for cfg in configs:
            if cfg.skip_reason:
                print(f"{cfg.key}: SKIPPED: {cfg.skip_reason}")
        active = [c for c in configs if not c.skip_reason]
        loads["measure"] = load_average()
        print(
            f"\nfiring one job every {INTERVAL_S * 1000:.0f} ms: {rounds} round(s) of "
            f"{per_round} jobs per configuration, rotated order",
            flush=True,
        )
        for rnd in range(rounds):
            k = rnd % len(active) if active else 0
            for cfg in active[k:] + active[:k]:
                assert cfg.ctx is not None
                cpu0 = _cpu_times()
                ids = Firer(cfg.ctx, system, INTERVAL_S).run(per_round)
                cfg.rounds.append({"round": rnd + 1, "ids": ids, **_cpu_use(cpu0)})
            print(f"  round {rnd + 1}/{rounds} done (load {load_average()[0]:.2f})", flush=True)
        for cfg in active:
            assert cfg.ctx is not None
            start_samples: list[float] = []
            effect_samples: list[float] = []
            by_round = []
            for rnd_info in cfg.rounds:
                lat = latencies(cfg.ctx, system, rnd_info.pop("ids"))
                start_samples += lat["start_samples"]
                effect_samples += lat["effect_samples"]
                by_round.append(
                    {
                        **rnd_info,
                        "fired": lat["fired"],
                        "completed": lat["completed"],
                        "start_ms": _stats(lat["start_samples"]),
                        "created_to_start_ms": lat["created_to_start_ms"],
                    }
                )
            results[cfg.key] = {
                "label": cfg.label,
                "cron_mode": cfg.cron_mode,
                "fired": sum(r["fired"] for r in by_round),
                "completed": sum(r["completed"] for r in by_round),
                "start_ms": _stats(start_samples),
                "effect_ms": _stats(effect_samples),
                "rounds": by_round,
                "start_samples": start_samples,
            }
        loads["latency_end"] = load_average()
        # first job after start() again, on second schedules (not 1.4's next minute)
        for cfg in active:
            if cfg.info.get("worker_schedule") != "* * * * *":
                _restarts(cfg, restarts)
                print(
                    f"{cfg.key}: first job after stop()/start(): "
                    + ", ".join(_fmt_s(v) for v in cfg.info["restart_first_job_s"])
                    + "; pg_cron runs: "
                    + ", ".join(_fmt_s(v) for v in cfg.info["restart_first_cron_run_s"]),
                    flush=True,
                )
        for cfg in active:
            results[cfg.key].update(cfg.info)
        loads["end"] = load_average()

    for cfg in configs:
        if cfg.skip_reason:
            results[cfg.key] = {"label": cfg.label, "skipped": cfg.skip_reason}
    rows = []
    for cfg in configs:
        r = results[cfg.key]
        if "skipped" in r:
            rows.append([cfg.label, "skipped", "-", "-", "-", "-", "-", "-"])
            continue
        s = r["start_ms"]
        again = [v for v in r.get("restart_first_job_s", []) if v is not None]
        rows.append(
            [
                cfg.label,
                s["n"],
                s["p50"],
                s["p90"],
                s["p99"],
                s["max"],
                r["first_job_s"],
                f"{min(again):.2f}-{max(again):.2f}" if again else "-",
            ]
        )
    title = (
        f"fire-to-start latency (ms), one job every {INTERVAL_S * 1000:.0f} ms for "
        f"{rounds * per_round * INTERVAL_S:.0f} s per configuration; first job: s from start()"
    )
    table(
        title,
        ["configuration", "n", "p50", "p90", "p99", "max", "first job s", f"again x{restarts} s"],
        rows,
    )

    round_rows = []
    for cfg in configs:
        for r in results[cfg.key].get("rounds", []):
            st = r["start_ms"]
            round_rows.append(
                [
                    cfg.key,
                    r["round"],
                    st["p50"],
                    st["p99"],
                    st["max"],
                    r["cpu_busy_pct"],
                    r["cpu_steal_pct"],
                    r["load1"],
                ]
            )
    if round_rows:
        table(
            "by round (ms; the machine's CPU over the round: busy and steal % of all cores)",
            ["configuration", "round", "p50", "p99", "max", "busy %", "steal %", "load 1m"],
            round_rows,
        )

    ratios: dict[str, float] = {}
    lib, bgw = results.get("pg15-cron1.6.7-libpq", {}), results.get("pg15-cron1.6.7-bgw", {})
    if "start_ms" in lib and "start_ms" in bgw:
        for stat in ("p50", "p99"):
            ratios[stat] = bgw["start_ms"][stat] / lib["start_ms"][stat]
        table(
            "pg_cron 1.6.7 on PG 15: background-worker mode / libpq mode (same run)",
            ["statistic", "libpq ms", "bgw ms", "bgw/libpq"],
            [[st, lib["start_ms"][st], bgw["start_ms"][st], ratios[st]] for st in ratios],
        )
    targets: list[list[Any]] = []
    if "start_ms" in bgw:
        p50, p99 = bgw["start_ms"]["p50"], bgw["start_ms"]["p99"]
        targets.append([f"bgw p50 <= {TARGET_BGW_P50_MS:g} ms", p50, p50 <= TARGET_BGW_P50_MS])
        targets.append([f"bgw p99 <= {TARGET_BGW_P99_MS:g} ms", p99, p99 <= TARGET_BGW_P99_MS])
    for key, r in results.items():
        if "first_job_s" in r and "cron1.6.7" in key:
            every = [r["first_job_s"], *r.get("restart_first_job_s", [])]
            worst = None if None in every else max(every)
            ok = worst is not None and worst <= TARGET_FIRST_JOB_S
            targets.append([f"{key} first job <= {TARGET_FIRST_JOB_S:g} s (worst)", worst, ok])
    if targets:
        table("targets", ["target", "measured", "met"], targets)

    doc = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": time.time() - started,
        "quick": args.quick,
        "seconds_per_config": rounds * per_round * INTERVAL_S,
        "interval_ms": INTERVAL_S * 1000,
        "rounds": rounds,
        "jobs_per_round": per_round,
        "restarts": restarts,
        "machine": _machine(),
        "git": _git(),
        "load": loads,
        "configs": results,
        "ratios_bgw_over_libpq_pg15_cron1.6.7": ratios,
        "targets": {
            "bgw_p50_ms": TARGET_BGW_P50_MS,
            "bgw_p99_ms": TARGET_BGW_P99_MS,
            "first_job_s": TARGET_FIRST_JOB_S,
        },
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("configs-latest-quick.json" if args.quick else "configs-latest.json")
    path.write_text(json.dumps(_clean(doc), indent=1, default=str))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
