"""The layer contract (DESIGN.md: Layers), checked on every import statement in the library.

spec <- partition <- devices <- planner <- {runtime, simulations} <- CLI and API: a module imports
only from its own layer or the ones below it, and runtime and simulations never import each other.
Imports inside functions count too (a lazy import is still a dependency); imports under
`if TYPE_CHECKING:` do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# folder -> (subpackage under tierplan, layer rank)
FOLDERS = {"partition": 1, "devices": 2, "planner": 3, "runtime": 4, "simulations": 4}
TOP = 9                      # tierplan.cli, tierplan.commands, tierplan (the public API)
GROUND = {"spec", "loader", "validate", "errors", "transforms", "console", "logs", "docs", "cachedir"}


def _layer(module: str) -> tuple[int, str]:
    """Rank and name of the layer a `tierplan...` module belongs to."""
    parts = module.split(".")
    if parts[0] != "tierplan":
        return -1, "external"
    if len(parts) == 1:
        return TOP, "tierplan (API)"
    if parts[1] in FOLDERS:
        return FOLDERS[parts[1]], parts[1]
    if parts[1] in GROUND:
        return 0, "spec"
    return TOP, "CLI"


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts if parts[0] == "tierplan" else ["tierplan", *parts])


def _imports(tree: ast.AST, module: str, is_pkg: bool):
    """(line, imported module) for every import, skipping `if TYPE_CHECKING:` blocks."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join([*pkg, base] if base else pkg)
            for a in node.names:
                yield node.lineno, f"{base}.{a.name}" if base == "tierplan" else base


def _library_files() -> list[Path]:
    files = [p for d in ["tierplan", *FOLDERS] for p in (ROOT / d).rglob("*.py")]
    return [p for p in files if not p.name.endswith("_pb2.py") and not p.name.endswith("_pb2_grpc.py")]


def test_every_import_respects_the_layers() -> None:
    """No module imports from a higher layer, and runtime and simulations never import each other."""
    problems = []
    for path in _library_files():
        module = _module_of(path)
        rank, name = _layer(module)
        for line, target in _imports(ast.parse(path.read_text()), module, path.name == "__init__.py"):
            t_rank, t_name = _layer(target)
            if t_rank < 0 or t_name == name:
                continue
            if t_rank > rank or (t_rank == rank and {name, t_name} == {"runtime", "simulations"}):
                problems.append(f"{path.relative_to(ROOT)}:{line}: {name} imports {target} ({t_name})")
    assert not problems, "layer contract broken:\n" + "\n".join(problems)


def test_no_library_module_imports_a_top_level_layer_name() -> None:
    """Library code imports `tierplan.planner`, never a bare top-level `planner` (one namespace)."""
    bare = []
    for path in _library_files():
        for line, target in _imports(ast.parse(path.read_text()), _module_of(path), path.name == "__init__.py"):
            if target.split(".")[0] in FOLDERS:
                bare.append(f"{path.relative_to(ROOT)}:{line}: import {target}")
    assert not bare, "bare top-level imports:\n" + "\n".join(bare)


def test_no_import_cycles_between_library_modules() -> None:
    """No two library modules import each other, directly or round a longer loop (lazy imports count)."""
    import networkx as nx

    modules = {_module_of(p): p for p in _library_files()}
    graph = nx.DiGraph()
    for module, path in modules.items():
        for _, target in _imports(ast.parse(path.read_text()), module, path.name == "__init__.py"):
            while target and target not in modules:      # `from a.b import name` -> module a.b
                target = target.rpartition(".")[0]
            if target and target != module:
                graph.add_edge(module, target)
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"
