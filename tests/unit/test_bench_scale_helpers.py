"""The pure helpers of the scale benchmark (bench/scale.py): no server, no timing."""

from __future__ import annotations

import importlib
import math
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scale() -> ModuleType:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("bench.scale")


def _work_source() -> str:
    text = (ROOT / "sql" / "pgdispatch--0.2.0.sql").read_text()
    start = text.index("CREATE PROCEDURE pgdispatch.work(")
    return text[start : text.index("\n$$;", start)]


def test_claim_statement_is_works_claim_with_parameters(scale: ModuleType) -> None:
    """The benchmark times work()'s own claim: it must find it in the current SQL and
    bind its variables, else the claim-cost figure would time something else."""
    stmt = scale.claim_statement(_work_source())
    assert stmt.startswith("SELECT")
    assert re.search(r"FOR\s+UPDATE\s+SKIP\s+LOCKED$", stmt)
    assert "$1" in stmt
    assert "$2" in stmt
    assert not re.search(r"\b(me_id|t_now|c_lo|c_hi|c_run_at|c_id)\b", stmt)


def test_claim_statement_refuses_a_procedure_without_a_claim(scale: ModuleType) -> None:
    with pytest.raises(ValueError, match="no 'FOR j IN SELECT"):
        scale.claim_statement("BEGIN PERFORM 1; END")


def test_claim_statement_refuses_unbound_variables(scale: ModuleType) -> None:
    src = (
        "FOR j IN SELECT * FROM pgdispatch.job q WHERE q.role_id = me_id AND q.run_at <= t_now"
        " LIMIT batch_limit FOR UPDATE SKIP LOCKED LOOP"
    )
    with pytest.raises(ValueError, match="batch_limit"):
        scale.claim_statement(src)


def test_per_minute_buckets_by_seconds(scale: ModuleType) -> None:
    samples = [(0.0, 1.0), (59.9, 3.0), (60.0, 10.0), (130.0, 7.0)]
    out = scale.per_minute(samples)
    assert [m["minute"] for m in out] == [1, 2, 3]
    assert [m["n"] for m in out] == [2, 1, 1]
    assert out[0]["max"] == 3.0
    assert out[0]["p50"] == 2.0
    assert out[1]["p99"] == 10.0


def test_growth_from_the_last_point_before_the_window(scale: ModuleType) -> None:
    points = [(0.0, 100.0), (50.0, 150.0), (70.0, 180.0), (120.0, 185.0)]
    assert scale.growth(points, 60.0) == 35.0
    assert scale.growth(points, -1.0) == 85.0
    assert math.isnan(scale.growth([], 10.0))


def test_claim_statement_refuses_any_variable_work_declares(scale: ModuleType) -> None:
    """A variable added to work()'s claim later (as ``watched`` was) is reported, not
    left in the statement for the server to refuse mid-run."""
    src = (
        "DECLARE\n  me_id regrole;\n  t_now timestamptz;\n  gate boolean := true;\nBEGIN\n"
        "FOR j IN SELECT * FROM pgdispatch.job q WHERE q.role_id = me_id AND q.run_at <= t_now"
        " AND gate FOR UPDATE SKIP LOCKED LOOP"
    )
    with pytest.raises(ValueError, match="gate"):
        scale.claim_statement(src)
