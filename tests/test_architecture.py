"""The package's shape: imports flow one way between its top-level parts, and the library never imports the CLI.

Every `import parcae_lm.x` / `from parcae_lm.x import ...` counts, wherever it sits (module level, inside a
function, under TYPE_CHECKING), so a cycle cannot hide behind a deferred import.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "parcae_lm"


def _part(path: Path) -> str | None:
    """The top-level part a file belongs to (`model` for model/parcae.py, `cache` for cache.py)."""
    rel = path.relative_to(PACKAGE)
    if rel.parts == ("__init__.py",):
        return None  # the package facade re-exports the public API from the parts below it
    if rel.parts == ("__main__.py",):
        return None  # `python -m parcae_lm`: the entry point, above every part
    return rel.parts[0].removesuffix(".py")


def _imported_parts(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = node.module.split(".")
            if names[0] == "parcae_lm":
                if len(names) > 1:
                    out.add(names[1])
                else:  # from parcae_lm import model
                    out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names = alias.name.split(".")
                if names[0] == "parcae_lm" and len(names) > 1:
                    out.add(names[1])
    return out


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        part = _part(path)
        if part is None:
            continue
        deps = _imported_parts(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        graph.setdefault(part, set()).update(d for d in deps if d != part)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    tree = ast.parse(
        "def f():\n    from parcae_lm.model.parcae import Parcae\nimport parcae_lm.data.shards\n"
    )
    assert _imported_parts(tree) == {"model", "data"}


def test_no_import_cycle_between_top_level_parts():
    graph = import_graph()
    assert {"config", "model", "train", "cli"} <= set(graph)
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_configs_sit_at_the_bottom_and_nothing_imports_the_cli():
    graph = import_graph()
    assert graph["config"] <= {"errors"}, f"config imports {sorted(graph['config'])}"
    users = sorted(part for part, deps in graph.items() if "cli" in deps and part != "cli")
    assert not users, f"the library imports the CLI: {users}"
