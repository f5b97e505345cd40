"""The house keeps its shape: packages import only downwards, no import circle, short modules.

Every import counts, a function-level (lazy) one too: a circle that only closes at run time is
still a circle a reader has to untangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "chitchat"

# What each package may import (besides itself), lowest layer first. docs/ARCHITECTURE.md draws it.
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "text": {"core"},
    "models": {"core", "text"},
    "training": {"core", "text", "models"},
    "answering": {"core", "data", "text", "models"},
    "evaluation": {"core", "data", "text", "models", "training", "answering"},
    "serve": {"core", "answering"},
    "cli": {"core", "data", "text", "models", "training", "answering", "evaluation", "serve"},
}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = SRC) -> dict[str, Path]:
    return {module_name(p): p for p in sorted(root.rglob("*.py"))}


def imported(path: Path, known: dict[str, Path]) -> set[str]:
    """chitchat modules `path` imports anywhere in its body (a `from pkg import submodule` names it)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("chitchat")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("chitchat"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & known.keys()
            out |= subs or {node.module}
    return out


def graph(known: dict[str, Path]) -> dict[str, set[str]]:
    return {name: imported(path, known) - {name} for name, path in known.items()}


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    assert cycles(graph(modules())) == []


def test_cycle_finder_sees_a_circle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_packages_import_only_downwards():
    bad = []
    for module, targets in graph(modules()).items():
        pkg = package_of(module)
        for target in targets:
            other = package_of(target)
            if other and other != pkg and other not in ALLOWED[pkg]:
                bad.append(f"{module} imports {target} ({pkg} may import {sorted(ALLOWED[pkg]) or 'nothing'})")
    assert bad == []


def test_every_module_lives_in_a_package_with_a_docstring():
    known = modules()
    loose = [m for m in known if m != "chitchat" and package_of(m) not in ALLOWED]
    assert loose == [], "a module outside the layered packages"
    for pkg in ALLOWED:
        init = SRC / pkg / "__init__.py"
        assert init.is_file(), f"chitchat.{pkg} is not a package"
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"chitchat.{pkg} has no docstring"


def test_pipeline_scripts_do_not_import_each_other():
    for script in sorted((ROOT / "pipeline").glob("*.py")):
        tree = ast.parse(script.read_text(encoding="utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(name.startswith("pipeline") for name in names), script.name


@pytest.mark.parametrize("root", ["src/chitchat", "pipeline"])
def test_modules_and_functions_are_short(root):
    long_modules, long_functions = [], []
    for path in sorted((ROOT / root).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert long_modules == []
    assert long_functions == []
