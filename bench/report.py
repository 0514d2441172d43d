"""Markdown tables of a result file: ``python -m bench.report [bench/results/latest.json]``.

Also of a scale run (``scale-latest.json``) and of the pg_dispatch 1.x baseline alone
(``pgd1-latest.json``).

docs/benchmarks.md quotes these tables; regenerate them after a full run. ``--targets``
prints only the table of issue 14's targets (docs/benchmarks.md, "Targets (issue 14)"),
from the file's ``targets`` or, for a file written before they were saved, computed from
its results (bench/targets.py). ``--limits FILE`` takes the limits' figures from a
``python -m bench.limits`` result instead (a main run with ``--no-limits``, or older).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DEFAULT = Path(__file__).resolve().parent / "results" / "latest.json"


def _f(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}f}"
    return str(v)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_f(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def render_targets(doc: dict[str, Any]) -> str:
    """Issue 14's targets, met or missed: one markdown table."""
    from bench.targets import evaluate, verdict

    rows = doc.get("targets") or evaluate(doc["results"])
    if doc["results"].get("limits", {}).get("from_file"):
        rows = evaluate(doc["results"])
    head = (
        f"`python -m bench{' --quick' if doc.get('quick') else ''}`, run {doc['started_at']}, "
        f"{doc['duration_s']:.0f} s"
        + ("" if doc["results"].get("limits") else "; the limits were not part of this run")
        + "."
    )
    lim = doc["results"].get("limits")
    if lim and lim.get("from_file"):
        head += (
            f" Limits from `{lim['from_file']}` (`python -m bench.limits`, run "
            f"{lim['started_at']}, {lim['duration_s']:.0f} s)."
        )
    return (
        head
        + "\n\n"
        + _table(
            ["target", "threshold", "measured", "verdict", "detail"],
            [
                [
                    t["target"],
                    t["threshold"],
                    t["value"],
                    verdict(t["met"]) if t["met"] is not False else "**missed**",
                    t["detail"] if t["met"] is not None else "",
                ]
                for t in rows
            ],
        )
    )


def limits_from_file(path: Path) -> dict[str, Any]:
    """A ``python -m bench.limits`` result in the form of a main run's ``limits``."""
    lim = json.loads(path.read_text())
    return {
        "from_file": path.name,
        "started_at": lim["started_at"],
        "duration_s": lim["duration_s"],
        "caller": lim["caller"],
        "drain": lim["drain"],
        "jobs": lim["drain"]["jobs"],
    }


def render_limits(lim: dict[str, Any]) -> str:
    """The hand-written limits part of a main run (bench/limits.py's figures)."""
    c, d = lim["caller"], lim["drain"]
    jobrow = "job row" in c["median_tps"]  # runs before 2026-12-02 had no job-row floor
    rows: list[list[Any]] = []
    for n in ("1", "2"):
        tps = {v: c["median_tps"][v].get(n) for v in c["median_tps"]}
        row = [f"caller TPS, {n} client(s)", tps["plain"], tps["minimal"]]
        if jobrow:
            row.append(tps["job row"])
        row += [tps["pgdispatch"], c["ratio_pgdispatch_over_minimal"][n]]
        if jobrow:
            row.append(c["ratio_pgdispatch_over_jobrow"][n])
        rows.append(row)
    for n in ("1", "2"):
        rate = {v: d["median_jobs_per_s"][v][n] for v in ("limit", "pgdispatch")}
        row = [f"drain jobs/s, {n} session(s)", None, rate["limit"]]
        if jobrow:
            row.append(None)
        row += [rate["pgdispatch"], d["ratio_pgdispatch_over_limit"][n]]
        if jobrow:
            row.append(None)
        rows.append(row)
    head = ["figure", "plain", "limit"] + (["job row"] if jobrow else [])
    head += ["pgdispatch", "pgdispatch / limit"] + (["pgdispatch / job row"] if jobrow else [])
    return (
        f"### Against the hand-written limit (caller: median of {c['rounds']} x "
        f"{c['seconds']:.0f} s; drain: {d['jobs']:,} jobs, median of {d['rounds']})\n\n"
        + _table(head, rows)
    )


def render(doc: dict[str, Any]) -> str:
    res = doc["results"]
    parts: list[str] = []
    m, v = doc["machine"], doc["versions"]
    peers = ", ".join(
        f"{p['label']} {p['version'] or ''}".strip() + (" (skipped)" if p["skipped"] else "")
        for p in doc["peers"].values()
    )
    load = doc["load"]
    parts.append(
        f"Run {doc['started_at']}, {doc['duration_s']:.0f} s. Machine: {m['nproc']} cores "
        f"({m['cpu']}), {m['memory_gb']} GB, kernel {m['kernel']}. PostgreSQL "
        f"{v['postgresql']} (fsync {v['fsync']}, synchronous_commit {v['synchronous_commit']}), "
        f"pg_cron {v['pg_cron']}, pgdispatch {v['pgdispatch']}; peers: {peers}. "
        "Load average (1 min) at each phase: "
        + ", ".join(f"{k} {val[0]:.2f}" for k, val in load.items())
        + "."
    )
    parts.append("### Targets (issue 14)\n\n" + render_targets(doc))
    o = res["overhead"]
    parts.append(
        f"### 1. Caller overhead (pgbench TPS, median of {o['rounds']} interleaved rounds of "
        f"{o['seconds']:.0f} s)\n\n"
        + _table(
            ["variant", "what", "1 client", "2 clients"],
            [
                [k, o["labels"][k], o["tps_median"][k]["1"], o["tps_median"][k]["2"]]
                for k in o["tps_median"]
            ],
        )
        + "\n\n"
        + _table(
            ["ratio", "1 client", "2 clients"],
            [[k, r["1"], r["2"]] for k, r in o["ratios"].items()],
        )
    )
    rows = []
    lat = res["latency"]
    for name, r in lat.items():
        if "start_ms" in r:
            s = r["start_ms"]
            rows.append([f"{name}: fire to start", s["n"], s["p50"], s["p95"], s["p99"], s["max"]])
        e = r["effect_ms"]
        rows.append([f"{name}: fire to effect", e["n"], e["p50"], e["p95"], e["p99"], e["max"]])
    ul = res["drain"].get("latency_under_load")
    if ul and ul.get("start_ms"):
        s = ul["start_ms"]
        rows.append(
            [
                "pgdispatch under drain load: fire to start",
                s["n"],
                s["p50"],
                s["p95"],
                s["p99"],
                s["max"],
            ]
        )
    for name, r in res["idle"]["first_after_idle"].items():
        val = r.get("start_ms", r["effect_ms"])["max"]
        what = "start" if "start_ms" in r else "effect"
        rows.append(
            [f"{name}: first job after {r['idle_s']:.0f} s idle ({what})", 1, val, None, None, val]
        )
    parts.append(
        "### 2. Fire-to-start latency (ms; one job every 20 ms)\n\n"
        + _table(["what", "n", "p50", "p95", "p99", "max"], rows)
    )
    d = res["drain"]["runs"]
    parts.append(
        "### 3. Drain throughput\n\n"
        + _table(
            [
                "jobs",
                "workers",
                "capture",
                "jobs/s",
                "drain s",
                "enqueue jobs/s",
                "effects",
                "failed",
            ],
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
                for r in d
            ],
        )
        + "\n\nRunning workers, one INSERT ... SELECT through the dispatch trigger "
        "(first to last side effect):\n\n"
        + _table(
            ["system", "jobs", "jobs/s", "span s"],
            [
                [k, r["jobs"], r["jobs_per_s"], r["effect_span_s"]]
                for k, r in res["peer_drain"].items()
            ],
        )
    )
    b = res["burst"]
    mb = 1024 * 1024
    parts.append(
        f"### 4. Burst of {b['jobs']:,} jobs from one statement, two workers\n\n"
        + _table(
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
                    b["insert_s"],
                    b["drain_s"],
                    b["jobs_per_s"],
                    b["peak_queue"],
                    b["effects"],
                    b["errors"],
                    f"{b['cron_jobs_before']}/{b['cron_jobs_after']}",
                ]
            ],
        )
        + "\n\nJobs/s in each tenth of the drain: "
        + ", ".join(f"{x:,.0f}" for x in b["jobs_per_s_by_tenth"])
        + "\n\n"
        + _table(
            ["stage", "job MB", "job indexes MB", "job_history MB", "job_history indexes MB"],
            [
                [
                    k,
                    s["job.total"] / mb,
                    s["job.indexes"] / mb,
                    s["job_history.total"] / mb,
                    s["job_history.indexes"] / mb,
                ]
                for k, s in b["sizes"].items()
            ],
        )
    )
    i = res["idle"]
    parts.append(
        f"### 5. Idle cost over {i['seconds']:.0f} s (% of one core)\n\n"
        + _table(["what", "% of a core"], [[k, val] for k, val in i["pct_of_core"].items()])
    )
    s = res["sustained"]
    parts.append(
        f"### 6. Sustained {s['target_rate']} dispatches/s for {s['seconds']:.0f} s\n\n"
        + _table(
            [
                "dispatches/s",
                "dispatched",
                "effects",
                "lost",
                "duplicated",
                "failed",
                "max backlog age s",
                "max queue",
            ],
            [
                [
                    s["pgbench_tps"],
                    s["dispatched"],
                    s["effects"],
                    s["lost"],
                    s["duplicated"],
                    s["failed"],
                    s["max_backlog_age_s"],
                    s["max_queue"],
                ]
            ],
        )
    )
    if res.get("limits"):
        parts.append(render_limits(res["limits"]))
    pb = res.get("pgd1_baseline")
    if pb:
        parts.append(render_pgd1(pb))
    if doc.get("notes"):
        parts.append("Notes: " + " ".join(doc["notes"]))
    return "\n\n".join(parts) + "\n"


def render_pgd1(pb: dict[str, Any]) -> str:
    """The pg_dispatch 1.x baseline (bench/pgd1.py) beside pgdispatch on its server."""
    head = f"### pg_dispatch 1.x baseline ({pb.get('configuration')}, a server of its own)"
    if pb.get("skipped"):
        return f"{head}\n\nSkipped: {pb['skipped']}"
    rows = []
    for name, r in pb["latency"].items():
        if "start_ms" in r:
            s = r["start_ms"]
            rows.append([f"{name}: fire to start", s["n"], s["p50"], s["p99"], s["max"]])
        e = r["effect_ms"]
        rows.append([f"{name}: fire to effect", e["n"], e["p50"], e["p99"], e["max"]])
    o = pb["overhead"]
    return (
        f"{head}\n\nPostgreSQL {pb['postgresql']}, pg_cron {pb['pg_cron']} "
        f"(cron.max_running_jobs {pb['cron_max_running_jobs']}), pgdispatch {pb['pgdispatch']} "
        f"with workers of the benchmark's own sessions; {pb['duration_s']:.0f} s.\n\n"
        + _table(["latency (ms)", "n", "p50", "p99", "max"], rows)
        + "\n\n"
        + _table(
            ["drain, one INSERT ... SELECT", "jobs", "completed", "jobs/s", "span s", "all done"],
            [
                [k, r["jobs"], r["completed"], r["jobs_per_s"], r["effect_span_s"], r["all_done"]]
                for k, r in pb["peer_drain"].items()
            ],
        )
        + "\n\n"
        + _table(
            ["caller TPS ratio", "1 client", "2 clients"],
            [[k, r["1"], r["2"]] for k, r in o["ratios"].items()],
        )
        + f"\n\npgd1 cron jobs not yet run at the end of the latency / drain scenarios: "
        f"{pb['pending_after_latency']} / {pb['pending_after_drain']} (deleted). In the caller "
        "scenario each pgbench run's pgd1 jobs were deleted unrun after it"
        + (f": {o['deleted_unrun'].get('pgd1', 0):,} in all." if "deleted_unrun" in o else ".")
    )


def render_scale(doc: dict[str, Any]) -> str:
    """Markdown tables of a scale run (bench/scale.py)."""
    res, v, m = doc["results"], doc["versions"], doc["machine"]
    mb = 1024 * 1024
    parts = [
        f"Scale run {doc['started_at']}, {doc['duration_s']:.0f} s"
        + (" (shortened)" if doc.get("shortened") else "")
        + f". {v['configuration']}: PostgreSQL {v['postgresql']}, pg_cron {v['pg_cron']} "
        f"(worker schedule `{v['worker_schedule']}`), fsync {v['fsync']}, synchronous_commit "
        f"{v['synchronous_commit']}, pgdispatch {v['pgdispatch']}. Machine: {m['nproc']} cores "
        f"({m['cpu']}), {m['memory_gb']} GB. Load average (1 min) at each phase: "
        + ", ".join(f"{k} {val[0]:.2f}" for k, val in doc["load"].items())
        + "."
    ]
    b = res.get("backlog")
    if b:
        parts.append(
            "#### Backlog\n\n"
            + _table(
                [
                    "jobs",
                    "drain sessions",
                    "dispatch jobs/s (fill)",
                    "last chunk jobs/s",
                    "drain jobs/s",
                    "claim ms at full backlog",
                    "claim ms during drain (median / max)",
                    "caller TPS",
                    "queue MB (indexes)",
                ],
                [
                    [
                        r["jobs"],
                        r["workers"],
                        r["dispatch_per_s"],
                        r["chunks"][-1]["per_s"],
                        r["jobs_per_s"],
                        r.get("claim", {}).get("ms_median"),
                        f"{r.get('claim_during_drain_ms_median', float('nan')):.3f} / "
                        f"{r.get('claim_during_drain_ms_max', float('nan')):.3f}",
                        r.get("caller_tps"),
                        f"{r['sizes_queued']['job.total'] / mb:.0f} "
                        f"({r['sizes_queued']['job.indexes'] / mb:.0f})",
                    ]
                    for r in b["runs"]
                ],
            )
            + f"\n\nEmpty queue: claim {b['claim_empty']['ms_median']:.3f} ms, caller "
            f"{b['caller_tps_empty']:,.0f} TPS.\n\n"
            + _table(
                ["ratio (large / small backlog)", "value"],
                [[k, val] for k, val in b["ratios"].items()],
            )
        )
    s = res.get("soak")
    if s:
        sized = [x for x in s["samples"] if "job.total" in x]

        def at(minute: int, key: str) -> float | None:
            vals = [x[key] for x in sized if x["t"] <= minute * 60]
            return vals[-1] / mb if vals else None

        eff = {x["minute"]: x for x in s["effect_ms_per_minute"]}
        age = {x["minute"]: x for x in s["backlog_age_s_per_minute"]}
        que = {x["minute"]: x for x in s["queue_per_minute"]}
        g = s["growth_in_window"]
        parts.append(
            f"#### Soak: {s['target_rate']} dispatches/s for {s['seconds']:.0f} s, retention "
            f"{s['settings']['retention']}, prune_batch {s['settings']['prune_batch']} per "
            f"{s['settings']['prune_interval']}\n\n"
            + _table(
                [
                    "minute",
                    "jobs",
                    "start p50 ms",
                    "start p99 ms",
                    "start max ms",
                    "effect p99 ms",
                    "max backlog age s",
                    "max queue",
                    "job MB",
                    "history MB",
                ],
                [
                    [
                        x["minute"],
                        x["n"],
                        x["p50"],
                        x["p99"],
                        x["max"],
                        eff.get(x["minute"], {}).get("p99"),
                        age.get(x["minute"], {}).get("max"),
                        que.get(x["minute"], {}).get("max"),
                        at(x["minute"], "job.total"),
                        at(x["minute"], "job_history.total"),
                    ]
                    for x in s["start_ms_per_minute"]
                ],
            )
            + f"\n\npgbench {s['pgbench_tps']:,.0f} TPS, {s['dispatched']:,} dispatched, "
            f"{s['effects']:,} effects, {s['lost']} lost, {s['duplicated']} duplicated, "
            f"{s['failed']} failed. Growth in the last {s['growth_window_s']:.0f} s: "
            f"pgdispatch.job {g['job.total'] / mb:+.1f} MB, job_history "
            f"{g['job_history.total'] / mb:+.1f} MB ({g['history_rows']:+,.0f} rows)."
        )
    r = res.get("roles")
    if r:
        parts.append(
            f"#### {r['roles']} idle roles, one worker + watchdog each, {r['seconds']:.0f} s\n\n"
            + _table(
                ["figure", "value"],
                [
                    ["server CPU before the roles started (% of a core)", r["baseline_server_pct"]],
                    [f"server CPU with {r['roles']} idle roles", r["server_pct"]],
                    ["server CPU per role (difference / roles)", r["server_pct_per_role"]],
                    ["a role's worker + watchdog backends, mean", r["backends_pct_per_role_mean"]],
                    ["a role's worker + watchdog backends, max", r["backends_pct_per_role_max"]],
                    ["pg_cron launcher", r["launcher_pct"]],
                    [
                        "connections, all (mean / max)",
                        f"{r['connections_total_mean']:.1f} / {r['connections_total_max']}",
                    ],
                    [
                        "connections per role (mean)",
                        sum(x["connections_mean"] for x in r["per_role"].values()) / r["roles"],
                    ],
                    ["cron.max_running_jobs (set for the run)", r["cron_max_running_jobs"]],
                ],
            )
        )
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    targets_only = "--targets" in args
    limits_file = None
    if "--limits" in args:
        i = args.index("--limits")
        limits_file = Path(args[i + 1])
        args = args[:i] + args[i + 2 :]
    files = [a for a in args if a != "--targets"]
    path = Path(files[0]) if files else DEFAULT
    doc = json.loads(path.read_text())
    if limits_file is not None:
        doc["results"]["limits"] = limits_from_file(limits_file)
    if targets_only:
        print(render_targets(doc))
    elif doc.get("kind") == "scale":
        print(render_scale(doc))
    elif doc.get("kind") == "pgd1":
        print(render_pgd1(doc["results"]["pgd1_baseline"]))
    else:
        print(render(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
