"""A reflected trigger whose definition DispatchSpec refuses (made by hand, or by an older
sa_pgdispatch): the record keeps it as an InvalidSpec, and autogenerate handles it as
docs/alembic.md says - a bad delay/timeout is dropped or replaced with its definition
carried as it is (only re-creating it is refused), anything else is left alone."""

from __future__ import annotations

import io
import logging
import textwrap
from typing import Any

import pytest
from alembic.autogenerate import render_python_code
from alembic.operations import Operations, ops
from alembic.runtime.migration import MigrationContext

from sa_pgdispatch.alembic import (
    CreateDispatchTriggerOp,
    DispatchTriggerOpError,
    DropDispatchTriggerOp,
    ReplaceDispatchTriggerOp,
)
from sa_pgdispatch.alembic.autogenerate import _detached
from sa_pgdispatch.triggers import (
    DispatchSpec,
    DispatchTrigger,
    DispatchTriggerError,
    DispatchTriggerInfo,
    IntervalOptionError,
    InvalidSpec,
)

#: what reflection reads from a trigger made with pgdispatch.trigger('app.fn', 'delay=-5 seconds')
BAD_DELAY: dict[str, Any] = {
    "function": "app.fn",
    "on": ("insert",),
    "columns": None,
    "when": None,
    "for_each": "row",
    "delay": "-00:00:05",
    "priority": None,
    "max_attempts": None,
    "timeout": None,
    "security": "invoker",
}


def _offline() -> tuple[Operations, io.StringIO]:
    buf = io.StringIO()
    ctx = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": buf}
    )
    return Operations(ctx), buf


def _render(*operations: ops.MigrateOperation) -> str:
    text = render_python_code(ops.UpgradeOps(ops=list(operations)))
    lines = [line for line in text.splitlines() if not line.strip().startswith("# ###")]
    return textwrap.dedent("\n".join(lines)).strip()


def test_the_record_keeps_an_invalid_definition_with_why() -> None:
    info = DispatchTriggerInfo.read("t", "tbl", "app", BAD_DELAY)
    assert info.spec is None
    assert isinstance(info.invalid, InvalidSpec)
    assert info.invalid.option == "delay"
    assert "delay '-00:00:05' is negative" in info.invalid.error
    assert info.definition is info.invalid
    # read as the catalog holds it, like a valid record
    assert (info.function, info.events, info.columns, info.delay) == (
        "app.fn", ("insert",), (), "-00:00:05"
    )
    assert info == DispatchTriggerInfo.read("t", "tbl", "app", dict(BAD_DELAY))
    valid = DispatchTriggerInfo.read("t", "tbl", "app", {**BAD_DELAY, "delay": "00:00:05"})
    assert isinstance(valid.spec, DispatchSpec)
    assert info != valid
    assert info.diff(valid) == {"delay": ("-00:00:05", "00:00:05")}
    with pytest.raises(IntervalOptionError, match="negative"):
        info.to_trigger()
    with pytest.raises(DispatchTriggerError, match="exactly one"):
        DispatchTriggerInfo("t", "tbl", "app", spec=None)


def test_priority_that_is_not_an_int_is_kept_as_text() -> None:
    info = DispatchTriggerInfo.read("t", "tbl", "app", {**BAD_DELAY, "delay": None,
                                                        "priority": "high"})
    assert info.invalid is not None
    assert info.invalid.option is None
    assert info.priority == "high"
    with pytest.raises(DispatchTriggerError, match="priority must be an int"):
        info.to_spec()


def test_autogenerate_sees_a_bad_interval_trigger_without_that_option(
    caplog: pytest.LogCaptureFixture,
) -> None:
    info = DispatchTriggerInfo.read("t", "tbl", "app", {**BAD_DELAY, "timeout": "0 seconds"})
    with caplog.at_level(logging.WARNING, logger="sa_pgdispatch.alembic.autogenerate"):
        trigger = _detached(info)
    assert isinstance(trigger, DispatchTrigger)
    assert (trigger.name, trigger.function, trigger.delay, trigger.timeout) == (
        "t", "app.fn", None, None
    )
    messages = [r.getMessage() for r in caplog.records]
    assert any("delay '-00:00:05'" in m for m in messages)
    assert any("timeout '0 seconds'" in m for m in messages)


@pytest.mark.parametrize(
    ("arguments", "reflected"),
    [
        ({"priority": "high"}, {}),
        ({"for_each": "statement", "when": "true"}, {}),
        ({}, {"timing": "before"}),
        ({}, {"unknown_options": ("colour=red",)}),
    ],
)
def test_autogenerate_leaves_other_invalid_triggers_alone(
    arguments: dict[str, Any], reflected: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    info = DispatchTriggerInfo.read("t", "tbl", "app", {**BAD_DELAY, "delay": None, **arguments},
                                    **reflected)
    with caplog.at_level(logging.WARNING, logger="sa_pgdispatch.alembic.autogenerate"):
        assert _detached(info) is None
    assert "leaving trigger t on tbl alone" in caplog.text


def test_a_drop_carries_the_invalid_definition_into_the_downgrade() -> None:
    info = DispatchTriggerInfo.read("t", "tbl", "app", BAD_DELAY)
    drop = DropDispatchTriggerOp.from_info(info, schema=None)
    assert drop.definition == info.invalid
    assert _render(drop) == (
        "op.drop_dispatch_trigger('t', 'tbl', function='app.fn', delay='-00:00:05')"
    )
    # the downgrade writes the trigger as it was ...
    create = drop.reverse()
    assert isinstance(create, CreateDispatchTriggerOp)
    assert _render(create) == (
        "op.create_dispatch_trigger('t', 'tbl', 'app.fn', delay='-00:00:05')"
    )
    assert create.reverse().definition == info.invalid
    # ... and refuses to make it, rendered or not; the drop itself runs
    operations, buf = _offline()
    operations.invoke(drop)
    assert "DROP TRIGGER t ON tbl" in buf.getvalue()
    with pytest.raises(DispatchTriggerOpError, match="cannot be re-created: delay '-00:00:05'"):
        operations.invoke(create)
    with pytest.raises(IntervalOptionError, match="negative"):
        exec(_render(create), {"op": operations})
    assert "CREATE TRIGGER" not in buf.getvalue()


def test_a_replace_carries_the_invalid_existing_definition_into_the_downgrade() -> None:
    info = DispatchTriggerInfo.read("t", "tbl", "app", BAD_DELAY)
    spec = DispatchSpec("app.fn", delay="5 seconds")
    replace = ReplaceDispatchTriggerOp("t", "tbl", spec, existing=info.definition,
                                       invalid_reverse="carry")
    assert _render(replace) == textwrap.dedent("""\
        op.replace_dispatch_trigger(
            't',
            'tbl',
            'app.fn',
            delay='5 seconds',
            existing={'function': 'app.fn', 'delay': '-00:00:05'},
        )""")
    back = replace.reverse()
    assert (back.definition, back.existing) == (info.invalid, spec)
    assert "    delay='-00:00:05',\n    existing={'function': 'app.fn', 'delay': '5 seconds'}" in (
        _render(back)
    )
    operations, _ = _offline()
    with pytest.raises(DispatchTriggerOpError, match="cannot be re-created"):
        operations.invoke(back)
    # built from a migration's keywords, the reverse refuses at once (as before)
    strict = ReplaceDispatchTriggerOp("t", "tbl", spec, existing=info.definition)
    with pytest.raises(DispatchTriggerOpError, match="cannot be re-created: delay"):
        strict.reverse()
