"""Throwaway PostgreSQL servers with pg_cron, for tests, demos and benchmarks.

:class:`EphemeralPostgres` runs a private cluster from the local PostgreSQL binaries
in a temporary directory; :class:`ExistingServer` wraps a server you already have
(``SA_PGDISPATCH_TEST_DSN``). Both expose the same connection attributes (see
:class:`PgServer`).

This module gathers them where they have always been imported from; they live in
:mod:`.connect` (:class:`PgServer`, :class:`ConninfoMixin`), :mod:`.pg_cron` (how
pg_cron is set up and checked), :mod:`.existing` (:class:`ExistingServer`),
:mod:`.cluster` (the directory and processes of an ephemeral cluster) and
:mod:`.ephemeral` (:class:`EphemeralPostgres`).
"""

from __future__ import annotations

from sa_pgdispatch.testing.cluster import HARNESS_USER, TEMP_PREFIX, StopMode
from sa_pgdispatch.testing.connect import ConninfoMixin, PgServer
from sa_pgdispatch.testing.ephemeral import EphemeralPostgres
from sa_pgdispatch.testing.existing import ENV_TEST_DSN, ExistingServer, server_from_env
from sa_pgdispatch.testing.pg_cron import (
    CRON_MODES,
    ENV_CRON_MODE,
    CronMode,
    check_pg_cron,
    resolve_cron_mode,
)

__all__ = [
    "CRON_MODES",
    "ENV_CRON_MODE",
    "ENV_TEST_DSN",
    "HARNESS_USER",
    "TEMP_PREFIX",
    "ConninfoMixin",
    "CronMode",
    "EphemeralPostgres",
    "ExistingServer",
    "PgServer",
    "StopMode",
    "check_pg_cron",
    "resolve_cron_mode",
    "server_from_env",
]
