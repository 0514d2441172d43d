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
