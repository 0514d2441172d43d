"""PNG plots of a benchmark result (matplotlib, the ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"
QUICK_IMG = Path(__file__).resolve().parent / "results" / "img-quick"


def plot_all(doc: dict[str, Any], quick: bool = False) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing (pip install matplotlib): no plots")
        return []
    out_dir = QUICK_IMG if quick else IMG
    out_dir.mkdir(parents=True, exist_ok=True)
    res = doc["results"]
    written = []

    # latency CDF
    fig, ax = plt.subplots(figsize=(7, 4.2))
    curves: list[tuple[str, list[float]]] = []
    lat = res.get("latency", {})
    pgd = lat.get("pgdispatch", {})
    if pgd.get("start_samples"):
        curves.append(("pgdispatch, fire to start", pgd["start_samples"]))
    if pgd.get("effect_samples"):
        curves.append(("pgdispatch, fire to effect", pgd["effect_samples"]))
    load = res.get("drain", {}).get("latency_under_load", {})
    if load.get("start_samples"):
        curves.append(("pgdispatch under drain load, start", load["start_samples"]))
    for name, r in lat.items():
        if name != "pgdispatch" and r.get("effect_samples"):
            label = doc.get("peers", {}).get(name, {}).get("label", name)
            curves.append((f"{label}, fire to effect", r["effect_samples"]))
    for label, samples in curves:
        xs = sorted(samples)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=f"{label} (n={len(xs)})")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale): dispatching statement to job start / side effect")
    ax.set_ylabel("fraction of jobs")
    ax.set_title("Fire-to-start latency, one job every 20 ms")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = out_dir / "latency_cdf.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    # throughput bars
    bars: list[tuple[str, float]] = []
    for r in res.get("drain", {}).get("runs", []):
        label = f"{r['jobs'] // 1000}k, {r['workers']}w" + (", capture" if r["capture"] else "")
        bars.append((f"pgdispatch {label}", r["jobs_per_s"]))
    b = res.get("burst")
    if b:
        bars.append((f"pgdispatch burst {b['jobs'] // 1000}k, 2w", b["jobs_per_s"]))
    for name, r in res.get("peer_drain", {}).items():
        if r.get("jobs_per_s"):
            label = doc.get("peers", {}).get(name, {}).get("label", name)
            if name == "pgdispatch":
                label = f"pgdispatch pg_cron workers ({doc.get('app_workers', '?')}w)"
            bars.append((f"{label}, running worker", r["jobs_per_s"]))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(bars) + 1.2))
    names = [n for n, _ in bars]
    values = [v for _, v in bars]
    ax.barh(
        names, values, color=["#3b7dd8" if n.startswith("pgdispatch") else "#999" for n in names]
    )
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("jobs/s (trivial INSERT job)")
    ax.set_title("Drain throughput")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    path = out_dir / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    # sustained backlog age
    s = res.get("sustained")
    if s and s.get("samples"):
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.plot([x[0] for x in s["samples"]], [x[2] * 1000 for x in s["samples"]])
        ax.set_xlabel("seconds")
        ax.set_ylabel("oldest queued job age (ms)")
        ax.set_title(f"Backlog age at {s['target_rate']} dispatches/s (sampled every 0.5 s)")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = out_dir / "sustained_backlog.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def plot_scale(doc: dict[str, Any], quick: bool = False) -> list[Path]:
    """The scale run's plots: the soak over time, dispatch and drain rates by backlog."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing (pip install matplotlib): no plots")
        return []
    out_dir = QUICK_IMG if quick else IMG
    out_dir.mkdir(parents=True, exist_ok=True)
    res = doc["results"]
    conf = doc.get("versions", {}).get("configuration", "")
    written = []
    mb = 1024 * 1024

    s = res.get("soak")
    if s:
        fig, axes = plt.subplots(3, 1, figsize=(7.5, 8.5), sharex=True)
        start = s["start_ms_per_minute"]
        effect = s["effect_ms_per_minute"]
        ax = axes[0]
        ax.plot(
            [m["minute"] for m in start],
            [m["p99"] for m in start],
            "o-",
            label="fire to start, p99",
        )
        ax.plot(
            [m["minute"] for m in start],
            [m["p50"] for m in start],
            "o-",
            label="fire to start, p50",
        )
        ax.plot(
            [m["minute"] for m in effect],
            [m["p99"] for m in effect],
            "x--",
            label="fire to effect, p99",
        )
        ax.axhline(5.0, color="r", lw=0.8, ls=":", label="target p99 5 ms")
        ax.set_ylabel("ms (per minute)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(
            f"Soak: {s['target_rate']} dispatches/s for {s['seconds'] / 60:.0f} min, "
            f"retention {s['settings']['retention']}, prune_batch "
            f"{s['settings']['prune_batch']} per {s['settings']['prune_interval']}",
            fontsize=9,
        )
        samples = s["samples"]
        ax = axes[1]
        ax.plot([x["t"] / 60 + 1 for x in samples], [x["age_s"] * 1000 for x in samples], lw=0.7)
        ax.axhline(1000, color="r", lw=0.8, ls=":", label="target 1 s")
        ax.set_ylabel("oldest queued job (ms)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        sized = [x for x in samples if "job.total" in x]
        ax = axes[2]
        ts = [x["t"] / 60 + 1 for x in sized]
        for key, label in (
            ("job.total", "pgdispatch.job"),
            ("job.indexes", "pgdispatch.job indexes"),
            ("job_history.total", "pgdispatch.job_history"),
            ("job_history.indexes", "pgdispatch.job_history indexes"),
        ):
            ax.plot(ts, [x[key] / mb for x in sized], label=label)
        ax.set_ylabel("MB (pg_total_relation_size)")
        ax.set_xlabel("minute of the soak")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.text(0.01, 0.005, conf, fontsize=6)
        fig.tight_layout()
        path = out_dir / "scale_soak.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    b = res.get("backlog")
    if b:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.9))
        ax = axes[0]
        for r in b["runs"]:
            ax.plot(
                [c["backlog_after"] / 1000 for c in r["chunks"]],
                [c["per_s"] for c in r["chunks"]],
                "o-",
                ms=3,
                label=f"fill to {r['jobs'] // 1000}k ({r['workers']}w run, r{r.get('round', 1)})",
            )
        ax.set_xlabel("backlog after the chunk (thousand jobs)")
        ax.set_ylabel("dispatch() jobs/s of each chunk")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title("Dispatch rate as the backlog grows", fontsize=9)
        ax = axes[1]
        for r in b["runs"]:
            tenths = r["jobs_per_s_by_tenth"]
            ax.plot(
                range(1, len(tenths) + 1),
                tenths,
                "o-",
                ms=3,
                label=f"{r['jobs'] // 1000}k, {r['workers']} session(s), r{r.get('round', 1)}",
            )
        ax.set_xlabel("tenth of the drain")
        ax.set_ylabel("jobs/s")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title("Drain rate as the backlog shrinks", fontsize=9)
        ax = axes[2]
        for r in b["runs"]:
            probes = r.get("claim_during_drain") or []
            if probes and r.get("drain_s"):
                ax.plot(
                    [100 * p[0] / r["drain_s"] for p in probes],
                    [p[1] for p in probes],
                    ".-",
                    ms=3,
                    lw=0.7,
                    label=f"{r['jobs'] // 1000}k, {r['workers']} session(s), r{r.get('round', 1)}",
                )
        ax.set_xlabel("% of the drain time")
        ax.set_ylabel("claim (EXPLAIN ANALYZE) ms")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title("work()'s claim of 60 jobs, probed every second", fontsize=9)
        fig.text(0.01, 0.005, conf, fontsize=6)
        fig.tight_layout()
        path = out_dir / "scale_backlog.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
