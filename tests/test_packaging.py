"""The wheel ships sql/ (the extension directory: control file, Makefile, README and
scripts), migrations_template/ and py.typed inside the package, and an installed
(non-editable) wheel finds them through sa_pgdispatch._resources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import sa_pgdispatch
from sa_pgdispatch import _resources

ROOT = Path(__file__).resolve().parents[1]


def _files_under(folder: Path) -> list[str]:
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    wheels = list(out.glob("sa_pgdispatch-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_source_tree_resources() -> None:
    assert _resources.sql_dir() == ROOT / "sql"
    assert _resources.template_dir() == ROOT / "migrations_template"


@pytest.mark.slow
def test_wheel_contents(wheel: Path) -> None:
    assert wheel.name.startswith(f"sa_pgdispatch-{sa_pgdispatch.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "sa_pgdispatch/py.typed" in names
    assert "sa_pgdispatch/__init__.py" in names
    assert "sa_pgdispatch/testing/pytest_plugin.py" in names
    assert "sa_pgdispatch/_demo_revision.py" in names  # copied into the demo's app
    for folder in ("sql", "migrations_template"):
        expected = _files_under(ROOT / folder)
        assert expected, f"{folder}/ is empty"
        for relative in expected:
            assert f"sa_pgdispatch/{folder}/{relative}" in names
    # sql/ is an extension directory in the wheel too (make -C <it> install, dbdev publish)
    for name in ("pgdispatch.control", "Makefile", "README.md", "pgdispatch--0.1.0.sql"):
        assert f"sa_pgdispatch/sql/{name}" in names
    metadata = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    entry_points = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "sa_pgdispatch = sa_pgdispatch.testing.pytest_plugin" in entry_points
    assert "sa-pgdispatch = sa_pgdispatch.cli:main" in entry_points


@pytest.mark.slow
def test_installed_wheel_finds_its_resources(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    # Installing a pure wheel (Root-Is-Purelib, no <name>.data/ to spread into scheme
    # directories) unpacks its files as they are in the zip into the target directory: the
    # wheel spec's "unpack" step. pip install --target adds only its own records (RECORD,
    # INSTALLER) and console-script launchers, which this test does not look at; in a pip
    # process of its own it cost ~1 s.
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert not [name for name in names if name.split("/", 1)[0].endswith(".data")]
        wheel_file = next(name for name in names if name.endswith(".dist-info/WHEEL"))
        assert "Root-Is-Purelib: true" in archive.read(wheel_file).decode().splitlines()
        archive.extractall(target)
    probe = (
        "import json, sa_pgdispatch\n"
        "from sa_pgdispatch._resources import sql_dir, template_dir\n"
        "print(json.dumps({'module': sa_pgdispatch.__file__, 'sql': str(sql_dir()),\n"
        "                  'template': str(template_dir()),\n"
        "                  'files': sorted(p.name for p in sql_dir().iterdir())}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,  # not the repository: nothing to find by accident
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    found = json.loads(result.stdout)
    package = target / "sa_pgdispatch"
    assert Path(found["module"]).parent == package
    assert Path(found["sql"]) == package / "sql"
    assert Path(found["template"]) == package / "migrations_template"
    assert found["files"] == sorted(
        p.name for p in (ROOT / "sql").iterdir() if p.name != "__pycache__"
    )
