"""The package's import graph has no cycle: a module that needs something from a module that needs it
back means the seam between them is in the wrong place (hand over a callable instead)."""

from __future__ import annotations

import ast
from pathlib import Path

import quant

PACKAGE_ROOT = Path(quant.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(tree: ast.AST, modules: set[str], this: str) -> set[str]:
    """Every quant module this file imports, wherever the import statement is (top level or inside a function),
    except under `if TYPE_CHECKING:`, which never runs."""
    found: set[str] = set()
    pending = [tree]
    while pending:
        node = pending.pop()
        for child in ast.iter_child_nodes(node):
            if _is_type_checking_block(child):
                pending.extend(child.orelse)
                continue
            pending.append(child)
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                # `from quant.report import html` imports the module quant.report.html.
                found.update(f"{child.module}.{alias.name}" if f"{child.module}.{alias.name}" in modules else child.module for alias in child.names)
    return {name for name in found if name in modules and name != this and not this.startswith(f"{name}.")}


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(path): path for path in PACKAGE_ROOT.rglob("*.py")}
    modules = set(files)
    return {name: _imported(ast.parse(path.read_text(encoding="utf-8")), modules, name) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_quant_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_function_level_imports() -> None:
    tree = ast.parse("import os\nfrom quant.x import y\ndef f():\n    from quant import z\nif TYPE_CHECKING:\n    import quant.w\n")
    assert _imported(tree, {"quant.x", "quant.x.y", "quant.z", "quant.w", "quant"}, "quant.v") == {"quant.x.y", "quant.z"}
