"""The layout rules of docs/design.md, checked on the source so they stay true: no function over
80 lines, no module using another module's private names, no import cycle between modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "shufflenet"
MAX_FUNCTION_LINES = 80
MODULES = {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(SRC.glob("*.py"))}


def _package_module(node: ast.ImportFrom) -> str | None:
    """The shufflenet module an import names (``from .x`` / ``from shufflenet.x``), else None."""
    if node.level == 1:
        return node.module or ""
    if node.level == 0 and node.module and node.module.split(".")[0] == "shufflenet":
        return node.module.partition(".")[2]
    return None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_function_is_longer_than_80_lines(name):
    long = [f"{name}.py:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for n in ast.walk(MODULES[name]) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_uses_another_modules_private_names(name):
    tree = MODULES[name]
    aliases = set()  # local names bound to package modules (`from . import x`, `import shufflenet.x as y`)
    found = []
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and _package_module(n) is not None:
            for a in n.names:
                if _package_module(n) == "" and a.name in MODULES:
                    aliases.add(a.asname or a.name)
                elif a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{name}.py:{n.lineno} imports {a.name} from {n.module or '.'}")
        elif isinstance(n, ast.Import):
            aliases.update(a.asname for a in n.names if a.name.startswith("shufflenet.") and a.asname)
    for n in ast.walk(tree):
        if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases
                and n.attr.startswith("_") and not n.attr.startswith("__")):
            found.append(f"{name}.py:{n.lineno} uses {n.value.id}.{n.attr}")
    assert not found, found


def test_imports_have_no_cycle():
    """Lazy imports inside functions included: they are for optional extras and start-up time,
    never a way around a cycle."""
    graph = {}
    for name, tree in MODULES.items():
        deps = set()
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and (mod := _package_module(n)) is not None:
                deps |= {a.name for a in n.names if a.name in MODULES} if mod == "" else {mod.split(".")[0]}
        graph[name] = deps - {name, "__init__"}
    done, path = set(), []

    def visit(m):
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        path.append(m)
        for d in sorted(graph.get(m, ())):
            visit(d)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)
