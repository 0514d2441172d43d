"""Option values of dispatch triggers: intervals and ints, as PostgreSQL reads them.

``delay`` / ``timeout`` text is read like PostgreSQL reads interval input
(:mod:`sa_pgdispatch._interval`), under every IntervalStyle that reads it differently;
text too exotic to decide offline is checked through the server before the DDL runs
(:func:`check_interval_on_server`). Private to :mod:`sa_pgdispatch.triggers`:
:class:`~sa_pgdispatch.triggers.DispatchSpec` (``spec.py``) validates its options here.
"""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection

from .._interval import (
    Interval,
    IntervalArg,
    NotAnInterval,
    Undecided,
    format_timedelta,
    read_interval,
)
from ..errors import DispatchTriggerError, IntervalOptionError

__all__ = ["INT32", "check_interval_on_server", "int_option", "interval_option"]

_INTERVAL_TEXT = re.compile(r"[0-9A-Za-z .:+\-@]+\Z")
INT32 = (-(2**31), 2**31 - 1)


def _wanted(positive: bool) -> str:
    return "positive" if positive else "zero or positive"


def _describe(value: Interval) -> str:
    parts = []
    if value.months:
        parts.append(f"{value.months} months")
    if value.days:
        parts.append(f"{value.days} days")
    if value.microseconds or not parts:
        seconds = f"{abs(value.microseconds) // 10**6}.{abs(value.microseconds) % 10**6:06d}"
        seconds = seconds.rstrip("0").rstrip(".")
        parts.append(f"{'-' if value.microseconds < 0 else ''}{seconds} seconds")
    return " ".join(parts)


def _interval_text_decided(text: str, what: str, *, positive: bool) -> bool:
    """Check interval text as PostgreSQL reads it (:mod:`sa_pgdispatch._interval`):
    True when valid, :class:`IntervalOptionError` when not, False when the text is too
    exotic to decide without a server (see :meth:`DispatchTrigger.check_intervals`)."""
    try:
        readings = read_interval(text)
    except NotAnInterval as err:
        raise IntervalOptionError(
            what, text,
            f"{what} {text!r} is not an interval PostgreSQL accepts ({err}): use a timedelta "
            "or text such as '5 seconds', '1 hour 30 minutes', '00:00:05' or 'PT5S'",
        ) from None
    except Undecided:
        return False
    for style, value in readings.items():
        if value.sign < 0 or (positive and value.sign == 0):
            how = "negative" if value.sign < 0 else "zero"
            if style == "sql_standard":
                reason = (
                    f"is {how} in a session whose IntervalStyle is sql_standard (a leading '-' "
                    f"then applies to every field: {_describe(value)}), "
                    f"{_describe(readings['postgres'])} in the others"
                )
            else:
                reason = f"is {how}: PostgreSQL reads it as {_describe(value)}"
            raise IntervalOptionError(
                what, text,
                f"{what} {text!r} {reason}; a dispatch trigger's {what} must be "
                f"{_wanted(positive)} (pgdispatch.trigger() would refuse it on every "
                "INSERT, UPDATE or DELETE that fires the trigger)",
            )
    return True


def interval_option(
    value: IntervalArg | None, what: str, *, positive: bool
) -> tuple[str | None, bool]:
    """The option's text and whether it is known to be valid (False: check it through
    the server before the DDL runs)."""
    if value is None:
        return None, True
    if isinstance(value, dt.timedelta):
        if value < dt.timedelta(0) or (positive and value == dt.timedelta(0)):
            raise IntervalOptionError(
                what, value, f"{what} must be {_wanted(positive)}, got {value!r}"
            )
        return format_timedelta(value), True
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped or not _INTERVAL_TEXT.match(stripped):
            raise IntervalOptionError(
                what, value,
                f"{what} {value!r} is not an interval: use a timedelta or text such as "
                "'5 seconds' (letters, digits, spaces and . : + - @ only)",
            )
        return stripped, _interval_text_decided(stripped, what, positive=positive)
    raise DispatchTriggerError(f"{what} must be a timedelta or an interval string, got {value!r}")


def check_interval_on_server(conn: Connection, text_value: str, what: str, *, positive: bool
                             ) -> None:
    """Check interval text through the server: ``CAST(... AS interval)`` under each
    IntervalStyle that reads input differently (``postgres``, ``sql_standard``), in a
    savepoint that is rolled back. Raises :class:`IntervalOptionError`."""
    for style in ("postgres", "sql_standard"):
        savepoint = conn.begin_nested()
        try:
            conn.execute(text("SELECT set_config('IntervalStyle', :style, true)"),
                         {"style": style})
            row = conn.execute(
                text(
                    "SELECT CAST(CAST(:v AS interval) AS text),"
                    " CAST(:v AS interval) < interval '0', CAST(:v AS interval) = interval '0'"
                ),
                {"v": text_value},
            ).one()
        except sa_exc.DBAPIError as err:
            savepoint.rollback()
            raise IntervalOptionError(
                what, text_value,
                f"{what} {text_value!r} is not an interval PostgreSQL accepts "
                f"({_first_line(err)})",
            ) from None
        savepoint.rollback()
        shown, negative, zero = str(row[0]), bool(row[1]), bool(row[2])
        if negative or (positive and zero):
            where = " in a session whose IntervalStyle is sql_standard" if (
                style == "sql_standard") else ""
            raise IntervalOptionError(
                what, text_value,
                f"{what} {text_value!r} is {'negative' if negative else 'zero'}{where} "
                f"(PostgreSQL reads it as {shown!r}); a dispatch trigger's {what} must be "
                f"{_wanted(positive)} (pgdispatch.trigger() would refuse it on every "
                "INSERT, UPDATE or DELETE that fires the trigger)",
            )


def _first_line(err: sa_exc.DBAPIError) -> str:
    return (str(err.orig) if err.orig is not None else str(err)).strip().splitlines()[0]


def int_option(value: int | None, what: str, *, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise DispatchTriggerError(f"{what} must be an int, got {value!r}")
    if not minimum <= value <= INT32[1]:
        raise DispatchTriggerError(f"{what} must be between {minimum} and {INT32[1]}, got {value}")
    return value
