"""The demo app's Alembic revision is a module of the package (linted and type-checked),
which ``sa-pgdispatch demo`` copies into the app with its ids and schema set."""

from __future__ import annotations

from typing import Any

from sa_pgdispatch import _demo_revision
from sa_pgdispatch.demo import demo_revision
from sa_pgdispatch.triggers import dispatch_triggers


def test_the_copy_sets_revision_parent_and_schema() -> None:
    source = demo_revision("1a2b3c4d5e6f", "0123456789ab", "demo_abc123")
    assert "Revision ID: 1a2b3c4d5e6f\n" in source
    assert "Revises: 0123456789ab\n" in source
    namespace: dict[str, Any] = {}
    exec(compile(source, "1a2b3c4d5e6f_demo_app.py", "exec"), namespace)
    assert namespace["revision"] == "1a2b3c4d5e6f"
    assert namespace["down_revision"] == "0123456789ab"
    assert namespace["SCHEMA"] == "demo_abc123"
    profiles = namespace["metadata"].tables["demo_abc123.profiles"]
    [trigger] = dispatch_triggers(profiles)
    assert trigger.function == "demo_abc123.send_welcome"
    assert callable(namespace["upgrade"])
    assert callable(namespace["downgrade"])


def test_the_copy_of_a_first_revision_has_no_parent() -> None:
    namespace: dict[str, Any] = {}
    exec(demo_revision("1a2b3c4d5e6f", None, "demo_abc123"), namespace)
    assert namespace["down_revision"] is None


def test_the_shipped_module_is_the_copy_with_placeholders() -> None:
    assert _demo_revision.revision == "demo_app"
    assert _demo_revision.down_revision is None
    assert set(_demo_revision.metadata.tables) == {
        f"{_demo_revision.SCHEMA}.profiles",
        f"{_demo_revision.SCHEMA}.notifications",
    }
