"""Issue 14's targets table of the benchmark (bench/targets.py, bench/report.py): no server."""

from __future__ import annotations

import copy
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _import(name: str) -> ModuleType:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def targets() -> ModuleType:
    return _import("bench.targets")


@pytest.fixture(scope="module")
def report() -> ModuleType:
    return _import("bench.report")


def _results(**over: Any) -> dict[str, Any]:
    """A main run's results (JSON form: string keys), every target just met."""
    res: dict[str, Any] = {
        "limits": {
            "caller": {
                "median_tps": {
                    "minimal": {"1": 1000.0, "2": 2000.0},
                    "pgdispatch": {"1": 900.0, "2": 1900.0},
                },
                "ratio_pgdispatch_over_minimal": {"1": 0.9, "2": 0.95},
            },
            "drain": {
                "jobs": 100_000,
                "median_jobs_per_s": {
                    "limit": {"1": 30_000.0, "2": 50_000.0},
                    "pgdispatch": {"1": 24_000.0, "2": 45_000.0},
                },
                "ratio_pgdispatch_over_limit": {"1": 0.8, "2": 0.9},
            },
        },
        "burst": {
            "jobs": 100_000,
            "drain_s": 2.5,
            "errors": 0,
            "effects": 100_000,
            "distinct_effects": 100_000,
        },
        "latency": {"pgdispatch": {"start_ms": {"n": 500, "p50": 2.0, "p99": 5.0}}},
        "idle": {"first_after_idle": {"pgdispatch": {"idle_s": 60.2, "start_ms": {"max": 25.0}}}},
    }
    for path, value in over.items():
        *keys, last = path.split("__")
        node = res
        for k in keys:
            node = node[k]
        node[last] = value
    return res


def _by_key(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in rows}


def test_every_issue_14_target_has_a_row(targets: ModuleType) -> None:
    keys = [r["key"] for r in targets.evaluate(_results())]
    assert keys == [
        "caller_1",
        "caller_2",
        "drain_1",
        "drain_2",
        "burst",
        "latency_p50",
        "latency_p99",
        "idle_first",
    ]


def test_figures_on_the_threshold_are_met(targets: ModuleType) -> None:
    rows = targets.evaluate(_results())
    assert [r["met"] for r in rows] == [True] * 8
    assert {r["key"]: r["value"] for r in rows}["burst"] == 2.5


@pytest.mark.parametrize(
    ("key", "path", "value"),
    [
        ("caller_1", "limits__caller__ratio_pgdispatch_over_minimal", {"1": 0.89, "2": 0.95}),
        ("caller_2", "limits__caller__ratio_pgdispatch_over_minimal", {"1": 0.9, "2": 0.5}),
        ("drain_1", "limits__drain__ratio_pgdispatch_over_limit", {"1": 0.79, "2": 0.9}),
        ("drain_2", "limits__drain__ratio_pgdispatch_over_limit", {"1": 0.8, "2": 0.75}),
        ("burst", "burst__drain_s", 2.54),
        ("latency_p50", "latency__pgdispatch__start_ms__p50", 2.01),
        ("latency_p99", "latency__pgdispatch__start_ms__p99", 7.68),
        ("idle_first", "idle__first_after_idle__pgdispatch__start_ms__max", 25.1),
    ],
)
def test_a_figure_past_its_threshold_is_missed_and_only_that_one(
    targets: ModuleType, key: str, path: str, value: Any
) -> None:
    rows = _by_key(targets.evaluate(_results(**{path: value})))
    assert rows[key]["met"] is False
    assert targets.verdict(rows[key]["met"]) == "missed"
    assert all(r["met"] is True for k, r in rows.items() if k != key)


def test_a_run_without_limits_reports_them_not_run_never_met(targets: ModuleType) -> None:
    res = _results()
    del res["limits"]
    rows = _by_key(targets.evaluate(res))
    for key in ("caller_1", "caller_2", "drain_1", "drain_2"):
        assert rows[key]["met"] is None
        assert rows[key]["value"] is None
        assert targets.verdict(None) == "not run"
    assert rows["burst"]["met"] is True


def test_a_fast_burst_with_errors_or_lost_effects_is_missed(targets: ModuleType) -> None:
    rows = _by_key(targets.evaluate(_results(burst__drain_s=1.0, burst__errors=3)))
    assert rows["burst"]["met"] is False
    lost = _results(burst__drain_s=1.0, burst__distinct_effects=99_999)
    assert _by_key(targets.evaluate(lost))["burst"]["met"] is False


def test_a_quick_runs_smaller_burst_is_judged_on_the_scaled_limit(targets: ModuleType) -> None:
    quick = {"jobs": 20_000, "errors": 0, "effects": 20_000, "distinct_effects": 20_000}
    met = _by_key(targets.evaluate(_results(burst={**quick, "drain_s": 0.5})))["burst"]
    assert met["met"] is True
    assert "limit scaled to 0.50 s" in met["detail"]
    missed = _by_key(targets.evaluate(_results(burst={**quick, "drain_s": 0.51})))["burst"]
    assert missed["met"] is False


def test_in_memory_int_keys_read_like_json_string_keys(targets: ModuleType) -> None:
    res = _results()
    lim = copy.deepcopy(res["limits"])
    for part, ratio, med in (
        ("caller", "ratio_pgdispatch_over_minimal", "median_tps"),
        ("drain", "ratio_pgdispatch_over_limit", "median_jobs_per_s"),
    ):
        lim[part][ratio] = {int(k): v for k, v in lim[part][ratio].items()}
        lim[part][med] = {
            name: {int(k): v for k, v in by.items()} for name, by in lim[part][med].items()
        }
    res["limits"] = lim
    lim["caller"]["ratio_pgdispatch_over_minimal"][2] = 0.5
    rows = _by_key(targets.evaluate(res))
    assert rows["caller_1"]["value"] == 0.9
    assert rows["caller_2"]["met"] is False


def test_report_renders_the_targets_of_a_file_without_saved_targets(report: ModuleType) -> None:
    doc = {
        "started_at": "2026-12-02T01:02:24+0000",
        "duration_s": 604.0,
        "quick": False,
        "results": _results(latency__pgdispatch__start_ms__p99=7.68),
    }
    text = report.render_targets(doc)
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| target | threshold | measured | verdict")
    assert len(lines) == 1 + 8
    p99 = next(line for line in lines if line.startswith("| p99"))
    assert "| 7.68 | **missed** |" in p99
    assert sum("| met |" in line for line in lines) == 7


def test_report_takes_the_limits_from_a_bench_limits_file(
    report: ModuleType, tmp_path: Path
) -> None:
    res = _results()
    lim = res.pop("limits")
    path = tmp_path / "limits-latest.json"

    lim["caller"]["ratio_pgdispatch_over_minimal"]["1"] = 0.65
    path.write_text(
        json.dumps({"started_at": "2026-12-01T23:55:49+0000", "duration_s": 233.0, **lim})
    )
    res["limits"] = report.limits_from_file(path)
    doc = {"started_at": "x", "duration_s": 1.0, "quick": True, "results": res}
    text = report.render_targets(doc)
    assert "Limits from `limits-latest.json`" in text
    caller_1 = next(line for line in text.splitlines() if "1 client |" in line)
    assert "| 0.65 | **missed** |" in caller_1


def _limits_run() -> dict[str, Any]:
    """:func:`_results` with what ``render_limits`` reads besides the targets."""
    res = _results()
    caller = res["limits"]["caller"]
    caller["median_tps"]["plain"] = {"1": 1200.0, "2": 2400.0}
    caller["seconds"], caller["rounds"] = 10.0, 3
    res["limits"]["drain"]["rounds"] = 3
    return res


def test_the_job_row_floor_is_reported_beside_the_caller_ratio(
    targets: ModuleType, report: ModuleType
) -> None:
    res = _limits_run()
    caller = res["limits"]["caller"]
    caller["median_tps"]["job row"] = {"1": 950.0, "2": 1960.0}
    caller["ratio_jobrow_over_minimal"] = {"1": 0.95, "2": 0.98}
    caller["ratio_pgdispatch_over_jobrow"] = {"1": 900 / 950, "2": 1900 / 1960}
    rows = _by_key(targets.evaluate(res))
    assert rows["caller_1"]["detail"] == "900 / 1,000 TPS; a bare job-row trigger: 0.95"
    assert rows["caller_2"]["detail"].endswith("a bare job-row trigger: 0.98")
    text = report.render_limits(res["limits"])
    head = next(line for line in text.splitlines() if line.startswith("| figure"))
    assert head == (
        "| figure | plain | limit | job row | pgdispatch | pgdispatch / limit "
        "| pgdispatch / job row |"
    )
    one = next(line for line in text.splitlines() if "1 client(s)" in line)
    assert "| 950.00 |" in one
    assert "| 0.95 |" in one  # 900 / 950


def test_a_run_without_the_job_row_floor_renders_as_before(
    targets: ModuleType, report: ModuleType
) -> None:
    res = _limits_run()
    assert _by_key(targets.evaluate(res))["caller_1"]["detail"] == "900 / 1,000 TPS"
    head = next(
        line for line in report.render_limits(res["limits"]).splitlines() if "| figure" in line
    )
    assert head == "| figure | plain | limit | pgdispatch | pgdispatch / limit |"
