"""Markdown tables of a result file: ``python -m bench.report [bench/results/latest.json]``.

docs/benchmarks.md quotes these tables; regenerate them after a full run.
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
    if doc.get("notes"):
        parts.append("Notes: " + " ".join(doc["notes"]))
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DEFAULT
    print(render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
