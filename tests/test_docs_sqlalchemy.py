"""docs/sqlalchemy.md is tested: its Python blocks run, in order, against the test server."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

DOC = Path(__file__).resolve().parents[1] / "docs" / "sqlalchemy.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def python_blocks() -> list[tuple[int, str]]:
    """``(first line number, code)`` of each ```python block."""
    source = DOC.read_text(encoding="utf-8")
    return [(source.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in BLOCK.finditer(source)]


def test_the_page_has_examples_for_each_part() -> None:
    code = "\n".join(block for _, block in python_blocks())
    assert len(python_blocks()) >= 8
    for name in (
        "func.pgdispatch.",
        "render_sql(",
        "dispatch(",
        "DispatchTrigger(",
        "create_all(",
        "reflect_dispatch_triggers(",
        "definitions_equal(",
    ):
        assert name in code, name


@pytest.fixture
def clean_shop(pgdispatch_db: Engine) -> Iterator[None]:
    """The page works in schema ``shop``: start and end without it."""
    with pgdispatch_db.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS shop CASCADE"))
    yield
    with pgdispatch_db.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS shop CASCADE"))


def test_docs_sqlalchemy_examples_run(
    pgdispatch_db: Engine,
    clean_shop: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", pgdispatch_db.url.render_as_string(hide_password=False))
    # a real module: declarative classes resolve their annotations through sys.modules
    module = types.ModuleType("docs_sqlalchemy")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace: dict[str, Any] = module.__dict__
    try:
        for line, block in python_blocks():
            code = compile("\n" * (line - 1) + block, str(DOC), "exec")
            exec(code, namespace)
    finally:
        engine = namespace.get("engine")
        if isinstance(engine, Engine):
            engine.dispose()
    out = capsys.readouterr().out
    assert "refused:" in out
    assert "SELECT pgdispatch.definer_trigger_function('shop')" in out
