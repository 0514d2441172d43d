"""No import cycles between the modules of sa_pgdispatch; and the rest of the layout
rules: no module over 500 lines without saying why at its top, no module using another
module's private (``_name``) names.

The graph is read from the source with ast: every import, at any level (inside
functions too: a deferred import that closes a cycle is still a cycle, only one that
hides it), except those under ``if TYPE_CHECKING:`` (never run). Importing a module
also runs its packages' ``__init__``; that is not an edge here, or every module would
be in a cycle with ``sa_pgdispatch/__init__.py``, which imports the public API.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import sa_pgdispatch

PACKAGE = sa_pgdispatch.__name__
ROOT = Path(sa_pgdispatch.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {
        _module_name(path): path
        for path in sorted(ROOT.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


#: Each module of the package: its path and syntax tree.
Trees = dict[str, tuple[Path, ast.Module]]


def parse_sources() -> Trees:
    return {
        module: (path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        for module, path in _sources().items()
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(tree, ast.If) and _is_type_checking(tree.test):
        for node in tree.orelse:
            yield from _imports(node)
        return
    if isinstance(tree, ast.Import | ast.ImportFrom):
        yield tree
    for child in ast.iter_child_nodes(tree):
        yield from _imports(child)


def _origin(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The module ``from ... import`` imports from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    if node.module:
        base += node.module.split(".")
    return ".".join(base)


def _targets(
    module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]
) -> Iterator[str]:
    """The modules of the package that ``node`` (in ``module``) imports."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in known:
                yield alias.name
        return
    origin = _origin(module, is_package, node)
    if origin not in known:
        return
    submodules = [f"{origin}.{alias.name}" for alias in node.names]
    found = [name for name in submodules if name in known]
    yield from found
    if len(found) < len(submodules):  # names defined in the module (or its __init__)
        yield origin


def import_graph(trees: Trees | None = None) -> dict[str, set[str]]:
    trees = parse_sources() if trees is None else trees
    known = set(trees)
    graph: dict[str, set[str]] = {}
    for module, (path, tree) in trees.items():
        is_package = path.name == "__init__.py"
        graph[module] = {
            target
            for node in _imports(tree)
            for target in _targets(module, is_package, node, known)
            if target != module
        }
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_a_cycle(graph, set(component)) for component in sorted(components)]


def _a_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    start = min(component)
    paths = [[start]]
    while paths:  # breadth first: the shortest way back to start
        path = paths.pop(0)
        for succ in sorted(graph[path[-1]] & component):
            if succ == start:
                return [*path, start]
            if succ not in path:
                paths.append([*path, succ])
    raise AssertionError(f"no cycle in {component}")


@pytest.fixture(scope="module")
def trees() -> Trees:
    """The package's sources parsed once for the tests that read them (~0.13 s a parse);
    module scope: the trees are let go after this module, not kept for the session."""
    return parse_sources()


@pytest.fixture(scope="module")
def graph(trees: Trees) -> dict[str, set[str]]:
    return import_graph(trees)


def test_the_graph_sees_imports_at_every_level(graph: dict[str, set[str]]) -> None:
    assert f"{PACKAGE}.errors" in graph[f"{PACKAGE}.jobs._model"]  # from ..errors import
    assert f"{PACKAGE}.testing" in graph[f"{PACKAGE}.demo"]  # inside a function
    assert f"{PACKAGE}.jobs" not in graph[f"{PACKAGE}.errors"]  # if TYPE_CHECKING: only
    assert graph[f"{PACKAGE}.errors"] == set()


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    assert _cycles(graph) == []


def test_a_cycle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]


# ---------------------------------------------------------------------------------------
# the other layout rules

MAX_LINES = 500
#: What a module over MAX_LINES lines says in its docstring, followed by why.
REASON = "over 500 lines"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(trees: Trees | None = None) -> list[str]:
    """``module: other._name`` for each private name of another module of the package
    that a module imports (``from other import _name``) or reads (``other._name``, with
    ``other`` a module it imported)."""
    trees = parse_sources() if trees is None else trees
    known = set(trees)
    found = []
    for module, (path, tree) in trees.items():
        is_package = path.name == "__init__.py"
        modules: dict[str, str] = {}  # local name -> module of the package
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname and alias.name in known:
                        modules[alias.asname] = alias.name
                continue
            origin = _origin(module, is_package, node)
            if origin not in known:
                continue
            for alias in node.names:
                if f"{origin}.{alias.name}" in known:
                    modules[alias.asname or alias.name] = f"{origin}.{alias.name}"
                elif _is_private(alias.name) and origin != module:
                    found.append(f"{module}: {origin}.{alias.name}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
                and _is_private(node.attr)
            ):
                found.append(f"{module}: {modules[node.value.id]}.{node.attr}")
    return sorted(set(found))


def long_modules_without_a_reason() -> list[str]:
    """``module (lines)`` for each module over MAX_LINES lines whose docstring does not
    say why it is (the words of REASON)."""
    found = []
    for module, path in _sources().items():
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines <= MAX_LINES:
            continue
        doc = " ".join((ast.get_docstring(ast.parse(text)) or "").split())
        if REASON not in doc:
            found.append(f"{module} ({lines})")
    return found


def test_no_module_uses_another_modules_private_names(trees: Trees) -> None:
    assert private_uses(trees) == []


def test_modules_over_500_lines_say_why_at_their_top() -> None:
    assert long_modules_without_a_reason() == []


def test_the_layout_checks_see_what_they_look_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("_secret = 1\n")
    (package / "b.py").write_text("from .a import _secret\n")
    (package / "c.py").write_text("from . import a\nX = a._secret\n")
    (package / "long.py").write_text('"""Long."""\n' + "x = 1\n" * MAX_LINES)
    (package / "said.py").write_text(
        '"""Long: why it is over 500\nlines: one thing."""\n' + "x = 1\n" * MAX_LINES
    )
    monkeypatch.setitem(globals(), "ROOT", package)
    assert private_uses() == [
        f"{PACKAGE}.b: {PACKAGE}.a._secret",
        f"{PACKAGE}.c: {PACKAGE}.a._secret",
    ]
    assert long_modules_without_a_reason() == [f"{PACKAGE}.long ({MAX_LINES + 1})"]
