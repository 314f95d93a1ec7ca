"""The package's import graph, built from the source with `ast`: no circles, no borrowed private names.

Imports inside functions count (a lazy import only hides a circle until the day someone moves it);
imports under `if TYPE_CHECKING:` don't (they never run). A module importing the package top
(`from visiontune import x`) would close a circle through the top's public API, so submodules
import each other directly.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "visiontune"


def graph_in_a_fresh_interpreter(root: Path) -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """`import_graph` run in a child interpreter with no other threads.

    CPython 3.11.7's `ast.parse` shares one recursion counter between threads (gh-106905): with a
    thread left by an earlier test (Ray's, uvicorn's) parsing at the same moment, it raises
    "AST constructor recursion depth mismatch" at random.
    """
    child = subprocess.run([sys.executable, __file__, str(root)], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    edges, private = json.loads(child.stdout)
    return {name: set(targets) for name, targets in edges.items()}, [tuple(pair) for pair in private]


def module_names(root: Path) -> dict[str, Path]:
    names = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    return skipped


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """({module: modules it imports}, [(module, private name it imports from another module)])."""
    modules = module_names(root)
    edges: dict[str, set[str]] = {name: set() for name in modules}
    private: list[tuple[str, str]] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skipped = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("visiontune"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    edges[name].add(target if target in modules else node.module)  # type: ignore[arg-type]
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append((name, target))
            elif isinstance(node, ast.Import):
                edges[name].update(a.name for a in node.names if a.name in modules)
        edges[name].discard(name)
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_circle_and_a_private_import(tmp_path: Path) -> None:
    root = tmp_path / "visiontune"
    (root / "a").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "a" / "__init__.py").write_text("")
    (root / "a" / "one.py").write_text("def f():\n    from visiontune.two import g\n")  # lazy: still an edge
    (root / "two.py").write_text("from visiontune.a.one import f, _helper\n")
    (root / "three.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from visiontune.two import g\n"
    )
    edges, private = graph_in_a_fresh_interpreter(root)
    assert cycles(edges) == [["visiontune.a.one", "visiontune.two"]]
    assert private == [("visiontune.two", "visiontune.a.one._helper")]
    assert edges["visiontune.three"] == set()


def test_no_module_imports_another_in_a_circle() -> None:
    edges, _ = graph_in_a_fresh_interpreter(PACKAGE)
    assert len(edges) > 50  # the whole package was read
    assert cycles(edges) == []


def test_no_module_imports_another_modules_private_names() -> None:
    _, private = graph_in_a_fresh_interpreter(PACKAGE)
    assert private == []


def test_the_public_api_is_importable_from_the_package_top() -> None:
    import visiontune

    assert {"train", "inspect", "evaluate", "load"} <= set(visiontune.__all__)
    assert all(callable(getattr(visiontune, name)) for name in ("train", "inspect", "evaluate", "load"))


if __name__ == "__main__":  # graph_in_a_fresh_interpreter's child
    found_edges, found_private = import_graph(Path(sys.argv[1]))
    print(json.dumps([{name: sorted(targets) for name, targets in found_edges.items()}, found_private]))
