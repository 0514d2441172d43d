"""What the commands of ``sa-pgdispatch`` (:mod:`sa_pgdispatch.cli`) share: the exit
codes, the database URLs (``--url``, ``--cron-url`` and their environment variables) and
the engine made of them, the check that pgdispatch is installed, the option value types,
and how each install path is named."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import NullPool

from .errors import NotInstalled, UsageError, WorkerError
from .install import installed_version
from .urls import CRON_URL_ENV_VAR, UrlError
from .urls import normalize_url as _normalize_url
from .workers import libpq_dsn

__all__ = [
    "CRON_URL_ENV_VAR",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "URL_ENV_VARS",
    "VIA_TEXT",
    "cron_url_of",
    "engine_of",
    "int_type",
    "metadata_type",
    "normalize_url",
    "require_installed",
    "resolve_cron_url",
    "resolve_url",
    "seconds_type",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130

URL_ENV_VARS = ("SA_PGDISPATCH_URL", "DATABASE_URL")

# ---------------------------------------------------------------------------------------
# Connection


def normalize_url(raw: str) -> str:
    """``postgresql://`` / ``postgres://`` -> ``postgresql+psycopg://``; other drivers
    and databases are a usage error (the rule of :mod:`sa_pgdispatch.urls`)."""
    try:
        url = _normalize_url(raw)
    except UrlError as exc:
        raise UsageError(str(exc)) from None
    return url.render_as_string(hide_password=False)


def resolve_url(given: str | None, environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    if given:
        return normalize_url(given)
    for name in URL_ENV_VARS:
        if env.get(name):
            return normalize_url(env[name])
    raise UsageError(
        "no database URL: pass --url or set SA_PGDISPATCH_URL (or DATABASE_URL), "
        "e.g. postgresql://user@localhost/dbname"
    )


def resolve_cron_url(given: str | None, environ: dict[str, str] | None = None) -> str | None:
    """``--cron-url``, else ``$SA_PGDISPATCH_CRON_URL``, else None (pgdispatch lives in
    pg_cron's database). A PostgreSQL URL (any driver: it is used through libpq) or a
    libpq ``key=value`` string."""
    env = os.environ if environ is None else environ
    value = given or env.get(CRON_URL_ENV_VAR) or None
    if value is None:
        return None
    try:
        libpq_dsn(value)
    except (WorkerError, sa_exc.ArgumentError) as exc:
        raise UsageError(f"invalid --cron-url / ${CRON_URL_ENV_VAR}: {exc}") from None
    return value


def cron_url_of(args: argparse.Namespace) -> str | None:
    return resolve_cron_url(getattr(args, "cron_url", None))


def engine_of(args: argparse.Namespace) -> sa.Engine:
    return sa.create_engine(resolve_url(args.url), poolclass=NullPool)


def require_installed(engine: sa.Engine) -> str:
    version = installed_version(engine)
    if version is None:
        raise NotInstalled(
            f"pgdispatch is not installed in {engine.url.database!r}: run `sa-pgdispatch install`"
        )
    return version


# how each install path shows in install's and status's output
VIA_TEXT = {
    "sql": "plain SQL",
    "extension": "native extension",
    "pg_tle": "pg_tle extension",
}


# ---------------------------------------------------------------------------------------
# Option values
#
# Option values are checked by their type functions, so that a bad one is a usage error
# (exit 2, argparse's message naming the option) before anything connects or prints.


def int_type(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"at least {minimum}" if maximum is None else f"{minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def seconds_type(*, zero: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            wanted = "0 or more" if zero else "more than 0"
            raise argparse.ArgumentTypeError(f"must be a number of seconds, {wanted}; got {text}")
        return value

    parse.__name__ = "seconds"
    return parse


def metadata_type(text: str) -> str:
    """``module:attribute`` specs, separated by commas or spaces (as init_project takes)."""
    specs = text.replace(",", " ").split()
    if not specs:
        raise argparse.ArgumentTypeError("expected MODULE:ATTR, e.g. myapp.models:Base.metadata")
    for spec in specs:
        module, sep, attribute = spec.partition(":")
        if not sep or not module or not attribute:
            raise argparse.ArgumentTypeError(
                f"expected MODULE:ATTR (e.g. myapp.models:Base.metadata), got {spec!r}"
            )
    return text
