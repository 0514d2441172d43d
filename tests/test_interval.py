"""sa_pgdispatch._interval reads interval text as the server does: compared with the
test server's own reading (months, days, microseconds), under both IntervalStyles that
read input differently, on hand-picked and generated text."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import psycopg
import pytest

from sa_pgdispatch._interval import Interval, NotAnInterval, Undecided, read_interval
from sa_pgdispatch.testing.server import PgServer

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

_PARTS = (
    "SELECT (extract(year FROM i) * 12 + extract(month FROM i))::bigint,"
    " extract(day FROM i)::bigint,"
    " (extract(hour FROM i) * 3600000000 + extract(minute FROM i) * 60000000"
    "  + extract(microseconds FROM i))::bigint"
    " FROM (SELECT %s::interval AS i) t"
)


@pytest.fixture(scope="module")
def server_conn(pgdispatch_server: PgServer) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(pgdispatch_server.dsn, autocommit=True) as conn:
        yield conn


def server_reading(
    conn: psycopg.Connection[tuple[object, ...]], text: str, style: str
) -> Interval | None:
    """The server's interval for ``text`` under IntervalStyle ``style``; None when it
    refuses the text."""
    conn.execute(f"SET IntervalStyle = {style}")
    try:
        row = conn.execute(_PARTS, (text,)).fetchone()
    except (psycopg.errors.DataError, psycopg.errors.SyntaxError):
        return None
    assert row is not None
    months, days, usec = (int(v) for v in row)  # type: ignore[call-overload]
    return Interval(months, days, usec)


def compare(conn: psycopg.Connection[tuple[object, ...]], text: str) -> str:
    """Check ``read_interval(text)`` against the server; returns what it decided."""
    expected = {style: server_reading(conn, text, style) for style in ("postgres", "sql_standard")}
    try:
        mine = read_interval(text)
    except Undecided:
        return "undecided"
    except NotAnInterval:
        assert expected == {"postgres": None, "sql_standard": None}, text
        return "refused"
    postgres = mine["postgres"]
    standard = mine.get("sql_standard", postgres)
    assert {"postgres": postgres, "sql_standard": standard} == expected, text
    return "read"


READ = [
    "0", "5", "-5", "+5", ".5", "0.5", "-0.5", "1.5", "-0.000001", "0.0000001", "0.0000005",
    "0.0000015", "5 seconds", "5 second", "5 secs", "5 sec", "5 s", "5seconds", "-5 seconds",
    "5 seconds ago", "-5 seconds ago", "@ 5 seconds", "@ -1 hour", "@ 1 hour ago",
    "1 microsecond", "1 microseconds", "3 us", "3 usec", "3 usecs", "3 useconds",
    "2 milliseconds", "2 ms", "2 msec", "2 msecs", "2 mseconds", "2 msecond",
    "1 minute", "1 minutes", "1 min", "1 mins", "1 m", "2 hours", "2 hour", "2 h", "2 hr",
    "2 hrs", "3 days", "3 day", "3 d", "1 week", "2 weeks", "2 w", "1 month", "2 months",
    "2 mon", "2 mons", "1 year", "2 years", "2 y", "2 yr", "2 yrs", "1 decade", "2 decades",
    "2 dec", "2 decs", "1 century", "2 centuries", "2 c", "2 cent", "1 millennium",
    "2 millennia", "2 mil", "2 mils", "1.5 years", "1.5 months", "1.5 weeks", "1.5 days",
    "1.5 hours", "1.5 minutes", "0.1 seconds", "1.25 decades", "0.001 century",
    "1 day -1 hour", "1 day -24 hours", "1 day -25 hours", "1 mon -30 days",
    "1 mon -31 days", "1 mon -29 days", "1 year -360 days", "1 year -361 days",
    "00:00:05", "-00:00:05", "+00:00:05", "1:30", "1:30:15", "1:30:15.25", "1:30.5",
    "25:00:00", "100:00:00", "1 12:00:00", "-1 12:00:00", "-1 25:00:00", "-1 +12:00:00",
    "+1 -00:00:01", "1 -00:00:01", "-1 -00:00:01", "1-2", "-1-2", "+1-2", "1-11",
    "1-2 3 4:05:06", "-1-2 +3 -4:05:06", "1 2 hours", "-1 2 hours", "1 day 2 hours",
    "1 hour 5", "5 minutes 3", "2 hours 30 minutes 15 seconds", "1 s 10 ms 7 us",
    "2 weeks 1.5 days 3 hours 20 min 1 s 10 ms 7 us", "1 century 1 decade 1 millennium",
    "-1 day -2 hours", "-1 day +2 hours", "-1 day 2 hours", "-5", "-5 +3",
    "-1 hour -30 minutes", "-1 hour 30 minutes", "1 hour ago", "-1 hour ago",
    "1.5 s", "-1.5 s", "1.5 s ago", "00:00:00", "0 seconds", "-0 seconds", "0:0",
    "P1D", "P1Y2M3DT4H5M6S", "P1Y2M3DT4H5M6.5S", "PT5S", "PT0S", "PT0.5S", "PT-0.5S", "P-1D",
    "P1W", "P1.5W", "P1.5Y", "P1.5M", "P0.5D", "PT1.5H", "PT1.5M", "P-1Y-2M", "PT", "P1DT",
    "P0001-02-03", "P0001-02-03T04:05:06", "P0001-02", "P1-2-3", "PT04:05:06", "PT4:5",
    "P00010203", "P00010203T040506", "PT040506", "P1T", "P1Y1Y", "P1DT1H1H", "P1D1D",
    "1 day 2 days", "1:70", "1:30:61", "5 ago", "seconds", "ago", "@", "5 parsecs",
    "1 quarter", "1 qtr", "5 seconds seconds", "1.5 s 10 ms", "1:30 5 seconds", "P1X",
    "P1", "Pfoo", "p1d", "1 day.", "1.2.3", "1/2", "1 hour - 5", "- 5 seconds",
    "+ 1 hour", "-hours", "5 hours ago ago", "ago 5 seconds", "1 microsecondsx",
    "1 millisecondsfoo", "1 centuriesx", "1 timezone", "1 dow", "1 at", "at 1 second",
    "1 second on", "1 sat", "1 mm", "1:", "1::2", "1:2:", "5.", ". seconds", "1 d5",
    "1 s5", "1 hour5", "P1e2D", "PT0x10S", "infinity", "-infinity", "1 2 3",
]


def test_hand_picked_text_reads_as_the_server_reads_it(
    server_conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    outcomes = {text: compare(server_conn, text) for text in READ}
    undecided = sorted(text for text, outcome in outcomes.items() if outcome == "undecided")
    # the common forms are all decided without a server
    assert len(undecided) < len(READ) // 8, undecided
    for common in ("5 seconds", "1 day -1 hour", "00:00:05", "P1D", "-5 seconds",
                   "5 seconds ago", "@ -1 hour", "0 seconds", "PT0.5S", "1:30.5"):
        assert outcomes[common] == "read", common


def _generated_text() -> SearchStrategy[str]:
    """The generated interval text. Hypothesis is imported when the test runs, not when
    pytest collects this module: the fast loop (-m "not db", which collects every module)
    then never imports it (~0.8 s, its modules being assertion-rewritten as a plugin's)."""
    from hypothesis import strategies as st

    _NUMBER = st.one_of(
        st.integers(-1000, 1000).map(str),
        st.builds(
            lambda sign, i, f: f"{sign}{i}.{f}",
            st.sampled_from(["", "-", "+"]),
            st.integers(0, 99),
            st.integers(0, 999999).map(str),
        ),
        st.integers(0, 999).map(lambda f: f".{f}"),
    )
    _UNIT = st.sampled_from(
        ["us", "ms", "msec", "s", "sec", "seconds", "m", "min", "minutes", "h", "hours", "hr",
         "d", "day", "days", "w", "weeks", "mon", "months", "y", "years", "decade", "century",
         "millennium", "ago", "@", "qtr", "SECONDS", "Days", ""]
    )
    _TIME = st.builds(
        lambda sign, h, m, s, f: f"{sign}{h}:{m:02d}" + (f":{s:02d}" if s is not None else "")
        + (f".{f}" if f is not None else ""),
        st.sampled_from(["", "-", "+"]),
        st.integers(0, 48),
        st.integers(0, 61),
        st.one_of(st.none(), st.integers(0, 61)),
        st.one_of(st.none(), st.integers(0, 999999)),
    )
    _YEARS_MONTHS = st.builds(
        lambda sign, y, m: f"{sign}{y}-{m}", st.sampled_from(["", "-", "+"]),
        st.integers(0, 20), st.integers(0, 13),
    )
    _TOKEN = st.one_of(_NUMBER, _UNIT, _TIME, _YEARS_MONTHS)
    _SPACE = st.sampled_from([" ", " ", "  ", ""])
    _POSTGRES_TEXT = st.lists(st.tuples(_TOKEN, _SPACE), min_size=1, max_size=7).map(
        lambda parts: "".join(t + s for t, s in parts).strip() or "0"
    )
    _PAIR = st.builds(
        lambda n, sp, u: f"{n}{sp}{u}", _NUMBER, _SPACE,
        st.sampled_from(["us", "ms", "s", "sec", "seconds", "min", "minutes", "h", "hours",
                         "d", "days", "w", "weeks", "mon", "months", "y", "years", "decades"]),
    )
    _STRUCTURED_TEXT = st.builds(
        lambda at, pairs, time, ago: " ".join(
            [*(["@"] if at else []), *pairs, *([time] if time else []), *(["ago"] if ago else [])]
        ) or "0",
        st.booleans(),
        st.lists(_PAIR, max_size=4, unique_by=lambda p: p.split()[-1] if " " in p else p),
        st.one_of(st.none(), _TIME),
        st.booleans(),
    )
    _ISO_FIELD = st.builds(
        lambda n, u: f"{n}{u}", _NUMBER.filter(lambda n: not n.startswith("+")),
        st.sampled_from(["Y", "M", "W", "D", "H", "S", "T", "", "-", ":"]),
    )
    _ISO_TEXT = st.lists(_ISO_FIELD, min_size=0, max_size=5).map(lambda f: "P" + "".join(f))
    return st.one_of(_STRUCTURED_TEXT, _POSTGRES_TEXT, _ISO_TEXT)


def test_generated_text_reads_as_the_server_reads_it(
    server_conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    from hypothesis import given, settings

    # the examples share the module's connection, as they did when the test itself was
    # the @given function (its health check on function-scoped fixtures then suppressed)
    @settings(max_examples=1500, deadline=None)
    @given(text=_generated_text())
    def reads_as_the_server_reads_it(text: str) -> None:
        compare(server_conn, text)

    reads_as_the_server_reads_it()
