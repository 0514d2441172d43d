"""Shared plumbing of the benchmarks: connections, pgbench, statistics, CPU accounting."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import conninfo

#: The login role whose jobs go through real pg_cron workers (production path).
APP_ROLE = "bench_app"
#: A login role without pg_cron workers: its queue is drained by sessions we open.
DRAIN_ROLE = "bench_drain"
#: A login role whose workers stay stopped (caller overhead "workers stopped").
STOPPED_ROLE = "bench_stopped"

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Ctx:
    """What every scenario needs: where the server is and how long to run."""

    dsn: str  # superuser DSN
    pgbench: Path
    quick: bool
    results: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def role_dsn(self, role: str) -> str:
        params = conninfo.conninfo_to_dict(self.dsn)
        params["user"] = role
        params.pop("password", None)
        return conninfo.make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})

    def connect(self, role: str | None = None, autocommit: bool = True) -> psycopg.Connection[Any]:
        dsn = self.dsn if role is None else self.role_dsn(role)
        return psycopg.connect(dsn, autocommit=autocommit)

    def sql(self, query: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (autocommit) and return its rows."""
        with self.connect() as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def scalar(self, query: str, params: Sequence[Any] | None = None) -> Any:
        rows = self.sql(query, params)
        return rows[0][0] if rows else None

    def note(self, text: str) -> None:
        print(f"  note: {text}")
        self.notes.append(text)


# ---------------------------------------------------------------------------------------
# statistics and printing


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary_ms(values_ms: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values_ms),
        "p50": percentile(values_ms, 50),
        "p95": percentile(values_ms, 95),
        "p99": percentile(values_ms, 99),
        "max": max(values_ms) if values_ms else float("nan"),
        "mean": statistics.fmean(values_ms) if values_ms else float("nan"),
    }


def median(values: Iterable[float]) -> float:
    vals = list(values)
    return statistics.median(vals) if vals else float("nan")


def fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    if value is None:
        return "-"
    return str(value)


def table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a plain-text table."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=False)]
    print(f"\n== {title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=False)))


# ---------------------------------------------------------------------------------------
# pgbench

_TPS_RE = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
_LAT_RE = re.compile(r"latency average = ([0-9.]+) ms")
_LAG_RE = re.compile(r"rate limit schedule lag: avg ([0-9.]+) \(max ([0-9.]+)\) ms")
_TX_RE = re.compile(r"number of transactions actually processed: (\d+)")
_SKIP_RE = re.compile(r"number of transactions skipped: (\d+)")


@dataclass
class PgbenchResult:
    tps: float
    transactions: int
    latency_ms: float
    lag_avg_ms: float | None = None
    lag_max_ms: float | None = None
    skipped: int = 0


def pgbench(
    ctx: Ctx,
    script: str,
    *,
    role: str,
    clients: int,
    seconds: float,
    rate: int | None = None,
    extra: Sequence[str] = (),
) -> PgbenchResult:
    """Run pgbench with a custom script (no vacuum, no init) as *role*."""
    params = conninfo.conninfo_to_dict(ctx.dsn)
    with tempfile.TemporaryDirectory(prefix="sa-pgdispatch-bench-") as tmp:
        script_path = Path(tmp) / "script.sql"
        script_path.write_text(script)
        return _run_pgbench(ctx, params, script_path, role, clients, seconds, rate, extra)


def _run_pgbench(
    ctx: Ctx,
    params: dict[str, Any],
    script_path: Path,
    role: str,
    clients: int,
    seconds: float,
    rate: int | None,
    extra: Sequence[str],
) -> PgbenchResult:
    args = [
        str(ctx.pgbench),
        "-n",
        "-h",
        str(params["host"]),
        "-p",
        str(params["port"]),
        "-U",
        role,
        "-c",
        str(clients),
        "-j",
        str(clients),
        "-T",
        str(max(1, round(seconds))),
        "-f",
        str(script_path),
        *(["-R", str(rate)] if rate else []),
        *extra,
        str(params["dbname"]),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=seconds + 120)
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    text = out.stdout
    tps = _TPS_RE.search(text)
    tx = _TX_RE.search(text)
    lat = _LAT_RE.search(text)
    if not (tps and tx and lat):
        raise RuntimeError(f"cannot parse pgbench output:\n{text}\n{out.stderr}")
    lag = _LAG_RE.search(text)
    skip = _SKIP_RE.search(text)
    return PgbenchResult(
        tps=float(tps.group(1)),
        transactions=int(tx.group(1)),
        latency_ms=float(lat.group(1)),
        lag_avg_ms=float(lag.group(1)) if lag else None,
        lag_max_ms=float(lag.group(2)) if lag else None,
        skipped=int(skip.group(1)) if skip else 0,
    )


# ---------------------------------------------------------------------------------------
# CPU accounting from /proc


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of *pid* in seconds, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    # fields[0] is the state (field 3); utime, stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree(pid: int) -> list[int]:
    """*pid* and its descendants."""
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in children:
        out.extend(process_tree(int(child)))
    return out


class CpuSampler:
    """Accumulates the CPU time of groups of processes, re-discovering pids every second.

    ``groups`` maps a group name to a callable returning that group's current pids
    (e.g. the backends of pgdispatch workers, which pg_cron replaces each minute).
    The CPU a process used before it was first seen is not counted; the CPU after its
    last sample (at most a second) is lost when it exits.
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]], interval: float = 1.0) -> None:
        self.groups = groups
        self.interval = interval
        self.first: dict[tuple[str, int], float] = {}
        self.last: dict[tuple[str, int], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = 0.0
        self.elapsed = 0.0

    def _sample(self) -> None:
        for name, pids_of in self.groups.items():
            try:
                pids = pids_of()
            except Exception:  # a group whose query fails this second is skipped
                continue
            for pid in pids:
                cpu = proc_cpu_seconds(pid)
                if cpu is None:
                    continue
                self.first.setdefault((name, pid), cpu)
                self.last[(name, pid)] = cpu

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> CpuSampler:
        self.started = time.monotonic()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()
        self.elapsed = time.monotonic() - self.started

    def seconds(self, name: str) -> float:
        return sum(self.last[k] - self.first[k] for k in self.last if k[0] == name)

    def pids(self, name: str) -> list[int]:
        return sorted(k[1] for k in self.last if k[0] == name)


def backend_pids(ctx: Ctx, where: str, params: Sequence[Any] | None = None) -> list[int]:
    """Backend pids from pg_stat_activity matching an SQL condition."""
    rows = ctx.sql(f"SELECT pid FROM pg_stat_activity WHERE {where}", params)
    return [int(r[0]) for r in rows]


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return (one, five, fifteen)
