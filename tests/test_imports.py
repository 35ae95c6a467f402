"""diffengine's modules import one another without a cycle.

The graph is read from the source: every import at a module's top level
(under ``if TYPE_CHECKING:`` too, which names a dependency as much as any
other), not those inside functions. Importing ``a.b.c`` runs the packages
``a`` and ``a.b`` first, so a module depends on the packages above what it
imports as well.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "diffengine"


def module_name(path: Path, top: Path) -> str:
    """The dotted name of ``path``, a file under the folder ``top``."""
    parts = list(path.relative_to(top).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def top_level_imports(tree: ast.Module) -> list[ast.stmt]:
    """Import statements outside functions and classes."""
    found, stack = [], list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                   ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))
    return found


def with_packages(name: str, modules: set[str]) -> list[str]:
    """``name`` and the packages importing it runs first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)
            if ".".join(parts[:i]) in modules]


def import_graph(package: Path = ROOT / PACKAGE) -> dict[str, set[str]]:
    """Each module of ``package`` (a folder) and the modules of it that it
    imports."""
    paths = {module_name(p, package.parent): p
             for p in package.rglob("*.py")}
    modules = set(paths)
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in top_level_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    anchor = anchor[:len(anchor) - node.level + is_package]
                    base = ".".join(anchor + ([base] if base else []))
                # ``from package import module`` imports the module
                targets = [base] + [f"{base}.{alias.name}"
                                    for alias in node.names]
            for target in targets:
                edges.update(with_packages(target, modules))
        edges.discard(name)
        # a package's own parents run before it, not because of it
        graph[name] = edges - set(with_packages(name, modules))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its modules in import order), or None."""
    state: dict[str, int] = {}  # 1 while on the path, 2 once done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle():
    graph = import_graph()
    assert "diffengine.adapter_file" in graph["diffengine.adapters.formats"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_check_finds_a_cycle(tmp_path):
    """A cycle through a TYPE_CHECKING import counts; one through an import
    inside a function does not."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import x\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from pkg import a\nx = 1\n")
    (package / "c.py").write_text("def f():\n    from pkg import a\n")
    graph = import_graph(package)
    assert graph["pkg.c"] == set()  # imports inside functions do not count
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]


@pytest.mark.parametrize("layer, above", [
    ("diffengine.adapters.kinds", "diffengine.adapter_file"),
    ("diffengine.adapter_file", "diffengine.adapters.formats"),
])
def test_adapters_are_layered(layer, above):
    graph = import_graph()
    assert above not in graph[layer]
