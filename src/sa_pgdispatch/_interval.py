"""What PostgreSQL makes of interval text, without a server: enough to tell the sign.

A dispatch trigger passes its ``delay`` / ``timeout`` text to ``pgdispatch.trigger()``,
which casts it (``v::interval``) every time the trigger fires and refuses a negative
delay or a timeout that is not positive: a bad value accepted when declared makes every
INSERT on the table fail later. :func:`read_interval` reads the text as PostgreSQL's
``interval_in`` does (``ParseDateTime`` + ``DecodeInterval``, or
``DecodeISO8601Interval`` for ``P...``), as of PostgreSQL 15, and returns the months,
days and microseconds it stands for, under each ``IntervalStyle`` that reads it
differently (``sql_standard`` applies a leading ``-`` to every field when no other field
has a sign; the firing session's style is not known in advance).

What differs between PostgreSQL versions, or is too exotic to be sure of (a unit word
directly followed by a digit, ``'.'`` without digits, ``ago`` anywhere but at the end, a
unit with no number, overflowing values, ``strtod()`` syntax such as ``1e3`` in ISO 8601
forms, ``infinity``), raises :class:`Undecided`: those are checked through the server
before the DDL runs. Text PostgreSQL rejects whatever its version raises
:class:`NotAnInterval`.

Intervals compare as PostgreSQL compares them (``interval_cmp_value``): a month is 30
days, a day 24 hours.

Why this module is over 500 lines: it is one port of one family of C routines
(``ParseDateTime``, ``DecodeInterval``, ``DecodeISO8601Interval`` of PostgreSQL's
``datetime.c``), kept in their order so that it can be read against them. The two
decoders share the accumulator (:class:`_Acc`), its range checks and the fraction
adjusters (``AdjustFract*``); split in two, each would import the other's internals.
:func:`format_timedelta`, the writer, is the dozen lines at the top.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import TypeAlias

from .errors import PgDispatchError

__all__ = [
    "Interval",
    "IntervalArg",
    "NotAnInterval",
    "Undecided",
    "format_timedelta",
    "read_interval",
]

IntervalArg: TypeAlias = "dt.timedelta | str"
"""An interval as given by a caller: a ``timedelta`` or interval text."""


def format_timedelta(value: dt.timedelta, *, days: bool = False) -> str:
    """``value`` as interval text PostgreSQL reads back exactly: ``5 seconds``,
    ``1 days``, ``-1 days 86398.5 seconds``. ``days=True`` always writes the days field
    (``0 days 5 seconds``), as :func:`sa_pgdispatch.render_sql` renders timedeltas."""
    seconds = f"{value.seconds}.{value.microseconds:06d}".rstrip("0").rstrip(".")
    if days or (value.days and seconds != "0"):
        return f"{value.days} days {seconds} seconds"
    if value.days:
        return f"{value.days} days"
    return f"{seconds} seconds"


USECS_PER_SEC = 1_000_000
USECS_PER_MINUTE = 60 * USECS_PER_SEC
USECS_PER_HOUR = 60 * USECS_PER_MINUTE
USECS_PER_DAY = 24 * USECS_PER_HOUR
_INT32 = 2**31 - 1
_INT64 = 2**63 - 1
# Below the overflows of PostgreSQL's fields (int32 days and months, int64 microseconds),
# far above any sensible delay: past them, the server decides.
_SANE_FIELD = 2**30
_SANE_USEC = 2**62


class NotAnInterval(PgDispatchError, ValueError):
    """PostgreSQL rejects this text as an interval."""


class Undecided(PgDispatchError):
    """Too exotic to read offline with certainty: ask the server."""


@dataclasses.dataclass(frozen=True)
class Interval:
    """An interval as PostgreSQL stores it."""

    months: int
    days: int
    microseconds: int

    @property
    def cmp_value(self) -> int:
        """What PostgreSQL compares (``interval_cmp_value``): microseconds, with a month
        of 30 days and a day of 24 hours."""
        return (self.months * 30 + self.days) * USECS_PER_DAY + self.microseconds

    @property
    def sign(self) -> int:
        value = self.cmp_value
        return (value > 0) - (value < 0)


def read_interval(text: str) -> dict[str, Interval]:
    """The interval ``text`` stands for under each IntervalStyle: ``{"postgres": ...}``,
    plus ``"sql_standard"`` when that style reads it differently.

    Raises :class:`NotAnInterval` or :class:`Undecided`.
    """
    if len(text) > 100:
        raise Undecided("long text")
    if text.startswith("P"):
        # a first field starting with 'p' is no unit: DecodeInterval fails with a bad
        # format, and interval_in tries ISO 8601 on the whole text
        return {"postgres": _iso8601(text)}
    fields = _fields(text)
    if len(fields) > 25:  # MAXDATEFIELDS
        raise Undecided("too many fields")
    result = {"postgres": _decode(fields, sql_standard=False)}
    standard = _decode(fields, sql_standard=True)
    if standard != result["postgres"]:
        result["sql_standard"] = standard
    return result


# ---------------------------------------------------------------------------------------
# ParseDateTime: the fields


@dataclasses.dataclass(frozen=True)
class _Field:
    kind: str  # number, time, date, tz, string, special
    text: str


def _isdigit(c: str) -> bool:
    return "0" <= c <= "9"


def _isalpha(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z")


def _fields(s: str) -> list[_Field]:
    fields: list[_Field] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c.isspace():
            i += 1
            continue
        if _isdigit(c):
            j = i + 1
            while j < n and _isdigit(s[j]):
                j += 1
            if j < n and s[j] == ":":
                kind = "time"
                j += 1
                while j < n and (_isdigit(s[j]) or s[j] in ":."):
                    j += 1
            elif j < n and s[j] in "-/.":
                delim = s[j]
                j += 1
                if j < n and _isdigit(s[j]):
                    kind = "number" if delim == "." else "date"
                    while j < n and _isdigit(s[j]):
                        j += 1
                    if j < n and s[j] == delim:
                        kind = "date"
                        j += 1
                        while j < n and (_isdigit(s[j]) or s[j] == delim):
                            j += 1
                else:
                    kind = "date"
                    while j < n and (_isdigit(s[j]) or _isalpha(s[j]) or s[j] == delim):
                        j += 1
            else:
                kind = "number"
            fields.append(_Field(kind, s[i:j].lower()))
            i = j
        elif c == ".":
            j = i + 1
            while j < n and _isdigit(s[j]):
                j += 1
            fields.append(_Field("number", s[i:j]))
            i = j
        elif _isalpha(c):
            j = i + 1
            while j < n and _isalpha(s[j]):
                j += 1
            if j < n and s[j] in "-/.":
                # a date or time zone name: never part of an interval
                raise NotAnInterval(f"unexpected {s[i:j + 1]!r}")
            if j < n and (s[j] == "+" or _isdigit(s[j])):
                # a date token or not, by PostgreSQL's table of date keywords
                raise Undecided("a word followed by a digit")
            fields.append(_Field("string", s[i:j].lower()))
            i = j
        elif c in "+-":
            j = i + 1
            while j < n and s[j].isspace():
                j += 1
            if j < n and _isdigit(s[j]):
                k = j + 1
                while k < n and (_isdigit(s[k]) or s[k] in ":.-"):
                    k += 1
                fields.append(_Field("tz", c + s[j:k]))
                i = k
            elif j < n and _isalpha(s[j]):
                k = j + 1
                while k < n and _isalpha(s[k]):
                    k += 1
                fields.append(_Field("special", c + s[j:k].lower()))
                i = k
            else:
                raise NotAnInterval(f"a sign without a number at {s[i:]!r}")
        elif c in "@:,;!?#%&*()[]{}<>=_~^|/'\"`$\\":
            i += 1  # other punctuation only separates fields
        else:
            raise Undecided(f"character {c!r}")
    return fields


# ---------------------------------------------------------------------------------------
# DecodeInterval

_US, _MS, _S, _MIN, _H, _D, _W, _MON, _Y, _DECADE, _CENTURY, _MILLENNIUM = (
    "us", "ms", "s", "min", "h", "d", "w", "mon", "y", "decade", "century", "millennium"
)
_AGO = "ago"
_BAD_UNIT = "bad"  # units DecodeInterval has no case for (quarter, timezone)

# deltatktbl: tokens are compared on their first 10 characters (TOKMAXLEN)
_UNITS = {
    "ago": _AGO,
    "c": _CENTURY, "cent": _CENTURY, "centuries": _CENTURY, "century": _CENTURY,
    "d": _D, "day": _D, "days": _D,
    "dec": _DECADE, "decade": _DECADE, "decades": _DECADE, "decs": _DECADE,
    "h": _H, "hour": _H, "hours": _H, "hr": _H, "hrs": _H,
    "m": _MIN, "min": _MIN, "mins": _MIN, "minute": _MIN, "minutes": _MIN,
    "microsecon": _US, "us": _US, "usec": _US, "usecond": _US, "useconds": _US, "usecs": _US,
    "mil": _MILLENNIUM, "millennia": _MILLENNIUM, "millennium": _MILLENNIUM,
    "mils": _MILLENNIUM,
    "millisecon": _MS, "ms": _MS, "msec": _MS, "msecond": _MS, "mseconds": _MS, "msecs": _MS,
    "mon": _MON, "mons": _MON, "month": _MON, "months": _MON,
    "qtr": _BAD_UNIT, "quarter": _BAD_UNIT,
    "s": _S, "sec": _S, "second": _S, "seconds": _S, "secs": _S,
    "timezone": _BAD_UNIT,
    "w": _W, "week": _W, "weeks": _W,
    "y": _Y, "year": _Y, "years": _Y, "yr": _Y, "yrs": _Y,
}
_INFINITY = {"infinity", "+infinity", "-infinity"}  # intervals since PostgreSQL 17

_ALL_SECS = frozenset({_S, _MS, _US})
_TIME_M = frozenset({_H, _MIN}) | _ALL_SECS
_SCALE = {_US: 1, _MS: 1000, _S: USECS_PER_SEC, _MIN: USECS_PER_MINUTE, _H: USECS_PER_HOUR}
_YEARS = {_Y: 1, _DECADE: 10, _CENTURY: 100, _MILLENNIUM: 1000}

_INT_PREFIX = re.compile(r"[+-]?[0-9]*")
_FRACTION = re.compile(r"\.[0-9]+\Z")


@dataclasses.dataclass
class _Acc:
    """struct pg_itm_in: years and months apart until the end."""

    usec: int = 0
    day: int = 0
    mon: int = 0
    year: int = 0


def _check(value: int, limit: int = _SANE_FIELD) -> int:
    if abs(value) > limit:
        raise Undecided("a very large value")
    return value


def _check_usec(value: int) -> int:
    return _check(value, _SANE_USEC)


def _trunc(x: float) -> int:
    """C's (int) cast of a double."""
    return int(x)


def _rint(x: float) -> int:
    """C's rint(): round half to even (Python's round() of a float)."""
    return round(x)


def _fract_usec(acc: _Acc, frac: float, scale: int) -> None:
    """AdjustFractMicroseconds."""
    if frac == 0:
        return
    frac *= scale
    usec = _trunc(frac)
    frac -= usec
    if frac > 0.5:
        usec += 1
    elif frac < -0.5:
        usec -= 1
    acc.usec = _check_usec(acc.usec + usec)


def _fract_days(acc: _Acc, frac: float, scale: int) -> None:
    """AdjustFractDays."""
    if frac == 0:
        return
    frac *= scale
    extra = _trunc(frac)
    acc.day = _check(acc.day + extra)
    _fract_usec(acc, frac - extra, USECS_PER_DAY)


def _fract_years(acc: _Acc, frac: float, scale: int) -> None:
    """AdjustFractYears."""
    acc.mon = _check(acc.mon + _rint(frac * scale * 12))


def _apply(acc: _Acc, unit: str, val: int, fval: float) -> frozenset[str]:
    """One number with its unit; returns the field mask it takes."""
    _check_usec(val)
    if unit in _SCALE:
        acc.usec = _check_usec(acc.usec + val * _SCALE[unit])
        _fract_usec(acc, fval, _SCALE[unit])
        if unit == _S and fval != 0:
            return _ALL_SECS
        return frozenset({unit})
    if unit == _D:
        acc.day = _check(acc.day + val)
        _fract_usec(acc, fval, USECS_PER_DAY)
    elif unit == _W:
        acc.day = _check(acc.day + val * 7)
        _fract_days(acc, fval, 7)
    elif unit == _MON:
        acc.mon = _check(acc.mon + val)
        _fract_days(acc, fval, 30)
    elif unit in _YEARS:
        acc.year = _check(acc.year + val * _YEARS[unit])
        _fract_years(acc, fval, _YEARS[unit])
    else:  # ago (type 0), quarter, timezone: DecodeInterval has no case for them
        raise NotAnInterval(f"no number can go with unit {unit!r}")
    return frozenset({unit})


def _digits(text: str) -> tuple[int | None, str]:
    """strtol(): an optional sign and digits; None (and the text unchanged) without
    digits."""
    m = _INT_PREFIX.match(text)
    assert m is not None
    number = m.group(0)
    if not number.lstrip("+-"):
        return None, text
    return int(number), text[m.end():]


def _fraction(text: str) -> float:
    """ParseFraction of ``.ddd`` (``'.'`` alone differs between versions)."""
    if not _FRACTION.match(text):
        if text == ".":
            raise Undecided("'.' without digits")
        raise NotAnInterval(f"bad fraction {text!r}")
    return float(text)


def _time(text: str) -> int | None:
    """DecodeTimeForInterval of ``h:m``, ``h:m:s[.f]`` or ``m:s.f``: microseconds, or None
    when PostgreSQL refuses it."""
    hour, rest = _digits(text)
    if hour is None or not rest.startswith(":"):
        return None
    minute, rest = _digits(rest[1:])
    if minute is None:
        raise Undecided("an empty time part")
    second, fsec = 0, 0
    if rest == "":
        pass
    elif rest.startswith("."):
        # mm:ss.fff: MINUTE TO SECOND
        fsec = _rint(_fraction(rest) * USECS_PER_SEC)
        hour, minute, second = 0, hour, minute
    elif rest.startswith(":"):
        sec, rest = _digits(rest[1:])
        if sec is None:
            raise Undecided("an empty time part")
        second = sec
        if rest.startswith("."):
            fsec = _rint(_fraction(rest) * USECS_PER_SEC)
        elif rest:
            return None
    else:
        return None
    _check(hour)
    if hour < 0 or not 0 <= minute <= 59 or not 0 <= second <= 60 or not 0 <= fsec <= 10**6:
        raise NotAnInterval(f"time field out of range in {text!r}")
    return ((hour * 60 + minute) * 60 + second) * USECS_PER_SEC + fsec


def _decode(fields: list[_Field], *, sql_standard: bool) -> Interval:
    force_negative = (
        sql_standard
        and bool(fields)
        and fields[0].text.startswith("-")
        and not any(f.text[:1] in "+-" for f in fields[1:])
    )
    acc = _Acc()
    fmask: frozenset[str] = frozenset()
    unit: str | None = None  # IGNORE_DTF
    is_before = False
    pending_unit = False
    last = len(fields) - 1
    for i in range(last, -1, -1):
        field = fields[i]
        tmask: frozenset[str] = frozenset()
        time_usec = None
        if field.kind == "time":
            time_usec = _time(field.text)
            if time_usec is None:
                raise NotAnInterval(f"bad time {field.text!r}")
        elif field.kind == "tz" and ":" in field.text[1:]:
            time_usec = _time(field.text[1:])
            if time_usec is not None and field.text[0] == "-":
                time_usec = -time_usec
        if time_usec is not None:
            if fmask & _TIME_M:
                raise NotAnInterval("a field given twice")
            if acc.usec:
                # DecodeInterval assigns (not adds) the time: what came to the right of it
                # in microseconds is lost; too odd to rely on
                raise Undecided("a time field after other microseconds")
            acc.usec = -time_usec if force_negative and time_usec > 0 else time_usec
            tmask = _TIME_M
            unit = _D
            pending_unit = False
        elif field.kind in ("tz", "date", "number"):
            if unit is None:
                unit = _S  # the rightmost number without a unit: seconds
            val, rest = _digits(field.text)
            if val is None:
                val = 0
                if not field.text.startswith("."):
                    raise NotAnInterval(f"bad number {field.text!r}")
            fval = 0.0
            if rest.startswith("-"):
                # SQL years-months: 1-2
                if not rest[1:].isdigit() or not rest[1:].isascii():
                    raise Undecided(f"odd years-months {field.text!r}")
                months = int(rest[1:])
                if months >= 12:
                    raise Undecided(f"months out of range in {field.text!r}")
                if field.text.startswith("-"):
                    months = -months
                unit = _MON
                val = _check(val * 12 + months)
            elif rest.startswith("."):
                fval = _fraction(rest)
                if field.text.startswith("-"):
                    fval = -fval
            elif rest:
                raise NotAnInterval(f"bad number {field.text!r}")
            if force_negative:
                val = -val if val > 0 else val
                fval = -fval if fval > 0 else fval
            tmask = _apply(acc, unit, val, fval)
            if unit == _H:
                unit = _D  # the number before hours is days
            pending_unit = False
        else:  # string, special
            if pending_unit:
                raise Undecided("two units in a row")
            word = field.text
            if word in _INFINITY:
                raise Undecided("infinity")
            found = _UNITS.get(word[:10])
            if found is None:
                raise NotAnInterval(f"unknown unit {word!r}")
            if found == _AGO:
                if i != last or is_before:
                    raise Undecided("'ago' before the end")
                is_before = True
                unit = _AGO
            else:
                unit = found
                pending_unit = True
        if tmask & fmask:
            raise NotAnInterval("a field given twice")
        fmask |= tmask
    if not fmask:
        raise NotAnInterval("no value")
    if pending_unit:
        raise Undecided("a unit without a number")
    if is_before:
        acc = _Acc(-acc.usec, -acc.day, -acc.mon, -acc.year)
    return _interval(acc)


def _interval(acc: _Acc) -> Interval:
    months = acc.year * 12 + acc.mon
    if abs(months) > _INT32 or abs(acc.day) > _INT32 or abs(acc.usec) > _INT64:
        raise Undecided("out of range")
    return Interval(months, acc.day, acc.usec)


# ---------------------------------------------------------------------------------------
# DecodeISO8601Interval

_ISO_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def _iso_number(s: str, i: int) -> tuple[int, float, int]:
    """ParseISO8601Number at ``s[i]``: (integer part, fraction, end)."""
    if i >= len(s) or not (_isdigit(s[i]) or s[i] in "-."):
        raise NotAnInterval("expected a number")
    m = _ISO_NUMBER.match(s, i)
    if m is None:
        # strtod() reads no number here, or -inf / -nan, which PostgreSQL refuses too
        raise NotAnInterval("expected a number")
    end = m.end()
    following = s[end : end + 3]
    if re.match(r"[eE][+-]?[0-9]", following) or (
        m.group(0) in ("0", "-0") and following[:1] in ("x", "X")
    ):
        raise Undecided("strtod() syntax (an exponent, a hexadecimal number)")
    value = float(m.group(0))
    if abs(value) > 1e12:
        raise Undecided("a very large value")
    ipart = int(value)  # truncated towards zero
    return ipart, value - ipart, end


def _iso_width(s: str, start: int) -> int:
    """ISO8601IntegerWidth: digits after an optional '-'."""
    if start < len(s) and s[start] == "-":
        start += 1
    width = 0
    while start + width < len(s) and _isdigit(s[start + width]):
        width += 1
    return width


def _iso8601(s: str) -> Interval:
    if len(s) < 2 or s[0] != "P":
        raise NotAnInterval("not ISO 8601")
    acc = _Acc()
    datepart = True
    havefield = False
    i = 1
    n = len(s)
    while i < n:
        if s[i] == "T":
            datepart, havefield = False, False
            i += 1
            continue
        start = i
        val, fval, i = _iso_number(s, i)
        unit = s[i] if i < n else ""
        i += 1
        if datepart:
            if unit == "Y":
                acc.year = _check(acc.year + val)
                _fract_years(acc, fval, 1)
            elif unit == "M":
                acc.mon = _check(acc.mon + val)
                _fract_days(acc, fval, 30)
            elif unit == "W":
                acc.day = _check(acc.day + val * 7)
                _fract_days(acc, fval, 7)
            elif unit == "D":
                acc.day = _check(acc.day + val)
                _fract_usec(acc, fval, USECS_PER_DAY)
            elif unit in ("T", "", "-"):
                if unit != "-" and _iso_width(s, start) == 8 and not havefield:
                    # YYYYMMDD (C: / and % truncate towards zero)
                    if fval:
                        raise Undecided("a fraction in a compact date")
                    acc.year = _check(acc.year + _cdiv(val, 10000))
                    acc.mon = _check(acc.mon + _cmod(_cdiv(val, 100), 100))
                    acc.day = _check(acc.day + _cmod(val, 100))
                    _fract_usec(acc, fval, USECS_PER_DAY)
                    if unit == "":
                        return _interval(acc)
                    datepart, havefield = False, False
                    continue
                # extended alternative format: Y-M-D
                if havefield:
                    raise NotAnInterval("alternative format after a field")
                acc.year = _check(acc.year + val)
                _fract_years(acc, fval, 1)
                if unit == "":
                    return _interval(acc)
                if unit == "T":
                    datepart, havefield = False, False
                    continue
                val, fval, i = _iso_number(s, i)
                acc.mon = _check(acc.mon + val)
                _fract_days(acc, fval, 30)
                if i >= n:
                    return _interval(acc)
                if s[i] == "T":
                    datepart, havefield = False, False
                    i += 1
                    continue
                if s[i] != "-":
                    raise NotAnInterval("bad alternative format")
                val, fval, i = _iso_number(s, i + 1)
                acc.day = _check(acc.day + val)
                _fract_usec(acc, fval, USECS_PER_DAY)
                if i >= n:
                    return _interval(acc)
                if s[i] == "T":
                    datepart, havefield = False, False
                    i += 1
                    continue
                raise NotAnInterval("bad alternative format")
            else:
                raise NotAnInterval(f"bad date unit {unit!r}")
        else:
            if unit in ("H", "M", "S"):
                scale = {"H": USECS_PER_HOUR, "M": USECS_PER_MINUTE, "S": USECS_PER_SEC}[unit]
                acc.usec = _check_usec(acc.usec + val * scale)
                _fract_usec(acc, fval, scale)
            elif unit in ("", ":"):
                if unit == "" and _iso_width(s, start) == 6 and not havefield:
                    # HHMMSS
                    if fval:
                        raise Undecided("a fraction in a compact time")
                    acc.usec = _check_usec(
                        acc.usec
                        + _cdiv(val, 10000) * USECS_PER_HOUR
                        + _cmod(_cdiv(val, 100), 100) * USECS_PER_MINUTE
                        + _cmod(val, 100) * USECS_PER_SEC
                    )
                    _fract_usec(acc, fval, 1)
                    return _interval(acc)
                # extended alternative format: H:M:S
                if havefield:
                    raise NotAnInterval("alternative format after a field")
                acc.usec = _check_usec(acc.usec + val * USECS_PER_HOUR)
                _fract_usec(acc, fval, USECS_PER_HOUR)
                if unit == "":
                    return _interval(acc)
                val, fval, i = _iso_number(s, i)
                acc.usec = _check_usec(acc.usec + val * USECS_PER_MINUTE)
                _fract_usec(acc, fval, USECS_PER_MINUTE)
                if i >= n:
                    return _interval(acc)
                if s[i] != ":":
                    raise NotAnInterval("bad alternative format")
                val, fval, i = _iso_number(s, i + 1)
                acc.usec = _check_usec(acc.usec + val * USECS_PER_SEC)
                _fract_usec(acc, fval, USECS_PER_SEC)
                if i >= n:
                    return _interval(acc)
                raise NotAnInterval("bad alternative format")
            else:
                raise NotAnInterval(f"bad time unit {unit!r}")
        havefield = True
    return _interval(acc)


def _cdiv(a: int, b: int) -> int:
    """C integer division (truncates towards zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _cmod(a: int, b: int) -> int:
    """C's % (the sign of the dividend)."""
    return a - _cdiv(a, b) * b
