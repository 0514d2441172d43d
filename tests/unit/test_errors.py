"""One error tree: every exception class of the package is a PgDispatchError, and
sa_pgdispatch.errors (which every module may import) imports no other module of it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from alembic.util import CommandError
from sqlalchemy import exc as sa_exc

import sa_pgdispatch
from sa_pgdispatch import errors
from sa_pgdispatch.errors import PgDispatchError

PACKAGE_DIR = Path(sa_pgdispatch.__file__).parent

# Raised by one module and caught by the module next to it, never outside the package:
# PgDispatchErrors all the same, defined beside their only raiser.
INTERNAL = {
    "sa_pgdispatch._interval.NotAnInterval",
    "sa_pgdispatch._interval.Undecided",
    "sa_pgdispatch.triggers._sql.SqlScanError",
}
# Also an alembic.util.CommandError: defined with the Alembic operations, so that
# sa_pgdispatch.errors does not import Alembic.
# (they derive from Alembic's CommandError: errors.py does not import Alembic)
OUTSIDE_ERRORS = {
    "sa_pgdispatch.alembic.install_ops.PgdispatchMigrationError",
    "sa_pgdispatch.alembic.template.TemplateError",
}


def _modules() -> list[ModuleType]:
    names = [sa_pgdispatch.__name__] + [
        info.name
        for info in pkgutil.walk_packages(sa_pgdispatch.__path__, sa_pgdispatch.__name__ + ".")
    ]
    return [importlib.import_module(name) for name in sorted(names)]


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _exceptions() -> dict[str, tuple[type[BaseException], list[str]]]:
    """Every exception class defined in the package or listed in a module's ``__all__``,
    with where it can be imported from (``module.name``)."""
    found: dict[str, tuple[type[BaseException], list[str]]] = {}
    for module in _modules():
        exported = set(getattr(module, "__all__", ()))
        for name, obj in vars(module).items():
            if not (inspect.isclass(obj) and issubclass(obj, BaseException)):
                continue
            ours = obj.__module__.split(".")[0] == sa_pgdispatch.__name__
            if ours or name in exported:
                found.setdefault(_qualname(obj), (obj, []))[1].append(f"{module.__name__}.{name}")
    return found


def test_every_exception_class_is_a_pgdispatch_error() -> None:
    found = _exceptions()
    assert "sa_pgdispatch.errors.InstallError" in found  # the walk does see them
    outside = {
        where: _qualname(cls)
        for cls, places in found.values()
        if not issubclass(cls, PgDispatchError)
        for where in places
    }
    assert outside == {}


def test_exception_classes_are_defined_in_errors() -> None:
    elsewhere = sorted(
        name
        for name in _exceptions()
        if not name.startswith("sa_pgdispatch.errors.") and name not in INTERNAL | OUTSIDE_ERRORS
    )
    assert elsewhere == []


def test_errors_all_lists_its_public_classes_and_the_docstring_draws_them() -> None:
    public = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
        and not name.startswith("_")
    }
    assert set(errors.__all__) == public
    doc = errors.__doc__ or ""
    missing = sorted(public - set(doc.split()))
    assert missing == []


@pytest.mark.parametrize(
    ("where", "name"),
    [
        ("sa_pgdispatch", "InstallError"),
        ("sa_pgdispatch.install", "InstallError"),
        ("sa_pgdispatch", "DispatchRenderError"),
        ("sa_pgdispatch.statements", "DispatchRenderError"),
        ("sa_pgdispatch", "DispatchTriggerError"),
        ("sa_pgdispatch.triggers", "DispatchTriggerError"),
        ("sa_pgdispatch.triggers", "IntervalOptionError"),
        ("sa_pgdispatch", "PgDispatchNotInstalledError"),
        ("sa_pgdispatch.triggers", "PgDispatchNotInstalledError"),
        ("sa_pgdispatch.alembic", "DispatchTriggerOpError"),
        ("sa_pgdispatch.alembic.ops", "DispatchTriggerOpError"),
        ("sa_pgdispatch.urls", "UrlError"),
        ("sa_pgdispatch.cli", "UsageError"),
        ("sa_pgdispatch._resources", "ResourceNotFound"),
        ("sa_pgdispatch.testing", "HarnessError"),
        ("sa_pgdispatch.testing.errors", "HarnessError"),
        ("sa_pgdispatch.testing.errors", "BackendUnavailable"),
        ("sa_pgdispatch.testing.errors", "PgCronNotFound"),
        ("sa_pgdispatch.testing.errors", "PostgresNotFound"),
    ],
)
def test_errors_import_from_where_they_always_did(where: str, name: str) -> None:
    assert getattr(importlib.import_module(where), name) is getattr(errors, name)


@pytest.mark.parametrize(
    ("cls", "also"),
    [
        (errors.InstallError, RuntimeError),
        (errors.HarnessError, RuntimeError),
        (errors.DispatchRenderError, ValueError),
        (errors.DispatchTriggerOpError, ValueError),
        (errors.UrlError, ValueError),
        (errors.IntervalOptionError, ValueError),
        (errors.IntervalOptionError, errors.DispatchTriggerError),
        (errors.DispatchTriggerError, sa_exc.ArgumentError),
        (errors.PgDispatchNotInstalledError, sa_exc.InvalidRequestError),
        (errors.PgDispatchNotInstalledError, errors.NotInstalled),
        (errors.ResourceNotFound, FileNotFoundError),
        (errors.JobNotFound, LookupError),
        (errors.JobTimeout, TimeoutError),
    ],
)
def test_errors_keep_their_other_bases(cls: type, also: type) -> None:
    assert issubclass(cls, also)
    assert issubclass(cls, PgDispatchError)


def test_migration_error_is_an_install_error_and_an_alembic_command_error() -> None:
    from sa_pgdispatch.alembic.ops import PgdispatchMigrationError

    assert issubclass(PgdispatchMigrationError, errors.InstallError)
    assert issubclass(PgdispatchMigrationError, CommandError)


def test_sqlalchemy_errors_print_as_before() -> None:
    # SQLAlchemy's __str__ (no error code link) still prints them
    assert str(errors.DispatchTriggerError("bad trigger")) == "bad trigger"
    assert str(errors.PgDispatchNotInstalledError("not installed")) == "not installed"


def test_errors_module_imports_no_other_module_of_the_package() -> None:
    # The package's __init__ imports everything: stand an empty package in for it, so
    # that only what sa_pgdispatch.errors itself imports gets loaded.
    code = (
        "import importlib, sys, types\n"
        "pkg = types.ModuleType('sa_pgdispatch')\n"
        f"pkg.__path__ = [{str(PACKAGE_DIR)!r}]\n"
        "sys.modules['sa_pgdispatch'] = pkg\n"
        "importlib.import_module('sa_pgdispatch.errors')\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'sa_pgdispatch')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["sa_pgdispatch", "sa_pgdispatch.errors"]
