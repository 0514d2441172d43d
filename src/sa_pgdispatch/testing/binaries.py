"""Find the PostgreSQL server binaries and check that pg_cron is installed for them."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

from sa_pgdispatch.testing.errors import PgCronNotFound, PostgresNotFound

__all__ = [
    "ENV_PG_BIN",
    "control_default_version",
    "find_postgres_bin",
    "has_pg_tle",
    "pg_cron_control_file",
    "pg_cron_default_version",
    "pg_major",
    "pg_sharedir",
    "pg_tle_control_file",
    "require_pg_cron",
]

#: Environment variable naming a PostgreSQL ``bin`` directory to use.
ENV_PG_BIN = "SA_PGDISPATCH_PG_BIN"

_SERVER_PROGRAMS = ("postgres", "initdb", "pg_ctl")
_DEBIAN_GLOB_ROOT = Path("/usr/lib/postgresql")

_INSTALL_HINT = (
    "On Debian/Ubuntu install the server and pg_cron: "
    "`apt-get install postgresql-15 postgresql-15-cron` (or run scripts/bootstrap.sh). "
    f"Alternatively point {ENV_PG_BIN} at a PostgreSQL bin directory, or use an existing "
    "server that preloads pg_cron: set SA_PGDISPATCH_TEST_DSN=postgresql://... for the tests "
    "(the sa-pgdispatch command takes --url)."
)


def _has_server_programs(bin_dir: Path) -> bool:
    return all(
        (bin_dir / name).is_file() and os.access(bin_dir / name, os.X_OK)
        for name in _SERVER_PROGRAMS
    )


def _pg_config_value(pg_config: str | Path, flag: str) -> str | None:
    try:
        result = subprocess.run(
            [str(pg_config), flag], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return None
    if result.returncode != 0:
        return None
    value = result.stdout.strip()
    return value or None


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin; versions are "15" or "9.6".
    parts = re.findall(r"\d+", path.parent.name)
    return tuple(int(p) for p in parts) if parts else (-1,)


def find_postgres_bin() -> Path:
    """Return the directory holding ``postgres``, ``initdb`` and ``pg_ctl``.

    Looked up in this order: ``$SA_PGDISPATCH_PG_BIN``; ``pg_config --bindir`` of the
    ``pg_config`` on ``PATH``; the newest ``/usr/lib/postgresql/*/bin`` (Debian layout).
    Raises :class:`PostgresNotFound` when none has the server programs.
    """
    explicit = os.environ.get(ENV_PG_BIN)
    if explicit:
        bin_dir = Path(explicit)
        if _has_server_programs(bin_dir):
            return bin_dir
        raise PostgresNotFound(
            f"{ENV_PG_BIN}={explicit} does not contain the PostgreSQL server programs "
            f"({', '.join(_SERVER_PROGRAMS)}). {_INSTALL_HINT}"
        )

    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        bindir = _pg_config_value(pg_config, "--bindir")
        if bindir is not None and _has_server_programs(Path(bindir)):
            return Path(bindir)

    candidates = sorted(_DEBIAN_GLOB_ROOT.glob("*/bin"), key=_version_key, reverse=True)
    for candidate in candidates:
        if _has_server_programs(candidate):
            return candidate

    raise PostgresNotFound(
        f"PostgreSQL server programs not found (looked at ${ENV_PG_BIN}, "
        f"`pg_config --bindir`, {_DEBIAN_GLOB_ROOT}/*/bin). {_INSTALL_HINT}"
    )


@functools.cache
def pg_major(bin_dir: Path) -> int:
    """The major version of the ``postgres`` in *bin_dir* (for example ``15``)."""
    try:
        result = subprocess.run(
            [str(bin_dir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError as exc:
        raise PostgresNotFound(
            f"cannot run {bin_dir / 'postgres'}: {exc}. {_INSTALL_HINT}"
        ) from exc
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", result.stdout)
    if result.returncode != 0 or match is None:
        raise PostgresNotFound(
            f"`{bin_dir / 'postgres'} --version` gave no version "
            f"(exit {result.returncode}): {result.stdout}{result.stderr}"
        )
    return int(match.group(1))


def pg_sharedir(bin_dir: Path) -> Path:
    """The ``sharedir`` of the installation in *bin_dir* (extensions live in ``extension/``)."""
    value = _pg_config_value(bin_dir / "pg_config", "--sharedir")
    if value is not None:
        return Path(value)
    # No pg_config next to the server (it is optional in some packagings): guess
    # the Debian layout first, then a plain `make install` prefix.
    debian = Path("/usr/share/postgresql") / str(pg_major(bin_dir))
    if debian.is_dir():
        return debian
    prefix_share = bin_dir.parent / "share"
    nested = prefix_share / "postgresql"
    return nested if (nested / "extension").is_dir() else prefix_share


def pg_cron_control_file(bin_dir: Path) -> Path:
    """Where ``pg_cron.control`` must be for the installation in *bin_dir*."""
    return pg_sharedir(bin_dir) / "extension" / "pg_cron.control"


def require_pg_cron(bin_dir: Path) -> Path:
    """Return the pg_cron control file, or raise :class:`PgCronNotFound` naming the package."""
    control = pg_cron_control_file(bin_dir)
    if control.is_file():
        return control
    major = pg_major(bin_dir)
    raise PgCronNotFound(
        f"pg_cron is not installed for PostgreSQL {major} ({control} is missing). "
        f"On Debian/Ubuntu: `apt-get install postgresql-{major}-cron` "
        "(or run scripts/bootstrap.sh). Alternatively use an existing server that preloads "
        "pg_cron: SA_PGDISPATCH_TEST_DSN=postgresql://... (the sa-pgdispatch command takes --url)."
    )


def pg_tle_control_file(bin_dir: Path) -> Path:
    """Where ``pg_tle.control`` is when pg_tle is installed for *bin_dir*'s installation."""
    return pg_sharedir(bin_dir) / "extension" / "pg_tle.control"


def has_pg_tle(bin_dir: Path) -> bool:
    """Whether pg_tle is installed for the installation in *bin_dir*."""
    return pg_tle_control_file(bin_dir).is_file()


_DEFAULT_VERSION = re.compile(r"^\s*default_version\s*=\s*'([^']*)'", re.MULTILINE)


def control_default_version(control: Path) -> str | None:
    """``default_version`` of an extension control file, or ``None`` (missing/unreadable)."""
    try:
        text = control.read_text()
    except OSError:
        return None
    match = _DEFAULT_VERSION.search(text)
    return match.group(1) if match else None


def pg_cron_default_version(bin_dir: Path) -> str | None:
    """The pg_cron version ``CREATE EXTENSION pg_cron`` installs for *bin_dir*, or ``None``.

    This is the extension's SQL version (``1.6`` for pg_cron 1.6.0 to 1.6.7), which is
    what ``pg_extension.extversion`` shows; patch releases do not change it.
    """
    return control_default_version(pg_cron_control_file(bin_dir))
