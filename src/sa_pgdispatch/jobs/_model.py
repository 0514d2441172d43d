"""Job records and the SQL behind the job API (shared by the sync and async APIs)."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from ..errors import (
    ArgumentError,
    ArgumentTypeError,
    JobCancelled,
    JobFailed,
    JobNotFound,
    NotInstalled,
    PermissionDenied,
    PgDispatchError,
)

__all__ = ["Job", "JobState", "JobStats"]


class JobState(str, enum.Enum):
    """The state of a job, as in the ``pgdispatch.jobs`` view."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True for the final states: succeeded, failed, cancelled."""
        return self in _FINISHED

    def __str__(self) -> str:
        return self.value


_FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


@dataclass(frozen=True)
class Job:
    """One row of the ``pgdispatch.jobs`` view.

    ``error`` is the jsonb error of the last failed attempt (keys ``sqlstate``,
    ``message``, ``detail``, ``hint``, ``context``, ``attempt``; for a queued job that
    is waiting for a retry, the error of the previous attempt). ``result`` holds the
    captured rows (``capture => true``) of a succeeded job as a list of objects.
    ``started_at``/``finished_at``/``result``/``rows_affected`` are set once the job
    finished; ``worker_pid`` only while it runs.

    ``result`` is read from the server as JSON text and parsed with numbers kept exact:
    JSON integers as ``int``, other numbers as ``decimal.Decimal`` (a ``numeric``
    ``12345678901234567890.123456789`` stays exactly that; see docs/python-api.md for
    how each PostgreSQL type comes back).
    """

    id: int
    role: str
    command: str
    payload: Any
    state: JobState
    attempts: int
    max_attempts: int
    priority: int
    job_key: str | None
    timeout: timedelta | None
    capture: bool
    created_at: datetime
    run_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: Any
    rows_affected: int | None
    error: dict[str, Any] | None
    worker_pid: int | None

    @property
    def finished(self) -> bool:
        """The job reached a final state (succeeded, failed or cancelled)."""
        return self.state.finished

    @property
    def run_time(self) -> timedelta | None:
        """How long the last attempt ran (finished jobs that started)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    @property
    def start_latency(self) -> timedelta | None:
        """From dispatch to the start of the last attempt (``started_at - created_at``)."""
        if self.started_at is None:
            return None
        return self.started_at - self.created_at

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Job:
        return cls(
            id=int(row["id"]),
            role=str(row["role"]),
            command=str(row["command"]),
            payload=row["payload"],
            state=JobState(row["state"]),
            attempts=int(row["attempts"]),
            max_attempts=int(row["max_attempts"]),
            priority=int(row["priority"]),
            job_key=row["job_key"],
            timeout=row["timeout"],
            capture=bool(row["capture"]),
            created_at=row["created_at"],
            run_at=row["run_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            result=parse_result(row["result"]),
            rows_affected=None if row["rows_affected"] is None else int(row["rows_affected"]),
            error=row["error"],
            worker_pid=None if row["worker_pid"] is None else int(row["worker_pid"]),
        )


@dataclass(frozen=True)
class JobStats:
    """Numbers about the connected role's jobs (all roles' for administrators).

    * ``counts``: jobs per state (every state present, 0 when none). Finished jobs are
      kept for ``pgdispatch.settings.retention`` (7 days by default).
    * ``due``: queued jobs whose ``run_at`` has passed (the others are delayed).
    * ``oldest_due_age``: how long the longest-waiting due job has been due
      (``now - run_at``); ``None`` when nothing is due. The number to alert on.
    * ``finished_last_minute`` / ``throughput``: jobs that finished in the last 60 s,
      and that count per second.
    * ``p50_run_time``/``p95_run_time``: run time (``finished_at - started_at``) of
      the jobs finished in the last ``window``; ``p50_start_latency``/
      ``p95_start_latency``: ``started_at - run_at`` of the same jobs, the time a
      due job waited for a worker. ``None`` when no job finished in the window.
    """

    counts: Mapping[JobState, int]
    due: int
    oldest_due_age: timedelta | None
    finished_last_minute: int
    throughput: float
    window: timedelta
    p50_run_time: timedelta | None
    p95_run_time: timedelta | None
    p50_start_latency: timedelta | None
    p95_start_latency: timedelta | None

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# ---------------------------------------------------------------------------------------
# SQL

# result as JSON text, parsed by parse_result(): a driver's jsonb loader would turn
# numeric values into floats (12345678901234567890.123456789 -> 1.2345678901234567e+19)
COLUMNS = (
    "id, role, command, payload, state, attempts, max_attempts, priority, job_key, timeout, "
    "capture, created_at, run_at, started_at, finished_at, result::text AS result, "
    "rows_affected, error, worker_pid"
)


def parse_result(value: Any) -> Any:
    """A job's captured rows from their JSON text, numbers exact: integers as ``int``,
    the others (a fraction or an exponent) as ``Decimal``. A value that is not text
    (already parsed) is returned as it is."""
    if isinstance(value, (str, bytes, bytearray)):
        return json.loads(value, parse_float=Decimal)
    return value

GET = sa.text(f"SELECT {COLUMNS} FROM pgdispatch.jobs WHERE id = :id")

LIST_ALL = sa.text(f"SELECT {COLUMNS} FROM pgdispatch.jobs ORDER BY id DESC LIMIT :limit")
LIST_STATES = sa.text(
    f"SELECT {COLUMNS} FROM pgdispatch.jobs WHERE state IN :states ORDER BY id DESC LIMIT :limit"
).bindparams(sa.bindparam("states", expanding=True))

CANCEL = sa.text("SELECT pgdispatch.cancel(:id)")

# The isolation level of the current transaction: polling needs a fresh snapshot.
ISOLATION = sa.text("SELECT current_setting('transaction_isolation')")

# Is the (visible, queued) job's row written by a transaction still in progress? A row
# another session has not committed is invisible, so "in progress" means: this very
# transaction (or one of its savepoints) dispatched it, and no worker will see it before
# it commits. xmin is a 32-bit xid; its epoch comes from the snapshot's xmax.
UNCOMMITTED = sa.text(
    """
    SELECT pg_xact_status(
             ((((s.x >> 32) - CASE WHEN j.xmin::text::bigint > (s.x & 4294967295)
                                   THEN 1 ELSE 0 END) << 32)
              | j.xmin::text::bigint)::text::xid8) = 'in progress'
      FROM pgdispatch.job j,
           (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS x) s
     WHERE j.id = :id
    """
)

STATS = sa.text(
    """
    WITH now AS (SELECT clock_timestamp() AS t),
    -- typed explicitly: asyncpg has the server infer a parameter's type, and
    -- `now.t - $1` alone reads as timestamptz - timestamptz
    w AS (SELECT CAST(:window AS interval) AS span),
    j AS (SELECT state, run_at, started_at, finished_at FROM pgdispatch.jobs)
    SELECT
      count(*) FILTER (WHERE j.state = 'queued') AS queued,
      count(*) FILTER (WHERE j.state = 'running') AS running,
      count(*) FILTER (WHERE j.state = 'succeeded') AS succeeded,
      count(*) FILTER (WHERE j.state = 'failed') AS failed,
      count(*) FILTER (WHERE j.state = 'cancelled') AS cancelled,
      count(*) FILTER (WHERE j.state = 'queued' AND j.run_at <= now.t) AS due,
      now.t - min(j.run_at) FILTER (WHERE j.state = 'queued' AND j.run_at <= now.t)
        AS oldest_due_age,
      count(*) FILTER (WHERE j.finished_at >= now.t - interval '1 minute')
        AS finished_last_minute,
      percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP
        (ORDER BY extract(epoch FROM j.finished_at - j.started_at))
        FILTER (WHERE j.started_at IS NOT NULL AND j.finished_at >= now.t - w.span)
        AS run_time,
      percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP
        (ORDER BY extract(epoch FROM j.started_at - j.run_at))
        FILTER (WHERE j.started_at IS NOT NULL AND j.finished_at >= now.t - w.span)
        AS start_latency
    FROM j CROSS JOIN now CROSS JOIN w
    GROUP BY now.t, w.span
    """
)


def as_dicts(rows: Iterable[sa.RowMapping]) -> list[dict[str, Any]]:
    return [{str(k): v for k, v in r.items()} for r in rows]


def list_statement(
    state: JobState | str | Iterable[JobState | str] | None, limit: int
) -> tuple[sa.TextClause, dict[str, Any]]:
    if limit < 1:
        raise ArgumentError(f"limit must be at least 1 (got {limit})")
    if state is None:
        return LIST_ALL, {"limit": limit}
    states = [state] if isinstance(state, (str, JobState)) else state
    values = sorted({JobState(s).value for s in states})
    if not values:
        raise ArgumentError("state must name at least one state")
    return LIST_STATES, {"states": values, "limit": limit}


def stats_from_row(row: Mapping[str, Any] | None, window: timedelta) -> JobStats:
    if row is None:  # no job at all: the GROUP BY has no group
        counts = dict.fromkeys(JobState, 0)
        return JobStats(counts, 0, None, 0, 0.0, window, None, None, None, None)
    counts = {s: int(row[s.value]) for s in JobState}
    run_time = _pair(row["run_time"])
    latency = _pair(row["start_latency"])
    last_minute = int(row["finished_last_minute"])
    return JobStats(
        counts=counts,
        due=int(row["due"]),
        oldest_due_age=row["oldest_due_age"],
        finished_last_minute=last_minute,
        throughput=last_minute / 60.0,
        window=window,
        p50_run_time=run_time[0],
        p95_run_time=run_time[1],
        p50_start_latency=latency[0],
        p95_start_latency=latency[1],
    )


def _pair(values: Any) -> tuple[timedelta | None, timedelta | None]:
    if not values:
        return None, None
    return tuple(None if v is None else timedelta(seconds=float(v)) for v in values)  # type: ignore[return-value]


def raise_translated(exc: sa_exc.DBAPIError, job_id: int | None = None) -> NoReturn:
    """Re-raise a database error about pgdispatch as a :class:`PgDispatchError`."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    diag = getattr(exc.orig, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(exc.orig)
    if sqlstate in ("3F000", "42P01", "42883") and "pgdispatch" in primary:
        raise NotInstalled(
            f"pgdispatch is not installed in this database ({primary}); "
            "run `sa-pgdispatch install` or sa_pgdispatch.install()"
        ) from exc
    if sqlstate == "42501" and "pgdispatch" in primary:
        raise PermissionDenied(
            f"{primary}: the connected role needs SELECT pgdispatch.grant_usage('<role>') "
            "run by the role that installed pgdispatch"
        ) from exc
    if sqlstate == "P0002" and job_id is not None:
        raise JobNotFound(job_id) from exc
    raise exc


class _Backoff:
    """Sleep intervals for polling: 10 ms, growing by half each poll up to ``cap``."""

    def __init__(self, cap: float) -> None:
        if cap <= 0:
            raise ArgumentError(f"poll_max must be positive (got {cap})")
        self.cap = cap
        self.next = min(0.01, cap)

    def step(self, remaining: float | None) -> float:
        delay = self.next
        self.next = min(self.next * 1.5, self.cap)
        if remaining is not None:
            delay = max(0.0, min(delay, remaining))
        return delay


def not_polling_error(isolation: str) -> PgDispatchError:
    return PgDispatchError(
        f"wait() inside a {isolation.upper()} transaction would never see the job finish: "
        "the transaction's snapshot is fixed. Commit (or roll back) first, wait on an "
        "Engine, or use a READ COMMITTED / autocommit connection."
    )


def uncommitted_error(job_id: int) -> PgDispatchError:
    return PgDispatchError(
        f"pgdispatch job {job_id} was dispatched by this connection's transaction, which "
        "has not committed: no worker can see it yet. Commit before waiting for it."
    )


Backoff = _Backoff


def raise_outcome(job: Job) -> None:
    """Raise :class:`JobFailed`/:class:`JobCancelled` for a failed/cancelled job."""
    if job.state is JobState.FAILED:
        raise JobFailed(job)
    if job.state is JobState.CANCELLED:
        raise JobCancelled(job)


def rows_of(job: Job) -> list[dict[str, Any]]:
    """The captured rows of a finished job (raises for failed/cancelled jobs)."""
    raise_outcome(job)
    value = job.result
    if value is None:
        return []
    if not isinstance(value, list):
        raise ArgumentTypeError(f"pgdispatch job {job.id} has a non-list result {value!r}")
    return [dict(r) if isinstance(r, dict) else {"value": r} for r in value]
