"""The layout rules of docs/design.md, checked on the source so they stay true: no function over
80 lines, no module using another module's private names, no import cycle between modules, and
every import following the layer table (read from docs/design.md itself)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "shufflenet"
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


def _layers() -> dict[str, str]:
    """module -> its layer ("0" ... "3", or "optional") from the table in docs/design.md."""
    text = (ROOT / "docs" / "design.md").read_text("utf-8")
    table = text.split("| layer | modules | may import |", 1)[1].split("\n\n", 1)[0]
    layers = {}
    for row in table.splitlines()[2:]:
        layer, modules = [cell.strip() for cell in row.strip("|").split("|")][:2]
        for module in re.findall(r"`(\w+)`", modules):
            assert module not in layers, f"design.md lists {module} twice"
            layers[module] = layer.split()[0]
    return layers


def _package_imports(tree: ast.Module):
    """(module imported, line, inside a function) for every import of a package module."""
    lazy = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and (mod := _package_module(n)) is not None:
            names = [a.name for a in n.names if a.name in MODULES] if mod == "" else [mod.split(".")[0]]
            for m in names:
                yield m, n.lineno, id(n) in lazy


def test_imports_follow_the_layer_table():
    """A module imports its own layer and the layers below; ``torch_models`` and ``train``
    (optional) import layers 0-1 and each other, and the others import them only inside a function."""
    layers = _layers()
    assert sorted(layers) == sorted(set(MODULES) - {"__init__"}), "docs/design.md's layer table is not the module list"
    below = {"0": {"0"}, "1": {"0", "1"}, "2": {"0", "1", "2"}, "3": {"0", "1", "2", "3"}, "optional": {"0", "1"}}
    found = []
    for name, tree in MODULES.items():
        if name == "__init__":  # the public API: every entry point, loaded on first use
            continue
        for m, line, lazy in _package_imports(tree):
            if m in ("__init__", name):
                continue
            allowed = layers[m] in below[layers[name]] or (layers[m] == "optional" and (lazy or layers[name] == "optional"))
            if not allowed:
                found.append(f"{name}.py:{line} (layer {layers[name]}) imports {m} (layer {layers[m]})"
                             + ("" if lazy else " at the top"))
    assert not found, found
