"""The package's import graph: every module imports, no import loop (imports inside functions included), and no
module over 500 lines."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mmcompress"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> set[str]:
    """Modules of the package that ``name`` imports anywhere in its file (top level, functions, classes)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # ``from pkg import sub`` imports the module pkg.sub when there is one, else a name of pkg
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # ``import mmcompress.x.y`` where y is a name: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary loop found by a depth-first search (one representative per strongly connected part)."""
    index, low, stack, on_stack, parts = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                parts.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return parts


def package_graph() -> dict[str, set[str]]:
    """Module -> the package modules it names in an import (a package's ``__init__`` counts when it is named, as in
    ``from ..encoders import create_encoder``; importing a submodule does not count as importing its parents)."""
    return {name: imported_modules(name, path) for name, path in MODULES.items()}


def test_the_cycle_finder_sees_a_loop_through_a_function_level_import():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    source = PACKAGE / "soft" / "kv.py"
    assert "mmcompress.soft.encoder" in imported_modules("mmcompress.soft.kv", source)


def test_no_import_loops():
    assert find_cycles(package_graph()) == []


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"mmcompress.__main__"}))  # that one runs the CLI
def test_every_module_imports(name):
    importlib.import_module(name)


FAMILY_TASKS = {"hard": {"llmlingua2"}, "soft": {"icae", "kv", "xrag", "gist", "autocompressor"},
                "vision": {"small_vlm"}, "multimodal": {"interleaved"}}


def test_training_tasks_are_registered_in_each_familys_training_module():
    registering = {name for name, path in MODULES.items() if "register_task(" in path.read_text()}
    assert registering == {"mmcompress.training.tasks"} | {f"mmcompress.{f}.training" for f in FAMILY_TASKS}
    from mmcompress.training import TASKS

    importlib.import_module("mmcompress")
    for family, tasks in FAMILY_TASKS.items():
        assert {n for n in tasks if TASKS.get(n).__module__.startswith(f"mmcompress.{family}.")} == tasks


def test_no_module_is_over_500_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"
