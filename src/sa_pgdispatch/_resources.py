"""Locate the non-Python resources shipped with sa_pgdispatch.

The SQL scripts (``sql/``) and the Alembic environment template
(``migrations_template/``) live at the repository root. A wheel ships them inside
the package (``sa_pgdispatch/sql/``, ``sa_pgdispatch/migrations_template/``); an
editable install or a plain source checkout (``PYTHONPATH=src``) does not, so we
fall back to the repository root next to ``src/``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import ResourceNotFound

__all__ = ["ResourceNotFound", "sql_dir", "template_dir"]

_PACKAGE = "sa_pgdispatch"


def _package_dir() -> Path:
    # Wheels are installed as plain files (never zipped), so the package's
    # Traversable is a real directory.
    return Path(str(resources.files(_PACKAGE)))


def _source_root() -> Path:
    # src/sa_pgdispatch/_resources.py -> parents[2] is the repository root.
    return Path(__file__).resolve().parents[2]


def _locate(name: str) -> Path:
    candidates = [_package_dir() / name, _source_root() / name]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise ResourceNotFound(f"sa_pgdispatch resource folder {name!r} not found (tried {tried})")


def sql_dir() -> Path:
    """The folder holding the dispatcher's SQL scripts (``pgdispatch--*.sql``)."""
    return _locate("sql")


def template_dir() -> Path:
    """The folder holding the Alembic environment template."""
    return _locate("migrations_template")
