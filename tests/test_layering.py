"""The kit's layering, read from the source: every import (module level and inside functions,
absolute and relative; ``if TYPE_CHECKING:`` blocks excepted) between the kit's parts must be
allowed by ``ALLOWED``, ``ALLOWED`` itself must have no cycle, and no two modules may import each
other through any chain. docs/architecture.md draws the same table."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "cellseg"

# part -> the parts it may import. A part is a subpackage (cellseg/infer) or a top-level module
# (cellseg/checkpoint.py). Lower parts never import higher ones.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "io": {"errors"},
    "jobs": {"errors"},
    "core": {"errors", "io"},
    "configlib": {"errors", "io"},
    "data": {"core", "errors", "io"},
    "report": {"core", "io"},
    "viewer": {"report", "core", "configlib", "errors", "io"},
    "checkpoint": {"core", "errors", "io"},  # the file format; models (re)build from it
    "models": {"checkpoint", "core", "data", "errors", "io", "configlib"},
    "infer": {"checkpoint", "models", "core", "data", "errors", "io", "configlib", "report"},
    "config": {"infer", "models", "data", "configlib", "errors", "io"},
    "weights": {"checkpoint", "errors", "io"},
    "export": {"data", "core", "errors", "io"},
    # cli: the kernel's probe runs `cellseg predict` in-process, the command line the kernel runs
    "kaggle": {"cli", "infer", "checkpoint", "models", "weights", "data", "core", "errors", "io",
               "configlib"},
    "training": {"config", "infer", "checkpoint", "models", "data", "core", "errors", "io",
                 "configlib", "report"},
    "pseudo": {"infer", "config", "checkpoint", "export", "data", "core", "jobs", "errors", "io"},
    "cv": {"pseudo", "infer", "config", "export", "data", "core", "report", "viewer", "jobs",
           "errors", "io"},
    "cli": {"errors"},
    "commands": {"cli", "cv", "pseudo", "training", "kaggle", "config", "weights", "export",
                 "infer", "checkpoint", "models", "report", "viewer", "data", "core", "configlib",
                 "jobs", "errors", "io"},
    "__main__": {"cli"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The kit modules ``path`` imports (resolved to the longest known module name)."""
    tree = ast.parse(path.read_text())
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and "TYPE_CHECKING" in ast.unparse(block.test)
                 for stmt in block.body for n in ast.walk(stmt)}
    names: list[str] = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            # `from pkg import submodule` depends on the submodule, `from mod import name` on mod
            names += [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                      for a in node.names]
    found = set()
    for name in names:
        parts = name.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        if parts and ".".join(parts) != module:
            found.add(".".join(parts))
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PKG.rglob("*.py")}
    return {m: _imports(p, m, set(paths)) for m, p in paths.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_allowed_table_has_no_cycle_and_names_every_part():
    assert _cycles(ALLOWED) == []
    parts = {_part(m) for m in _graph()} - {""}
    assert parts <= set(ALLOWED), f"parts missing from ALLOWED: {sorted(parts - set(ALLOWED))}"


def test_every_import_follows_the_layering():
    offenders = sorted(f"{m} imports {d}" for m, deps in _graph().items() for d in deps
                       if _part(d) and _part(m) and _part(d) != _part(m)
                       and _part(d) not in ALLOWED.get(_part(m), set()))
    assert not offenders, offenders


def test_no_import_cycles_between_modules():
    assert _cycles(_graph()) == []


def test_relative_and_function_level_imports_are_seen(tmp_path):
    """The reader itself: a relative import inside a function counts, a TYPE_CHECKING one not."""
    pkg = tmp_path / "cellseg" / "infer"
    pkg.mkdir(parents=True)
    src = pkg / "x.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..cv import a\n"
                   "def f():\n    from ..training import loop\n    from . import tiling\n")
    known = {"cellseg.cv", "cellseg.training", "cellseg.training.loop", "cellseg.infer",
             "cellseg.infer.tiling", "cellseg.infer.x"}
    assert _imports(src, "cellseg.infer.x", known) == {"cellseg.training.loop",
                                                       "cellseg.infer.tiling"}
