"""The targets of issue 14, met or missed, from the results of one ``python -m bench`` run.

Pure functions of the results dict (as written to ``bench/results/*.json``: JSON keys, so
client and session counts are strings): ``evaluate(results)`` gives one row per target,
``bench/run.py`` prints and saves them, ``bench/report.py`` renders them as markdown.

A figure the run did not measure (``--no-limits``, a failed scenario) is reported as not
run (``met`` None), never as met. Where a ``--quick`` run measures a smaller workload
than the target names (a 20,000-job burst, a 10 s idle period), the row says so; the
burst's limit is scaled to the jobs measured (2.5 s per 100,000 jobs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CALLER_MIN = 0.9  # pgdispatch trigger TPS / minimal hand-written trigger TPS
DRAIN_MIN = 0.8  # pgdispatch work() jobs/s / hand-written SKIP LOCKED loop jobs/s
BURST_JOBS = 100_000
BURST_MAX_S = 2.5
P50_MAX_MS = 2.0
P99_MAX_MS = 5.0
IDLE_FIRST_MAX_MS = 25.0


@dataclass(frozen=True)
class Measured:
    value: float
    limit: float  # the threshold this value is compared with (scaled where noted)
    detail: str = ""
    failed: bool = False  # the run itself went wrong (errors, lost effects): missed


@dataclass(frozen=True)
class Target:
    key: str
    name: str
    threshold: str
    at_least: bool  # True: value >= limit; False: value <= limit
    measure: Callable[[dict[str, Any]], Measured | None]


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        # JSON turns the int keys of the limits' client / session counts into strings
        d = d.get(key, d.get(int(key)) if key.isdigit() else None)
    return d


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _caller(clients: str) -> Callable[[dict[str, Any]], Measured | None]:
    def measure(res: dict[str, Any]) -> Measured | None:
        c = _get(res, "limits", "caller")
        ratio = _number(_get(c, "ratio_pgdispatch_over_minimal", clients))
        if ratio is None:
            return None
        pgd = _number(_get(c, "median_tps", "pgdispatch", clients))
        mini = _number(_get(c, "median_tps", "minimal", clients))
        detail = f"{pgd:,.0f} / {mini:,.0f} TPS" if pgd is not None and mini is not None else ""
        floor = _number(_get(c, "ratio_jobrow_over_minimal", clients))
        if floor is not None and detail:
            # the same job row written by a hand-written trigger without a check
            detail += f"; a bare job-row trigger: {floor:.2f}"
        return Measured(ratio, CALLER_MIN, detail)

    return measure


def _drain(sessions: str) -> Callable[[dict[str, Any]], Measured | None]:
    def measure(res: dict[str, Any]) -> Measured | None:
        d = _get(res, "limits", "drain")
        ratio = _number(_get(d, "ratio_pgdispatch_over_limit", sessions))
        if ratio is None:
            return None
        pgd = _number(_get(d, "median_jobs_per_s", "pgdispatch", sessions))
        lim = _number(_get(d, "median_jobs_per_s", "limit", sessions))
        detail = f"{pgd:,.0f} / {lim:,.0f} jobs/s" if pgd is not None and lim is not None else ""
        jobs = _number(_get(d, "jobs"))
        if jobs is not None:
            detail += f" ({jobs:,.0f} jobs)"
        return Measured(ratio, DRAIN_MIN, detail)

    return measure


def _burst(res: dict[str, Any]) -> Measured | None:
    b = _get(res, "burst")
    seconds, jobs = _number(_get(b, "drain_s")), _number(_get(b, "jobs"))
    if seconds is None or jobs is None or jobs <= 0:
        return None
    limit = BURST_MAX_S * jobs / BURST_JOBS
    errors = _number(_get(b, "errors"))
    effects = _number(_get(b, "distinct_effects")) or _number(_get(b, "effects"))
    detail = f"{jobs / seconds:,.0f} jobs/s, {errors or 0:,.0f} errors"
    if jobs != BURST_JOBS:
        detail += f"; {jobs:,.0f} jobs, limit scaled to {limit:.2f} s"
    if errors or effects != jobs:
        # a burst with errors or lost effects misses whatever its time
        detail += f"; {effects or 0:,.0f} effects of {jobs:,.0f}"
        return Measured(seconds, limit, detail, failed=True)
    return Measured(seconds, limit, detail)


def _latency(stat: str, limit: float) -> Callable[[dict[str, Any]], Measured | None]:
    def measure(res: dict[str, Any]) -> Measured | None:
        s = _get(res, "latency", "pgdispatch", "start_ms")
        value = _number(_get(s, stat))
        if value is None:
            return None
        n = _number(_get(s, "n"))
        return Measured(value, limit, f"fire to start, {n or 0:,.0f} jobs, one every 20 ms")

    return measure


def _idle_first(res: dict[str, Any]) -> Measured | None:
    r = _get(res, "idle", "first_after_idle", "pgdispatch")
    value = _number(_get(r, "start_ms", "max"))
    if value is None:
        return None
    idle_s = _number(_get(r, "idle_s"))
    return Measured(
        value, IDLE_FIRST_MAX_MS, f"fire to start after {idle_s or 0:.0f} s idle, one sample"
    )


TARGETS: tuple[Target, ...] = (
    Target(
        "caller_1",
        "caller TPS / minimal trigger, 1 client",
        f">= {CALLER_MIN}",
        True,
        _caller("1"),
    ),
    Target(
        "caller_2",
        "caller TPS / minimal trigger, 2 clients",
        f">= {CALLER_MIN}",
        True,
        _caller("2"),
    ),
    Target(
        "drain_1",
        "work() drain / SKIP LOCKED loop, 1 session",
        f">= {DRAIN_MIN}",
        True,
        _drain("1"),
    ),
    Target(
        "drain_2",
        "work() drain / SKIP LOCKED loop, 2 sessions",
        f">= {DRAIN_MIN}",
        True,
        _drain("2"),
    ),
    Target(
        "burst",
        "100k burst drained by 2 workers (s)",
        f"<= {BURST_MAX_S} s",
        False,
        _burst,
    ),
    Target(
        "latency_p50",
        "p50 at 50 jobs/s (ms)",
        f"<= {P50_MAX_MS:g} ms",
        False,
        _latency("p50", P50_MAX_MS),
    ),
    Target(
        "latency_p99",
        "p99 at 50 jobs/s (ms)",
        f"<= {P99_MAX_MS:g} ms",
        False,
        _latency("p99", P99_MAX_MS),
    ),
    Target(
        "idle_first",
        "first job after 60 s idle (ms)",
        f"<= {IDLE_FIRST_MAX_MS:g} ms",
        False,
        _idle_first,
    ),
)


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: key, target, threshold, value, detail, met (None: not run)."""
    rows: list[dict[str, Any]] = []
    for t in TARGETS:
        m = t.measure(results)
        if m is None:
            rows.append(
                {
                    "key": t.key,
                    "target": t.name,
                    "threshold": t.threshold,
                    "value": None,
                    "detail": "not run",
                    "met": None,
                }
            )
            continue
        met = not m.failed and (m.value >= m.limit if t.at_least else m.value <= m.limit)
        rows.append(
            {
                "key": t.key,
                "target": t.name,
                "threshold": t.threshold,
                "value": m.value,
                "detail": m.detail,
                "met": met,
            }
        )
    return rows


def verdict(met: bool | None) -> str:
    return "not run" if met is None else ("met" if met else "missed")
